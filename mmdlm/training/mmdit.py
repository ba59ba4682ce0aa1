"""Training of the MM-DiT (D-DiT): backbone `mmdit` of `mmdlm train-mm`.

Each sample draws a task (`draw_tasks`): t2i (caption clean, image noisy), caption (image
clean, caption noisy) or joint (both noisy, independent levels). Loss per batch:

    flow matching on the image (SD3): sigma = sigmoid(N(logit_mean, logit_std)),
        x_sigma = (1 - sigma) x_0 + sigma noise, target noise - x_0, mean squared error,
        averaged over the samples whose image is noisy;
  + text_loss_weight x the masked-diffusion loss of the core (`masked_diffusion_loss`,
        ELBO-weighted cross-entropy at masked tokens per eligible token) over the samples
        whose caption is noisy.

Classifier-free guidance in both directions: a t2i sample's caption is dropped with
probability `caption_dropout`, which in masked diffusion is simply the fully masked canvas
at text noise level 1 (the same input the unconditional pass sees at sampling; its tokens
count in the text loss like those of any fully masked caption); a captioning sample's image is
hidden with probability `image_dropout` behind pure noise at sigma = 1 (the unconditional
pass of text guidance), with no image loss, as its image is a condition. The model is told the
text noise level as the share of masked tokens on the canvas, exactly what it is told when
sampling. With a caption column, captioning and joint samples write `caption_ids` while t2i
reads `text_ids` (`task_texts`). With `ema_decay` the saved model holds an exponential moving
average of the weights (diffusers' `EMAModel`, with warmup).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling

from ..diffusion import corrupt, get_schedule, masked_diffusion_loss
from .multimodal import (
    TRAIN_TASKS,
    check_pretrained_architecture,
    check_task_weights,
    draw_tasks,
    drop_captions,
    task_texts,
)
from .trainer import Trainer

T2I, CAPTION, JOINT = (TRAIN_TASKS.index(t) for t in ("t2i", "caption", "joint"))


class MMDiTTrainer(Trainer):
    """The shared trainer with the D-DiT loss; data: {"pixels" or "latents", "text_ids"[, "caption_ids"]}."""

    def __init__(self, model, train_data, args, *, tokenizer, task_weights: dict,
                 text_loss_weight: float = 1.0, caption_dropout: float = 0.1, image_dropout: float = 0.1,
                 text_schedule: str = "linear", logit_mean: float = 0.0, logit_std: float = 1.0,
                 ema_decay: float = 0.0, save_pipeline=None, **kwargs):
        super().__init__(model, train_data, args, **kwargs)
        self.ema = None
        if ema_decay > 0:  # diffusers' EMAModel, with warmup; checkpointed with the rest of the state
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self._params(), decay=ema_decay, use_ema_warmup=True, power=3 / 4)
            self.register_state("ema", self.ema)
        self.tokenizer, self.mask_token_id = tokenizer, model.mask_token_ids["text"]
        self.task_weights = check_task_weights(task_weights)
        self.text_loss_weight = text_loss_weight
        self.caption_dropout, self.image_dropout = caption_dropout, image_dropout
        self.schedule = get_schedule(text_schedule)
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self.save_pipeline = save_pipeline

    def losses(self, model, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """{"loss", "image_loss", "text_loss"} of one batch; every draw comes from `generator`."""
        x0 = batch["latents"] if "latents" in batch else batch["pixels"]
        b, device = x0.shape[0], x0.device
        tasks = draw_tasks(b, self.task_weights, generator, device)
        t2i, caption = tasks == T2I, tasks == CAPTION
        ids = task_texts(batch, t2i)

        # image: noisy for t2i and joint, clean for captioning (or hidden behind pure noise)
        sigma = compute_density_for_timestep_sampling("logit_normal", b, self.logit_mean, self.logit_std,
                                                      device=device, generator=generator)
        hidden = caption & (torch.rand(b, generator=generator, device=device) < self.image_dropout)
        sigma = torch.where(caption, torch.where(hidden, 1.0, 0.0), sigma)
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
        s = sigma.view(b, 1, 1, 1).to(x0.dtype)
        x_sigma = (1 - s) * x0 + s * noise

        # text: noisy for captioning and joint, clean for t2i (or dropped: fully masked)
        t = self.schedule.sample_t(b, generator=generator, device=device, method="stratified")
        protect = t2i[:, None].expand_as(ids)
        x_text, masked = corrupt(ids, t, self.mask_token_id, self.schedule, protect=protect, generator=generator)
        x_text, dropped = drop_captions(x_text, self.caption_dropout, self.mask_token_id, generator, rows=t2i)
        masked = masked | dropped[:, None]
        t = torch.where(dropped, 1.0, t)

        # the model measures the text's noise level itself; the ids come from the run's tokenizer
        out = model(x_sigma, x_text, sigma * 1000, check_ids=False)
        noisy_image = ~caption
        per_sample = (out.sample.float() - (noise - x0).float()).pow(2).flatten(1).mean(1)
        image_loss = (per_sample * noisy_image).sum() / noisy_image.sum().clamp_min(1)
        eligible = (~t2i | dropped)[:, None].expand_as(ids)
        text_loss = masked_diffusion_loss(out.text_logits, ids, masked, t, self.schedule, eligible=eligible)
        return {"loss": image_loss + self.text_loss_weight * text_loss, "image_loss": image_loss,
                "text_loss": text_loss}

    def compute_loss(self, model, batch, step, generator):
        x0 = batch["latents"] if "latents" in batch else batch["pixels"]
        tokens = x0.shape[0] * (self._patches(model, x0) + batch["text_ids"].shape[1])
        return self.losses(model, batch, generator)["loss"], tokens

    @staticmethod
    def _patches(model, x0) -> int:
        p = getattr(model, "module", model).config.patch_size
        return (x0.shape[-1] // p) * (x0.shape[-2] // p)

    def _params(self):
        return list(self.accelerator.unwrap_model(self.model).parameters())

    def train_step(self) -> float:
        loss = super().train_step()
        if self.ema is not None:
            self.ema.step(self._params())
        return loss

    @contextlib.contextmanager
    def final_weights(self):
        """With `ema_decay`, the averaged weights are the ones saved (swapped in on every process)."""
        if self.ema is None:
            yield
            return
        self.ema.store(self._params())
        self.ema.copy_to(self._params())
        try:
            yield
        finally:
            self.ema.restore(self._params())

    def save_model(self, model, path: Path) -> None:
        """The final model, as a pipeline when one is given."""
        if self.save_pipeline is None:
            super().save_model(model, path)
        else:
            self.save_pipeline(model, path)


# ---------------------------------------------------------------------- the recipe
def load_vae(path: str):
    """An `AutoencoderKL` from a VAE folder (or a pipeline folder with a vae/ subfolder)."""
    from diffusers import AutoencoderKL

    subfolder = "vae" if (Path(path) / "vae" / "config.json").is_file() else None
    try:
        name = AutoencoderKL.load_config(path, subfolder=subfolder).get("_class_name")
    except EnvironmentError as err:
        raise ValueError(f"image_tokenizer: {path} holds no diffusers model ({err})") from err
    if name != "AutoencoderKL":
        raise ValueError(f"image_tokenizer: {path} holds a {name or 'model without _class_name'}, not an "
                         "AutoencoderKL; the mmdit backbone works on pixels or on a continuous VAE's latents")
    return AutoencoderKL.from_pretrained(path, subfolder=subfolder).eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(pipe_encode, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Latents of every image, computed once before training (the VAE is frozen)."""
    return torch.cat([pipe_encode(pixels[i:i + batch_size]).float().cpu() for i in range(0, len(pixels), batch_size)])


