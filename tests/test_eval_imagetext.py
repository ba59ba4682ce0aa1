import json

import pytest
from mm_oracle import OraclePipeline

from mmdlm.data import shapes as S
from mmdlm.eval import evaluate, scene_attributes, write_record
from mmdlm.pipelines import MultimodalPipelineOutput

KEYS = ("backbone", "dataset", "t2i_accuracy", "caption_accuracy", "joint_consistency", "s_per_image",
        "s_per_caption", "n", "num_inference_steps", "seed")


def test_oracle_scores_one_and_wrong_scores_zero_on_shapes(tmp_path):
    oracle = OraclePipeline("shapes")
    record = evaluate(oracle, "shapes", n=40, num_inference_steps=3, seed=1, batch_size=16, samples_dir=tmp_path)
    assert all(k in record for k in KEYS)
    assert (record["backbone"], record["dataset"], record["n"], record["num_inference_steps"]) == ("oracle", "shapes",
                                                                                                  40, 3)
    for key in ("t2i_accuracy", "caption_accuracy", "joint_consistency", "t2i_readable", "caption_valid",
                *(f"{t}_{a}" for t in ("t2i", "caption") for a in ("colour", "shape", "size", "axis", "relation"))):
        assert record[key] == 1.0, key
    # batched: 3 batches of <= 16, after one warm-up call each
    assert oracle.calls.count("t2i") == oracle.calls.count("caption") == oracle.calls.count("joint") == 4
    assert (tmp_path / "oracle-shapes-t2i.png").exists() and (tmp_path / "oracle-shapes-joint.png").exists()
    assert record["caption_exact_match"] < 1.0  # the oracle writes the canonical phrasing, not always the dataset's

    wrong = evaluate(OraclePipeline("shapes", wrong=True), "shapes", n=40, num_inference_steps=3, seed=1)
    for key in ("t2i_accuracy", "caption_accuracy", "joint_consistency", "t2i_colour", "caption_relation"):
        assert wrong[key] <= 0.05, (key, wrong[key])
    assert wrong["t2i_readable"] == 1.0  # wrong, but well-formed
    assert evaluate(oracle, "shapes", n=8, tasks=["caption"])["t2i_accuracy"] is None
    assert evaluate(oracle, "shapes", n=4)["num_inference_steps"] == 4  # the pipeline's default


def test_oracle_and_wrong_on_digits():
    record = evaluate(OraclePipeline("digits"), "digits", n=48, num_inference_steps=2)
    assert record["t2i_accuracy"] >= 0.9 and record["caption_accuracy"] >= 0.9 and record["joint_consistency"] >= 0.9
    wrong = evaluate(OraclePipeline("digits", wrong=True), "digits", n=48, num_inference_steps=2)
    assert max(wrong["t2i_accuracy"], wrong["caption_accuracy"], wrong["joint_consistency"]) <= 0.1


def test_joint_distinct_tells_a_varied_model_from_one_that_repeats_itself():
    assert evaluate(OraclePipeline("digits"), "digits", n=48, tasks=["joint"])["joint_distinct"] == 10

    class OneScene(OraclePipeline):  # every joint sample the same picture, in either phrasing
        def __call__(self, *args, task=None, num_images_per_prompt=1, **kwargs):
            if task != "joint":
                return super().__call__(*args, task=task, num_images_per_prompt=num_images_per_prompt, **kwargs)
            phrasings = ("a small red circle left of a large blue square",
                         "a large blue square right of a small red circle")
            texts = [phrasings[i % 2] for i in range(num_images_per_prompt)]
            images = [S.render(S.parse_caption(t), self.image_size, i) for i, t in enumerate(texts)]
            return MultimodalPipelineOutput(images=images, texts=texts)

    varied = evaluate(OraclePipeline("shapes"), "shapes", n=40, tasks=["joint"])
    same = evaluate(OneScene("shapes"), "shapes", n=40, tasks=["joint"])
    assert varied["joint_distinct"] >= 38 and same["joint_consistency"] == 1.0 and same["joint_distinct"] == 1


def test_scene_attributes():
    truth = S.parse_caption("a small red circle left of a large blue square")
    same = S.parse_caption("a large blue square right of a small red circle")
    assert scene_attributes(same, truth) == {"colour": True, "shape": True, "size": True, "axis": True,
                                              "relation": True, "all": True}
    swapped = S.parse_caption("a small red circle right of a large blue square")
    assert scene_attributes(swapped, truth) == {"colour": True, "shape": True, "size": True, "axis": True,
                                                "relation": False, "all": False}
    below = S.parse_caption("a small red circle below a large blue square")
    assert scene_attributes(below, truth)["axis"] is False
    other = S.parse_caption("a small red triangle left of a large green square")
    assert scene_attributes(other, truth) == {"colour": False, "shape": False, "size": False, "axis": True,
                                              "relation": False, "all": False}
    assert not any(scene_attributes(None, truth).values())


def test_evaluate_errors():
    with pytest.raises(ValueError, match="built-in sets"):
        evaluate(OraclePipeline(), "coco")
    with pytest.raises(ValueError, match="tasks must be among"):
        evaluate(OraclePipeline(), "shapes", tasks=["vqa"])

    class Short(OraclePipeline):
        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            out.images = out.images[:-1] if out.images else out.images
            return out

    with pytest.raises(ValueError, match="returned 3 images for a t2i batch of 4"):
        evaluate(Short(), "shapes", n=4, tasks=["t2i"])


def test_write_record_replaces_by_backbone_and_dataset(tmp_path):
    path = tmp_path / "results" / "imagetext.json"
    write_record(path, {"backbone": "a", "dataset": "shapes", "t2i_accuracy": 0.1})
    write_record(path, {"backbone": "b", "dataset": "shapes", "t2i_accuracy": 0.2})
    write_record(path, {"backbone": "a", "dataset": "digits", "t2i_accuracy": 0.3})
    data = write_record(path, {"backbone": "a", "dataset": "shapes", "t2i_accuracy": 0.9})
    assert json.loads(path.read_text()) == data
    assert [(r["backbone"], r["dataset"], r["t2i_accuracy"]) for r in data["records"]] == [
        ("a", "digits", 0.3), ("a", "shapes", 0.9), ("b", "shapes", 0.2)]
    assert data["benchmark"] == "imagetext" and "torch" in data["versions"] and "diffusers" in data["versions"]
    assert "platform" in data["machine"] and all("machine" in r for r in data["records"])
    assert [p.name for p in path.parent.iterdir()] == ["imagetext.json"]  # no temporary files left
    # a label (e.g. a training stage) is part of the key
    write_record(path, {"backbone": "a", "dataset": "shapes", "label": "stage 2", "t2i_accuracy": 0.5})
    data = write_record(path, {"backbone": "a", "dataset": "shapes", "label": "stage 1", "t2i_accuracy": 0.4})
    assert [(r["dataset"], r.get("label"), r["t2i_accuracy"]) for r in data["records"] if r["backbone"] == "a"] == [
        ("digits", None, 0.3), ("shapes", None, 0.9), ("shapes", "stage 1", 0.4), ("shapes", "stage 2", 0.5)]
    with pytest.raises(ValueError, match="needs a 'backbone'"):
        write_record(path, {"dataset": "shapes"})
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        write_record(path, {"backbone": "a", "dataset": "shapes"})
    assert path.read_text() == "{not json"  # left as it was
