"""The discrete backbone's recipe (Muddit): one masked diffusion over VQ codes and caption tokens.

Images are turned into VQ codes once, before training (the VQ model is frozen). Each sample
draws a task (`draw_tasks`): text-to-image (caption clean, image masked), captioning (image
clean, caption masked) or joint (both masked, each with its own noise level). Both streams
are masked through the shared core (`corrupt`), the caption on the cosine schedule and the
codes on `image_schedule` (cosine by default; linear puts more samples near the clean end). The
caption of a text-to-image sample is replaced by an all-[MASK] caption with probability
`caption_dropout` (the unconditional pass of guidance). Loss = image CE + `text_loss_weight` x
text CE, each the plain cross-entropy averaged over the masked tokens of the batch (MaskGIT /
Meissonic / Muddit; `masked_diffusion_loss(normalize="masked", elbo_weight=False)`).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..diffusion import corrupt, get_schedule, masked_diffusion_loss
from .multimodal import (
    TRAIN_TASKS,
    draw_tasks,
    drop_captions,
    encode_split,
    lora_transformer,
    mm_training_data,
    savable_transformer,
    task_texts,
)
from .trainer import Trainer

DEFAULT_IMAGE_TOKENIZER = "assets/vq"
T2I, CAPTION, JOINT = (TRAIN_TASKS.index(t) for t in ("t2i", "caption", "joint"))


class DiscreteTrainer(Trainer):
    """Batches are {"codes": (B, h*w), "text_ids": (B, L)[, "caption_ids": (B, L)]}."""

    def __init__(self, model, train_data, args, *, task_weights, text_loss_weight: float = 1.0,
                 caption_dropout: float = 0.1, image_schedule: str = "cosine", pipeline_parts: dict | None = None,
                 **kwargs):
        super().__init__(model, train_data, args, **kwargs)
        self.task_weights, self.text_loss_weight, self.caption_dropout = task_weights, text_loss_weight, caption_dropout
        self.text_schedule, self.image_schedule = get_schedule("cosine"), get_schedule(image_schedule)
        self.pipeline_parts = pipeline_parts  # vqvae, tokenizer, scheduler: saved with the model as a pipeline

    def losses(self, model, batch, generator):
        """(image loss, text loss) of one batch."""
        core = self.accelerator.unwrap_model(model)
        k, text_mask = core.mask_token_ids["image"], core.mask_token_ids["text"]
        codes = batch["codes"]
        b, side = codes.shape[0], core.config.sample_size
        tasks = draw_tasks(b, self.task_weights, generator).to(codes.device)
        t2i, caption = tasks == T2I, tasks == CAPTION
        text = task_texts(batch, t2i)
        text_in, _ = drop_captions(text, self.caption_dropout, text_mask, generator, rows=t2i)
        t_img = self.image_schedule.sample_t(b, generator=generator, method="stratified").to(codes.device)
        t_txt = self.text_schedule.sample_t(b, generator=generator, method="stratified").to(codes.device)
        x_img, m_img = corrupt(codes, t_img, k, self.image_schedule, protect=caption[:, None].expand_as(codes),
                               generator=generator)
        x_txt, m_txt = corrupt(text_in, t_txt, text_mask, self.text_schedule, protect=t2i[:, None].expand_as(text),
                               generator=generator)
        out = model(x_img.view(b, side, side), x_txt, check_ids=False)  # ids from the run's tokenizer and VQ model
        common = dict(normalize="masked", elbo_weight=False)
        image_loss = masked_diffusion_loss(out.image_logits, codes, m_img, t_img, self.image_schedule, **common)
        text_loss = masked_diffusion_loss(out.text_logits, text, m_txt, t_txt, self.text_schedule, **common)
        return image_loss, text_loss

    def compute_loss(self, model, batch, step, generator):
        image_loss, text_loss = self.losses(model, batch, generator)
        n_tokens = batch["codes"].numel() + batch["text_ids"].numel()
        return image_loss + self.text_loss_weight * text_loss, n_tokens

    def save_model(self, model, path: Path) -> None:
        transformer = savable_transformer(model, path)
        if self.pipeline_parts is None:
            transformer.save_pretrained(path)
            return
        from ..pipelines.unified_discrete import UnifiedDiscretePipeline

        UnifiedDiscretePipeline(transformer=transformer.eval(), **self.pipeline_parts).save_pretrained(path)
        model.train()


def encode_images(image_tokenizer, pixels: torch.Tensor, batch_size: int = 64) -> torch.LongTensor:
    """(N, 3, H, W) -> (N, h*w) codes, in batches."""
    codes = [image_tokenizer.encode(pixels[i:i + batch_size]).flatten(1).cpu()
             for i in range(0, len(pixels), batch_size)]
    return torch.cat(codes)


def train_discrete(c) -> Path:
    """`mmdlm train-mm --backbone discrete`: encode the images with the VQ model, train the
    transformer, save OUTPUT_DIR/model as a `UnifiedDiscretePipeline`."""
    from ..multimodal.discrete import UnifiedDiscreteTransformer
    from ..multimodal.tokenizers import VQImageTokenizer
    from ..provenance import command_line, versions
    from ..schedulers import MaskedDiffusionScheduler
    from .multimodal import check_pretrained_architecture, check_task_weights, sampling_scheduler

    check_task_weights(c.task_weights)
    scheduler = sampling_scheduler(MaskedDiffusionScheduler, c.sampler, schedule="cosine", rule="confidence")
    image_tok = VQImageTokenizer.from_pretrained(c.image_tokenizer or DEFAULT_IMAGE_TOKENIZER)
    image_tok.vqvae.requires_grad_(False)
    grid = image_tok.grid(c.image_size)
    data = mm_training_data(c)
    tok = data.tokenizer

    def coded(split):
        return encode_split(split, "codes", lambda pixels: encode_images(image_tok, pixels))

    train = coded(data.train)
    eval_data = None if data.eval is None else coded(data.eval)

    torch.manual_seed(c.seed)
    if c.pretrained:
        model = UnifiedDiscreteTransformer.from_pretrained(c.pretrained, subfolder="transformer"
                                                           if (Path(c.pretrained) / "transformer").is_dir() else None)
        check_pretrained_architecture(model.config, c.model_config, c.pretrained)
        mc = model.config
        if (mc.codebook_size, mc.vocab_size, mc.mask_token_id, mc.sample_size) != \
                (image_tok.codebook_size, len(tok), tok.mask_token_id, grid):
            raise ValueError(f"the pretrained transformer (codebook {mc.codebook_size}, vocabulary {mc.vocab_size}, "
                             f"grid {mc.sample_size}) does not match this data (codebook {image_tok.codebook_size}, "
                             f"vocabulary {len(tok)}, grid {grid}); give its tokenizer and VQ model")
    else:
        fixed = dict(codebook_size=image_tok.codebook_size, vocab_size=len(tok), mask_token_id=tok.mask_token_id,
                     sample_size=grid, text_length=c.text_length)
        clash = set(fixed) & set(c.model_config)
        if clash:
            raise ValueError(f"model_config sets {sorted(clash)}, which come from the data, the tokenizer and the "
                             "VQ model; remove them")
        model = UnifiedDiscreteTransformer(**fixed, **c.model_config)
    model = lora_transformer(model, c)
    parts = dict(vqvae=image_tok.vqvae, tokenizer=tok, scheduler=scheduler, image_size=c.image_size,
                 vq_normalize=image_tok.normalize)
    run_info = {"command": command_line(), "config": asdict(c), "data": data.info,
                "image_tokenizer": c.image_tokenizer or DEFAULT_IMAGE_TOKENIZER, "code_grid": [grid, grid],
                "parameters": sum(p.numel() for p in model.parameters()), "versions": versions()}
    trainer = DiscreteTrainer(model, train, c, eval_data=eval_data, run_info=run_info, task_weights=c.task_weights,
                              text_loss_weight=c.text_loss_weight, caption_dropout=c.caption_dropout,
                              image_schedule=c.image_schedule, pipeline_parts=parts)
    final = trainer.train()
    trainer.announce("UnifiedDiscretePipeline", final)
    return final
