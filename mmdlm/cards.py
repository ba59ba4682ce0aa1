"""Model cards: the README.md with YAML metadata that transformers, diffusers and peft keep beside a
checkpoint, built with huggingface_hub's `ModelCard` / `ModelCardData`, and uploads to a hub.

- `write_card`: a saved model's card: what it is and how to load it (every mmdlm `save_pretrained`).
- `add_training`: how a training run made it, added to the card of the run's final model: where it
  started from, the data, the recipe and the held-out figures of its `run.json`.
- `push_folder`: upload a saved folder, card included, with huggingface_hub.

The metadata names a `base_model` only when it is a hub id (the hub refuses other values); a local
starting point is named in the text instead.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .io import atomic_write_text

CARD = "README.md"
TAGS = ["mmdlm"]
TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ about }}

## How to use

```python
{{ usage }}
```
"""
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _hub_id(name) -> str | None:
    """`name` when it reads as a hub repository id (owner/name) and is no local folder."""
    return name if isinstance(name, str) and HUB_ID.match(name) and not Path(name).exists() else None


def write_card(folder, *, title: str, about: str, usage: str, library_name: str, tags=(),
               pipeline_tag: str | None = None, base_model: str | None = None) -> None:
    """Write `folder`/README.md: YAML metadata, then the title, `about` (markdown) and `usage` (Python)."""
    data = ModelCardData(library_name=library_name, tags=[*TAGS, *tags], pipeline_tag=pipeline_tag,
                         base_model=_hub_id(base_model))
    card = ModelCard.from_template(data, template_str=TEMPLATE, title=title, about=about.strip(), usage=usage.strip())
    atomic_write_text(Path(folder) / CARD, str(card))


def _plain_card(folder: Path) -> None:
    """A card for a transformers or diffusers model saved without one (its config.json names its class)."""
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if config.get("architectures"):
        library, name = "transformers", config["architectures"][0]
    else:
        library, name = "diffusers", config.get("_class_name", "DiffusionPipeline")
    write_card(folder, title=f"{name} trained with mmdlm", about=f"A {library} `{name}`.", library_name=library,
               usage=f'from {library} import {name}\n\nmodel = {name}.from_pretrained("PATH")')


def add_training(folder, run: dict, note: str = "") -> None:
    """Add a training run's record (`run.json`: command, config, data, held_out) to `folder`'s card
    (replacing the Training section it has), with `note` (markdown) after the first paragraph."""
    folder = Path(folder)
    if not (folder / CARD).is_file():
        _plain_card(folder)
    card = ModelCard.load(folder / CARD)
    config = run.get("config") or {}
    start = config.get("model") or config.get("pretrained")
    dataset = config.get("dataset")
    lines = ["", "## Training", "", f"Made by `{run.get('command', 'mmdlm')}`"
             + (f", starting from `{start}`" if start else ", from random weights")
             + (f", on the data set `{dataset}`" if dataset else "") + "."] + (["", note] if note else [])
    held_out = run.get("held_out")
    if held_out:
        lines += ["", f"Held-out: validation loss **{held_out['validation_loss']:.4f}** after step "
                      f"{held_out['step']:,} ({held_out['tokens']:,} training tokens), the training objective on "
                      f"the held-out split."]
        card.data.model_name = card.data.model_name or Path(config.get("output_dir", folder.name)).name
        card.data.eval_results = [EvalResult(
            task_type=card.data.pipeline_tag or "other", dataset_type=str(dataset or "held-out"),
            dataset_name=str(dataset or "held-out"), dataset_split="validation", metric_type="loss",
            metric_name="validation loss", metric_value=round(held_out["validation_loss"], 5))]
    data = run.get("data") or run.get("corpus")
    if data:
        lines += ["", f"Data: `{json.dumps(data, default=str)}`."]
    lines += ["", "<details><summary>Recipe</summary>", "", "```yaml",
              yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False).strip(), "```", "",
              "</details>"]
    card.data.base_model = card.data.base_model or _hub_id(start)
    card.data.datasets = [dataset] if isinstance(dataset, str) else None
    card.text = card.text.split("\n## Training\n")[0].rstrip() + "\n" + "\n".join(lines) + "\n"  # (replaced)
    atomic_write_text(folder / CARD, str(card))


def push_folder(folder, repo_id: str, *, token: str | None = None, private: bool | None = None,
                commit_message: str | None = None, create_pr: bool = False):
    """Upload the saved `folder` (card included) to the hub model repository `repo_id`, created when
    missing; returns huggingface_hub's commit info."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {folder}")
    if not (folder / CARD).is_file():
        raise ValueError(f"{folder} has no model card ({CARD}): save it with mmdlm, which writes one")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), create_pr=create_pr,
                             commit_message=commit_message or f"Upload {folder.name} with mmdlm")
