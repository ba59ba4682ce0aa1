"""The MM-DiT of the D-DiT line: diffusers' SD3 transformer with a masked text-diffusion branch.

`DualDiffusionTransformer2DModel` extends `SD3Transformer2DModel` and reuses its forward pass:

- text token ids -> `text_embedding` (+ learned positions) -> SD3's own `context_embedder`
  -> the joint text stream, exactly where SD3 puts its T5/CLIP token features;
- the last joint block is rebuilt with `context_pre_only=False` (SD3 drops the text stream
  there), so a text stream leaves the network, and a text head (LayerNorm + Linear over the
  vocabulary) reads it;
- two noise levels: the image's flow-matching timestep goes where SD3 puts it, and the
  text's noise level, the share of masked caption tokens in [0, 1], goes through the slot SD3
  fills with a pooled CLIP vector: the "pooled projection" is the sinusoidal embedding of the
  text's level plus a pooled summary of the caption itself (`text_pooled_projection` of the
  mean text embedding over real tokens, zero at the start, the role SD3's pooled CLIP vector
  plays), which SD3's own `time_text_embed` maps with its MLP and adds to the timestep
  embedding. The one conditioning vector that modulates every block (SD3 modulates both streams
  with one vector) therefore carries both levels and a global view of the caption, with SD3's
  modules; only the small pooling projection is new.

Text padding is honoured by `MaskedJointAttnProcessor` (diffusers' `JointAttnProcessor2_0`
ignores `attention_mask`). `from_pretrained` also takes an SD3 transformer folder: every
weight SD3 has is loaded, only the new parts start fresh, and the loading info says which.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, SD3Transformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import JointTransformerBlock
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.utils import BaseOutput
from torch import nn

from ..diffusion import mask_ratio

logger = logging.getLogger(__name__)

SD3_CLASS = "SD3Transformer2DModel"
PREDICTION_TYPES = ("velocity", "sample")


class MaskedJointAttnProcessor:
    """SD3's joint attention (image and text tokens in one softmax) with a key mask for text
    padding: `attention_mask` (B, L_text), True at real tokens. Image tokens are always
    attended to. Without a mask it computes what `JointAttnProcessor2_0` computes."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        b, n_image = hidden_states.shape[0], hidden_states.shape[1]

        def heads(x):
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        mask = None
        if encoder_hidden_states is not None:
            cq = heads(attn.add_q_proj(encoder_hidden_states))
            ck = heads(attn.add_k_proj(encoder_hidden_states))
            cv = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
            if attention_mask is not None:
                text = attention_mask.to(device=q.device, dtype=torch.bool)
                if text.shape != encoder_hidden_states.shape[:2]:
                    raise ValueError(f"attention_mask must be (batch, text tokens) = "
                                     f"{tuple(encoder_hidden_states.shape[:2])}, got {tuple(text.shape)}")
                keys = torch.cat([text.new_ones(b, n_image), text], 1)
                mask = keys[:, None, None, :]  # (B, 1, 1, keys): every query sees image + real text
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1]).to(q.dtype)
        image, text = out[:, :n_image], out[:, n_image:]
        image = attn.to_out[1](attn.to_out[0](image))
        if encoder_hidden_states is None:
            return image
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        return image, text


@dataclass
class DualDiffusionTransformerOutput(BaseOutput):
    """sample: the image prediction (flow-matching velocity), (B, C, H, W); text_logits:
    logits over the vocabulary for every text position, (B, L, V). (The default None lets the output be rebuilt
    from a dict, as accelerate does when it casts a mixed-precision model's outputs to float32.)"""

    sample: torch.Tensor
    text_logits: torch.Tensor = None


