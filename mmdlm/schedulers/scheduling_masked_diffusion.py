"""`MaskedDiffusionScheduler`: the reverse process of masked diffusion, in diffusers' shape.

It works on any tensor of token ids (text tokens, VQ image codes): `set_timesteps` lays out
noise levels from t=1 down to 0, and `step` turns the model's logits at the current ids into
the next ids, committing some masked positions and leaving the rest masked.

How many tokens are committed in a step from t to s:
- a commit schedule (default): the expected share still masked at s is mask_prob(s)/mask_prob(t),
  so n - round(n * mask_prob(s)/mask_prob(t)) of the n masked tokens, at least one;
- confidence-threshold parallel decoding (Fast-dLLM): every token whose confidence reaches
  `threshold`, and at least the single best one;
- rule "origin" (LLaDA / Dream "origin"): each masked token independently with probability
  1 - mask_prob(s)/mask_prob(t).
Which tokens: the highest scores under the rule ("confidence" = max probability,
"margin" = top1 - top2, "entropy" = negative entropy, "random"), or, with `alg_temp` > 0,
a draw without replacement from softmax(score / alg_temp) (Dream).

With `remasking`, a committed token can be taken back: each step ranks every generated position,
the masked ones by the confidence of their new prediction and the committed ones by the
confidence they were committed with, and keeps the best (the schedule's count, so as many stay
masked as without remasking); the rest are masked again and predicted anew. The ranking is
log-confidence plus Gumbel noise of scale `alg_temp` x t (MaskGIT's annealed choice temperature).
The caller carries the confidences from step to step (`confidence=out.confidence`); tokens that
were never masked (prompts, known image codes) are never taken back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from ..diffusion import commit_scores, corrupt, get_schedule, predict, select_top, tokens_to_commit
from ..diffusion._checks import check_bool, check_finite, check_int, check_steps, is_real

RULES = ("confidence", "margin", "entropy", "random", "origin")
SAMPLING_OPTIONS = ("rule", "temperature", "top_k", "top_p", "alg_temp", "threshold", "remasking")


@dataclass
class MaskedDiffusionSchedulerOutput(BaseOutput):
    """prev_sample: ids after the step; pred_original_sample: every masked position filled with
    its prediction; committed: the positions committed by this step; confidence (with remasking): what
    the next step needs, the confidence of each generated token (inf where a token was given)."""

    prev_sample: torch.LongTensor
    pred_original_sample: torch.LongTensor
    committed: torch.BoolTensor
    confidence: torch.Tensor | None = None


class MaskedDiffusionScheduler(SchedulerMixin, ConfigMixin):
    order = 1

    @register_to_config
    def __init__(self, num_inference_steps: int = 64, schedule: str = "linear", eps: float = 1e-3,
                 rule: str = "confidence", temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, alg_temp: float = 0.0, threshold: float | None = None,
                 remasking: bool = False):
        get_schedule(schedule, eps)
        self._check(rule=rule, temperature=temperature, top_k=top_k, top_p=top_p, alg_temp=alg_temp,
                    threshold=threshold, remasking=remasking)
        self.set_timesteps(num_inference_steps)

    @staticmethod
    def _check(*, rule, temperature, top_k, top_p, alg_temp, threshold, remasking):
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
        check_finite(temperature, "temperature")
        check_finite(alg_temp, "alg_temp")
        if top_k is not None:
            check_int(top_k, "top_k", 1)
        for name, value in (("top_p", top_p), ("threshold", threshold)):
            if value is not None and not (is_real(value) and 0 < value <= 1):  # NaN fails too
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if check_bool(remasking, "remasking") and (rule != "confidence" or threshold is not None):
            raise ValueError(f"remasking ranks by confidence on the commit schedule: it needs rule 'confidence' "
                             f"and no threshold, got rule={rule!r}, threshold={threshold}")

    def sampling_options(self, **overrides) -> dict:
        """The sampling options of a step: the config's, with `overrides`; checked."""
        unknown = set(overrides) - set(SAMPLING_OPTIONS)
        if unknown:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(unknown))}")
        options = {k: overrides.get(k, self.config[k]) for k in SAMPLING_OPTIONS}
        self._check(**options)
        return options

    @property
    def noise_schedule(self):
        return get_schedule(self.config.schedule, self.config.eps)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Noise levels t_k = 1 - k/N for k = 0..N-1; step k goes from t_k to t_k - 1/N."""
        check_steps(num_inference_steps, "num_inference_steps")
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.linspace(1.0, 0.0, num_inference_steps + 1, device=device)[:-1]

    def _next_t(self, t: float) -> float:
        return max(t - 1.0 / self.num_inference_steps, 0.0)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.LongTensor, *,
             mask_token_id: int, editable: torch.BoolTensor | None = None, confidence: torch.Tensor | None = None,
             generator: torch.Generator | None = None, return_dict: bool = True, **overrides):
        """One reverse step. `model_output` (B, L, V) are logits aligned with `sample` (B, L).

        Only masked positions that are `editable` (default: all) can be committed (or, with
        remasking, taken back). `confidence`: the previous step's `out.confidence` (remasking
        only; None at the first step). Any config value (rule, temperature, top_k, top_p,
        alg_temp, threshold, remasking) can be overridden per call.
        """
        c = self.sampling_options(**overrides)
        if sample.ndim != 2 or model_output.shape[:2] != sample.shape:
            raise ValueError(f"need sample (B, L) and model_output (B, L, V); got {tuple(sample.shape)} "
                             f"and {tuple(model_output.shape)}")
        t = float(timestep)
        s = self._next_t(t)
        masked = sample == mask_token_id
        candidates = masked if editable is None else masked & editable

        # [MASK] is never a prediction (out of place: the caller's logits stay untouched)
        never = torch.tensor([mask_token_id], device=model_output.device)
        logits = model_output.float().index_fill(-1, never, float("-inf"))
        tokens, probs = predict(logits, temperature=c["temperature"], top_k=c["top_k"], top_p=c["top_p"],
                                generator=generator)

        if c["remasking"]:
            return self._remasking_step(sample, tokens, probs, masked, candidates, editable, confidence, t, s,
                                        c["alg_temp"], mask_token_id, generator, return_dict)
        n_cand = candidates.sum(-1)
        if c["rule"] == "origin":
            m = self.noise_schedule.mask_prob
            keep_p = float(m(torch.tensor(s)) / m(torch.tensor(t)))
            coin = torch.rand(sample.shape, generator=generator, device=sample.device) >= keep_p
            commit = candidates & coin
        else:
            scores = commit_scores(probs, tokens, c["rule"], generator=generator)
            if c["threshold"] is not None:
                conf = probs.gather(-1, tokens[..., None])[..., 0]
                commit = candidates & (conf >= c["threshold"])
                commit |= select_top(scores, torch.ones_like(n_cand), candidates)  # at least one
            else:
                n = tokens_to_commit(n_cand, t, s, self.noise_schedule) if t > 0 else n_cand
                commit = select_top(scores, n, candidates, alg_temp=c["alg_temp"], generator=generator)
        if s <= 0.0:  # the last step leaves nothing masked
            commit = candidates
        prev = torch.where(commit, tokens, sample)
        pred = torch.where(masked, tokens, sample)
        out = MaskedDiffusionSchedulerOutput(prev_sample=prev, pred_original_sample=pred, committed=commit)
        return out if return_dict else out.to_tuple()

    def _remasking_step(self, sample, tokens, probs, masked, candidates, editable, confidence, t, s, alg_temp,
                        mask_token_id, generator, return_dict):
        if confidence is None:
            if t < float(self.timesteps[0]):
                raise ValueError("remasking needs the confidences of the previous step: pass "
                                 "confidence=out.confidence from the step before")
            confidence = torch.full(sample.shape, float("inf"), device=sample.device)  # all but [MASK] given
        elif confidence.shape != sample.shape:
            raise ValueError(f"confidence must have the shape of sample {tuple(sample.shape)}, "
                             f"got {tuple(confidence.shape)}")
        committed = ~masked & torch.isfinite(confidence)
        pool = candidates | (committed if editable is None else committed & editable)
        ranked = torch.where(masked, probs.gather(-1, tokens[..., None])[..., 0], confidence)
        n_cand = candidates.sum(-1)  # as many stay masked as the schedule leaves without remasking
        stay_masked = n_cand - tokens_to_commit(n_cand, t, s, self.noise_schedule)
        keep = select_top(ranked.clamp_min(1e-30).log(), pool.sum(-1) - stay_masked, pool, alg_temp=alg_temp * t,
                          generator=generator)
        filled = torch.where(masked, tokens, sample)
        prev = torch.where(pool, torch.where(keep, filled, torch.full_like(sample, mask_token_id)), sample)
        conf = torch.where(pool, torch.where(keep, ranked, 0.0), confidence)
        commit = keep & masked
        out = MaskedDiffusionSchedulerOutput(prev_sample=prev, pred_original_sample=filled, committed=commit,
                                             confidence=conf)
        return out if return_dict else out.to_tuple()  # with the confidences, which the next step needs

    def add_noise(self, original_samples: torch.LongTensor, t: torch.Tensor, mask_token_id: int,
                  generator: torch.Generator | None = None, protect: torch.BoolTensor | None = None):
        """The forward process (for training loops written against the scheduler)."""
        return corrupt(original_samples, t, mask_token_id, self.noise_schedule, protect=protect,
                       generator=generator)[0]

    def __len__(self) -> int:
        return self.num_inference_steps
