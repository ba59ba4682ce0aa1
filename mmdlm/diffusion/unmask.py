"""One reverse (unmasking) step, shared by all samplers.

Going from noise level ``t`` to ``s < t``, a masked token stays masked with
probability ``m(s) / m(t)``; the rest are revealed.  Samplers reveal that many
tokens deterministically, choosing them by a score (confidence, margin, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_bool_mask, check_mask_id
from .schedules import Schedule

__all__ = ["tokens_to_commit", "filter_logits", "predict", "commit_scores", "select_top", "unmask_step",
           "COMMIT_RULES"]

COMMIT_RULES = ("confidence", "margin", "entropy", "random")


def tokens_to_commit(n_masked: Tensor, t: float, s: float, schedule: Schedule) -> Tensor:
    """Number of masked tokens to reveal when stepping from ``t`` to ``s < t``.

    ``n_masked - round(n_masked * m(s) / m(t))``, at least 1 when ``n_masked > 0``,
    and all of them when ``s <= 0``.
    """
    t, s = float(t), float(s)
    if not 0.0 < t <= 1.0 or s >= t:
        raise ValueError(f"need 0 < t <= 1 and s < t, got t={t}, s={s}")
    n_masked = torch.as_tensor(n_masked).long()
    if s <= 0.0:
        return n_masked.clone()
    ratio = (schedule.mask_prob(torch.tensor(s, dtype=torch.float64))
             / schedule.mask_prob(torch.tensor(t, dtype=torch.float64))).item()
    keep = torch.round(n_masked.double() * ratio).long()
    n = n_masked - keep
    return torch.minimum(n.clamp_min(1), n_masked).clamp_min(0)


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Keep the ``top_k`` most likely tokens and/or the smallest set whose mass reaches ``top_p``."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        p = sorted_logits.softmax(-1)
        drop = p.cumsum(-1) - p >= top_p  # the mass before this token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def predict(
    logits: Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Predict a token at every position.

    ``temperature == 0`` takes the argmax; otherwise samples from
    ``softmax(logits / temperature)`` restricted by ``top_k`` / ``top_p``.  Returns
    ``(tokens (B, L), probs (B, L, V))`` with ``probs = softmax(logits)`` in float32
    (unfiltered and temperature-free; used for scores).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    logits = logits.float()
    probs = logits.softmax(dim=-1)
    if temperature == 0:
        tokens = logits.argmax(dim=-1)
    else:
        sample_probs = (filter_logits(logits, top_k, top_p) / temperature).softmax(dim=-1)
        flat = sample_probs.reshape(-1, sample_probs.shape[-1])
        tokens = torch.multinomial(flat, 1, generator=generator).view(logits.shape[:-1])
    return tokens, probs


def select_top(
    scores: Tensor,
    n: Tensor,
    candidates: Tensor,
    *,
    alg_temp: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Boolean mask of the ``n[b]`` best-scoring candidates of each row.

    With ``alg_temp > 0`` the positions are drawn without replacement from
    ``softmax(score / alg_temp)`` instead (Gumbel top-k; Dream's ``alg_temp``).
    """
    scores = scores.float()
    if alg_temp > 0:
        u = torch.rand(scores.shape, generator=generator, device=scores.device).clamp_(1e-20, 1.0)
        scores = scores / alg_temp - torch.log(-torch.log(u))
    # Candidates get finite scores, everything else -inf, so candidates always rank first.
    scores = torch.where(candidates, scores.clamp_min(torch.finfo(scores.dtype).min), float("-inf"))
    n = torch.minimum(n.clamp_min(0), candidates.sum(dim=-1))
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, ranks)
    return (rank < n[:, None]) & candidates


def commit_scores(
    probs: Tensor, tokens: Tensor, rule: str, *, generator: torch.Generator | None = None
) -> Tensor:
    """Score each position; higher = commit first.

    * ``"confidence"``: ``p(token)`` of the chosen token (MaskGIT / LLaDA low-confidence remasking)
    * ``"margin"``: ``p_top1 - p_top2``
    * ``"entropy"``: ``-H(p) = sum_v p_v log p_v``
    * ``"random"``: ``U(0, 1)`` noise (random-order unmasking)
    """
    if rule == "confidence":
        return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if rule == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if rule == "entropy":
        return torch.special.xlogy(probs, probs).sum(dim=-1)
    if rule == "random":
        return torch.rand(tokens.shape, generator=generator, device=probs.device)
    raise ValueError(f"unknown commit rule {rule!r}; valid: {', '.join(COMMIT_RULES)}")


def unmask_step(
    x: Tensor,
    logits: Tensor,
    mask_id: int,
    n_commit: Tensor,
    *,
    rule: str = "confidence",
    temperature: float = 0.0,
    editable: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Reveal the ``n_commit[b]`` best-scoring masked positions of each row.

    Candidates are positions with ``x == mask_id`` (and ``editable``, if given);
    ``n_commit`` is clamped to the number of candidates per row.  ``mask_id`` is
    never predicted.  Returns ``(new_x, x0_pred)``: ``new_x`` differs from ``x`` only
    at committed positions; ``x0_pred`` is ``x`` with every masked position filled by
    its prediction.
    """
    if x.dim() != 2 or logits.dim() != 3 or logits.shape[:2] != x.shape:
        raise ValueError(
            f"need x (B, L) and logits (B, L, V), got {tuple(x.shape)} and {tuple(logits.shape)}"
        )
    mask_id = check_mask_id(mask_id)
    if mask_id >= logits.shape[-1]:
        raise ValueError(f"mask_id {mask_id} is outside the vocabulary of size {logits.shape[-1]}")
    check_bool_mask(editable, x.shape, "editable")
    if rule not in COMMIT_RULES:
        raise ValueError(f"unknown commit rule {rule!r}; valid: {', '.join(COMMIT_RULES)}")
    b = x.shape[0]
    n_commit = torch.as_tensor(n_commit, device=x.device).long()
    if n_commit.dim() == 0:
        n_commit = n_commit.expand(b)
    if n_commit.shape != (b,):
        raise ValueError(f"n_commit has shape {tuple(n_commit.shape)}, expected ({b},)")

    # Never predict [MASK] itself (new tensor: the caller's logits stay untouched).
    logits = logits.float().index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))
    tokens, probs = predict(logits, temperature=temperature, generator=generator)

    is_masked = x == mask_id
    candidates = is_masked if editable is None else is_masked & editable
    scores = commit_scores(probs, tokens, rule, generator=generator)
    commit = select_top(scores, n_commit, candidates)

    new_x = torch.where(commit, tokens, x)
    x0_pred = torch.where(is_masked, tokens, x)
    return new_x, x0_pred
