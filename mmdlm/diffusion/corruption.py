"""Forward (noising) process of masked diffusion: replace tokens by [MASK]."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_bool_mask, check_mask_id, per_position_t
from .schedules import Schedule

__all__ = ["corrupt", "block_t", "mask_ratio"]


def corrupt(
    x0: Tensor,
    t: Tensor,
    mask_id: int,
    schedule: Schedule,
    *,
    protect: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample ``x_t ~ q(x_t | x0)``.

    Each unprotected position is independently replaced by ``mask_id`` with
    probability ``schedule.mask_prob(t)``.  ``t`` is either one level per sequence
    ``(B,)`` or one level per position ``(B, L)`` (block diffusion, see :func:`block_t`).
    ``protect`` (bool ``(B, L)``) marks positions that are never masked (prompt,
    BOS, padding).

    Returns ``(x_t, masked)`` where ``masked`` is the bool ``(B, L)`` mask of the
    positions that were replaced.
    """
    if not isinstance(x0, Tensor) or x0.dim() != 2:
        raise ValueError(f"x0 must be a 2D (B, L) tensor, got shape {tuple(getattr(x0, 'shape', ()))}")
    if x0.is_floating_point() or x0.is_complex() or x0.dtype == torch.bool:
        raise ValueError(f"x0 must hold integer token ids, got dtype {x0.dtype}")
    mask_id = check_mask_id(mask_id)
    check_bool_mask(protect, x0.shape, "protect")
    t_full = per_position_t(torch.as_tensor(t, device=x0.device), x0.shape)

    p = schedule.mask_prob(t_full.float())
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    masked = u < p
    if protect is not None:
        masked &= ~protect
    x_t = x0.masked_fill(masked, mask_id)
    return x_t, masked


def block_t(t_blocks: Tensor, block_size: int, length: int) -> Tensor:
    """Expand per-block noise levels ``(B, n_blocks)`` to per-position ``(B, length)``.

    Position ``i`` gets the level of block ``i // block_size``; the last block may be
    partial, so ``n_blocks`` must equal ``ceil(length / block_size)``.
    """
    if not isinstance(t_blocks, Tensor) or t_blocks.dim() != 2:
        raise ValueError("t_blocks must be a 2D (B, n_blocks) tensor")
    if block_size < 1 or length < 1:
        raise ValueError(f"block_size and length must be >= 1, got {block_size} and {length}")
    n_blocks = math.ceil(length / block_size)
    if t_blocks.shape[1] != n_blocks:
        raise ValueError(
            f"t_blocks has {t_blocks.shape[1]} blocks, expected ceil({length}/{block_size}) = {n_blocks}"
        )
    return t_blocks.repeat_interleave(block_size, dim=1)[:, :length]


def mask_ratio(ids: Tensor, mask_id: int, real: Tensor | None = None) -> Tensor:
    """The observed noise level of each row of ``ids`` (B, L): the share of ``mask_id`` among its
    positions, or among its real ones where ``real`` (bool (B, L)) marks them (padding left out)."""
    masked = (ids == mask_id).float()
    if real is None:
        return masked.mean(1)
    real = real.float()
    return (masked * real).sum(1) / real.sum(1).clamp_min(1)
