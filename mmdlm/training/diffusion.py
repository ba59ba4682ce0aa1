"""The adaptation recipes as one trainer: masked-diffusion loss under a chosen attention mode.

- bidirectional (Dream, DiffuGPT): full attention from the first step.
- annealed (DiffuLLaMA): causal OR Bernoulli(ratio) entries, ratio = min(1, step/anneal_steps),
  one draw per optimizer step.
- block (BD3-LM, NBDiff): per-block noise levels and one pass over [x_t ; x_0] under the
  context-causal mask; with `block_warmup_steps` the block size doubles from 1 (pure AR) to
  the target (NBDiff's curriculum). An auxiliary AR loss (`ar_loss_weight`) is available in
  every mode: a causal pass over x_0 with next-token cross-entropy.

SFT (DiffuLLaMA ddm-sft, LLaDA) is the same trainer on data given as a dict
{"input_ids", "prompt_mask"}: prompt positions are protected (never masked) and left out of the
loss's normaliser, so with loss_normalize="token" the loss is the negative ELBO per response
token of p(response | prompt).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..diffusion import block_t, corrupt, get_schedule, masked_diffusion_loss
from ..diffusion._checks import check_finite
from ..text import attention as attn
from ..text.adapt import denoiser_logits, takes_logits_to_keep
from .trainer import Trainer

T_SAMPLING = ("uniform", "stratified", "antithetic")
NORMALIZE = ("token", "masked")


def block_size_at(step: int, target: int, warmup_steps: int) -> int:
    """NBDiff curriculum: 1, 2, 4, ... target in equal stages over `warmup_steps`."""
    if warmup_steps <= 0 or target == 1:
        return target
    stages = int(math.log2(target)) + 1
    return 2 ** min(stages - 1, step * stages // warmup_steps)


class DiffusionTrainer(Trainer):
    def __init__(self, dlm, train_data, args, *, tokenizer=None, ar_loss_weight: float = 0.0,
                 block_warmup_steps: int = 0, t_sampling: str = "stratified", loss_normalize: str = "token",
                 **kwargs):
        dc = dlm.config
        if t_sampling not in T_SAMPLING:
            raise ValueError(f"unknown t_sampling {t_sampling!r}; choose one of {', '.join(T_SAMPLING)}")
        if loss_normalize not in NORMALIZE:
            raise ValueError(f"unknown loss_normalize {loss_normalize!r}; choose one of {', '.join(NORMALIZE)}")
        check_finite(ar_loss_weight, "ar_loss_weight")
        if ar_loss_weight > 0 and not dc.shift:
            raise ValueError("an AR auxiliary loss needs shift=True (the AR alignment)")
        if block_warmup_steps and dc.attention == "block" and dc.block_size & (dc.block_size - 1):
            raise ValueError(f"the block curriculum doubles the block size: block_size must be a power of 2, "
                             f"got {dc.block_size}")
        if dc.attention == "annealed" and dc.anneal_steps <= 0:
            raise ValueError("attention 'annealed' needs anneal_steps > 0")
        super().__init__(dlm, train_data, args, **kwargs)
        self.dc, self.tokenizer = dc, tokenizer
        self.schedule = get_schedule(dc.schedule, dc.eps)
        self.ar_loss_weight, self.block_warmup_steps = ar_loss_weight, block_warmup_steps
        self.t_sampling, self.loss_normalize = t_sampling, loss_normalize
        self.head_on_kept_only = takes_logits_to_keep(dlm)

    def _pattern(self, length: int, step: int, device) -> torch.Tensor | None:
        """The training pattern of a non-block mode at `step`: annealing's draw while the mask opens, else None,
        the inference pattern, which the model runs without a 4D mask where its probe allows."""
        ratio = min(1.0, step / self.dc.anneal_steps) if self.dc.attention == "annealed" else 1.0
        if ratio >= 1.0:
            return None
        g = torch.Generator(device).manual_seed(self.args.seed * 7919 + step)
        return attn.annealed(length, ratio, generator=g, device=device)

    def diffusion_loss(self, model, x0: torch.Tensor, step: int, generator: torch.Generator,
                       prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`prompt_mask` (bool, like x0): positions never masked nor counted (SFT prompts)."""
        b, length = x0.shape
        protect = torch.zeros_like(x0, dtype=torch.bool) if prompt_mask is None else prompt_mask.bool().clone()
        if self.dc.shift:
            protect[:, 0] = True  # nothing predicts position 0
        if self.dc.attention == "block":
            bs = block_size_at(step, self.dc.block_size, self.block_warmup_steps)
            t_blocks = self.schedule.sample_t(b * math.ceil(length / bs), generator=generator, device=x0.device,
                                              method=self.t_sampling).view(b, -1)
            t, pattern = block_t(t_blocks, bs, length), None
        else:
            bs = None
            t = self.schedule.sample_t(b, generator=generator, device=x0.device, method=self.t_sampling)
            pattern = self._pattern(length, step, x0.device)
        x_t, masked = corrupt(x0, t, self.dc.mask_token_id, self.schedule, protect=protect, generator=generator)
        logits = denoiser_logits(model, self.dc, x0, x_t, masked, pattern=pattern, block_size=bs,
                                 head_on_kept_only=self.head_on_kept_only)
        return masked_diffusion_loss(logits, x0, masked, t, self.schedule, normalize=self.loss_normalize,
                                     eligible=~protect)

    @staticmethod
    def unpack(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(token ids, prompt mask or None) from a tensor or a {"input_ids", "prompt_mask"} dict."""
        if isinstance(batch, torch.Tensor):
            return batch, None
        if "input_ids" not in batch:
            raise ValueError(f"a diffusion training batch needs 'input_ids'; got keys {sorted(batch)}")
        return batch["input_ids"], batch.get("prompt_mask")

    def compute_loss(self, model, batch, step, generator):
        x0, prompt = self.unpack(batch)
        loss = self.diffusion_loss(model, x0, step, generator, prompt_mask=prompt)
        if self.ar_loss_weight > 0:
            logits = model(x0, pattern=attn.causal(x0.shape[1], x0.device)).logits
            ce = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), x0[:, 1:], reduction="none")
            keep = torch.ones_like(ce, dtype=torch.bool) if prompt is None else ~prompt[:, 1:].bool()
            loss = loss + self.ar_loss_weight * (ce * keep).sum() / keep.sum().clamp_min(1)
        return loss, x0.numel()

    def eval_loss(self, model, batch, generator):
        x0, prompt = self.unpack(batch)
        return self.diffusion_loss(model, x0, self.args.max_steps, generator, prompt_mask=prompt)

    def save_model(self, model, path: Path) -> None:
        model.save_pretrained(path, tokenizer=self.tokenizer)
