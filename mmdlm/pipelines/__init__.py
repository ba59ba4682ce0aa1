"""diffusers-style pipelines."""
from .dual_diffusion import DualDiffusionPipeline
from .multimodal import (
    TASKS,
    MultimodalPipelineOutput,
    format_images,
    load_pipeline,
    register_pipeline,
    resolve_task,
)
from .text_diffusion import TextDiffusionPipeline, TextDiffusionPipelineOutput

__all__ = ["TASKS", "DualDiffusionPipeline", "MultimodalPipelineOutput", "TextDiffusionPipeline",
           "TextDiffusionPipelineOutput", "format_images", "load_pipeline", "register_pipeline", "resolve_task"]
