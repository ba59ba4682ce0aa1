"""Image-text data: images to tensors and back, and one loader for every image-caption source.

Tensors follow the diffusers convention: (B, 3, H, W) float in [-1, 1]. The conversions use
PIL, numpy and torch only (no torchvision).
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

BUILTINS = ("shapes", "digits")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparency is composited on white, 16-bit/float greys rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(image, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.round().astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _fit(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` (bicubic, antialiased by PIL) and centre-crop a square."""
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def check_pixel_count(image: Image.Image, what: str) -> None:
    """Refuse an image of more pixels than PIL decodes without a warning (`Image.MAX_IMAGE_PIXELS`,
    its decompression-bomb guard)."""
    limit, (w, h) = Image.MAX_IMAGE_PIXELS, image.size
    if limit is not None and w * h > limit:
        raise ValueError(f"{what} is too large to decode safely: {w}x{h} = {w * h:,} pixels, more than "
                         f"PIL.Image.MAX_IMAGE_PIXELS ({limit:,}); downscale it")


def open_image(source, what: str | None = None) -> Image.Image:
    """Decode an image file (a path or a binary file object) with PIL. A ValueError naming `what`
    (default: the path) when PIL cannot read it or it has more pixels than PIL decodes safely."""
    what = what or str(source)
    try:
        image = Image.open(source)  # refuses more than twice MAX_IMAGE_PIXELS itself (and warns above it)
        check_pixel_count(image, what)
        image.load()
    except Image.DecompressionBombError as err:
        raise ValueError(f"{what} is too large to decode safely: {err}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{what} is not an image PIL can read ({err})") from err
    return image


ARRAY_SHAPES = "(H, W, C) or a batch (B, H, W, C), channels last with C = 1, 3 or 4, or (H, W) grey"


def _from_array(a: np.ndarray, i: int) -> Image.Image:
    """One numpy image, (H, W) or channels-last (H, W, C), uint8 in [0, 255] or float in [0, 1]
    (rounded to 8 bits), as a PIL image."""
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"image {i}: numpy images are {ARRAY_SHAPES}; got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError(f"image {i}: the float array has NaN or infinite values")
        if a.size and (a.min() < -1e-3 or a.max() > 1 + 1e-3):
            raise ValueError(f"image {i}: float arrays must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
        a = (a.clip(0, 1) * 255).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"image {i}: numpy images must be uint8 in [0, 255] or float in [0, 1], got {a.dtype}")
    return Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)


def to_tensor(images, size: int) -> torch.Tensor:
    """Images -> (B, 3, size, size) float in [-1, 1].

    `images`: PIL images (one or a list, any mode and size) or numpy arrays in diffusers'
    convention ((H, W, C) or a batch (B, H, W, C), uint8 in [0, 255] or float in [0, 1]; floats
    are rounded to 8 bits): non-square images are resized on their short side and centre-cropped.
    A tensor is checked and passed through: (3, H, W) or (B, 3, H, W) in [-1, 1], already `size`
    pixels. Non-finite values and images larger than PIL decodes safely are refused.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    if isinstance(images, torch.Tensor):
        x = images[None] if images.ndim == 3 else images
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"an image tensor must be (3, H, W) or (B, 3, H, W), got shape {tuple(images.shape)}")
        if tuple(x.shape[2:]) != (size, size):
            raise ValueError(f"image tensor is {x.shape[2]}x{x.shape[3]} but the model works at {size}x{size}; "
                             "pass PIL images to have them resized")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("image tensor has NaN or infinite values")
        if x.numel() and (x.min() < -1 - 1e-3 or x.max() > 1 + 1e-3):
            raise ValueError(f"image tensor values must lie in [-1, 1], got [{x.min():.3g}, {x.max():.3g}]")
        return x.float()
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.shape[-1] not in (1, 3, 4):
            raise ValueError(f"numpy images are {ARRAY_SHAPES}; got shape {images.shape}")
        images = list(images)
    elif isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    out = []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            image = _from_array(image, i)
        if not isinstance(image, Image.Image):
            raise ValueError(f"image {i} is a {type(image).__name__}; give PIL images, numpy arrays or a tensor")
        check_pixel_count(image, f"image {i}")
        a = np.asarray(_fit(_to_rgb(image), size), dtype=np.float32)
        out.append(torch.from_numpy(a).permute(2, 0, 1) / 127.5 - 1)
    if not out:
        raise ValueError("no images given")
    return torch.stack(out)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) or (3, H, W) in [-1, 1] (1 channel: grey) -> a list of RGB PIL images."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    x = images[None] if images.ndim == 3 else images
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"to_pil takes (B, 3, H, W) or (B, 1, H, W) tensors in [-1, 1], got {tuple(images.shape)}")
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return [Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB") for a in x]


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
