"""Text path: adapt a transformers causal LM into a masked diffusion LM, and sample from it."""
from .adapt import DiffusionConfig, DiffusionLM, add_mask_token, load_dlm
from .generate import GenerationResult, continue_text, generate, infill_text, mask_spans

__all__ = ["DiffusionConfig", "DiffusionLM", "GenerationResult", "add_mask_token", "continue_text", "generate",
           "infill_text", "load_dlm", "mask_spans"]
