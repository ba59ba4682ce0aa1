"""One denoising loop for an image and a caption: each step advances whatever is still noisy.

The image (pixels or VAE latents) follows flow matching: x_t = (1 - sigma) x_0 + sigma noise,
the model predicts the velocity noise - x_0 and diffusers' `FlowMatchEulerDiscreteScheduler`
takes the Euler step (or, with its `stochastic_sampling`, draws x_s = (1 - s) x_0_hat + s noise with
fresh noise from `generator`). The caption is a canvas of token ids with [MASK] where text is to be
generated; `MaskedDiffusionScheduler` commits some masked tokens per step, on a schedule that
spans the first `text_steps` steps (all of them by default; fewer finish the caption sooner, so
that in joint generation the image has more steps left to follow it). A modality given clean
(the image when captioning, the caption for text-to-image) stays fixed at noise level 0.

Classifier-free guidance, u + (1 + w)(c - u) in both directions, from one batched pass:
- the image guided by the text (`guidance_scale`, whenever the caption holds a known token: the
  given prompt, or in joint generation the words committed so far): the unconditional pass sees
  the caption fully masked (the "no caption" of caption dropout in training);
- the text guided by the image (`text_guidance_scale`, when the image is given): the
  unconditional pass sees pure noise at sigma = 1 instead of the image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from ..diffusion._checks import check_finite


@dataclass
class DualGenerateOutput:
    latents: torch.Tensor
    text_ids: torch.LongTensor
    history: list[dict] | None = None
    nfe: int = 0


def mask_ratio(text_ids: torch.LongTensor, mask_token_id: int, attention_mask: torch.Tensor | None = None):
    """The text noise level the model is told: the share of masked tokens among the real ones, (B,)."""
    masked = (text_ids == mask_token_id).float()
    if attention_mask is None:
        return masked.mean(1)
    real = attention_mask.float()
    return (masked * real).sum(1) / real.sum(1).clamp_min(1)


def check_text_steps(text_steps: int | None, num_inference_steps: int) -> int:
    """The number of steps the caption is generated in: `text_steps`, or all of them when None."""
    if text_steps is None:
        return num_inference_steps
    if isinstance(text_steps, bool) or not isinstance(text_steps, int) or not 1 <= text_steps <= num_inference_steps:
        raise ValueError(f"text_steps must be an integer from 1 to num_inference_steps ({num_inference_steps}), "
                         f"got {text_steps!r}")
    return text_steps


def check_image_scheduler(scheduler) -> None:
    """Refuse an image scheduler the loop cannot drive: it takes one Euler step per timestep on
    flow-matching noise levels sigma = t / num_train_timesteps running from 1 to 0, which is what
    `FlowMatchEulerDiscreteScheduler` lays out in any of its settings but `invert_sigmas`."""
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        raise ValueError("scheduler must be a FlowMatchEulerDiscreteScheduler (any of its settings: shift, "
                         "stochastic_sampling, Karras / exponential / beta sigmas, dynamic shifting), got "
                         f"{type(scheduler).__name__}: the loop takes one flow-matching Euler step per timestep")
    if scheduler.config.invert_sigmas:
        raise ValueError("the scheduler's invert_sigmas=True runs the noise levels from 0 up to 1; the image is "
                         "denoised from sigma 1 down to 0: use invert_sigmas=False")


def set_image_timesteps(scheduler, num_inference_steps: int, latents: torch.Tensor, patch_size: int) -> None:
    """`scheduler.set_timesteps`, with `mu` under `use_dynamic_shifting`: the shift of the noise
    levels grows with the image's sequence length (patches), as in diffusers' SD3 and Flux pipelines."""
    options = {}
    if scheduler.config.use_dynamic_shifting:
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        c = scheduler.config
        seq_len = (latents.shape[-2] // patch_size) * (latents.shape[-1] // patch_size)
        options["mu"] = calculate_shift(seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift,
                                        c.max_shift)
    scheduler.set_timesteps(num_inference_steps, device=latents.device, **options)


def velocity_to_x0(latents: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """The clean-image estimate of flow matching: x_0 = x_t - sigma v."""
    return latents - sigma * velocity


def _guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + (1 + scale) * (cond - uncond)


@torch.no_grad()
def dual_generate(model, latents: torch.Tensor, text_ids: torch.LongTensor, *, image_noisy: bool,
                  mask_token_id: int, image_scheduler, text_scheduler, num_inference_steps: int,
                  guidance_scale: float = 0.0, text_guidance_scale: float = 0.0, text_steps: int | None = None,
                  text_attention_mask: torch.Tensor | None = None, known_image: torch.Tensor | None = None,
                  keep: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, callback: Callable | None = None,
                  record_history: bool = False, to_image: Callable | None = None) -> DualGenerateOutput:
    """Denoise `latents` (B, C, h, w) when `image_noisy` (they start as pure noise; otherwise
    they are the clean image) and the [MASK] positions of `text_ids` (B, L), together, in
    `num_inference_steps` steps, the caption within the first `text_steps` (default: all; a caption
    generated alone is then done after `text_steps` steps).

    Inpainting: `known_image` (clean latents) and `keep` (B, 1, h, w), 1 where the known image
    stays: after each step the kept region is reset to the known image at the new noise level,
    with the fixed `noise` the latents started from.
    `callback(step, timestep, state)` runs after each step with `state = {"latents", "text_ids"}`
    and may return replacements for either. With `record_history`, each step adds
    {"images": the current clean-image estimate through `to_image` (or None), "text_ids"}.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    text_steps = check_text_steps(text_steps, num_inference_steps)
    guidance_scale = check_finite(guidance_scale, "guidance_scale")
    text_guidance_scale = check_finite(text_guidance_scale, "text_guidance_scale")
    b = latents.shape[0]
    device = latents.device
    text_ids = text_ids.clone()
    text_noisy = bool((text_ids == mask_token_id).any())
    if not image_noisy and not text_noisy:
        raise ValueError("nothing to generate: the image is given and the caption has no [MASK] position")
    if image_noisy:
        check_image_scheduler(image_scheduler)
        set_image_timesteps(image_scheduler, num_inference_steps, latents, model.config.patch_size)
        image_steps = image_scheduler.timesteps
    if text_noisy:
        text_scheduler.set_timesteps(text_steps, device=device)
    # the text guides the image once it has words (from the start in t2i, as they are committed in
    # joint generation); the image guides the text only when given clean
    may_guide_image = image_noisy and guidance_scale > 0
    guide_text = text_noisy and not image_noisy and text_guidance_scale > 0
    if guide_text:
        hidden = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    text_generator = generator[0] if isinstance(generator, (list, tuple)) else generator
    history: list[dict] = []
    nfe = 0
    confidence = None  # the text's, carried from step to step by a remasking scheduler
    for i in range(num_inference_steps if image_noisy else text_steps):
        t_image = image_steps[i] if image_noisy else torch.zeros((), device=device)
        ratio = mask_ratio(text_ids, mask_token_id, text_attention_mask)
        guide_image = may_guide_image and bool((text_ids != mask_token_id).any())
        x, ids, ts, rs, att = latents, text_ids, t_image.expand(b), ratio, text_attention_mask
        if guide_image:  # unconditional: the caption fully masked
            x, ts = torch.cat([x, x]), torch.cat([ts, ts])
            ids = torch.cat([ids, torch.full_like(ids, mask_token_id)])
            rs = torch.cat([rs, torch.ones_like(rs)])
            att = None if att is None else torch.cat([att, att])
        elif guide_text:  # unconditional: the image hidden by pure noise at sigma = 1
            x = torch.cat([x, hidden])
            ts = torch.cat([ts, torch.full_like(ts, float(image_scheduler.config.num_train_timesteps))])
            ids, rs = torch.cat([ids, ids]), torch.cat([rs, rs])
            att = None if att is None else torch.cat([att, att])
        out = model(x.to(model.dtype), ids, ts, rs, text_attention_mask=att)
        nfe += 1
        velocity, logits = out.sample.to(latents.dtype), out.text_logits
        if guide_image:
            velocity = _guide(*velocity.chunk(2), guidance_scale)
            logits = logits[:b]
        elif guide_text:
            logits = _guide(*logits.chunk(2), text_guidance_scale)
            velocity = velocity[:b]

        if image_noisy:
            sigma = float(t_image) / image_scheduler.config.num_train_timesteps
            estimate = velocity_to_x0(latents, velocity, sigma)
            latents = image_scheduler.step(velocity, t_image, latents, generator=generator, return_dict=False)[0]
            if keep is not None:
                s_next = float(image_scheduler.sigmas[min(i + 1, len(image_scheduler.sigmas) - 1)])
                latents = keep * ((1 - s_next) * known_image + s_next * noise) + (1 - keep) * latents
        if text_noisy and i < text_steps:
            out_text = text_scheduler.step(logits, text_scheduler.timesteps[i], text_ids, mask_token_id=mask_token_id,
                                           confidence=confidence, generator=text_generator)
            text_ids, confidence = out_text.prev_sample, out_text.confidence
        if callback is not None:
            changed = callback(i, t_image, {"latents": latents, "text_ids": text_ids}) or {}
            latents = changed.get("latents", latents)
            text_ids = changed.get("text_ids", text_ids)
        if record_history:
            image = None
            if image_noisy:
                image = estimate if i < num_inference_steps - 1 else latents
                image = to_image(image) if to_image is not None else image
            history.append({"images": None if image is None else image.detach().cpu(),
                            "text_ids": text_ids.detach().cpu().clone() if text_noisy else None})
    return DualGenerateOutput(latents=latents, text_ids=text_ids, history=history if record_history else None,
                              nfe=nfe)
