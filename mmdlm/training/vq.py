"""Train a small diffusers `VQModel` (the image tokenizer of the discrete backbone) on image data.

The model is diffusers' `VQModel` (its encoder, `quant_conv`, codebook, `post_quant_conv` and
decoder); the codebook is learned the way VQ-VAE-2 / Jukebox learn it, as exponential moving
averages of the encoder outputs assigned to each code (online k-means, decay `ema_decay`),
which tracks a moving encoder far better than the codebook gradient does. The encoder and
decoder learn from L1 + squared error of the reconstruction in [-1, 1] plus the commitment
term 0.25 x |z - sg(code)|^2, through the straight-through estimator.

Dead codes are restarted: every `restart_every` steps (during the first `restart_until` of the
run) each code whose moving-average use fell below 1% of the mean is moved onto a random encoder
output of the current batch. The first step initialises the whole codebook that way. The
averages are checkpointed with the model, and the draws depend only on (seed, step), so a
resumed run is the uninterrupted one.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from .trainer import Trainer

DEFAULT_VQ = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[32, 64, 64], layers_per_block=1,
    latent_channels=8, num_vq_embeddings=256, norm_num_groups=8, mid_block_add_attention=False,
)


def build_vq(config: dict):
    """A fresh `VQModel` from keyword arguments (unknown keys are an error)."""
    import inspect

    from diffusers import VQModel

    known = set(inspect.signature(VQModel.__init__).parameters) - {"self"}
    unknown = set(config) - known
    if unknown:
        raise ValueError(f"unknown VQModel argument(s) {sorted(unknown)}; valid: {', '.join(sorted(known))}")
    return VQModel(**config)


class CodebookEMA(torch.nn.Module):
    """Moving averages of each code's use (`size`) and of the sum of its assigned vectors (`total`)."""

    def __init__(self, codebook: torch.Tensor, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("size", torch.ones(codebook.shape[0]))
        self.register_buffer("total", codebook.detach().clone())
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, codebook: torch.Tensor, flat: torch.Tensor, index: torch.Tensor) -> None:
        k, d = self.size.shape[0], self.decay
        self.size.mul_(d).add_(torch.bincount(index, minlength=k).float(), alpha=1 - d)
        self.total.mul_(d).add_(torch.zeros_like(self.total).index_add_(0, index, flat), alpha=1 - d)
        n = self.size.sum()
        smoothed = (self.size + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing: no division by zero
        codebook.copy_(self.total / smoothed[:, None])

    @torch.no_grad()
    def restart(self, codebook: torch.Tensor, flat: torch.Tensor, generator, dead: torch.Tensor | None = None) -> int:
        """Move the `dead` codes (default: used < 1% of the mean) onto random rows of `flat`."""
        if dead is None:
            dead = self.size < 0.01 * self.size.mean()
        n = int(dead.sum())
        if n:
            pick = torch.randint(len(flat), (n,), generator=generator, device=generator.device).to(flat.device)
            codebook[dead] = flat[pick]
            self.total[dead] = flat[pick] * self.size[dead].clamp_min(1.0)[:, None]
            self.size[dead] = self.size[dead].clamp_min(1.0)
        return n


class VQTrainer(Trainer):
    def __init__(self, vqvae, train_data, args, *, restart_every: int = 50, restart_until: float = 0.5,
                 ema_decay: float = 0.99, commitment: float = 0.25, **kwargs):
        if restart_every < 0 or not 0 <= restart_until <= 1 or not 0 < ema_decay < 1:
            raise ValueError("restart_every must be >= 0, restart_until in [0, 1] and ema_decay in (0, 1)")
        if vqvae.config.lookup_from_codebook:
            raise ValueError("train the VQ model with lookup_from_codebook=False (the flag only changes what "
                             "decode takes; set it in the saved config afterwards if needed)")
        vqvae.quantize.embedding.weight.requires_grad_(False)  # learned by moving averages, not gradients
        super().__init__(vqvae, train_data, args, **kwargs)
        self.restart_every, self.restart_until, self.commitment = restart_every, restart_until, commitment
        self.ema = CodebookEMA(vqvae.quantize.embedding.weight, ema_decay).to(self.accelerator.device)
        self.register_state("codebook_ema", self.ema)
        self.restarted: list[int] = []  # codes restarted at each restart (for the run log)

    def _forward(self, model, pixels):
        """(loss, encoder outputs (N, D), their codes (N,))."""
        vq = self.accelerator.unwrap_model(model)
        latents = vq.encode(pixels).latents
        b, d, h, w = latents.shape
        flat = latents.permute(0, 2, 3, 1).reshape(-1, d)
        codebook = vq.quantize.embedding.weight
        index = torch.cdist(flat.detach(), codebook).argmin(1)
        quant = codebook[index].view(b, h, w, d).permute(0, 3, 1, 2)
        straight = latents + (quant - latents).detach()  # straight-through: gradients skip the rounding
        out = vq.decode(straight, force_not_quantize=True).sample
        loss = F.l1_loss(out, pixels) + F.mse_loss(out, pixels) + self.commitment * F.mse_loss(latents, quant)
        return loss, flat.detach(), index

    def compute_loss(self, model, batch, step, generator):
        pixels = batch["pixels"]
        codebook = self.accelerator.unwrap_model(model).quantize.embedding.weight
        if not bool(self.ema.started):  # data-dependent start: every code on an encoder output
            with torch.no_grad():
                flat = self._forward(model, pixels)[1]
            self.restarted.append(self.ema.restart(codebook, flat, generator,
                                                   dead=torch.ones_like(self.ema.size, dtype=torch.bool)))
            self.ema.started.fill_(True)
        loss, flat, index = self._forward(model, pixels)
        self.ema.update(codebook, flat, index)
        restarting = 0 < step < self.restart_until * self.args.max_steps
        if self.restart_every and step % self.restart_every == 0 and restarting:
            self.restarted.append(self.ema.restart(codebook, flat, generator))
        return loss, pixels.shape[0]

    @torch.no_grad()
    def eval_loss(self, model, batch, generator):
        return self._forward(model, batch["pixels"])[0]


def vq_training_images(c) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Training images of every dataset in `c.datasets` (built in or any image-text source) and
    evaluation images (the built-in test splits; shapes: held-out scenes)."""
    from ..data.imagetext import BUILTINS, load_image_text

    train, evals, info = [], [], {}
    for name in c.datasets:
        common = dict(image_size=c.image_size, image_column=c.image_column, seed=c.seed)
        pixels, _ = load_image_text(name, split="train", n=c.n_train, **common)
        train.append(pixels)
        info[name] = {"train_images": len(pixels)}
        if c.n_eval and name in BUILTINS:
            eval_pixels, _ = load_image_text(name, split="test", n=c.n_eval, **common)
            evals.append(eval_pixels)
            info[name]["eval_images"] = len(eval_pixels)
    return torch.cat(train), (torch.cat(evals) if evals else None), info


def train_vq(c) -> Path:
    """`mmdlm train-vq`: train a VQModel, save it to OUTPUT_DIR/model, and measure how well the
    parser / classifier read held-out images back from its reconstructions."""
    from ..eval.vq import reconstruction_report
    from ..io import atomic_write_text
    from ..multimodal.tokenizers import VQImageTokenizer
    from ..provenance import command_line, versions

    c.validate()
    if not c.datasets:
        raise ValueError("give at least one dataset to train the VQ model on (datasets: [shapes, digits])")
    torch.manual_seed(c.seed)
    vqvae = build_vq({**DEFAULT_VQ, **c.vq_config})
    tok = VQImageTokenizer(vqvae)
    grid = tok.grid(c.image_size)
    train, eval_data, info = vq_training_images(c)
    run_info = {"command": command_line(), "config": asdict(c), "data": info,
                "parameters": sum(p.numel() for p in vqvae.parameters()), "code_grid": [grid, grid],
                "versions": versions()}
    trainer = VQTrainer(vqvae, {"pixels": train}, c, eval_data=None if eval_data is None else {"pixels": eval_data},
                        run_info=run_info, restart_every=c.restart_every, restart_until=c.restart_until,
                        ema_decay=c.ema_decay)
    final = trainer.train()
    vqvae = trainer.accelerator.unwrap_model(trainer.model).eval()
    report = reconstruction_report(VQImageTokenizer(vqvae), [d for d in c.datasets if d in ("shapes", "digits")],
                                   n=c.n_report, image_size=c.image_size)
    report.update(restarted_codes=trainer.restarted, parameters=run_info["parameters"], code_grid=[grid, grid],
                  command=run_info["command"])
    atomic_write_text(Path(c.output_dir) / "reconstruction.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "restarted_codes"}, indent=2))
    return final
