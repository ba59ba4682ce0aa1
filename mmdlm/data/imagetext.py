"""Image-text data: one loader for every image-caption source (the built-in sets, any `datasets`
source), into (B, 3, H, W) float tensors in [-1, 1] (`mmdlm.images`)."""
from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from PIL import Image

from ..images import open_image, to_tensor

BUILTINS = ("shapes", "digits")


BUILTIN_TEXT_COLUMNS = {"shapes": ("text", "canonical"), "digits": ("text",)}


def _builtin(name: str, split: str, image_size: int, n: int | None, seed: int, text_columns):
    unknown = [c for c in text_columns if c not in BUILTIN_TEXT_COLUMNS[name]]
    if unknown:
        raise ValueError(f"the built-in set {name!r} has the text columns {list(BUILTIN_TEXT_COLUMNS[name])}, "
                         f"not {unknown[0]!r}")
    if name == "shapes":
        from .shapes import caption, samples

        rows = list(samples(split, n, image_size, seed))
        # "canonical": the same picture, its relation written "left of" / "above"
        texts = {"text": [r[1] for r in rows], "canonical": [caption(r[2].canonical()) for r in rows]}
    else:
        from .digits import samples

        rows = list(samples(split, image_size, seed))[:n]
        texts = {"text": [r[1] for r in rows]}
    return [r[0] for r in rows], {c: texts[c] for c in text_columns}


def _open(value, row: int, column: str) -> Image.Image:
    """Decode one stored image ({'bytes', 'path'} from datasets, a path, or a PIL image)."""
    if isinstance(value, Image.Image):
        return value
    what = f"row {row} of column {column!r}"
    if isinstance(value, dict) and value.get("bytes"):
        return open_image(io.BytesIO(value["bytes"]), what)
    if isinstance(value, dict) and value.get("path"):
        return open_image(value["path"], what)
    if isinstance(value, str):
        return open_image(value, what)
    raise ValueError(f"row {row} of column {column!r} holds {type(value).__name__}, not an image")


def load_image_text(dataset: str, *, split: str = "train", image_column: str = "image", text_column: str = "text",
                    image_size: int = 32, n: int | None = None, data_files: list[str] | None = None,
                    seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Images (N, 3, image_size, image_size) in [-1, 1] and their N texts (`load_image_texts`
    with one text column)."""
    pixels, texts = load_image_texts(dataset, split=split, image_column=image_column, text_columns=(text_column,),
                                     image_size=image_size, n=n, data_files=data_files, seed=seed)
    return pixels, texts[text_column]


def load_image_texts(dataset: str, *, split: str = "train", image_column: str = "image",
                     text_columns: Sequence[str] = ("text",), image_size: int = 32, n: int | None = None,
                     data_files: list[str] | None = None, seed: int = 0) -> tuple[torch.Tensor, dict[str, list[str]]]:
    """Images (N, 3, image_size, image_size) in [-1, 1] and, for each of `text_columns`, their
    N texts: ({column: texts}), every image loaded once.

    `dataset` is a built-in set, "shapes" (splits train/test; `n` images, one per caption
    when None; `seed` picks the layouts; text columns "text", and "canonical" for the same
    captions with every relation written "left of" / "above") or "digits" (splits
    train/test; the first `n`; text column "text"), or
    any `datasets` source: a hub name, a local folder (e.g. an `imagefolder` with a
    metadata.jsonl of `file_name` and `text`), or `data_files` (images with a metadata
    file, or .json(l)/.csv/.parquet with an image column of paths or bytes).
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1 (or None for all), got {n}")
    text_columns = list(dict.fromkeys(text_columns))
    if not text_columns:
        raise ValueError("give at least one text column")
    if dataset in BUILTINS and not data_files:
        images, texts = _builtin(dataset, split, image_size, n, seed, text_columns)
        return to_tensor(images, image_size), texts

    import datasets

    from .corpus import _load_source

    dsd = _load_source(dataset, data_files, builtins=f"{' or '.join(map(repr, BUILTINS))} for a built-in set")
    if split not in dsd:
        raise ValueError(f"dataset {dataset!r} has no {split!r} split (splits: {list(dsd)})")
    ds = dsd[split]
    for role, column in (("image", image_column), *(("text", c) for c in text_columns)):
        if column not in ds.column_names:
            raise ValueError(f"{role} column {column!r} not in dataset {dataset!r}; columns are "
                             f"{ds.column_names} (set {role}_column)")
    if len(ds) == 0:
        raise ValueError(f"dataset {dataset!r} split {split!r} is empty")
    if n is not None:
        ds = ds.select(range(min(n, len(ds))))
    if isinstance(ds.features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    texts = {}
    for column in text_columns:
        texts[column] = ds[column]
        for row, text in enumerate(texts[column]):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"row {row} of column {column!r} holds {text!r}, not a non-empty text")
    images = [_open(value, row, image_column) for row, value in enumerate(ds[image_column])]
    return to_tensor(images, image_size), texts
