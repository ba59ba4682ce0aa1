import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmdlm import images
from mmdlm.data import imagetext
from mmdlm.data.imagetext import load_image_text, load_image_texts
from mmdlm.data.tokenizer import train_word_tokenizer
from mmdlm.images import to_pil, to_tensor


def test_to_tensor_converts_modes_resizes_and_crops():
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))  # fully transparent: white after compositing
    grey = Image.new("L", (10, 10), 0)
    pal = Image.new("P", (10, 10), 0)
    deep = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    wide = Image.new("RGB", (40, 20), "blue")
    wide.paste(Image.new("RGB", (6, 20), "red"), (0, 0))  # the red strip is cropped away
    x = to_tensor([rgba, grey, pal, deep, wide], 8)
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[0], torch.ones(3, 8, 8))
    assert torch.allclose(x[1], -torch.ones(3, 8, 8))
    assert x[3].min() == -1 and x[3].max() == 1  # 16-bit rescaled to the full range
    assert torch.allclose(x[4][2], torch.ones(8, 8)) and x[4][0].max() < -0.9
    assert to_tensor(np.zeros((8, 8, 3), dtype=np.uint8), 8).shape == (1, 3, 8, 8)


def test_pil_tensor_round_trip_is_exact():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
    x = to_tensor(images, 16)
    back = to_pil(x)
    assert all((np.asarray(a) == np.asarray(b)).all() for a, b in zip(images, back))
    assert torch.equal(to_tensor(x, 16), x)
    assert to_pil(x[0])[0].size == (16, 16) and to_pil(x[:, :1])[0].mode == "RGB"


def test_numpy_images_follow_diffusers_conventions():
    """uint8 in [0, 255] or float in [0, 1], (H, W, C) or a batch (B, H, W, C): the same tensors
    as the PIL images they hold (floats rounded to 8 bits)."""
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 12, 20, 3), dtype=np.uint8)  # resized and cropped like PIL images
    expected = to_tensor([Image.fromarray(a) for a in batch], 8)
    assert torch.equal(to_tensor(batch, 8), expected)
    assert torch.equal(to_tensor(batch.astype(np.float32) / 255, 8), expected)
    assert torch.equal(to_tensor(list(batch / 255), 8), expected)  # float64, a list of (H, W, C)
    assert torch.equal(to_tensor(batch[0], 8), expected[:1])
    grey = batch[0, ..., :1]
    assert torch.equal(to_tensor(grey, 8), to_tensor(Image.fromarray(grey[..., 0]), 8))
    assert torch.equal(to_tensor(grey[..., 0], 8), to_tensor(grey, 8))
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent: white, as for a PIL RGBA image
    assert torch.equal(to_tensor(rgba, 8), torch.ones(1, 3, 8, 8))


def test_image_size_guard(tmp_path, monkeypatch):
    """More pixels than PIL.Image.MAX_IMAGE_PIXELS: refused before decoding, in memory or on disk
    (PIL itself only warns up to twice the limit)."""
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ValueError, match=r"image 0 is too large to decode safely: 30x20 = 600 pixels"):
        to_tensor(Image.new("RGB", (30, 20)), 8)
    with pytest.warns(Image.DecompressionBombWarning), \
            pytest.raises(ValueError, match=r"a.png is too large to decode safely: 30x20"):
        images.open_image(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250)
    with pytest.raises(ValueError, match=r"a.png is too large to decode safely: Image size \(600 pixels\)"):
        images.open_image(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the guard lifted: any size
    assert images.open_image(tmp_path / "a.png").size == (30, 20)


def test_to_tensor_errors():
    with pytest.raises(ValueError, match="but the model works at 16x16"):
        to_tensor(torch.zeros(1, 3, 8, 8), 16)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        to_tensor(torch.full((3, 8, 8), 2.0), 8)
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_tensor(torch.full((3, 8, 8), float("inf")), 8)
    with pytest.raises(ValueError, match="must be"):
        to_tensor(torch.zeros(2, 4, 8, 8), 8)
    with pytest.raises(ValueError, match="is a str"):
        to_tensor(["cat.png"], 8)
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(np.zeros((8, 8, 3), dtype=np.int64), 8)
    with pytest.raises(ValueError, match="no images"):
        to_tensor([], 8)
    with pytest.raises(ValueError, match="to_pil takes"):
        to_pil(torch.zeros(2, 2))


def test_builtin_sets():
    x, texts = load_image_text("shapes", split="test", image_size=32, n=10)
    assert x.shape == (10, 3, 32, 32) and len(texts) == 10
    x, texts = load_image_text("digits", split="train", image_size=16, n=5)
    assert x.shape == (5, 3, 16, 16) and texts[0].split()[-1] in {"zero", "one", "two", "three", "four", "five",
                                                                   "six", "seven", "eight", "nine", "hand"}
    with pytest.raises(ValueError, match="unknown split"):
        load_image_text("shapes", split="validation")


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (24 + 8 * i, 24), (40 * i, 0, 0)).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text("\n".join(
        json.dumps({"file_name": f"{i}.png", "caption": f"picture {i}"}) for i in range(4)))
    return folder


