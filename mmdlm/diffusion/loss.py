"""The masked-diffusion training objective (weighted cross-entropy on masked tokens)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_bool_mask, per_position_t
from .schedules import Schedule

__all__ = ["masked_diffusion_loss"]

_NORMALIZATIONS = ("token", "masked", "none")


def masked_diffusion_loss(
    logits: Tensor,
    x0: Tensor,
    masked: Tensor,
    t: Tensor,
    schedule: Schedule,
    *,
    normalize: str = "token",
    eligible: Tensor | None = None,
    elbo_weight: bool = True,
) -> Tensor:
    """Weighted cross-entropy at masked positions.

    ``logits[:, i]`` must already predict ``x0[:, i]`` (shifting is done by the caller).
    With ``w = schedule.weight(t)`` taken per position (``t`` is ``(B,)`` or ``(B, L)``)::

        S = sum_{b,i : masked} w_{b,i} * -log p(x0_{b,i} | x_t)

    ``normalize``:

    * ``"token"`` (default, LLaDA-style): ``S / #eligible`` where ``eligible`` marks the
      positions that could have been masked (not protected; default all).  Since
      ``E[masked] = m(t)`` per eligible position and ``w = m'/m``, this is an unbiased
      estimate of the negative ELBO per token, an upper bound on the NLL per token;
      ``exp`` of it is the "ELBO perplexity", comparable with an AR perplexity.
    * ``"masked"`` (DiffuLLaMA-style): ``S / #masked``.  Not an ELBO; only a training loss.
    * ``"none"``: the per-sequence sums ``S_b`` as a ``(B,)`` tensor (for estimators that
      average over many noise draws and need each sequence's term).

    ``elbo_weight=False`` drops ``w`` (every masked token counts once): with
    ``normalize="masked"`` this is MaskGIT / Meissonic / Muddit's plain cross-entropy averaged
    over the masked tokens, which does not fade out the heavily masked steps (``w -> 0`` as
    ``t -> 1`` for the cosine schedule) that sampling starts from.  Not an ELBO.

    ``masked`` must be a subset of ``eligible``.  CE is computed in float32.  When
    nothing is masked the loss is a zero that is still connected to ``logits``.

    ``logits`` may also be ``(N, V)``: the logits of the N masked positions only, in
    row-major order, so that a model can skip its output head everywhere else (N must be the
    number of masked positions: counting them would make the host wait, so it is not checked).
    """
    if normalize not in _NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(_NORMALIZATIONS)}")
    if x0.dim() != 2:
        raise ValueError(f"x0 must be (B, L), got shape {tuple(x0.shape)}")
    if logits.dim() == 3 and x0.shape != logits.shape[:2]:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}, expected {tuple(logits.shape[:2])}")
    check_bool_mask(masked, x0.shape, "masked")
    # The masked positions in row-major order. Their number depends on the draw: finding them makes the host wait
    # for the device, unless the (#masked, V) logits already tell it (whoever selected them has waited).
    if logits.dim() == 3:
        index = masked.flatten().nonzero().squeeze(1)
        logits = logits.flatten(0, 1).index_select(0, index)
    elif logits.dim() == 2 and logits.shape[0] <= masked.numel():
        index = torch.nonzero_static(masked.flatten(), size=logits.shape[0]).squeeze(1)
    else:
        raise ValueError(f"logits must be (B, L, V) or (#masked, V), got shape {tuple(logits.shape)} for "
                         f"{tuple(masked.shape)} positions")
    check_bool_mask(eligible, x0.shape, "eligible")
    t_full = per_position_t(torch.as_tensor(t, device=logits.device), x0.shape)

    # Only the masked rows: saves memory for big vocabularies and keeps
    # w(t) = inf (t = 0) at unmasked positions out of the graph.
    ce = F.cross_entropy(logits.float(), x0.flatten().index_select(0, index), reduction="none")
    t_masked = t_full.reshape(-1).index_select(0, index).float()
    terms = schedule.weight(t_masked) * ce if elbo_weight else ce
    if normalize == "none":
        rows = index // x0.shape[1]
        return torch.zeros(x0.shape[0], device=terms.device, dtype=terms.dtype).index_add(0, rows, terms)
    total = terms.sum()

    if normalize == "token" and eligible is None:
        return total / max(x0.numel(), 1)
    denom = eligible.sum() if normalize == "token" else masked.sum()
    return total / denom.clamp_min(1).float()
