"""Training: one accelerate trainer with hooks, and the recipes built on it."""
from .engines import process_state
from .trainer import TrainArgs, Trainer, latest_checkpoint

__all__ = ["TrainArgs", "Trainer", "latest_checkpoint", "process_state"]
