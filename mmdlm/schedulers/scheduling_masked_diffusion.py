"""`MaskedDiffusionScheduler`: the core's reverse step (`mmdlm.diffusion.reverse_step`) in diffusers' shape.

It works on any tensor of token ids (text tokens, VQ image codes): `set_timesteps` lays out
noise levels from t=1 down to 0, and `step` turns the model's logits at the current ids into
the next ids, committing some masked positions and leaving the rest masked. The config holds
the noise schedule and the sampling options (`mmdlm.diffusion.SamplingOptions`: rule,
temperature, top_k, top_p, alg_temp, threshold, remasking, editing_threshold), each of which a
call of `step` may override; what the options do is documented with the core step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from ..diffusion import SamplingOptions, corrupt, get_schedule, reverse_step
from ..diffusion._checks import check_steps

SAMPLING_OPTIONS = tuple(f.name for f in dataclasses.fields(SamplingOptions))


@dataclass
class MaskedDiffusionSchedulerOutput(BaseOutput):
    """prev_sample: ids after the step; pred_original_sample: every masked position filled with
    its prediction; committed: the positions committed by this step; confidence (with remasking or
    editing): what the next step needs, the confidence of each generated token (inf where a token was
    given); edited (with editing): the committed tokens this step replaced."""

    prev_sample: torch.LongTensor
    pred_original_sample: torch.LongTensor
    committed: torch.BoolTensor
    confidence: torch.Tensor | None = None
    edited: torch.BoolTensor | None = None


class MaskedDiffusionScheduler(SchedulerMixin, ConfigMixin):
    order = 1

    @register_to_config
    def __init__(self, num_inference_steps: int = 64, schedule: str = "linear", eps: float = 1e-3,
                 rule: str = "confidence", temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, alg_temp: float = 0.0, threshold: float | None = None,
                 remasking: bool = False, editing_threshold: float | None = None, factor: float | None = None):
        get_schedule(schedule, eps)
        SamplingOptions(rule=rule, temperature=temperature, top_k=top_k, top_p=top_p, alg_temp=alg_temp,
                        threshold=threshold, remasking=remasking, editing_threshold=editing_threshold, factor=factor)
        self.set_timesteps(num_inference_steps)

    def sampling_options(self, **overrides) -> SamplingOptions:
        """The sampling options of a step: the config's, with `overrides`; checked."""
        return SamplingOptions(**{k: self.config[k] for k in SAMPLING_OPTIONS}).replace(**overrides)

    @property
    def noise_schedule(self):
        return get_schedule(self.config.schedule, self.config.eps)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Noise levels t_k = 1 - k/N for k = 0..N-1; step k goes from t_k to t_k - 1/N.

        `timesteps` holds them on `device`, `levels` as Python numbers: a loop that passes `levels[k]` to `step`
        steps without a host synchronisation (the models read the noise level from the ids, never from here)."""
        check_steps(num_inference_steps, "num_inference_steps")
        self.num_inference_steps = num_inference_steps
        self.levels = torch.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].tolist()
        self.timesteps = torch.linspace(1.0, 0.0, num_inference_steps + 1, device=device)[:-1]

    def _next_t(self, t: float) -> float:
        return max(t - 1.0 / self.num_inference_steps, 0.0)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.LongTensor, *,
             mask_token_id: int, editable: torch.BoolTensor | None = None, confidence: torch.Tensor | None = None,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True,
             **overrides):
        """One reverse step. `model_output` (B, L, V) are logits aligned with `sample` (B, L).

        `timestep`: a level of `levels` (or of `timesteps`, which, on an accelerator, the host must wait to read).
        Only masked positions that are `editable` (default: all) can be committed (or, with
        remasking, taken back; with editing, replaced). `confidence`: the previous step's
        `out.confidence` (remasking, editing; None at the first step). Any sampling option of the
        config can be overridden per call. `generator`: one, or a list with one per row.
        """
        options = self.sampling_options(**overrides)
        if sample.ndim != 2 or model_output.shape[:2] != sample.shape:
            raise ValueError(f"need sample (B, L) and model_output (B, L, V); got {tuple(sample.shape)} "
                             f"and {tuple(model_output.shape)}")
        t = float(timestep)
        out = reverse_step(model_output, sample, t, self._next_t(t), mask_token_id, self.noise_schedule, options,
                           editable=editable, confidence=confidence, first=t >= self.levels[0],
                           generator=generator)
        out = MaskedDiffusionSchedulerOutput(prev_sample=out.ids, pred_original_sample=out.pred,
                                             committed=out.committed, confidence=out.confidence,
                                             edited=out.edited)
        return out if return_dict else out.to_tuple()

    def add_noise(self, original_samples: torch.LongTensor, t: torch.Tensor, mask_token_id: int,
                  generator: torch.Generator | None = None, protect: torch.BoolTensor | None = None):
        """The forward process (for training loops written against the scheduler)."""
        return corrupt(original_samples, t, mask_token_id, self.noise_schedule, protect=protect,
                       generator=generator)[0]

    def __len__(self) -> int:
        return self.num_inference_steps
