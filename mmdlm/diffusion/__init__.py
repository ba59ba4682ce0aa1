"""Masked (absorbing-state) discrete diffusion: schedules, forward noising, loss, unmasking.

Pure torch and modality-agnostic: the same code drives text tokens and VQ image tokens.
"""

from .corruption import block_t, corrupt, mask_ratio
from .guidance import guide
from .loss import masked_diffusion_loss
from .schedules import (
    SCHEDULES,
    CosineSchedule,
    LinearSchedule,
    LogLinearSchedule,
    Schedule,
    get_schedule,
)
from .unmask import (
    RULES,
    SCORES,
    ReverseStep,
    SamplingOptions,
    check_generators,
    commit_scores,
    filter_logits,
    predict,
    reverse_step,
    select_top,
    tokens_to_commit,
)

__all__ = [
    "Schedule",
    "LinearSchedule",
    "CosineSchedule",
    "LogLinearSchedule",
    "SCHEDULES",
    "get_schedule",
    "corrupt",
    "block_t",
    "mask_ratio",
    "guide",
    "masked_diffusion_loss",
    "tokens_to_commit",
    "filter_logits",
    "predict",
    "select_top",
    "commit_scores",
    "reverse_step",
    "ReverseStep",
    "SamplingOptions",
    "RULES",
    "SCORES",
    "check_generators",
]
