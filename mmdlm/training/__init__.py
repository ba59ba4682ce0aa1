"""Training: one accelerate trainer with hooks, and the recipes built on it."""
from .trainer import TrainArgs, Trainer, latest_checkpoint, process_state

__all__ = ["TrainArgs", "Trainer", "latest_checkpoint", "process_state"]
