"""Model cards (README.md with YAML metadata) beside every saved model and training run, and uploads
through huggingface_hub against a mocked endpoint (nothing leaves the machine)."""
import json
from pathlib import Path

import pytest
from conftest import TEXT, tiny_causal_lm
from huggingface_hub import HfApi, ModelCard

from mmdlm import cli
from mmdlm.cards import push_folder
from mmdlm.pipelines import TextDiffusionPipeline
from mmdlm.text.adapt import DiffusionLM


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(TEXT))
    return str(path)


def run(argv):
    assert cli.main(argv) == 0


def test_a_training_run_writes_the_card_with_its_recipe_and_held_out_figures(tmp_path, tokenizer, corpus):
    causal = tmp_path / "causal"
    tiny_causal_lm("gpt2", tokenizer).save_pretrained(causal)
    tokenizer.save_pretrained(causal)
    run(["adapt", "--model", str(causal), "--dataset", "local", "--data-files", corpus, "--output-dir",
         str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "2", "--seq-len", "16", "--warmup-steps", "0",
         "--eval-every", "1", "--validation-fraction", "0.25"])
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert record["held_out"] == {"validation_loss": float(log[-1].split(",")[-1]), "step": 2,
                                  "tokens": int(log[-1].split(",")[1])}
    card = ModelCard.load(tmp_path / "run" / "model" / "README.md")
    assert card.data.library_name == "mmdlm" and card.data.pipeline_tag == "text-generation"
    assert {"mmdlm", "diffusion-lm", "masked-diffusion"} <= set(card.data.tags)
    assert card.data.datasets == ["local"] and card.data.base_model is None  # a local start is named in the text
    (result,) = card.data.eval_results
    assert (result.metric_type, result.dataset_split) == ("loss", "validation")
    assert result.metric_value == round(record["held_out"]["validation_loss"], 5)
    assert f"starting from `{causal}`" in card.text and "lr: 0.001" in card.text
    assert "TextDiffusionPipeline.from_pretrained" in card.text
    # the card is part of the model folder: the pipeline loads it as before
    TextDiffusionPipeline.from_pretrained(tmp_path / "run" / "model")


def test_a_causal_lm_run_gets_a_transformers_card(tmp_path, corpus):
    run(["pretrain", "--dataset", "local", "--data-files", corpus, "--output-dir", str(tmp_path / "run"),
         "--max-steps", "1", "--batch-size", "2", "--seq-len", "16", "--vocab-size", "300", "--model-config",
         '{"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, '
         '"num_attention_heads": 2}'])
    card = ModelCard.load(tmp_path / "run" / "model" / "README.md")
    assert card.data.library_name == "transformers" and "LlamaForCausalLM.from_pretrained" in card.text
    assert "from random weights" in card.text


def test_base_model_is_only_a_hub_id(tmp_path, tokenizer):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    dlm.save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    from mmdlm.cards import add_training

    add_training(tmp_path / "dlm", {"command": "mmdlm adapt", "config": {"model": "org/base-lm", "dataset": "org/d"}})
    card = ModelCard.load(tmp_path / "dlm" / "README.md")
    assert card.data.base_model == "org/base-lm" and card.data.datasets == ["org/d"]
    add_training(tmp_path / "dlm", {"command": "mmdlm sft", "config": {"model": str(tmp_path / "dlm")}})
    assert ModelCard.load(tmp_path / "dlm" / "README.md").data.base_model == "org/base-lm"  # kept


@pytest.fixture
def hub(monkeypatch):
    """A mocked hub: huggingface_hub's create_repo and upload_folder record what would be sent
    (the files of the folder, read while it exists)."""
    sent = {}

    def create_repo(self, repo_id, **kwargs):
        sent["repo"] = (repo_id, kwargs)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        root = Path(folder_path)
        sent["files"] = {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}
        sent["commit"] = kwargs
        return "committed"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return sent


def test_push_to_hub_uploads_the_saved_folder_with_its_card(tmp_path, tokenizer, hub):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    assert dlm.push_to_hub("me/tiny-dlm", tokenizer, private=True) == "committed"
    assert hub["repo"] == ("me/tiny-dlm", {"private": True, "exist_ok": True})
    assert {"README.md", "mmdlm.json", "model.safetensors", "config.json", "tokenizer.json"} <= set(hub["files"])
    assert b"library_name: mmdlm" in hub["files"]["README.md"]
    dlm.save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    pipe = TextDiffusionPipeline.from_dlm(tmp_path / "dlm")
    pipe.push_to_hub("me/tiny-pipe", commit_message="first")
    assert {"README.md", "pipeline.py", "model_index.json", "model/mmdlm.json", "scheduler/scheduler_config.json",
            "tokenizer/tokenizer.json"} <= set(hub["files"]) and hub["commit"]["commit_message"] == "first"
    assert b"library_name: diffusers" in hub["files"]["README.md"]
    pipe.save_pretrained(tmp_path / "pipe", push_to_hub=True, repo_id="me/other")  # diffusers' way to ask
    assert hub["repo"][0] == "me/other" and "pipeline.py" in hub["files"]


def test_push_folder_needs_a_card(tmp_path, hub):
    (tmp_path / "bare").mkdir()
    with pytest.raises(ValueError, match="has no model card"):
        push_folder(tmp_path / "bare", "me/x")
    with pytest.raises(FileNotFoundError, match="no folder"):
        push_folder(tmp_path / "none", "me/x")
    assert not hub
