"""Small argument checks shared by the diffusion modules."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


def check_mask_id(mask_id: object) -> int:
    """Return ``mask_id`` as an int; raise ``ValueError`` unless it is an integer >= 0."""
    if isinstance(mask_id, bool) or not isinstance(mask_id, numbers.Integral) or mask_id < 0:
        raise ValueError(f"mask_id must be an int >= 0, got {mask_id!r}")
    return int(mask_id)


def check_bool_mask(mask: Tensor | None, shape: torch.Size, name: str) -> None:
    """Raise ``ValueError`` unless ``mask`` is ``None`` or a bool tensor of ``shape``."""
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor")
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")


def per_position_t(t: Tensor, shape: torch.Size, name: str = "t") -> Tensor:
    """Broadcast noise levels of shape ``(B,)`` or ``(B, L)`` to ``(B, L)``."""
    t = torch.as_tensor(t)
    b, l = shape
    if t.shape == (b,):
        return t[:, None].expand(b, l)
    if t.shape == (b, l):
        return t
    raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({b},) or ({b}, {l})")


def is_real(value: object) -> bool:
    """A real number (int, float, numpy float); bools are not numbers here."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value``; raise ``ValueError`` unless it is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be >= {minimum} (an int), got {value!r}")
    return value


MAX_STEPS = 1_000_000  # denoising steps: each runs the model; their noise levels are held in memory


def check_steps(value: object, name: str = "steps") -> int:
    """Return ``value``; raise ``ValueError`` unless it is an int from 1 to ``MAX_STEPS``."""
    check_int(value, name, 1)
    if value > MAX_STEPS:
        raise ValueError(f"{name} must be at most {MAX_STEPS:,}, got {value:,}")
    return value


def check_finite(value: object, name: str, minimum: float = 0.0) -> float:
    """Return ``value``; raise ``ValueError`` unless it is a finite number >= ``minimum`` (no NaN, no inf)."""
    if not is_real(value) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return value


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value
