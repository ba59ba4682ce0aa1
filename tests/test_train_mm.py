import json
import re

import pytest
import torch

from mmdlm import cli
from mmdlm.config import build
from mmdlm.training import multimodal as M
from mmdlm.training.backbones import BACKBONES


def test_draw_tasks_keeps_the_shares_and_is_reproducible():
    g = torch.Generator().manual_seed(0)
    tasks = M.draw_tasks(100, {"t2i": 0.5, "caption": 0.5}, g)
    assert tasks.shape == (100,) and tasks.dtype == torch.long
    assert torch.bincount(tasks, minlength=3).tolist() == [50, 50, 0]  # Muddit's half and half, exactly
    for _ in range(20):
        counts = torch.bincount(M.draw_tasks(10, {"t2i": 0.4, "caption": 0.4, "joint": 0.2}, g), minlength=3)
        assert counts.tolist() == [4, 4, 2]
        counts = torch.bincount(M.draw_tasks(7, {"t2i": 1, "caption": 1, "joint": 1}, g), minlength=3)
        assert counts.sum() == 7 and counts.min() >= 2 and counts.max() <= 3
    a = M.draw_tasks(16, {"t2i": 1, "joint": 1}, torch.Generator().manual_seed(3))
    b = M.draw_tasks(16, {"t2i": 1, "joint": 1}, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and set(a.tolist()) == {0, 2}
    orders = {tuple(M.draw_tasks(8, {"t2i": 1, "caption": 1}, g).tolist()) for _ in range(10)}
    assert len(orders) > 1  # shuffled, not always t2i first
    ones = torch.bincount(torch.cat([M.draw_tasks(1, {"t2i": 1, "caption": 3}, g) for _ in range(400)]), minlength=3)
    assert 60 < ones[0] < 140  # batch of one: drawn with the weights' probabilities


def test_task_weight_errors():
    with pytest.raises(ValueError, match="unknown task"):
        M.draw_tasks(4, {"vqa": 1})
    with pytest.raises(ValueError, match="positive sum"):
        M.draw_tasks(4, {"t2i": 0})
    with pytest.raises(ValueError, match="positive sum"):
        M.draw_tasks(4, {"t2i": -1, "caption": 2})
    with pytest.raises(ValueError, match="batch_size"):
        M.draw_tasks(0, {"t2i": 1})


def test_drop_captions():
    ids = torch.arange(2000).view(1000, 2) % 7 + 10
    g = torch.Generator().manual_seed(0)
    out, dropped = M.drop_captions(ids, 0.25, mask_token_id=3, generator=g)
    assert 180 < dropped.sum() < 320
    assert (out[dropped] == 3).all() and torch.equal(out[~dropped], ids[~dropped])
    rows = torch.arange(1000) < 500
    _, only = M.drop_captions(ids, 0.5, 3, g, rows=rows)
    assert only[500:].sum() == 0 and only[:500].sum() > 150
    assert not M.drop_captions(ids, 0.0, 3, g)[1].any()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        M.drop_captions(ids, 1.0, 3)


def test_training_data_from_shapes_and_digits(tmp_path):
    c = build(cli.TrainMMConfig, {"dataset": "shapes", "n_train": 24, "n_eval": 8, "text_length": 12})
    data = M.mm_training_data(c)
    assert data.train["pixels"].shape == (24, 3, 32, 32) and data.train["text_ids"].shape == (24, 12)
    assert data.eval["pixels"].shape == (8, 3, 32, 32)
    tok = data.tokenizer
    assert tok.mask_token_id is not None and data.info["train_examples"] == 24
    from mmdlm.data.shapes import parse_caption
    from mmdlm.multimodal import decode_captions

    assert all(parse_caption(t) for t in decode_captions(tok, data.eval["text_ids"]))  # test words are known
    tok.save_pretrained(tmp_path / "tok")
    c2 = build(cli.TrainMMConfig, {"dataset": "digits", "n_train": 5, "n_eval": 0, "tokenizer": str(tmp_path / "tok"),
                                   "image_size": 16})
    d2 = M.mm_training_data(c2)
    assert d2.eval is None and d2.train["pixels"].shape == (5, 3, 16, 16)
    assert (d2.train["text_ids"] == tok.unk_token_id).any()  # digit words are unknown to a shapes tokenizer
    with pytest.raises(ValueError, match="text length is 4"):
        M.mm_training_data(build(cli.TrainMMConfig, {"n_train": 4, "text_length": 4}))


def test_training_on_from_a_pipeline_keeps_its_tokenizer(tmp_path):
    from mmdlm.data.tokenizer import train_word_tokenizer

    # a tokenizer whose ids a fresh one learnt on shapes captions would not reproduce
    saved = train_word_tokenizer(["the digit seven"] * 3 + ["a small red circle left of a large blue square"])
    folder = tmp_path / "pipe"
    saved.save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DualDiffusionPipeline"}))
    config = {"dataset": "shapes", "n_train": 24, "n_eval": 0, "text_length": 12}
    fresh = M.mm_training_data(build(cli.TrainMMConfig, config)).tokenizer
    assert fresh.get_vocab() != saved.get_vocab()
    kept = M.mm_training_data(build(cli.TrainMMConfig, {**config, "pretrained": str(folder)})).tokenizer
    assert kept.get_vocab() == saved.get_vocab()
    # a folder that is not an mmdlm pipeline (an SD3 one, with its CLIP tokenizer) is not used
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    assert M.pipeline_tokenizer(str(folder)) is None and M.pipeline_tokenizer(None) is None
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid model_index.json"):
        M.pipeline_tokenizer(str(folder))


def test_caption_column_is_what_captioning_writes():
    from mmdlm.data import shapes as S
    from mmdlm.multimodal import decode_captions

    c = build(cli.TrainMMConfig, {"dataset": "shapes", "n_train": 40, "n_eval": 8, "text_length": 12,
                                  "caption_column": "canonical"})
    data = M.mm_training_data(c)
    for split in (data.eval, data.train):
        prompts = [S.parse_caption(t) for t in decode_captions(data.tokenizer, split["text_ids"])]
        captions = [S.parse_caption(t) for t in decode_captions(data.tokenizer, split["caption_ids"])]
        assert all(S.same_scene(p, q) for p, q in zip(prompts, captions))  # the same picture...
        assert {q.relation for q in captions} <= {"left of", "above"}  # ...always in one phrasing
    assert {p.relation for p in prompts} == set(S.RELATIONS)  # while prompts use all four
    assert "caption_ids" not in M.mm_training_data(build(cli.TrainMMConfig, {"n_train": 4, "n_eval": 0,
                                                                              "text_length": 12})).train
    with pytest.raises(ValueError, match="text columns"):
        M.mm_training_data(build(cli.TrainMMConfig, {"dataset": "digits", "n_train": 4, "n_eval": 0,
                                                     "caption_column": "canonical"}))
    # t2i reads the prompt, the other tasks the caption to write
    batch = {"text_ids": torch.zeros(3, 2, dtype=torch.long), "caption_ids": torch.ones(3, 2, dtype=torch.long)}
    assert M.task_texts(batch, torch.tensor([True, False, False])).tolist() == [[0, 0], [1, 1], [1, 1]]
    assert M.task_texts({"text_ids": batch["text_ids"]}, torch.tensor([False] * 3)) is batch["text_ids"]


def test_train_mm_dispatches_to_the_registered_backbone(tmp_path, monkeypatch, capsys):
    assert cli.main(["train-mm", "--backbone", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'nope'" in err
    assert cli.main(["train-mm"]) == 2
    assert "no backbone given" in capsys.readouterr().err
    seen = []
    monkeypatch.setitem(BACKBONES, "toy", seen.append)
    recipe = tmp_path / "mm.yaml"
    recipe.write_text("backbone: toy\ntask_weights: {t2i: 1, caption: 1}\nmodel_config: {hidden: 8}\n")
    assert cli.main(["train-mm", "--config", str(recipe), "--image-size", "16"]) == 0
    (c,) = seen
    assert isinstance(c, cli.TrainMMConfig) and c.image_size == 16 and c.model_config == {"hidden": 8}
    assert cli.main(["train-mm", "--backbone", "nope"]) == 2
    assert re.search(r"choose one of: (.*, )?toy\b", capsys.readouterr().err)  # registered backbones, sorted
    for flag, value, message in [("--task-weights", '{"t2j": 1}', "unknown task"),
                                 ("--caption-dropout", "1.5", "caption_dropout"),
                                 ("--text-length", "0", "text_length"), ("--image-size", "4", "image_size"),
                                 ("--max-steps", "0", "max_steps"),
                                 ("--image-schedule", "sqrt", "unknown schedule 'sqrt'")]:
        assert cli.main(["train-mm", "--backbone", "toy", flag, value]) == 2
        assert message in capsys.readouterr().err
    assert len(seen) == 1
    for backbone, flag, value, message in [("mmdit", "--image-schedule", "linear", "image_schedule is an option of "
                                            "the discrete backbone; the mmdit backbone does not read it"),
                                           ("discrete", "--logit-mean", "1", "logit_mean is an option of the mmdit"),
                                           ("discrete", "--ema-decay", "0.9", "ema_decay is an option of the mmdit")]:
        assert cli.main(["train-mm", "--backbone", backbone, flag, value]) == 2  # refused before any data is made
        assert message in capsys.readouterr().err
    assert cli.main(["train-mm", "--backbone", "toy", "--image-schedule", "linear", "--logit-mean", "1"]) == 0
    assert len(seen) == 2  # a registered backbone of one's own may read any option
