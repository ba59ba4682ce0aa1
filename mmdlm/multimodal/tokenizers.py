"""Image tokenizer: pixels <-> grids of VQ code indices through any diffusers `VQModel`.

`VQImageTokenizer` wraps a `VQModel` (loaded with `from_pretrained`, or built from a config)
and adds what a discrete diffusion model needs: `encode` turns (B, 3, H, W) images into
(B, h, w) code indices, `decode` turns indices back into images, with clear errors for codes
outside the codebook and image sizes the model cannot tile.

Pixel range: mmdlm's tensors are in [-1, 1] (the diffusers convention). A VQ model trained on
[0, 1] pixels (aMUSEd's, whose pipeline runs `VaeImageProcessor(do_normalize=False)`) takes
`normalize=False`; the conversion then happens here.
"""
from __future__ import annotations

import torch


def downsample_factor(vqvae) -> int:
    """Pixels per code along each side: 2 ** (number of encoder blocks - 1)."""
    return 2 ** (len(vqvae.config.block_out_channels) - 1)


class VQImageTokenizer:
    """Images <-> code indices with a diffusers `VQModel`.

    `normalize=True`: the VQ model takes pixels in [-1, 1]; False: in [0, 1] (aMUSEd).
    """

    def __init__(self, vqvae, *, normalize: bool = True):
        from diffusers import VQModel

        if not isinstance(vqvae, VQModel):
            raise ValueError(f"the image tokenizer needs a diffusers VQModel, got {type(vqvae).__name__}")
        self.vqvae = vqvae
        self.normalize = bool(normalize)

    @classmethod
    def from_pretrained(cls, path, *, subfolder: str | None = None, normalize: bool = True, **kwargs):
        """Load a `VQModel` folder (or hub id) with diffusers' `VQModel.from_pretrained`."""
        from pathlib import Path

        from diffusers import VQModel

        folder = Path(path) / (subfolder or "")
        if Path(path).exists():
            config = folder / "config.json"
            if not config.is_file():
                raise ValueError(f"{folder} is not a VQ model folder (no config.json)")
            import json

            try:
                name = json.loads(config.read_text()).get("_class_name")
            except (json.JSONDecodeError, AttributeError) as err:
                raise ValueError(f"{config} is not a valid model config: {err}") from err
            if name != "VQModel":
                raise ValueError(f"{folder} holds a {name or 'unnamed'} model, not a diffusers VQModel")
        vqvae = VQModel.from_pretrained(path, subfolder=subfolder, **kwargs)
        return cls(vqvae.eval(), normalize=normalize)

    # ---------------------------------------------------------------- shapes
    @property
    def codebook_size(self) -> int:
        return int(self.vqvae.config.num_vq_embeddings)

    @property
    def downsample(self) -> int:
        return downsample_factor(self.vqvae)

    @property
    def device(self) -> torch.device:
        return next(self.vqvae.parameters()).device

    def grid(self, image_size: int) -> int:
        """Codes per side for square images of `image_size` pixels (an error when it does not tile)."""
        f = self.downsample
        if not isinstance(image_size, int) or image_size < f or image_size % f:
            raise ValueError(f"image size {image_size} cannot be tiled by this VQ model: it turns each {f}x{f} "
                             f"pixels into one code, so the size must be a multiple of {f}")
        return image_size // f

    # ---------------------------------------------------------------- encode / decode
    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.LongTensor:
        """(B, 3, H, W) images in [-1, 1] -> (B, H/f, W/f) code indices."""
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"encode takes a (B, 3, H, W) image tensor, got "
                             f"{tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__}")
        h, w = pixels.shape[2:]
        self.grid(h)
        self.grid(w)
        x = pixels.to(self.device, self.vqvae.dtype)
        if not self.normalize:
            x = (x + 1) / 2
        latents = self.vqvae.encode(x).latents
        b, _, gh, gw = latents.shape
        indices = self.vqvae.quantize(latents)[2][2]
        return indices.reshape(b, gh, gw).long()

    def check_codes(self, codes: torch.Tensor) -> None:
        """Raise a ValueError unless `codes` is an integer (B, h, w) grid inside the codebook."""
        if not isinstance(codes, torch.Tensor) or codes.ndim != 3:
            raise ValueError(f"codes must be a (B, h, w) tensor of indices, got "
                             f"{tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integer indices, got dtype {codes.dtype}")
        if codes.numel():
            lo, hi = int(codes.min()), int(codes.max())
            if lo < 0 or hi >= self.codebook_size:
                raise ValueError(f"codes must lie in [0, {self.codebook_size - 1}] (the VQ model's codebook has "
                                 f"{self.codebook_size} entries), got values in [{lo}, {hi}]; a [MASK] code "
                                 "cannot be decoded, finish sampling first")

    @torch.no_grad()
    def decode(self, codes: torch.LongTensor, check: bool = True) -> torch.Tensor:
        """(B, h, w) code indices -> (B, 3, h*f, w*f) images in [-1, 1]. `check=False` skips the range check of
        the codes (host synchronisations), for codes valid by construction (a sampler's predictions)."""
        if check:
            self.check_codes(codes)
        b, gh, gw = codes.shape
        codes = codes.to(self.device)
        shape = (b, gh, gw, self.vqvae.quantize.vq_embed_dim)
        if self.vqvae.config.lookup_from_codebook:  # the model looks the codes up itself (aMUSEd)
            images = self.vqvae.decode(codes.reshape(-1), force_not_quantize=True, shape=shape).sample
        else:
            quant = self.vqvae.quantize.get_codebook_entry(codes.reshape(-1), shape)
            images = self.vqvae.decode(quant, force_not_quantize=True).sample
        images = images.float()
        if not self.normalize:
            images = images * 2 - 1
        return images.clamp(-1, 1)
