"""The reverse (unmasking) step, written once for every sampler and every modality.

Going from noise level ``t`` to ``s < t``, a masked token stays masked with probability
``m(s) / m(t)``; the rest are revealed. `reverse_step` predicts every masked token and commits
some of them:

- how many: a commit schedule (default), n - round(n m(s)/m(t)) of the n masked tokens, at least
  one; or every token whose confidence reaches `threshold` (Fast-dLLM's parallel decoding), at
  least the single best one; or, with `factor` f (Fast-dLLM's factor rule), the largest k whose
  confidences c_1 >= c_2 >= ... all pass (i + 1)(1 - c_i) <= f: the more tokens a step commits,
  the surer each must be (at least one); or rule "origin" (LLaDA / Dream): each masked token
  independently with probability 1 - m(s)/m(t);
- which: the highest scores under the rule ("confidence" = max probability, "margin" = top1 -
  top2, "entropy" = negative entropy, "random"), or with `alg_temp` > 0 a draw without replacement
  from softmax(score / alg_temp) (Dream);
- with `remasking`, a committed token can be taken back: each step ranks every generated
  position, the masked ones by the confidence of their new prediction and the committed ones by
  the confidence they were committed with, keeps the best (the schedule's count, so as many stay
  masked as without remasking) and masks the rest again; the ranking is log-confidence plus Gumbel
  noise of scale `alg_temp` x t (MaskGIT's annealed choice temperature). The caller carries the
  confidences from step to step; tokens that were never masked are never taken back.
- with `editing_threshold` (LLaDA2's token editing), a token this sampler committed at an earlier
  step is replaced when the current prediction disagrees with it with a probability above the
  threshold. The caller carries the confidences as with remasking (they mark which tokens the
  sampler committed); given tokens (the prompt) are never edited.

`generator` is one torch.Generator, or a list with one per row: every random draw of a row then
comes from its own generator, so a row samples the same in any batch.
`MaskedDiffusionScheduler` (mmdlm.schedulers) is this step in diffusers' shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_bool, check_bool_mask, check_finite, check_int, check_mask_id, is_real
from .schedules import Schedule

__all__ = ["RULES", "SCORES", "SamplingOptions", "ReverseStep", "reverse_step", "tokens_to_commit",
           "filter_logits", "predict", "sample_categorical", "commit_scores", "select_top", "check_generators"]

SCORES = ("confidence", "margin", "entropy", "random")  # rules that rank the masked positions
RULES = (*SCORES, "origin")  # "origin" commits each position by a coin instead

Generators = torch.Generator | list[torch.Generator] | None


@dataclass(frozen=True)
class SamplingOptions:
    """How a reverse step chooses tokens and positions; checked when made."""

    rule: str = "confidence"
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    alg_temp: float = 0.0
    threshold: float | None = None
    remasking: bool = False
    editing_threshold: float | None = None
    factor: float | None = None

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}; choose one of {', '.join(RULES)}")
        check_finite(self.temperature, "temperature")
        check_finite(self.alg_temp, "alg_temp")
        if self.top_k is not None:
            check_int(self.top_k, "top_k", 1)
        for name in ("top_p", "threshold", "editing_threshold"):
            value = getattr(self, name)
            if value is not None and not (is_real(value) and 0 < value <= 1):  # NaN fails too
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if check_bool(self.remasking, "remasking") and (self.rule != "confidence" or self.threshold is not None):
            raise ValueError(f"remasking ranks by confidence on the commit schedule: it needs rule 'confidence' "
                             f"and no threshold, got rule={self.rule!r}, threshold={self.threshold}")
        if self.remasking and self.editing_threshold is not None:
            raise ValueError("remasking and editing_threshold both revise committed tokens: choose one")
        if self.factor is not None:
            if not (is_real(self.factor) and 0 < self.factor < float("inf")):
                raise ValueError(f"factor must be a number above 0, got {self.factor!r}")
            if self.threshold is not None or self.remasking or self.rule == "origin":
                raise ValueError("factor sets how many tokens a step commits: it cannot be combined with threshold, "
                                 "remasking or rule 'origin'")

    @property
    def carries_confidence(self) -> bool:
        """Whether a step needs the confidences of the step before (remasking, token editing)."""
        return self.remasking or self.editing_threshold is not None

    def replace(self, **overrides) -> "SamplingOptions":
        """These options with some changed (checked); an unknown name is a TypeError."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides)


@dataclass
class ReverseStep:
    """ids: after the step; pred: every masked position filled with its prediction; committed: the
    positions this step committed; confidence (remasking, editing): what the next step needs, the
    confidence of each generated token (inf where a token was given); edited (editing): the
    committed tokens this step replaced."""

    ids: Tensor
    pred: Tensor
    committed: Tensor
    confidence: Tensor | None = None
    edited: Tensor | None = None


def check_generators(generator: Generators, rows: int) -> None:
    """A list of generators must hold one per row."""
    if isinstance(generator, (list, tuple)) and len(generator) != rows:
        raise ValueError(f"{len(generator)} generators for a batch of {rows} samples; give one, or one per sample")


