"""Multimodal path: the text side shared by both backbones, the MM-DiT (continuous image
diffusion on SD3) and the discrete backbone (VQ image tokenizer, Flux-block transformer)."""
from .discrete import UnifiedDiscreteTransformer, UnifiedDiscreteTransformerOutput
from .mmdit import DualDiffusionTransformer2DModel, MaskedJointAttnProcessor
from .text import attention_mask, decode_captions, encode_captions, ensure_caption_tokens
from .tokenizers import VQImageTokenizer

__all__ = ["DualDiffusionTransformer2DModel", "MaskedJointAttnProcessor", "UnifiedDiscreteTransformer",
           "UnifiedDiscreteTransformerOutput", "VQImageTokenizer", "attention_mask", "decode_captions",
           "encode_captions", "ensure_caption_tokens"]
