"""diffusers-style pipelines."""
from .text_diffusion import TextDiffusionPipeline, TextDiffusionPipelineOutput

__all__ = ["TextDiffusionPipeline", "TextDiffusionPipelineOutput"]
