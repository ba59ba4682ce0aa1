"""`DualDiffusionPipeline`: text-to-image, captioning, question answering, joint generation,
caption infilling and inpainting with one MM-DiT (D-DiT), through one denoising loop.

Components: the `DualDiffusionTransformer2DModel`, the caption tokenizer, diffusers'
`FlowMatchEulerDiscreteScheduler` for the image (in any of its settings; other schedulers are
refused whenever they are set, see `check_image_scheduler`), `MaskedDiffusionScheduler` for the
text, and an optional `AutoencoderKL` (SD3-style latents; without one the model works on pixels). The
call follows the shared multimodal convention (`mmdlm.pipelines.multimodal`); the loop is
`mmdlm.pipelines.joint_loop`, with the image as a `FlowImage` stream and the caption as a
`MaskedTokens` stream.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from ..images import to_tensor
from ..multimodal.mmdit import DualDiffusionTransformer2DModel
from ..multimodal.text import attention_mask, decode_captions, encode_captions
from ..schedulers import MaskedDiffusionScheduler
from .joint_loop import FlowImage, Guidance, MaskedTokens, joint_loop
from .multimodal import (
    CARD_EXAMPLE,
    MultimodalPipelineOutput,
    check_call_options,
    check_component,
    count_images,
    format_images,
    register_pipeline,
    resolve_task,
    resolve_text_steps,
    step_callback,
)
from .sharing import SharedPipeline


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


def image_timesteps_kwargs(scheduler, latents: torch.Tensor, patch_size: int) -> dict:
    """What `scheduler.set_timesteps` needs beyond the step count: `mu` under `use_dynamic_shifting`
    (the shift of the noise levels grows with the image's sequence length, in patches, as in diffusers'
    SD3 and Flux pipelines)."""
    c = scheduler.config
    if not c.use_dynamic_shifting:
        return {}
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    seq_len = (latents.shape[-2] // patch_size) * (latents.shape[-1] // patch_size)
    return {"mu": calculate_shift(seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)}


@register_pipeline
class DualDiffusionPipeline(SharedPipeline, DiffusionPipeline):
    """An MM-DiT that draws images from captions and captions images (see the module docstring)."""

    card_title = "MM-DiT image-text pipeline (mmdlm DualDiffusionPipeline)"
    card_about = ("One MM-DiT (D-DiT) for text-to-image, captioning, question answering, joint generation, "
                  "caption infilling and inpainting: flow matching on the image, masked diffusion on the text.")
    card_example = CARD_EXAMPLE
    card_tags = ("text-to-image", "image-to-text", "masked-diffusion", "mm-dit")
    card_pipeline_tag = "text-to-image"

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents", "text_ids"]
    backbone = "mmdit"

    def __init__(self, transformer: DualDiffusionTransformer2DModel, tokenizer,
                 scheduler: FlowMatchEulerDiscreteScheduler, text_scheduler: MaskedDiffusionScheduler,
                 vae: AutoencoderKL | None = None):
        super().__init__()
        check_component("transformer", transformer, DualDiffusionTransformer2DModel)
        if getattr(tokenizer, "mask_token_id", None) is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs a mask and an EOS token (mmdlm.multimodal.ensure_caption_tokens)")
        if tokenizer.mask_token_id != transformer.mask_token_ids["text"]:
            raise ValueError(f"the tokenizer's mask token id is {tokenizer.mask_token_id} but the transformer's is "
                             f"{transformer.mask_token_ids['text']}: they do not belong together")
        if len(tokenizer) > transformer.config.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the transformer's vocabulary has "
                             f"{transformer.config.vocab_size}: they do not belong together")
        channels = vae.config.latent_channels if vae is not None else 3
        if transformer.config.in_channels != channels:
            where = f"the VAE's latents have {channels}" if vae is not None else "pixels have 3 (no VAE)"
            raise ValueError(f"the transformer takes {transformer.config.in_channels} channels but {where}")
        self.register_modules(transformer=transformer, tokenizer=tokenizer, scheduler=scheduler,
                              text_scheduler=text_scheduler, vae=vae)

    def __setattr__(self, name, value):
        # the schedulers are checked whenever they are set: by __init__ (register_modules), from_pretrained
        # or `pipe.scheduler = ...`
        if name == "scheduler":
            check_image_scheduler(value)
        elif name == "text_scheduler":
            check_component(name, value, MaskedDiffusionScheduler)
        super().__setattr__(name, value)

    # ------------------------------------------------------------------ sizes
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @property
    def image_size(self) -> int:
        """Side of the images in pixels."""
        return self.transformer.config.sample_size * self.vae_scale_factor

    @property
    def text_length(self) -> int:
        return self.transformer.config.text_length

    # ------------------------------------------------------------------ image <-> latents
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> what the transformer denoises (pixels, or scaled VAE latents)."""
        if self.vae is None:
            return pixels
        dist = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
        shift = self.vae.config.shift_factor or 0.0
        return (dist.mode() - shift) * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents.clamp(-1, 1)
        shift = self.vae.config.shift_factor or 0.0
        z = latents / self.vae.config.scaling_factor + shift
        return self.vae.decode(z.to(self.vae.dtype)).sample.clamp(-1, 1)

    def _pixels(self, image) -> torch.Tensor:
        return to_tensor(image, self.image_size).to(self.device)

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, prompt=None, image=None, task: str | None = None, *, mask_image=None,
                 num_inference_steps: int = 20, guidance_scale: float = 2.0, text_guidance_scale: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pil",
                 return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] | None = None, num_images_per_prompt: int = 1,
                 return_history: bool = False, rule: str | None = None, temperature: float | None = None,
                 text_steps: int | None = None):
        """Run `task` (inferred from the inputs when None): see `mmdlm.pipelines.multimodal`.

        `rule` and `temperature` override the text scheduler's choice of tokens (e.g.
        temperature 1.0 for varied captions); `text_steps`: the caption is generated in the first
        `text_steps` steps (default: all, half in `joint`); `generator` may be a list, one per sample.
        """
        task = resolve_task(prompt, image, task, mask_image=mask_image)
        check_call_options(num_inference_steps=num_inference_steps, num_images_per_prompt=num_images_per_prompt,
                           output_type=output_type, guidance_scale=guidance_scale,
                           text_guidance_scale=text_guidance_scale, temperature=temperature)
        bad = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"callback tensor inputs must be among {self._callback_tensor_inputs}, got {sorted(bad)}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        k = num_images_per_prompt
        tok, mask_id, length = self.tokenizer, self.transformer.mask_token_ids["text"], self.text_length
        n = max(len(prompts), count_images(image), 1)

        pixels = self._pixels(image) if image is not None else None
        if pixels is not None and len(pixels) == 1 and n > 1:
            pixels = pixels.expand(n, -1, -1, -1)
        if prompts:
            ids = encode_captions(tok, prompts, length, mask_token_id=mask_id, refuse_unknown=True).to(self.device)
            ids = ids.expand(n, -1) if len(ids) == 1 else ids
        else:  # caption / joint / unconditional inpainting: the whole canvas is generated
            ids = torch.full((n, length), mask_id, dtype=torch.long, device=self.device)
        ids = ids.repeat_interleave(k, 0)
        b = len(ids)
        pad = tok.pad_token_id if tok.pad_token_id not in (None, tok.eos_token_id) else None
        text_mask = attention_mask(ids, pad)
        text_mask = None if bool(text_mask.all()) else text_mask

        c, h = self.transformer.config.in_channels, self.transformer.config.sample_size
        noise = randn_tensor((b, c, h, h), generator=generator, device=self.device, dtype=torch.float32)
        image_noisy = task in ("t2i", "joint", "inpaint") or (task == "infill" and pixels is None)
        known = keep = None
        if pixels is not None:
            known = self.encode_images(pixels).float().repeat_interleave(k, 0)
        if task == "inpaint":
            regenerate = self._pixels(mask_image)[:, :1].add(1).div(2)  # white (1) = regenerate
            regenerate = torch.nn.functional.interpolate(regenerate, size=(h, h), mode="area").round()
            keep = (1 - regenerate).expand(n, -1, -1, -1).repeat_interleave(k, 0)
        text_options = {key: v for key, v in dict(rule=rule, temperature=temperature).items() if v is not None}
        text_steps = resolve_text_steps(text_steps, num_inference_steps, task)
        if image_noisy:
            check_image_scheduler(self.scheduler)  # its settings may have changed since it was set
        patch = self.transformer.config.patch_size
        streams = [
            FlowImage(noise if image_noisy else known, scheduler=self.scheduler, generated=image_noisy,
                      num_steps=num_inference_steps, known=known, keep=keep, noise=noise,
                      to_image=self.decode_latents if return_history else None,
                      timesteps_kwargs=image_timesteps_kwargs(self.scheduler, noise, patch)),
            MaskedTokens("text", ids, mask_token_id=mask_id, scheduler=self.text_scheduler,
                         generated=bool((ids == mask_id).any()), num_steps=text_steps, options=text_options,
                         attention_mask=text_mask)]
        if not image_noisy and not streams[1].generated:
            raise ValueError("nothing to generate: the image is given and the caption has no [MASK] position")

        def denoise(x):  # the ids come from the tokenizer and the scheduler: no range check needed
            out = self.transformer(x["image"].to(self.transformer.dtype), x["text"], x["image_timestep"],
                                   text_attention_mask=x.get("text_attention_mask"), check_ids=False)
            return {"image": out.sample.to(torch.float32), "text": out.text_logits}

        bar = self.progress_bar(total=num_inference_steps if image_noisy else text_steps)
        out = joint_loop(streams, denoise, guidance=(Guidance("image", "text", guidance_scale),
                                                     Guidance("text", "image", text_guidance_scale)),
                         generator=generator, callback=step_callback(self, bar, callback_on_step_end,
                                                                     callback_on_step_end_tensor_inputs),
                         record_history=return_history)
        bar.close()
        images = texts = None
        if image_noisy:
            images = format_images(self.decode_latents(out.streams["image"].latents), output_type)
        if task in ("caption", "joint", "vqa", "infill"):
            texts = decode_captions(tok, out.streams["text"].ids, stop_at_eos=task in ("caption", "joint"))
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, texts
        return MultimodalPipelineOutput(images=images, texts=texts, history=out.history)
