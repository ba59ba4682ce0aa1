"""Attention patterns for adapted LMs, as boolean (L, L) "query may see key" matrices.

They reach the model as 4D additive float masks (0 where allowed, the dtype's minimum
elsewhere). transformers returns a 4D mask as it is (`masking_utils`), and a float mask is
honoured by both sdpa and eager attention, whereas eager silently adds a bool mask as 0/1.
"""
from __future__ import annotations

import torch

MODES = ("causal", "bidirectional", "annealed", "block")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown attention mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def causal(length: int, device=None) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def bidirectional(length: int, device=None) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device)


def annealed(length: int, ratio: float, *, generator=None, device=None) -> torch.Tensor:
    """DiffuLLaMA's annealing: causal OR an independent Bernoulli(ratio) draw per entry."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"annealing ratio must be in [0, 1], got {ratio}")
    coin = torch.rand(length, length, generator=generator, device=device) < ratio
    return causal(length, device) | coin


def block_causal(length: int, block_size: int, device=None, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional inside each block of `block_size`, causal across blocks (BD3-LM).

    Blocks are counted from position 0; with `positions` (B, L), each row's own token positions
    (after left padding: from its first real token), the pattern is per row, (B, L, L).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    block = (torch.arange(length, device=device) if positions is None else positions) // block_size
    return block[..., :, None] >= block[..., None, :]


def context_causal(length: int, block_size: int, device=None) -> torch.Tensor:
    """Training mask over the concatenation [x_t ; x_0] (2L tokens), as in BD3-LM / NBDiff.

    A noisy block of x_t sees itself (bidirectionally) and the clean blocks of x_0 before it;
    x_0 is block-causal over itself. Every block is trained against a clean context in one
    pass, exactly as it is decoded at inference time.
    """
    block = torch.arange(length, device=device) // block_size
    same = block[:, None] == block[None, :]
    earlier = block[:, None] > block[None, :]
    clean = block_causal(length, block_size, device)
    top = torch.cat([same, earlier], dim=1)  # x_t queries: [x_t keys | x_0 keys]
    bottom = torch.cat([torch.zeros_like(same), clean], dim=1)  # x_0 queries
    return torch.cat([top, bottom], dim=0)


def inference_pattern(mode: str, length: int, block_size: int | None = None, device=None,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
    """The pattern a trained model uses when sampling (annealing ends fully open).

    `positions` (B, L): the rows' token positions under left padding; only the block grid
    depends on them (the other patterns are the same counted from the padding or not)."""
    check_mode(mode)
    if mode == "causal":
        return causal(length, device)
    if mode == "block":
        if block_size is None:
            raise ValueError("attention mode 'block' needs a block_size")
        return block_causal(length, block_size, device, positions)
    return bidirectional(length, device)


def to_additive(allowed: torch.Tensor, padding: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(Q, K) or (B, Q, K) bool pattern [+ (B, K) key padding mask] -> (B|1, 1, Q, K) float mask.

    Q < K when cached keys precede the queries (the pattern's columns follow the cache order).
    """
    if allowed.ndim == 2:
        allowed = allowed[None]
    if allowed.ndim != 3:
        raise ValueError(f"attention pattern must be (Q, K) or (B, Q, K), got {tuple(allowed.shape)}")
    if padding is not None:
        if padding.ndim != 2 or padding.shape[-1] != allowed.shape[-1]:
            raise ValueError(f"attention_mask must be (batch, {allowed.shape[-1]}), got {tuple(padding.shape)}")
        allowed = allowed & padding.bool()[:, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]