class DualDiffusionTransformer2DModel(SD3Transformer2DModel, ModelMixin, ConfigMixin):
    """SD3's MM-DiT that also denoises text (D-DiT). The first thirteen arguments are
    `SD3Transformer2DModel`'s; the defaults are a small pixel-space model for 16x16 RGB images.
    (ModelMixin and ConfigMixin are SD3's bases, named again so that a saved pipeline can load
    this class from its module.)

    vocab_size: rows of the text embedding and the text head (the tokenizer's length, mask
    token included). text_length: the longest caption canvas (learned positions).
    mask_token_id: the text [MASK] id (the tokenizer's mask token), which pipelines and trainers
    read here (`mask_token_ids`) and from which the model measures the text's noise level.
    prediction_type: what the image head predicts. "velocity" is SD3's (noise - x_0);
    "sample" predicts the clean image x_0 and the model returns the velocity it implies,
    (x_sigma - x_0_hat) / max(sigma, min_sigma) ("x-prediction", Li & He 2025, JiT): a small
    pixel-space model then never has to carry the noise through the network. Either way
    `forward` returns a velocity, so losses, schedulers and pipelines are the same.
    """

    _no_split_modules = ["JointTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        patch_size: int = 2,
        in_channels: int = 3,
        num_layers: int = 2,
        attention_head_dim: int = 32,
        num_attention_heads: int = 4,
        joint_attention_dim: int = 128,
        caption_projection_dim: int = 128,
        pooled_projection_dim: int = 128,
        out_channels: int = 3,
        pos_embed_max_size: int = 16,
        dual_attention_layers: tuple[int, ...] = (),
        qk_norm: str | None = None,
        vocab_size: int = 64,
        text_length: int = 16,
        prediction_type: str = "velocity",
        min_sigma: float = 0.05,
        mask_token_id: int | None = None,
    ):
        inner = num_attention_heads * attention_head_dim
        if caption_projection_dim != inner:
            raise ValueError(f"caption_projection_dim ({caption_projection_dim}) must equal num_attention_heads x "
                             f"attention_head_dim ({inner}): the text stream runs at the transformer's width")
        if sample_size % patch_size or sample_size // patch_size > pos_embed_max_size:
            raise ValueError(f"sample_size {sample_size} must be a multiple of patch_size {patch_size} with at most "
                             f"pos_embed_max_size={pos_embed_max_size} patches per side")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if not 0 < min_sigma <= 1:
            raise ValueError(f"min_sigma must be in (0, 1], got {min_sigma}")
        if vocab_size < 2 or text_length < 1:
            raise ValueError(f"vocab_size must be >= 2 and text_length >= 1, got {vocab_size} and {text_length}")
        if mask_token_id is not None and not 0 <= mask_token_id < vocab_size:
            raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary of {vocab_size}")
        super().__init__(sample_size=sample_size, patch_size=patch_size, in_channels=in_channels,
                         num_layers=num_layers, attention_head_dim=attention_head_dim,
                         num_attention_heads=num_attention_heads, joint_attention_dim=joint_attention_dim,
                         caption_projection_dim=caption_projection_dim, pooled_projection_dim=pooled_projection_dim,
                         out_channels=out_channels, pos_embed_max_size=pos_embed_max_size,
                         dual_attention_layers=dual_attention_layers, qk_norm=qk_norm)
        last = num_layers - 1
        self.transformer_blocks[last] = JointTransformerBlock(
            dim=inner, num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            context_pre_only=False, qk_norm=qk_norm, use_dual_attention=last in tuple(dual_attention_layers))
        self.text_embedding = nn.Embedding(vocab_size, joint_attention_dim)
        self.text_position_embedding = nn.Embedding(text_length, joint_attention_dim)
        self.text_pooled_projection = nn.Linear(joint_attention_dim, pooled_projection_dim)
        nn.init.zeros_(self.text_pooled_projection.weight)  # starts as "no pooled text": SD3 weights stay exact
        nn.init.zeros_(self.text_pooled_projection.bias)
        self.text_norm_out = nn.LayerNorm(inner, eps=1e-6)
        self.text_proj_out = nn.Linear(inner, vocab_size)
        for emb in (self.text_embedding, self.text_position_embedding):
            nn.init.normal_(emb.weight, std=0.02)
        self.set_attn_processor(MaskedJointAttnProcessor())

    def zero_init_modulation_(self) -> "DualDiffusionTransformer2DModel":
        """DiT's adaLN-Zero initialisation, for training from scratch: every block's modulation
        and the image output layer start at zero, so each block starts as the identity on both
        streams and the image head predicts 0. (SD3 checkpoints bring trained values instead.)"""
        layers = [m for block in self.transformer_blocks for m in (block.norm1.linear, block.norm1_context.linear)]
        for layer in layers + [self.norm_out.linear, self.proj_out]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        return self

    @property
    def mask_token_ids(self) -> dict[str, int]:
        """The [MASK] id of each masked stream: {"text": id} (the image is flow-matched)."""
        if self.config.mask_token_id is None:
            raise ValueError(f"this {type(self).__name__}'s config has no mask_token_id (saved before mmdlm 0.2): "
                             "set it in its config.json to the caption tokenizer's mask token id")
        return {"text": self.config.mask_token_id}

    # ------------------------------------------------------------------ inputs
    def embed_text(self, text_ids: torch.LongTensor, check_ids: bool = True) -> torch.Tensor:
        """Token ids (B, L) -> the features SD3's `context_embedder` takes, (B, L, joint_attention_dim).
        `check_ids=False` skips the range check of the ids (host synchronisations)."""
        if text_ids.ndim != 2 or text_ids.is_floating_point():
            raise ValueError(f"text_ids must be (batch, length) integer ids, got {tuple(text_ids.shape)} "
                             f"{text_ids.dtype}")
        length, limit = text_ids.shape[1], self.config.text_length
        if length > limit:
            raise ValueError(f"the text has {length} tokens but the model's text length is {limit}; shorten it")
        if check_ids and text_ids.numel() and (text_ids.min() < 0 or text_ids.max() >= self.config.vocab_size):
            raise ValueError(f"text ids must lie in [0, {self.config.vocab_size}), got "
                             f"[{int(text_ids.min())}, {int(text_ids.max())}]: a tokenizer of another model?")
        positions = torch.arange(length, device=text_ids.device)
        return self.text_embedding(text_ids) + self.text_position_embedding(positions)[None]

    def embed_text_noise(self, text_mask_ratio: torch.Tensor) -> torch.Tensor:
        """The text noise level (share of masked tokens, (B,) in [0, 1]) as the "pooled projection"
        SD3 adds to its timestep embedding: a sinusoidal embedding on the timestep's 0-1000 scale."""
        ratio = torch.as_tensor(text_mask_ratio, dtype=torch.float32, device=self.device)
        return get_timestep_embedding(ratio.reshape(-1) * 1000, self.config.pooled_projection_dim,
                                      flip_sin_to_cos=True, downscale_freq_shift=0).to(self.dtype)

    def pool_text(self, text_features: torch.Tensor, text_attention_mask: torch.Tensor | None = None):
        """The caption's global summary for the conditioning vector: the mean of its embedded
        tokens over the real ones, projected to pooled_projection_dim, (B, pooled_projection_dim)."""
        if text_attention_mask is None:
            mean = text_features.mean(1)
        else:
            real = text_attention_mask.to(text_features.dtype)[..., None]
            mean = (text_features * real).sum(1) / real.sum(1).clamp_min(1)
        return self.text_pooled_projection(mean)

    # ------------------------------------------------------------------ forward
    def forward(self, hidden_states: torch.Tensor, text_ids: torch.LongTensor, timestep: torch.Tensor,
                text_mask_ratio: torch.Tensor | None = None, text_attention_mask: torch.Tensor | None = None,
                joint_attention_kwargs: dict | None = None, check_ids: bool = True, return_dict: bool = True):
        """hidden_states: images or latents (B, C, H, W); text_ids: (B, L); timestep: the image's
        flow-matching time on SD3's scale (sigma x 1000; 0 = clean), (B,); text_mask_ratio: the
        text noise level, (B,) in [0, 1] (0 = clean caption, 1 = fully masked; default: the share of
        [MASK] among the real tokens of `text_ids`);
        text_attention_mask: (B, L), True at real tokens (padding is never attended to);
        check_ids=False skips the range check of the ids (host synchronisations), for callers whose ids are
        valid by construction (the pipeline's sampling loop, the trainer).

        Runs `SD3Transformer2DModel.forward` unchanged; the text stream leaving the last block is
        read with a forward hook and goes through the text head."""
        b = hidden_states.shape[0]
        if text_ids.shape[0] != b:
            raise ValueError(f"{b} images but {text_ids.shape[0]} texts")
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        if text_mask_ratio is None:
            text_mask_ratio = mask_ratio(text_ids, self.mask_token_ids["text"], text_attention_mask)
        ratio = torch.as_tensor(text_mask_ratio, device=hidden_states.device, dtype=torch.float32)
        timestep, ratio = (x.expand(b) if x.ndim == 0 else x for x in (timestep, ratio))
        kwargs = dict(joint_attention_kwargs or {})
        if text_attention_mask is not None:
            if text_attention_mask.shape != text_ids.shape:
                raise ValueError(f"text_attention_mask must be (batch, text tokens) = {tuple(text_ids.shape)}, "
                                 f"got {tuple(text_attention_mask.shape)}")
            kwargs["attention_mask"] = text_attention_mask
        captured: dict = {}
        hook = self.transformer_blocks[-1].register_forward_hook(lambda m, i, out: captured.update(text=out[0]))
        text = self.embed_text(text_ids, check_ids)
        pooled = self.embed_text_noise(ratio) + self.pool_text(text, text_attention_mask)
        try:
            sample = super().forward(hidden_states, encoder_hidden_states=text, pooled_projections=pooled,
                                     timestep=timestep, joint_attention_kwargs=kwargs or None, return_dict=False)[0]
        finally:
            hook.remove()
        if self.config.prediction_type == "sample":  # x_0_hat -> the velocity it implies
            sigma = (timestep.to(sample.dtype) / 1000).clamp_min(self.config.min_sigma).view(b, 1, 1, 1)
            sample = (hidden_states.to(sample.dtype) - sample) / sigma
        logits = self.text_proj_out(self.text_norm_out(captured["text"]))
        if not return_dict:
            return sample, logits
        return DualDiffusionTransformerOutput(sample=sample, text_logits=logits)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a saved `DualDiffusionTransformer2DModel`, or start one from an SD3 transformer.

        From an SD3 folder (`_class_name` SD3Transformer2DModel; a hub id needs network access)
        give `vocab_size`, `text_length` and `mask_token_id` (and nothing else of the architecture:
        it is SD3's).
        Every SD3 weight is loaded; in the last block the text stream's input norm, a continuous
        (scale, shift) norm in SD3, becomes an adaLN-Zero norm whose shift and scale are SD3's and
        whose gates start at zero, so the new text output of that block starts as its input.
        With `output_loading_info=True` returns (model, info): `info["fresh"]` lists the new
        parameters, `info["adapted"]` the re-laid ones, `info["loaded"]` the count of SD3 tensors
        taken as they are. The fresh parameters are also logged.
        """
        config_kwargs = {k: kwargs[k] for k in ("subfolder", "cache_dir", "local_files_only", "revision", "token")
                         if k in kwargs}
        try:
            config = cls.load_config(pretrained_model_name_or_path, **config_kwargs)
        except EnvironmentError as err:
            raise ValueError(f"{pretrained_model_name_or_path} holds no diffusers model config "
                             f"(config.json): {err}") from err
        name = config.get("_class_name")
        if name == SD3_CLASS:
            return cls._from_sd3(pretrained_model_name_or_path, *args, **kwargs)
        if name != cls.__name__:
            what = f"a {name}" if name else "no diffusers model (no _class_name in config.json)"
            raise ValueError(f"{pretrained_model_name_or_path} holds {what}, not a {cls.__name__} or an "
                             f"{SD3_CLASS} to start one from")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _from_sd3(cls, path, *, vocab_size: int | None = None, text_length: int | None = None,
                  mask_token_id: int | None = None, output_loading_info: bool = False, **kwargs):
        if vocab_size is None or text_length is None or mask_token_id is None:
            raise ValueError(f"{path} is an SD3 transformer: give vocab_size, text_length and mask_token_id for the "
                             "text branch")
        base = SD3Transformer2DModel.from_pretrained(path, **kwargs)
        sd3 = {k: v for k, v in base.config.items() if not k.startswith("_")}
        model = cls(**sd3, vocab_size=vocab_size, text_length=text_length, mask_token_id=mask_token_id).to(base.dtype)
        state = base.state_dict()
        del base
        own = model.state_dict()
        d, last = model.inner_dim, f"transformer_blocks.{model.config.num_layers - 1}.norm1_context.linear."
        adapted = []
        for part in ("weight", "bias"):
            key = last + part
            if key in state:  # SD3: (scale, shift) rows; adaLN-Zero: (shift, scale, gate, shift, scale, gate)
                scale, shift = state.pop(key).chunk(2, dim=0)
                new = torch.zeros_like(own[key])
                new[:d], new[d:2 * d] = shift, scale
                state[key] = new
                adapted.append(key)
        mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if mismatched:
            raise ValueError(f"{path}: SD3 weights do not fit the model: {mismatched[:5]}")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{path}: weights the model has no place for: {unexpected[:5]}")
        fresh = sorted(missing)
        logger.warning("started %s from the SD3 transformer at %s: %d tensors loaded, %d re-laid (%s), "
                       "%d new and initialised fresh: %s", cls.__name__, path, len(state) - len(adapted),
                       len(adapted), ", ".join(adapted), len(fresh), ", ".join(fresh))
        model.eval()
        if output_loading_info:
            return model, {"loaded": len(state) - len(adapted), "adapted": adapted, "fresh": fresh}
        return model
