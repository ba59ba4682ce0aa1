"""Held-out measurements: likelihood (ELBO, AR perplexity), infilling, samples (text); image-text
accuracy of multimodal pipelines."""
from .imagetext import evaluate, scene_attributes, write_record

__all__ = ["evaluate", "scene_attributes", "write_record"]
