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


def check_finite_nonnegative(name: str, value: object) -> float:
    """Return ``value`` as a float; raise ``ValueError`` unless it is a finite real number >= 0
    (NaN passes every comparison, so ``value < 0`` alone lets it through)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


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
