"""The discrete backbone (Meissonic / Muddit shape): VQ image codes and text tokens in one transformer.

Both modalities are token ids, some of them [MASK]:
- image stream: an (h, w) grid of VQ codes in [0, codebook_size), [MASK] = codebook_size,
  embedded by one table of codebook_size + 1 rows;
- text stream: caption ids in [0, vocab_size), [MASK] = `mask_token_id` (the tokenizer's mask token).
`mask_token_ids` gives both: {"image": codebook_size, "text": mask_token_id}.
The streams meet in diffusers' own Flux blocks: `num_layers` double-stream
`FluxTransformerBlock`s (separate weights per stream, joint attention), then
`num_single_layers` single-stream `FluxSingleTransformerBlock`s over the concatenation
[text ; image]. Positions are diffusers' `FluxPosEmbed` rotary embedding over three axes:
text token i sits at (i, 0, 0), image code (r, c) at (0, r, c).

Outputs: image logits over the codebook from an adaptive norm + linear head (the [MASK]
column is -inf, so the logits line up with the input ids for `MaskedDiffusionScheduler`),
and text logits from Muddit's light text decoder (LayerNorm + linear over the vocabulary) on
the text part of the last hidden states.

Initialisation: adaLN-Zero (DiT): the blocks' modulations start at zero, each block at the
identity.

Conditioning: the mask ratio of each stream (the share of [MASK] among its positions,
computed from the input ids unless given), each through its own sinusoidal `Timesteps` +
`TimestepEmbedding`, summed into the one vector every Flux block modulates with. The ratio is
observable, so sampling needs no timestep bookkeeping and partial masks (inpainting,
infilling) are conditioned on what they really hide.

Text padding: `text_attention_mask` (True = real token) becomes a key mask in every attention
(Flux's attention processor passes it to SDPA), so a padded token changes nothing elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.transformer_flux import (
    FluxPosEmbed,
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)
from diffusers.utils import BaseOutput

from ..diffusion import mask_ratio


@dataclass
class UnifiedDiscreteTransformerOutput(BaseOutput):
    """image_logits: (B, h*w, codebook_size + 1), row-major over the code grid, [MASK] column -inf.
    text_logits: (B, L, vocab_size). (The default None lets the output be rebuilt from a dict, as accelerate does
    when it casts a mixed-precision model's outputs to float32.)"""

    image_logits: torch.Tensor
    text_logits: torch.Tensor = None


def _check_ids(ids: torch.Tensor, name: str, high: int, what: str) -> None:
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of ids")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > high):
        raise ValueError(f"{name} must lie in [0, {high}] ({what}), got values in [{int(ids.min())}, {int(ids.max())}]")


class UnifiedDiscreteTransformer(ModelMixin, ConfigMixin):
    """Masked diffusion over VQ codes and text tokens with diffusers' Flux blocks.

    Args:
        codebook_size: entries of the VQ codebook; the image [MASK] id is `codebook_size`.
        vocab_size: text vocabulary (the tokenizer's length, its mask token included).
        mask_token_id: the text [MASK] id (the tokenizer's mask token).
        sample_size: side of the code grid the model is trained on (h = w).
        text_length: positions of the caption canvas.
        num_layers / num_single_layers: double-stream / single-stream Flux blocks.
        num_attention_heads, attention_head_dim: the width is their product.
        axes_dims_rope: rotary dimensions of (text position, row, column); they sum to attention_head_dim.
        rope_theta: rotary base.
        timestep_channels: width of the sinusoidal mask-ratio features.
        mlp_ratio: MLP width of the single-stream blocks, as a multiple of the width.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]

    @register_to_config
    def __init__(self, codebook_size: int = 256, vocab_size: int = 64, mask_token_id: int = 3,
                 sample_size: int = 8, text_length: int = 16, num_layers: int = 2, num_single_layers: int = 2,
                 num_attention_heads: int = 4, attention_head_dim: int = 32, axes_dims_rope: tuple = (8, 12, 12),
                 rope_theta: int = 10000, timestep_channels: int = 128, mlp_ratio: float = 4.0):
        super().__init__()
        for name, value in dict(codebook_size=codebook_size, vocab_size=vocab_size, sample_size=sample_size,
                                text_length=text_length, num_attention_heads=num_attention_heads,
                                attention_head_dim=attention_head_dim, timestep_channels=timestep_channels).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_layers < 0 or num_single_layers < 0 or num_layers + num_single_layers < 1:
            raise ValueError(f"need at least one block, got num_layers={num_layers}, "
                             f"num_single_layers={num_single_layers}")
        if not 0 <= mask_token_id < vocab_size:
            raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary of {vocab_size}")
        axes = list(axes_dims_rope)
        if len(axes) != 3 or sum(axes) != attention_head_dim or any(a % 2 for a in axes):
            raise ValueError(f"axes_dims_rope must be three even numbers summing to attention_head_dim "
                             f"({attention_head_dim}), got {axes}")
        dim = num_attention_heads * attention_head_dim
        self.inner_dim = dim
        self.gradient_checkpointing = False  # diffusers' enable_gradient_checkpointing sets it

        self.image_embed = nn.Embedding(codebook_size + 1, dim)  # the last row is [MASK]
        self.text_embed = nn.Embedding(vocab_size, dim)
        self.ratio_proj = Timesteps(timestep_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.image_ratio_embed = TimestepEmbedding(timestep_channels, dim)
        self.text_ratio_embed = TimestepEmbedding(timestep_channels, dim)
        self.pos_embed = FluxPosEmbed(theta=rope_theta, axes_dim=axes)

        self.transformer_blocks = nn.ModuleList([
            FluxTransformerBlock(dim=dim, num_attention_heads=num_attention_heads,
                                 attention_head_dim=attention_head_dim)
            for _ in range(num_layers)])
        self.single_transformer_blocks = nn.ModuleList([
            FluxSingleTransformerBlock(dim=dim, num_attention_heads=num_attention_heads,
                                       attention_head_dim=attention_head_dim, mlp_ratio=mlp_ratio)
            for _ in range(num_single_layers)])

        self.norm_out = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6)
        self.image_head = nn.Linear(dim, codebook_size)
        self.text_norm = nn.LayerNorm(dim)  # Muddit's light text decoder: LayerNorm + linear
        self.text_head = nn.Linear(dim, vocab_size)
        self._adaln_zero()

    def _adaln_zero(self) -> None:
        """DiT's adaLN-Zero start: every block's modulation (shift, scale, gate) starts at zero, so
        each block starts as the identity, and so does the image head's modulation; embeddings at
        the transformer scale (std 0.02)."""
        for block in list(self.transformer_blocks) + list(self.single_transformer_blocks):
            norms = [block.norm1, block.norm1_context] if hasattr(block, "norm1") else [block.norm]
            for norm in norms:
                nn.init.zeros_(norm.linear.weight)
                nn.init.zeros_(norm.linear.bias)
        nn.init.zeros_(self.norm_out.linear.weight)
        nn.init.zeros_(self.norm_out.linear.bias)
        for table in (self.image_embed, self.text_embed):
            nn.init.normal_(table.weight, std=0.02)

    @property
    def mask_token_ids(self) -> dict[str, int]:
        """The [MASK] id of each stream: the image's is the row after the codebook."""
        return {"image": self.config.codebook_size, "text": self.config.mask_token_id}

    def positions(self, text_length: int, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary (cos, sin) for [text ; image]: text i at (i, 0, 0), image (r, c) at (0, r, c)."""
        txt = torch.zeros(text_length, 3, device=device)
        txt[:, 0] = torch.arange(text_length, device=device)
        img = torch.zeros(height, width, 3, device=device)
        img[..., 1] = torch.arange(height, device=device)[:, None]
        img[..., 2] = torch.arange(width, device=device)[None, :]
        return self.pos_embed(torch.cat([txt, img.view(-1, 3)]))

    def forward(self, image_ids: torch.LongTensor, text_ids: torch.LongTensor, *,
                text_attention_mask: torch.Tensor | None = None, image_ratio: torch.Tensor | None = None,
                text_ratio: torch.Tensor | None = None, check_ids: bool = True, return_dict: bool = True):
        """image_ids (B, h, w) codes or [MASK]; text_ids (B, L); text_attention_mask (B, L), True at
        real tokens. image_ratio / text_ratio (B,): conditioning mask ratios (default: measured).
        `check_ids=False` skips the range check of the ids (four host synchronisations), for callers whose
        ids are valid by construction (the pipeline's sampling loop, the trainer)."""
        if not isinstance(image_ids, torch.Tensor) or image_ids.ndim != 3:
            raise ValueError(f"image_ids must be a (B, h, w) grid of codes, got shape "
                             f"{tuple(getattr(image_ids, 'shape', ()))}")
        if not isinstance(text_ids, torch.Tensor) or text_ids.ndim != 2 or text_ids.shape[0] != image_ids.shape[0]:
            raise ValueError(f"text_ids must be (B, L) with the batch of image_ids {tuple(image_ids.shape)}, got "
                             f"{tuple(getattr(text_ids, 'shape', ()))}")
        c = self.config
        if check_ids:
            _check_ids(image_ids, "image_ids", c.codebook_size,
                       f"{c.codebook_size} codes, then [MASK] = {c.codebook_size}")
            _check_ids(text_ids, "text_ids", c.vocab_size - 1, f"a vocabulary of {c.vocab_size}")
        b, h, w = image_ids.shape
        length = text_ids.shape[1]
        if text_attention_mask is not None:
            if text_attention_mask.shape != text_ids.shape:
                raise ValueError(f"text_attention_mask has shape {tuple(text_attention_mask.shape)}, expected "
                                 f"{tuple(text_ids.shape)}")
            text_attention_mask = text_attention_mask.bool()
        image_ids = image_ids.reshape(b, h * w)

        if image_ratio is None:
            image_ratio = mask_ratio(image_ids, c.codebook_size)
        if text_ratio is None:
            text_ratio = mask_ratio(text_ids, c.mask_token_id, text_attention_mask)
        dtype = self.image_embed.weight.dtype
        temb = self.image_ratio_embed(self.ratio_proj(image_ratio.reshape(b) * 1000).to(dtype)) \
            + self.text_ratio_embed(self.ratio_proj(text_ratio.reshape(b) * 1000).to(dtype))

        image = self.image_embed(image_ids)
        text = self.text_embed(text_ids)
        rotary = self.positions(length, h, w, image_ids.device)
        kwargs = None
        if text_attention_mask is not None and not bool(text_attention_mask.all()):
            keys = torch.cat([text_attention_mask, text_attention_mask.new_ones(b, h * w)], dim=1)
            kwargs = {"attention_mask": keys[:, None, None, :]}  # (B, 1, 1, L + h*w), True = attend

        checkpointed = torch.is_grad_enabled() and self.gradient_checkpointing
        for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
            if checkpointed:  # recomputed in the backward pass instead of keeping its activations
                text, image = self._gradient_checkpointing_func(block, image, text, temb, rotary, kwargs)
            else:
                text, image = block(hidden_states=image, encoder_hidden_states=text, temb=temb,
                                    image_rotary_emb=rotary, joint_attention_kwargs=kwargs)

        image_logits = self.image_head(self.norm_out(image, temb))
        image_logits = F.pad(image_logits, (0, 1), value=float("-inf"))  # [MASK] is never a prediction
        text_logits = self.text_head(self.text_norm(text))
        if not return_dict:
            return image_logits, text_logits
        return UnifiedDiscreteTransformerOutput(image_logits=image_logits, text_logits=text_logits)
