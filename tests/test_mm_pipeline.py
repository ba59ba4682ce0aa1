import json

import numpy as np
import pytest
import torch
from conftest import tiny_causal_lm
from mm_oracle import OraclePipeline
from PIL import Image

from mmdlm import cli
from mmdlm.pipelines import (
    TASKS,
    MultimodalPipelineOutput,
    TextDiffusionPipeline,
    format_images,
    load_pipeline,
    resolve_task,
)
from mmdlm.pipelines.multimodal import PIPELINES
from mmdlm.text.adapt import DiffusionLM

IMG = Image.new("RGB", (8, 8))


@pytest.mark.parametrize("inputs, task", [
    (dict(prompt="a red circle"), "t2i"),
    (dict(prompt=["a", "b"]), "t2i"),
    (dict(image=IMG), "caption"),
    (dict(image=torch.zeros(2, 3, 8, 8)), "caption"),
    (dict(), "joint"),
    (dict(prompt="a <|mask:1|> circle"), "infill"),
    (dict(prompt="what shape ?<|mask:1|>", image=[IMG, IMG]), "vqa"),
    (dict(image=IMG, mask_image=IMG), "inpaint"),
    (dict(image=IMG, mask_image=IMG, prompt="a red circle"), "inpaint"),
])
def test_task_inference(inputs, task):
    assert resolve_task(**inputs) == task
    assert resolve_task(**inputs, task=task) == task


def test_explicit_task_over_inference():
    assert resolve_task("a <|mask:1|> circle", IMG) == "vqa"
    assert resolve_task("a <|mask:1|> circle", IMG, "infill") == "infill"  # caption infilling given the image


@pytest.mark.parametrize("inputs, message", [
    (dict(prompt="", task="t2i"), "prompt 0 is empty"),
    (dict(prompt=[], task="t2i"), "empty list"),
    (dict(task="t2i"), "t2i needs a prompt"),
    (dict(prompt="x", image=IMG, task="t2i"), "an image was given"),
    (dict(prompt="a <|mask:2|>", task="t2i"), "placeholders"),
    (dict(task="caption"), "captioning needs an image"),
    (dict(prompt="x", image=IMG, task="caption"), "captioning takes no prompt"),
    (dict(prompt="x", image=IMG), "without <|mask:N|> placeholders"),
    (dict(prompt="what ?", image=IMG, task="vqa"), "needs a prompt with <|mask:N|>"),
    (dict(prompt="what ?<|mask:1|>", task="vqa"), "vqa needs an image"),
    (dict(prompt=["a<|mask:1|>"] * 2, image=[IMG] * 3, task="vqa"), "2 prompts for 3 images"),
    (dict(prompt="x", task="joint"), "joint generation starts from nothing"),
    (dict(image=IMG, task="inpaint"), "inpaint needs an image and a mask_image"),
    (dict(image=IMG, mask_image=IMG, task="caption"), "mask_image is only for"),
    (dict(task="draw"), "unknown task 'draw'"),
    (dict(prompt=["a <|mask:1|>", "b"]), "separate batches"),
    (dict(prompt=[3]), "not a string"),
    (dict(image="cat.png"), "give PIL images"),
])
def test_task_errors(inputs, message):
    with pytest.raises(ValueError, match=message.replace("|", r"\|").replace("(", r"\(")):
        resolve_task(**inputs)


def test_tasks_and_output():
    assert TASKS == ("t2i", "caption", "vqa", "joint", "infill", "inpaint")
    out = MultimodalPipelineOutput(texts=["a"])
    assert out.images is None and out.texts == ["a"] and out.to_tuple() == (["a"],)
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    pil = format_images(x, "pil")
    assert len(pil) == 2 and pil[0].size == (4, 4)
    pt, arr = format_images(x, "pt"), format_images(x, "np")
    assert pt.shape == (2, 3, 4, 4) and pt.min() == 0 and pt.max() == 1
    assert arr.shape == (2, 4, 4, 3) and np.allclose(arr, pt.permute(0, 2, 3, 1).numpy())
    with pytest.raises(ValueError, match="output_type must be one of"):
        format_images(x, "latent")


def test_load_pipeline_round_trips_and_refuses_strangers(tmp_path, tokenizer):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    dlm.save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    TextDiffusionPipeline.from_dlm(tmp_path / "dlm").save_pretrained(tmp_path / "text")
    assert isinstance(load_pipeline(tmp_path / "text"), TextDiffusionPipeline)
    OraclePipeline("digits", image_size=16).save_pretrained(tmp_path / "oracle")
    oracle = load_pipeline(tmp_path / "oracle")
    assert isinstance(oracle, OraclePipeline) and oracle.image_size == 16 and oracle.config.dataset == "digits"
    assert "TextDiffusionPipeline" in PIPELINES and "OraclePipeline" in PIPELINES

    with pytest.raises(FileNotFoundError, match="no pipeline at"):
        load_pipeline(tmp_path / "missing")
    with pytest.raises(ValueError, match="load it with TextDiffusionPipeline.from_dlm"):
        load_pipeline(tmp_path / "dlm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a saved pipeline"):
        load_pipeline(tmp_path / "empty")
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="holds a StableDiffusionPipeline pipeline, not a mmdlm pipeline"):
        load_pipeline(tmp_path / "sd")
    (tmp_path / "sd" / "model_index.json").write_text("{")
    with pytest.raises(ValueError, match="not a valid model_index.json"):
        load_pipeline(tmp_path / "sd")


def test_eval_mm_command(tmp_path, capsys):
    OraclePipeline("shapes").save_pretrained(tmp_path / "oracle")
    out = tmp_path / "imagetext.json"
    code = cli.main(["eval-mm", "--model", str(tmp_path / "oracle"), "--n", "8", "--steps", "2", "--output", str(out),
                     "--tasks", "t2i", "caption"])
    assert code == 0, capsys.readouterr().err
    record = json.loads(out.read_text())["records"][0]
    assert record["t2i_accuracy"] == record["caption_accuracy"] == 1.0 and record["joint_consistency"] is None
    assert record["command"].startswith("mmdlm") and record["model"] == str(tmp_path / "oracle")
    assert cli.main(["eval-mm", "--model", str(tmp_path)]) == 2
    assert "not a saved pipeline" in capsys.readouterr().err
    assert cli.main(["eval-mm"]) == 2
    assert "--model" in capsys.readouterr().err
