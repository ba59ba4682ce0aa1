"""One denoising loop for the multimodal pipelines: streams in, guidance, generators, history and
callbacks handled here once.

A joint sample is a list of streams: an image (flow-matched latents, `FlowImage`, or masked VQ
codes, `MaskedTokens`) and a caption (masked token ids, `MaskedTokens`). A stream is either
generated, in the first `num_steps` steps of the loop, or given and held fixed as a condition.
Every step runs the denoiser once on all streams, with the unconditional passes of
classifier-free guidance in the same batch, and advances each stream still being generated
through its own scheduler.

Guidance u + (1 + w)(c - u) (`mmdlm.diffusion.guide`): a `Guidance(target, condition, scale)`
applies at a step while its target is being generated and its condition is `informative` (a given
image; masked ids with at least one known token, e.g. the words committed so far). The
unconditional pass sees the condition `hidden`: pure noise at the highest noise level, or every
token masked, the "nothing" that dropout showed the model in training.

`generator`: one torch.Generator for the batch, or a list with one per sample, in which case every
random draw of a sample comes from its own generator (the same sample in any batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..diffusion import check_generators, guide

Generator = torch.Generator | list[torch.Generator] | None


@dataclass(frozen=True)
class Guidance:
    """Guide stream `target` by stream `condition` with scale w (0: off)."""

    target: str
    condition: str
    scale: float


class Stream:
    """One modality of a joint sample. Subclasses hold the state and know how to step it."""

    name: str
    generated: bool
    num_steps: int
    history_key: str

    def start(self, may_hide: bool, generator: Generator) -> None:
        """Before the first step: lay out the timesteps, draw what is drawn once."""

    def inputs(self, hidden: bool) -> dict[str, torch.Tensor]:
        """What the denoiser reads of this stream (keys start with the stream's name)."""
        raise NotImplementedError

    def informative(self) -> bool:
        """Whether the stream holds something to condition on."""
        raise NotImplementedError

    def timestep(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def step(self, i: int, output: torch.Tensor, generator: Generator) -> None:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a step callback sees (and may replace) under their pipeline names."""
        raise NotImplementedError

    def replace(self, changed: dict) -> None:
        raise NotImplementedError

    def history(self, i: int) -> torch.Tensor | None:
        raise NotImplementedError


class MaskedTokens(Stream):
    """Token ids with [MASK] where they are generated: caption tokens or VQ image codes.

    `options` go to every `scheduler.step` (temperature, rule, ...); a remasking scheduler's
    confidences are carried from step to step. `names` = (callback name of the ids, callback name
    of the prediction or None). `to_history` turns the prediction into the history's value
    (e.g. decoded images; default: the ids themselves).
    """

    def __init__(self, name: str, ids: torch.LongTensor, *, mask_token_id: int, scheduler, generated: bool,
                 num_steps: int = 0, options: dict | None = None, attention_mask: torch.Tensor | None = None,
                 names: tuple[str, str | None] = ("text_ids", None), history_key: str = "text_ids",
                 to_history: Callable | None = None):
        self.name, self.ids, self.mask_token_id, self.scheduler = name, ids, mask_token_id, scheduler
        self.generated, self.num_steps = generated, num_steps if generated else 0
        self.options, self.attention_mask = dict(options or {}), attention_mask
        self.names, self.history_key, self.to_history = names, history_key, to_history
        self.pred, self.confidence = ids, None
        self._known = None  # whether some token is known: read once, then followed without reading the device

    def start(self, may_hide, generator):
        if self.generated:
            self.scheduler.set_timesteps(self.num_steps, device=self.ids.device)
        if may_hide:
            self._known = bool((self.ids != self.mask_token_id).any())

    def inputs(self, hidden):
        ids = torch.full_like(self.ids, self.mask_token_id) if hidden else self.ids
        out = {self.name: ids}
        if self.attention_mask is not None:
            out[f"{self.name}_attention_mask"] = self.attention_mask
        return out

    def informative(self):
        # Known after any step: each commits at least one token of every row with a mask (a remasking step keeps
        # at least as many as it found), so only the reading at the start (or after a callback) needs the device.
        if self._known is None:
            self._known = bool((self.ids != self.mask_token_id).any())
        return self._known

    def timestep(self, i):
        return self.scheduler.timesteps[i]

    def step(self, i, logits, generator):
        out = self.scheduler.step(logits, self.scheduler.levels[i], self.ids, mask_token_id=self.mask_token_id,
                                  generator=generator, confidence=self.confidence, **self.options)
        self.ids, self.pred, self.confidence = out.prev_sample, out.pred_original_sample, out.confidence
        self._known = True

    def tensors(self):
        ids_name, pred_name = self.names
        pred = self.pred if self.generated else self.ids
        return {ids_name: self.ids, **({pred_name: pred} if pred_name else {})}

    def replace(self, changed):
        if self.names[0] in changed:
            self.ids, self._known = changed[self.names[0]], None

    def history(self, i):
        if not self.generated:
            return None
        if self.to_history is not None:
            return self.to_history(self.pred).detach()
        return self.ids.detach().clone()


class FlowImage(Stream):
    """Image latents (or pixels) on diffusers' flow matching: x_t = (1 - sigma) x_0 + sigma noise,
    the denoiser predicts the velocity noise - x_0, `FlowMatchEulerDiscreteScheduler` steps.

    Given (not generated), the image stays clean at timestep 0. Inpainting: `known` (clean latents)
    and `keep` (B, 1, h, w), 1 where the known image stays: after each step the kept region is reset
    to the known image at the new noise level, with the `noise` the latents started from.
    `to_image` turns latents into the history's images (the clean-image estimate of each step).
    `timesteps_kwargs` go to `scheduler.set_timesteps` (e.g. `mu` for dynamic shifting).
    """

    history_key = "images"

    def __init__(self, latents: torch.Tensor, *, scheduler, generated: bool, num_steps: int = 0,
                 known: torch.Tensor | None = None, keep: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                 to_image: Callable | None = None, timesteps_kwargs: dict | None = None, name: str = "image"):
        self.name, self.latents, self.scheduler = name, latents, scheduler
        self.generated, self.num_steps = generated, num_steps if generated else 0
        self.known, self.keep, self.noise, self.to_image = known, keep, noise, to_image
        self.timesteps_kwargs = dict(timesteps_kwargs or {})
        self.hidden_noise = self.estimate = None
        self.t = torch.zeros((), device=latents.device)

    def start(self, may_hide, generator):
        if self.generated:
            self.scheduler.set_timesteps(self.num_steps, device=self.latents.device, **self.timesteps_kwargs)
            self.scheduler.set_begin_index(0)  # its step index from 0, not searched for in the timesteps
            self.t = self.scheduler.timesteps[0]
        if may_hide and not self.generated:  # only a given image conditions anything
            self.hidden_noise = randn_tensor(self.latents.shape, generator=generator, device=self.latents.device,
                                             dtype=self.latents.dtype)

    def inputs(self, hidden):
        b = self.latents.shape[0]
        if hidden:
            top = torch.full((b,), float(self.scheduler.config.num_train_timesteps), device=self.latents.device)
            return {self.name: self.hidden_noise, f"{self.name}_timestep": top}
        return {self.name: self.latents, f"{self.name}_timestep": self.t.expand(b)}

    def informative(self):
        return not self.generated

    def timestep(self, i):
        return self.scheduler.timesteps[i] if self.generated else self.t

    def step(self, i, velocity, generator):
        t = self.scheduler.timesteps[i]
        sigma = t / self.scheduler.config.num_train_timesteps  # a 0-d tensor: nothing is read back to the host
        self.estimate = self.latents - sigma * velocity  # x_0 = x_t - sigma v
        latents = self.scheduler.step(velocity, t, self.latents, generator=generator, return_dict=False)[0]
        if self.keep is not None:
            sigmas = self.scheduler.sigmas
            s_next = sigmas[min(i + 1, len(sigmas) - 1)]
            latents = self.keep * ((1 - s_next) * self.known + s_next * self.noise) + (1 - self.keep) * latents
        self.latents = latents
        if i + 1 < self.num_steps:
            self.t = self.scheduler.timesteps[i + 1]

    def tensors(self):
        return {"latents": self.latents}

    def replace(self, changed):
        self.latents = changed.get("latents", self.latents)

    def history(self, i):
        if not self.generated:
            return None
        image = self.estimate if i < self.num_steps - 1 else self.latents
        image = self.to_image(image) if self.to_image is not None else image
        return image.detach().clone()


@dataclass
class JointOutput:
    streams: dict[str, Stream]
    history: list[dict] | None
    nfe: int


def batch_size(streams: list[Stream]) -> int:
    first = streams[0]
    return (first.ids if isinstance(first, MaskedTokens) else first.latents).shape[0]


@torch.no_grad()
def joint_loop(streams: list[Stream], denoise: Callable[[dict], dict], *, guidance: tuple[Guidance, ...] = (),
               generator: Generator = None, callback: Callable | None = None,
               record_history: bool = False) -> JointOutput:
    """Denoise the generated `streams` together. `denoise(inputs)` runs the model once on the
    merged `Stream.inputs` (each tensor batched over the passes) and returns {stream name: output}.
    `callback(step, timestep, tensors) -> dict | None` runs after every step with every stream's
    `tensors()` and may return replacements. With `record_history`, each step adds
    {stream.history_key: stream.history(step)}."""
    by_name = {s.name: s for s in streams}
    generated = [s for s in streams if s.generated]
    if not generated:
        raise ValueError("nothing to generate: every stream is given")
    b = batch_size(streams)
    check_generators(generator, b)
    guidance = tuple(g for g in guidance if g.scale != 0 and by_name[g.target].generated)
    for s in streams:
        s.start(any(g.condition == s.name for g in guidance), generator)
    history: list[dict] = []
    nfe = 0
    for i in range(max(s.num_steps for s in generated)):
        active = [s for s in generated if i < s.num_steps]
        guided = [g for g in guidance if by_name[g.target] in active and by_name[g.condition].informative()]
        passes = [None] + [g.condition for g in guided]  # which stream each pass hides
        inputs: dict[str, torch.Tensor] = {}
        for s in streams:
            parts = [s.inputs(hidden=hide == s.name) for hide in passes]
            inputs.update({k: torch.cat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]})
        out = denoise(inputs)
        nfe += 1
        for s in active:
            chunks = out[s.name].split(b)
            result = chunks[0]
            for k, g in enumerate(guided, start=1):
                if g.target == s.name:
                    result = guide(result, chunks[k], g.scale)
            s.step(i, result, generator)
        if callback is not None:
            tensors = {k: v for s in streams for k, v in s.tensors().items()}
            changed = callback(i, active[0].timestep(i), tensors) or {}
            for s in streams:
                s.replace(changed)
        if record_history:  # kept on the device until the end: copying each step would wait for it
            history.append({s.history_key: s.history(i) for s in streams})
    return JointOutput(streams=by_name, history=_on_host(history) if record_history else None, nfe=nfe)


def _on_host(frames: list[dict]) -> list[dict]:
    """The history's tensors on the host, each stream's steps copied at once (one wait for the device, not one
    per step)."""
    out = [dict(frame) for frame in frames]
    for key in frames[0] if frames else ():
        values = [frame[key] for frame in frames]
        if any(v is None for v in values) or len({v.shape for v in values}) > 1:
            copied = [None if v is None else v.cpu() for v in values]
        else:
            copied = torch.stack(values).cpu().unbind(0)
        for frame, value in zip(out, copied):
            frame[key] = value
    return out