def _on(generator: torch.Generator | None, device) -> torch.device | None:
    """Where a draw happens: on the generator's own device (a generator draws only there)."""
    return device if generator is None else generator.device


def rand(shape, generator: Generators = None, device=None) -> Tensor:
    """U(0, 1) of `shape` on `device`; with a list of generators, row i from generator i. A generator on
    another device draws there and the draw is copied over (a host synchronisation: for speed, create the
    generators on the device of the tensors)."""
    if isinstance(generator, (list, tuple)):
        check_generators(generator, shape[0])
        return torch.cat([torch.rand((1, *shape[1:]), generator=g, device=_on(g, device)).to(device)
                          for g in generator])
    return torch.rand(shape, generator=generator, device=_on(generator, device)).to(device)


def exponential(shape, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Exp(1) noise of `shape` on `device`, drawn on the generator's device (see `rand`)."""
    return torch.empty(shape, device=_on(generator, device)).exponential_(generator=generator).to(device)


def tokens_to_commit(n_masked: Tensor, t: float, s: float, schedule: Schedule) -> Tensor:
    """Number of masked tokens to reveal when stepping from ``t`` to ``s < t``.

    ``n_masked - round(n_masked * m(s) / m(t))``, at least 1 when ``n_masked > 0``,
    and all of them when ``s <= 0``. Computed where ``n_masked`` lives (float64 where the device has it),
    without reading anything back to the host.
    """
    t, s = float(t), float(s)
    if not 0.0 < t <= 1.0 or s >= t:
        raise ValueError(f"need 0 < t <= 1 and s < t, got t={t}, s={s}")
    n_masked = torch.as_tensor(n_masked).long()
    if s <= 0.0:
        return n_masked.clone()
    ratio = _keep_ratio(schedule, t, s, n_masked.device, torch.float64)
    keep = torch.round(n_masked.to(ratio.dtype) * ratio).long()
    n = n_masked - keep
    return torch.minimum(n.clamp_min(1), n_masked).clamp_min(0)


def _keep_ratio(schedule: Schedule, t: float, s: float, device, dtype) -> Tensor:
    """m(s) / m(t), the probability that a token masked at level t is still masked at s, as a 0-d tensor on
    `device` (filled from Python numbers: no copy from the host). MPS has no float64: float32 there."""
    if dtype == torch.float64 and torch.device(device).type == "mps":
        dtype = torch.float32

    def level(x):
        return torch.full((), x, dtype=dtype, device=device)

    return schedule.mask_prob(level(s)) / schedule.mask_prob(level(t))


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
    generator: Generators = None,
) -> tuple[Tensor, Tensor]:
    """Predict a token at every position.

    ``temperature == 0`` takes the argmax; otherwise samples from
    ``softmax(logits / temperature)`` restricted by ``top_k`` / ``top_p``.  Returns
    ``(tokens (B, L), probs (B, L, V))`` with ``probs = softmax(logits)`` in float32
    (unfiltered and temperature-free; used for scores).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    probs = logits.softmax(dim=-1, dtype=torch.float32)  # float32 from any dtype, without a float32 copy first
    if temperature == 0:
        tokens = logits.argmax(dim=-1)  # (the cast to float32 is exact: the same argmax)
    else:
        sample_probs = (filter_logits(logits.float(), top_k, top_p) / temperature).softmax(dim=-1)
        tokens = sample_categorical(sample_probs, generator)
    return tokens, probs


def sample_categorical(probs: Tensor, generator: Generators = None) -> Tensor:
    """One draw from each distribution ``probs`` (..., V): ``argmax(p / q)`` with ``q ~ Exp(1)``, which is what
    ``torch.multinomial(p, 1)`` computes (the same draws from the same generator state) without its validity
    checks, each a host synchronisation. With a list of generators, row i (along dim 0) from generator i."""
    if isinstance(generator, (list, tuple)):
        check_generators(generator, len(probs))
        noise = torch.cat([exponential((1, *probs.shape[1:]), g, probs.device) for g in generator])
    else:
        noise = exponential(probs.shape, generator, probs.device)
    return (probs / noise).argmax(dim=-1)


def select_top(
    scores: Tensor,
    n: Tensor,
    candidates: Tensor,
    *,
    alg_temp: float = 0.0,
    generator: Generators = None,
) -> Tensor:
    """Boolean mask of the ``n[b]`` best-scoring candidates of each row.

    With ``alg_temp > 0`` the positions are drawn without replacement from
    ``softmax(score / alg_temp)`` instead (Gumbel top-k; Dream's ``alg_temp``).
    """
    scores = scores.float()
    if alg_temp > 0:
        u = rand(scores.shape, generator, scores.device).clamp_(1e-20, 1.0)
        scores = scores / alg_temp - torch.log(-torch.log(u))
    # Candidates get finite scores, everything else -inf, so candidates always rank first.
    scores = torch.where(candidates, scores.clamp_min(torch.finfo(scores.dtype).min), float("-inf"))
    n = torch.minimum(n.clamp_min(0), candidates.sum(dim=-1))
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, ranks)
    return (rank < n[:, None]) & candidates


def commit_scores(probs: Tensor, tokens: Tensor, rule: str, *, generator: Generators = None) -> Tensor:
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
        return rand(tokens.shape, generator, probs.device)
    raise ValueError(f"unknown commit rule {rule!r}; valid: {', '.join(SCORES)}")


def reverse_step(logits: Tensor, ids: Tensor, t: float, s: float, mask_id: int, schedule: Schedule,
                 options: SamplingOptions = SamplingOptions(), *, editable: Tensor | None = None,
                 confidence: Tensor | None = None, first: bool = True, generator: Generators = None) -> ReverseStep:
    """One step from noise level `t` to `s < t` (see the module docstring).

    `logits` (B, L, V) predict `ids` (B, L) position by position; only masked positions that are
    `editable` (default: all) can be committed (or, with remasking, taken back; with editing,
    replaced). [MASK] itself is never predicted, and the caller's logits are left untouched.
    `confidence`: the previous step's (remasking, editing; None at the `first` step). At s <= 0
    every candidate is committed.
    """
    if ids.ndim != 2 or logits.ndim != 3 or logits.shape[:2] != ids.shape:
        raise ValueError(f"need ids (B, L) and logits (B, L, V); got {tuple(ids.shape)} and {tuple(logits.shape)}")
    mask_id = check_mask_id(mask_id)
    if mask_id >= logits.shape[-1]:
        raise ValueError(f"mask_id {mask_id} is outside the vocabulary of size {logits.shape[-1]}")
    check_bool_mask(editable, ids.shape, "editable")
    masked = ids == mask_id
    candidates = masked if editable is None else masked & editable
    logits = logits.clone()  # the step's own copy (in the model's dtype: predict computes in float32)
    logits[..., mask_id] = float("-inf")
    tokens, probs = predict(logits, temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
                            generator=generator)
    filled = torch.where(masked, tokens, ids)
    chosen = probs.gather(-1, tokens[..., None])[..., 0]  # the probability of each prediction
    n_cand = candidates.sum(-1)

    if options.carries_confidence:
        if confidence is None:
            if not first:
                raise ValueError(f"{'remasking' if options.remasking else 'token editing'} needs the confidences of "
                                 "the previous step: pass confidence=out.confidence from the step before")
            confidence = torch.full(ids.shape, float("inf"), device=ids.device)  # all but [MASK] given
        elif confidence.shape != ids.shape:
            raise ValueError(f"confidence must have the shape of the ids {tuple(ids.shape)}, got "
                             f"{tuple(confidence.shape)}")
        committed = ~masked & torch.isfinite(confidence)  # by this sampler, at an earlier step
        if editable is not None:
            committed &= editable

    if options.remasking:
        pool = candidates | committed
        ranked = torch.where(masked, chosen, confidence)
        stay_masked = n_cand - tokens_to_commit(n_cand, t, s, schedule)  # as many as without remasking
        keep = select_top(ranked.clamp_min(1e-30).log(), pool.sum(-1) - stay_masked, pool,
                          alg_temp=options.alg_temp * t, generator=generator)
        new = torch.where(pool, torch.where(keep, filled, torch.full_like(ids, mask_id)), ids)
        conf = torch.where(pool, torch.where(keep, ranked, 0.0), confidence)
        return ReverseStep(ids=new, pred=filled, committed=keep & masked, confidence=conf)

    if options.rule == "origin":
        keep_p = _keep_ratio(schedule, t, s, ids.device, torch.float32)
        commit = candidates & (rand(ids.shape, generator, ids.device) >= keep_p)
    else:
        scores = commit_scores(probs, tokens, options.rule, generator=generator)
        if options.threshold is not None:
            commit = candidates & (chosen >= options.threshold)
            commit |= select_top(scores, torch.ones_like(n_cand), candidates)  # at least one
        elif options.factor is not None:
            # (i + 1)(1 - c_i) grows with i for confidences sorted downwards: the passing ones are a prefix.
            ranked = torch.where(candidates, chosen, -1.0).sort(-1, descending=True).values
            i = torch.arange(1, ranked.shape[-1] + 1, device=ranked.device)
            passing = ((i + 1) * (1 - ranked) <= options.factor) & (ranked >= 0)
            commit = select_top(scores, passing.sum(-1).clamp(min=1), candidates)
        else:
            n = tokens_to_commit(n_cand, t, s, schedule) if t > 0 else n_cand
            commit = select_top(scores, n, candidates, alg_temp=options.alg_temp, generator=generator)
    if s <= 0.0:  # the last step leaves nothing masked
        commit = candidates
    if options.editing_threshold is None:
        return ReverseStep(ids=torch.where(commit, tokens, ids), pred=filled, committed=commit)
    edited = committed & (tokens != ids) & (chosen > options.editing_threshold)
    return ReverseStep(ids=torch.where(commit | edited, tokens, ids), pred=filled, committed=commit,
                       confidence=torch.where(commit | edited, chosen, confidence), edited=edited)
