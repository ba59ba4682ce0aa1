"""Text path: adapt a transformers causal LM into a masked diffusion LM, and sample from it."""
from .adapt import DiffusionConfig, DiffusionLM, add_mask_token, load_dlm
from .generate import GenerationResult, generate

__all__ = ["DiffusionConfig", "DiffusionLM", "GenerationResult", "add_mask_token", "generate", "load_dlm"]
