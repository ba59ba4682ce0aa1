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
from .unified_discrete import UnifiedDiscretePipeline

__all__ = ["TASKS", "DualDiffusionPipeline", "MultimodalPipelineOutput", "TextDiffusionPipeline",
           "TextDiffusionPipelineOutput", "UnifiedDiscretePipeline", "format_images", "load_pipeline",
           "register_pipeline", "resolve_task"]
