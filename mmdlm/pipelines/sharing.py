"""Saved mmdlm pipelines load with diffusers' generic loader and share like diffusers pipelines.

diffusers finds a pipeline class that lives outside it the custom-pipeline way: the saved folder
holds the code (`pipeline.py`) and `model_index.json` names it, `"_class_name": ["pipeline",
"TextDiffusionPipeline"]`. mmdlm's `pipeline.py` only imports the class from the installed mmdlm,
so that

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

returns the mmdlm pipeline (diffusers runs a folder's code only when told it may; without
`trust_remote_code` it says so). The class's own `from_pretrained` and `load_pipeline` read the
same folder without running its file. Every save also writes the model card (README.md), and
`push_to_hub` uploads the saved folder with huggingface_hub.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..cards import push_folder, write_card
from ..io import atomic_write_text

LOADER = "pipeline"  # pipeline.py in a saved folder
LOADER_SOURCE = '''"""The mmdlm pipeline of this folder, for diffusers' generic loader:
DiffusionPipeline.from_pretrained(folder, trust_remote_code=True). Without running this file:
mmdlm.pipelines.load_pipeline(folder). Needs mmdlm installed."""
from mmdlm.pipelines import {name}  # noqa: F401
'''
USAGE = '''from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("PATH", trust_remote_code=True)  # this folder; its pipeline.py imports mmdlm
# or, without running the folder's code: from mmdlm.pipelines import load_pipeline; pipe = load_pipeline("PATH")
'''


def class_name(value) -> str | None:
    """The pipeline class a model_index.json `_class_name` names: the name itself, or the class of
    a custom pipeline's ["module", "Class"]."""
    return value[1] if isinstance(value, (list, tuple)) and len(value) == 2 else value


class SharedPipeline:
    """Mixin (before `DiffusionPipeline`) of every mmdlm pipeline: the loader file, the model
    card and the upload. A pipeline describes itself with `card_*` attributes and may write
    more files in `_save_extra`."""

    card_title = "mmdlm pipeline"
    card_about = ""
    card_example = ""
    card_tags: tuple[str, ...] = ()
    card_pipeline_tag: str | None = None

    @classmethod
    def load_config(cls, *args, **kwargs):
        # Loading through this class: it is the class to build, and the folder's pipeline.py is not run.
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        config["_class_name"] = class_name(config.get("_class_name"))
        return out

    def _save_extra(self, folder: Path) -> None:
        """Files beside diffusers' own (a subclass's)."""

    def _card_about(self) -> str:
        return self.card_about

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        """diffusers' save, plus `pipeline.py` (the generic loader's entry) and the model card; with
        `push_to_hub`, then uploaded (`repo_id`, default the folder's name, and `push_folder`'s options)."""
        hub = {k: kwargs.pop(k) for k in ("repo_id", "token", "private", "commit_message", "create_pr") if k in kwargs}
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        self._save_extra(folder)
        self.write_sharing_files(folder)
        if push_to_hub:
            push_folder(folder, hub.pop("repo_id", folder.resolve().name), **hub)

    def write_sharing_files(self, folder: Path) -> None:
        """Into the saved pipeline `folder` (this pipeline's): pipeline.py, the custom-pipeline
        `_class_name` of model_index.json, and the model card."""
        name = type(self).__name__
        (folder / f"{LOADER}.py").write_text(LOADER_SOURCE.format(name=name))
        index = json.loads((folder / "model_index.json").read_text())
        atomic_write_text(folder / "model_index.json", json.dumps({**index, "_class_name": [LOADER, name]}, indent=2))
        write_card(folder, title=self.card_title, about=self._card_about(), library_name="diffusers",
                   usage=USAGE + self.card_example, tags=["diffusers", *self.card_tags],
                   pipeline_tag=self.card_pipeline_tag)

    def push_to_hub(self, repo_id: str, **hub_options):
        """Save (loader file and card included) and upload to the hub repository `repo_id`
        (`mmdlm.cards.push_folder`'s options: token, private, commit_message, create_pr)."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / repo_id.rpartition("/")[2]
            self.save_pretrained(folder)
            return push_folder(folder, repo_id, **hub_options)
