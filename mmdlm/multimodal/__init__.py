"""Multimodal path: the text side shared by the MM-DiT and the discrete backbone, and the MM-DiT."""
from .dual_generate import dual_generate
from .mmdit import DualDiffusionTransformer2DModel, MaskedJointAttnProcessor
from .text import attention_mask, decode_captions, encode_captions, ensure_caption_tokens

__all__ = ["DualDiffusionTransformer2DModel", "MaskedJointAttnProcessor", "attention_mask", "decode_captions",
           "dual_generate", "encode_captions", "ensure_caption_tokens"]
