"""Train a small diffusers `VQModel` (the image tokenizer of the discrete backbone) on image data.

Loss: L1 + squared error of the reconstruction in [-1, 1] plus the quantizer's own
codebook/commitment loss (diffusers' `VectorQuantizer`, beta 0.25; trained with
`legacy=False`, where beta weighs the commitment term as in the VQ-VAE paper, so the codebook
follows the encoder at full weight; the flag only changes the loss, not the saved model).

Dead codes are restarted (as in Jukebox / SoundStream): every `restart_every` steps a fixed
probe set of training images is encoded, and the codes no probe latent uses are moved onto
probe latents drawn with probability proportional to their quantization error (k-means++
style), so spare codes go where the codebook represents the data worst (edges, corners,
rare colours) rather than onto the background. The probe and the draw depend only on
(seed, step) and the weights, so a resumed run restarts the same codes as an uninterrupted one.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from .trainer import Trainer, data_len, take

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


class VQTrainer(Trainer):
    def __init__(self, vqvae, train_data, args, *, restart_every: int = 50, restart_until: float = 0.75,
                 probe_size: int = 512, **kwargs):
        vqvae.quantize.legacy = False  # beta on the commitment term (see the module docstring)
        super().__init__(vqvae, train_data, args, **kwargs)
        if restart_every < 0 or not 0 <= restart_until <= 1 or probe_size < 1:
            raise ValueError("restart_every must be >= 0, restart_until in [0, 1], probe_size >= 1")
        self.restart_every, self.restart_until = restart_every, restart_until
        n = data_len(train_data)
        g = torch.Generator().manual_seed(args.seed + 7)
        self.probe = torch.randperm(n, generator=g)[: min(probe_size, n)].tolist()
        self.restarted: list[int] = []  # codes restarted at each restart (for the run log)

    @torch.no_grad()
    def restart_dead_codes(self, model, generator: torch.Generator) -> int:
        vq = self.accelerator.unwrap_model(model)
        pixels = take(self.train_data, self.probe, self.accelerator.device)["pixels"]
        latents = torch.cat([vq.encode(pixels[i:i + 64]).latents for i in range(0, len(pixels), 64)])
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        dist = torch.cdist(flat, vq.quantize.embedding.weight)
        error, nearest = dist.min(1)
        dead = torch.ones(vq.quantize.n_e, dtype=torch.bool, device=flat.device)
        dead[nearest.unique()] = False
        n_dead = int(dead.sum())
        if n_dead:
            weights = error.pow(2).cpu().double() + 1e-12
            pick = torch.multinomial(weights, n_dead, replacement=n_dead > len(weights),
                                     generator=torch.Generator().manual_seed(int(torch.randint(
                                         2**62, (1,), generator=generator, device=generator.device))))
            vq.quantize.embedding.weight[dead] = flat[pick.to(flat.device)]
        return n_dead

    def compute_loss(self, model, batch, step, generator):
        if self.restart_every and step % self.restart_every == 0 and step < self.restart_until * self.args.max_steps:
            self.restarted.append(self.restart_dead_codes(model, generator))
        return self._loss(model, batch["pixels"]), batch["pixels"].shape[0]

    def eval_loss(self, model, batch, generator):
        return self._loss(model, batch["pixels"])

    @staticmethod
    def _loss(model, pixels):
        out = model(pixels)
        return F.l1_loss(out.sample, pixels) + F.mse_loss(out.sample, pixels) + out.commit_loss.mean()


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
    from ..recipes import versions

    c.validate()
    if not c.datasets:
        raise ValueError("give at least one dataset to train the VQ model on (datasets: [shapes, digits])")
    torch.manual_seed(c.seed)
    vqvae = build_vq({**DEFAULT_VQ, **c.vq_config})
    tok = VQImageTokenizer(vqvae)
    grid = tok.grid(c.image_size)
    train, eval_data, info = vq_training_images(c)
    run_info = {"command": " ".join(["mmdlm"] + sys.argv[1:]), "config": asdict(c), "data": info,
                "parameters": sum(p.numel() for p in vqvae.parameters()), "code_grid": [grid, grid],
                "versions": versions()}
    trainer = VQTrainer(vqvae, {"pixels": train}, c, eval_data=None if eval_data is None else {"pixels": eval_data},
                        run_info=run_info, restart_every=c.restart_every, restart_until=c.restart_until)
    final = trainer.train()
    vqvae = trainer.accelerator.unwrap_model(trainer.model).eval()
    report = reconstruction_report(VQImageTokenizer(vqvae), [d for d in c.datasets if d in ("shapes", "digits")],
                                   n=c.n_report, image_size=c.image_size)
    report.update(restarted_codes=trainer.restarted, parameters=run_info["parameters"], code_grid=[grid, grid],
                  command=run_info["command"])
    atomic_write_text(Path(c.output_dir) / "reconstruction.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "restarted_codes"}, indent=2))
    return final
