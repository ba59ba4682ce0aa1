import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from mmdlm.data import shapes as S


def _pick(k, seed=0):
    return random.Random(seed).sample(S.all_scenes(), k)


def test_grammar_counts_and_caption_round_trip():
    scenes = S.all_scenes()
    assert len(scenes) == 4320 and len(set(scenes)) == 4320
    assert len(S.all_scenes(canonical=True)) == 2160
    captions = [S.caption(s) for s in scenes]
    assert len(set(captions)) == 4320
    for s, text in zip(scenes, captions):
        assert S.parse_caption(text) == s
        assert S.caption(S.parse_caption(text)) == text
    assert S.caption(scenes[0]) == "a small red circle left of a small green circle"


def test_parse_caption_tolerates_case_and_period_and_rejects_the_rest():
    s = S.parse_caption("  A Small red CIRCLE   right of a large blue square. ")
    assert s == S.Scene(S.ShapeObject("red", "circle", "small"), "right of", S.ShapeObject("blue", "square", "large"))
    for bad in ["", "a small red circle", "a small red circle left of a large red square",
                "a small pink circle left of a large blue square", "a small red circle near a large blue square",
                "a small red circle left of a large blue square and more", None, 3]:
        assert S.parse_caption(bad) is None, bad


def test_scene_validation_and_canonical_form():
    a, b = S.ShapeObject("red", "circle", "small"), S.ShapeObject("blue", "square", "large")
    assert S.Scene(a, "right of", b).canonical() == S.Scene(b, "left of", a)
    assert S.Scene(a, "below", b).canonical() == S.Scene(b, "above", a)
    assert S.same_scene(S.Scene(a, "right of", b), S.Scene(b, "left of", a))
    assert not S.same_scene(S.Scene(a, "right of", b), S.Scene(a, "left of", b))
    assert not S.same_scene(None, S.Scene(a, "above", b))
    with pytest.raises(ValueError, match="different colours"):
        S.Scene(a, "above", S.ShapeObject("red", "square", "large"))
    with pytest.raises(ValueError, match="unknown relation"):
        S.Scene(a, "near", b)
    with pytest.raises(ValueError, match="unknown object"):
        S.Scene(S.ShapeObject("pink", "circle", "small"), "above", b)


@pytest.mark.parametrize("size", [32, 64])
def test_render_then_parse_reads_every_attribute_back(size):
    scenes = _pick(200, seed=size)
    for i, scene in enumerate(scenes):
        image = S.render(scene, size, seed=i)
        assert image.size == (size, size) and image.mode == "RGB"
        assert S.parse_image(image) == scene.canonical(), (S.caption(scene), i)


def test_layout_follows_the_relation_and_objects_never_overlap():
    for i, scene in enumerate(_pick(500, seed=1)):
        size = 32 if i % 2 else 64
        (x1, y1), (x2, y2) = S.layout(scene, size, random.Random(i))
        s1, s2 = S._side(scene.first.size, size), S._side(scene.second.size, size)
        dx, dy = x2 - x1, y2 - y1
        along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[
            scene.relation]
        assert along >= (s1 + s2) / 2 + 2 and abs(across) <= along / 2  # apart, and the axis is dominant
        for (x, y), s in (((x1, y1), s1), ((x2, y2), s2)):
            assert x - s // 2 >= 0 and y - s // 2 >= 0 and x - s // 2 + s <= size and y - s // 2 + s <= size


def test_render_is_deterministic_and_jittered():
    scene = _pick(1)[0]
    same = [np.asarray(S.render(scene, 32, seed=7)) for _ in range(2)]
    assert (same[0] == same[1]).all()
    layouts = {np.asarray(S.render(scene, 32, seed=k)).tobytes() for k in range(10)}
    assert len(layouts) > 5
    with pytest.raises(ValueError, match="at least 16"):
        S.render(scene, 8)


