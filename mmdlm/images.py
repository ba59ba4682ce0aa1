"""Images in and out, the diffusers way: PIL images, numpy arrays and (B, 3, H, W) float tensors in
[-1, 1], with PIL, numpy and torch only (no torchvision), as diffusers' `VaeImageProcessor` does for
its pipelines. Pipelines, datasets, commands and the demo all convert through here.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


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


def image_grid(images, cols: int = 8) -> Image.Image:
    """Paste PIL images side by side, `cols` per row."""
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h), (128, 128, 128))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid
