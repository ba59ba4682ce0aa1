"""Multimodal path: the text side shared by the MM-DiT and the discrete backbone."""
from .text import attention_mask, decode_captions, encode_captions, ensure_caption_tokens

__all__ = ["attention_mask", "decode_captions", "encode_captions", "ensure_caption_tokens"]