def test_imagefolder_and_data_files(image_folder):
    x, texts = load_image_text(str(image_folder), text_column="caption", image_size=16)
    assert x.shape == (4, 3, 16, 16) and sorted(texts) == [f"picture {i}" for i in range(4)]
    files = sorted(str(p) for p in image_folder.iterdir())
    x2, texts2 = load_image_text("local", data_files=files, text_column="caption", image_size=16, n=2)
    assert x2.shape == (2, 3, 16, 16) and len(texts2) == 2
    with pytest.raises(ValueError, match=r"text column 'text' not in .* columns are \['image', 'caption'\]"):
        load_image_text(str(image_folder), image_size=16)
    with pytest.raises(ValueError, match="image column 'picture'"):
        load_image_text(str(image_folder), image_column="picture", text_column="caption")
    with pytest.raises(ValueError, match="no 'test' split"):
        load_image_text(str(image_folder), split="test", text_column="caption")


def test_path_column_corrupt_and_empty(tmp_path, image_folder):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    rows = [{"path": str(image_folder / "0.png"), "text": "fine"}, {"path": str(tmp_path / "broken.png"), "text": "x"}]
    table = tmp_path / "pairs.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows))
    x, _ = load_image_text("local", data_files=[str(table)], image_column="path", image_size=8, n=1)
    assert x.shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="row 1 of column 'path' is not an image PIL can read"):
        load_image_text("local", data_files=[str(table)], image_column="path", image_size=8)
    empty = tmp_path / "empty.csv"
    empty.write_text("image,text\n")
    with pytest.raises(ValueError, match="hold no examples"):
        load_image_text("local", data_files=[str(empty)])
    with pytest.raises(ValueError, match="'shapes' or 'digits' for a built-in set"):
        load_image_text("no-such-dataset-anywhere")
    with pytest.raises(FileNotFoundError):
        load_image_text("local", data_files=[str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="image_size"):
        load_image_text("shapes", image_size=4)


def test_several_text_columns_read_each_image_once(tmp_path, image_folder, monkeypatch):
    from mmdlm.data import shapes as S

    rows = [{"path": str(image_folder / f"{i}.png"), "text": f"long caption {i}", "short": f"c{i}"} for i in range(3)]
    table = tmp_path / "pairs.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows))
    opened = []
    real_open = imagetext._open
    monkeypatch.setattr(imagetext, "_open", lambda *a: opened.append(a[1]) or real_open(*a))
    x, texts = load_image_texts("local", data_files=[str(table)], image_column="path", text_columns=["text", "short"],
                                image_size=8)
    assert x.shape == (3, 3, 8, 8) and opened == [0, 1, 2]  # one decode per image for both columns
    assert texts == {"text": [r["text"] for r in rows], "short": [r["short"] for r in rows]}
    with pytest.raises(ValueError, match="text column 'tags' not in"):
        load_image_texts("local", data_files=[str(table)], image_column="path", text_columns=["text", "tags"])
    table.write_text("\n".join(json.dumps({**r, "short": ""}) for r in rows))
    with pytest.raises(ValueError, match="row 0 of column 'short' holds ''"):
        load_image_texts("local", data_files=[str(table)], image_column="path", text_columns=["text", "short"])
    with pytest.raises(ValueError, match="at least one text column"):
        load_image_texts("shapes", text_columns=[])
    # built-in shapes: the dataset's phrasing and the canonical one describe the same pictures
    _, texts = load_image_texts("shapes", split="test", n=12, text_columns=["text", "canonical"])
    assert all(S.same_scene(S.parse_caption(a), S.parse_caption(b)) for a, b in zip(texts["text"], texts["canonical"]))
    assert {S.parse_caption(b).relation for b in texts["canonical"]} <= {"left of", "above"}
    with pytest.raises(ValueError, match="has the text columns \\['text'\\], not 'canonical'"):
        load_image_texts("digits", text_columns=["canonical"])


def test_word_tokenizer_specials_save_and_load(tmp_path):
    from transformers import AutoTokenizer

    tok = train_word_tokenizer(["a small red circle left of a large blue square", "the digit seven"])
    assert (tok.pad_token, tok.unk_token, tok.eos_token, tok.mask_token) == ("<pad>", "<unk>", "<eos>", "<mask>")
    assert [tok.pad_token_id, tok.unk_token_id, tok.eos_token_id, tok.mask_token_id] == [0, 1, 2, 3]
    ids = tok("A small RED circle, left of", add_special_tokens=False)["input_ids"]
    assert len(ids) == 7 and ids[4] == tok.unk_token_id  # "," is a word of its own, unknown here
    assert tok.decode(ids, skip_special_tokens=True) == "a small red circle left of"
    tok.save_pretrained(tmp_path / "tok")
    back = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert back.mask_token_id == 3 and back.eos_token_id == 2 and len(back) == len(tok)
    assert back("the digit <mask>", add_special_tokens=False)["input_ids"][-1] == 3
    assert back.decode(ids) == tok.decode(ids)
    with pytest.raises(ValueError, match="no non-empty text"):
        train_word_tokenizer(["", "  "])