def build_transformer(c, vocab_size: int, mask_token_id: int, sample_size: int, channels: int):
    from ..multimodal.mmdit import DualDiffusionTransformer2DModel

    fixed = {"vocab_size": vocab_size, "mask_token_id": mask_token_id, "text_length": c.text_length,
             "sample_size": sample_size, "in_channels": channels, "out_channels": channels}
    clash = sorted(set(c.model_config) & set(fixed))
    if clash:
        raise ValueError(f"model_config sets {clash}, which follow from the data (tokenizer, text_length, "
                         "image_size, VAE); remove them")
    if c.pretrained:
        from ..multimodal.mmdit import SD3_CLASS

        sub = {"subfolder": "transformer"} if (Path(c.pretrained) / "transformer" / "config.json").is_file() else {}
        try:
            is_sd3 = DualDiffusionTransformer2DModel.load_config(c.pretrained, **sub).get("_class_name") == SD3_CLASS
        except EnvironmentError as err:
            raise ValueError(f"pretrained: {c.pretrained} holds no diffusers model ({err})") from err
        text = {k: fixed[k] for k in ("vocab_size", "text_length", "mask_token_id")} if is_sd3 else {}
        model = DualDiffusionTransformer2DModel.from_pretrained(c.pretrained, **sub, **text)
        check_pretrained_architecture(model.config, c.model_config, c.pretrained)
        for key, want in fixed.items():
            have = model.config[key]
            if key == "sample_size" or (key == "text_length" and have >= want):
                continue  # SD3 crops its position table; a longer text table is fine
            if have != want:
                raise ValueError(f"{c.pretrained} has {key}={have} but the data needs {want}")
        return model.train()
    torch.manual_seed(c.seed)
    default_pos = max(sample_size // c.model_config.get("patch_size", 2), 1)
    kwargs = {"pos_embed_max_size": default_pos, **c.model_config, **fixed}
    try:
        model = DualDiffusionTransformer2DModel(**kwargs)
    except TypeError as err:
        raise ValueError(f"model_config: {err}") from err
    return model.zero_init_modulation_()


def train_mmdit(c) -> Path:
    """`mmdlm train-mm --backbone mmdit`: build (or load) the MM-DiT, train it, save a pipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..pipelines.dual_diffusion import DualDiffusionPipeline
    from ..provenance import command_line, versions
    from ..schedulers import MaskedDiffusionScheduler
    from .multimodal import encode_split, lora_transformer, mm_training_data, sampling_scheduler, savable_transformer

    scheduler = sampling_scheduler(FlowMatchEulerDiscreteScheduler, c.sampler, shift=c.flow_shift)
    data = mm_training_data(c)
    vae = load_vae(c.image_tokenizer) if c.image_tokenizer else None
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    if c.image_size % factor:
        raise ValueError(f"image_size {c.image_size} is not a multiple of the VAE's downsampling factor {factor}")
    channels = vae.config.latent_channels if vae is not None else 3
    model = build_transformer(c, len(data.tokenizer), data.tokenizer.mask_token_id, c.image_size // factor, channels)
    if (c.image_size // factor) % model.config.patch_size:
        raise ValueError(f"the {'latent' if vae else 'image'} side {c.image_size // factor} is not a multiple of "
                         f"patch_size {model.config.patch_size}")
    text_scheduler = MaskedDiffusionScheduler(schedule=c.text_schedule)
    pipe = DualDiffusionPipeline(model, data.tokenizer, scheduler, text_scheduler, vae=vae)
    model = lora_transformer(model, c)
    train, evaluation = data.train, data.eval
    if vae is not None:
        def encoded(split):
            return encode_split(split, "latents", lambda pixels: encode_dataset(pipe.encode_images, pixels))

        train = encoded(train)
        evaluation = None if evaluation is None else encoded(evaluation)

    def save_pipeline(trained, path):
        trained = savable_transformer(trained, path)
        DualDiffusionPipeline(trained, data.tokenizer, scheduler, text_scheduler, vae=vae).save_pretrained(path)

    run_info = {"command": command_line(), "config": asdict(c), "data": data.info,
                "parameters": sum(p.numel() for p in model.parameters()), "versions": versions()}
    trainer = MMDiTTrainer(model, train, c, eval_data=evaluation, run_info=run_info, tokenizer=data.tokenizer,
                           task_weights=c.task_weights,
                           text_loss_weight=c.text_loss_weight, caption_dropout=c.caption_dropout,
                           image_dropout=c.image_dropout, text_schedule=c.text_schedule, logit_mean=c.logit_mean,
                           logit_std=c.logit_std, ema_decay=c.ema_decay, save_pipeline=save_pipeline)
    final = trainer.train()
    trainer.announce("DualDiffusionPipeline", final)
    return final
