"""Classifier-free guidance, written once for every sampler."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["guide"]


def guide(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """``u + (1 + w) (c - u)``: the conditional output pushed away from the unconditional one.

    ``scale`` w = 0 gives the conditional output. Entries that are not finite in ``cond`` (a
    column of -inf that no token may take, such as [MASK]) are kept as they are.
    """
    return torch.where(torch.isfinite(cond), uncond + (1 + scale) * (cond - uncond), cond)