def test_parser_tolerates_mild_noise_and_blur():
    rng = np.random.default_rng(0)
    scenes = _pick(100, seed=2)
    for size in (32, 64):
        ok_noise = ok_blur = 0
        for i, scene in enumerate(scenes):
            image = S.render(scene, size, seed=i)
            noisy = np.clip(np.asarray(image, dtype=np.float32) + rng.normal(0, 20, (size, size, 3)), 0, 255)
            ok_noise += S.same_scene(S.parse_image(noisy.astype(np.uint8)), scene)
            ok_blur += S.same_scene(S.parse_image(image.filter(ImageFilter.GaussianBlur(0.7 * size / 32))), scene)
        assert ok_noise / len(scenes) >= 0.98 and ok_blur / len(scenes) >= 0.98, (size, ok_noise, ok_blur)


def test_parser_fails_on_blank_noise_and_one_object():
    rng = np.random.default_rng(1)
    for size in (32, 64):
        assert S.parse_image(Image.new("RGB", (size, size), "white")) is None
        assert S.parse_image(Image.new("RGB", (size, size), "black")) is None
        for _ in range(30):
            assert S.parse_image(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) is None
            grey = np.clip(rng.normal(128, 60, (size, size, 3)), 0, 255).astype(np.uint8)
            assert S.parse_image(grey) is None
            flat = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)
            assert S.parse_image(flat) is None
    # one object only: the second colour is missing
    scene = _pick(1)[0]
    image = np.asarray(S.render(scene, 32, seed=0)).copy()
    second = np.all(image == S.COLOURS[scene.second.colour], axis=-1)
    image[second] = S.BACKGROUND
    assert S.parse_image(image) is None
    with pytest.raises(ValueError, match="square RGB"):
        S.parse_image(np.zeros((32, 16, 3), dtype=np.uint8))


def test_held_out_split_is_fixed_disjoint_and_about_ten_percent():
    train, test = S.split_scenes("train"), S.split_scenes("test")
    assert len(train) + len(test) == 4320 and (len(train), len(test)) == (3874, 446)
    assert len(test) == 2 * S.HELD_OUT == 446 and 0.08 < S.HELD_OUT / 2160 < 0.12
    canon = lambda scenes: {S.caption(s.canonical()) for s in scenes}  # noqa: E731
    assert canon(train).isdisjoint(canon(test))  # both phrasings of a scene fall on one side
    assert {S.caption(s) for s in train}.isdisjoint(S.caption(s) for s in test)
    with pytest.raises(ValueError, match="unknown split"):
        S.split_scenes("validation")


def test_dataset_is_deterministic_balanced_and_respects_the_split():
    a = S.shapes_dataset("train", n=24, seed=0)
    b = S.shapes_dataset("train", n=24, seed=0)
    c = S.shapes_dataset("train", n=24, seed=1)
    assert a.column_names == ["image", "text", "colour_1", "shape_1", "size_1", "relation", "colour_2", "shape_2",
                              "size_2"]
    assert a["text"] == b["text"] and a["text"] != c["text"]
    assert [np.asarray(x).tobytes() for x in a["image"]] == [np.asarray(x).tobytes() for x in b["image"]]
    row = a[0]
    assert S.parse_caption(row["text"]).to_dict() == {k: row[k] for k in S.Scene.to_dict(S.parse_caption(row["text"]))}
    test = S.shapes_dataset("test", image_size=64)
    assert len(test) == 446 and len(set(test["text"])) == 446 and test[0]["image"].size == (64, 64)
    held_out = {S.caption(s) for s in S.split_scenes("test")}
    assert set(test["text"]) == held_out
    cycled = [t for _, t, _ in S.samples("test", n=446 * 2, seed=3)]
    assert sorted(cycled[:446]) == sorted(cycled[446:]) == sorted(held_out)  # each caption once per cycle
    assert len(S.shapes_dataset("test", n=0)) == 0
