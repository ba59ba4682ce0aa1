"""Autoregressive pretraining: the teacher recipe, and the AR side of the throughput benchmark."""
from __future__ import annotations

from pathlib import Path

from .trainer import Trainer


class CausalLMTrainer(Trainer):
    """Next-token cross-entropy through the model's own `labels=` loss."""

    def __init__(self, *args, tokenizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer = tokenizer

    def compute_loss(self, model, batch, step, generator):
        return model(input_ids=batch, labels=batch).loss, batch.numel()

    def save_model(self, model, path: Path) -> None:
        model.save_pretrained(path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
