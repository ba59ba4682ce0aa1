"""Text path: adapt a transformers causal LM into a masked diffusion LM, and sample from it."""
from .adapt import DiffusionConfig, DiffusionLM, add_mask_token, load_dlm
from .generate import continue_text, denoise, infill_text

__all__ = ["DiffusionConfig", "DiffusionLM", "add_mask_token", "continue_text", "denoise", "infill_text",
           "load_dlm"]
