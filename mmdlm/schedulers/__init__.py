"""diffusers-style schedulers over token ids."""
from .scheduling_masked_diffusion import MaskedDiffusionScheduler, MaskedDiffusionSchedulerOutput, filter_logits

__all__ = ["MaskedDiffusionScheduler", "MaskedDiffusionSchedulerOutput", "filter_logits"]
