"""Multimodal path: the text side shared by the MM-DiT and the discrete backbone, and the
discrete backbone itself (VQ image tokenizer, Flux-block transformer)."""
from .discrete import UnifiedDiscreteTransformer, UnifiedDiscreteTransformerOutput
from .text import attention_mask, decode_captions, encode_captions, ensure_caption_tokens
from .tokenizers import VQImageTokenizer

__all__ = ["UnifiedDiscreteTransformer", "UnifiedDiscreteTransformerOutput", "VQImageTokenizer", "attention_mask",
           "decode_captions", "encode_captions", "ensure_caption_tokens"]
