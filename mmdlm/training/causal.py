"""Autoregressive training: the teacher recipe (packed text), SFT of a causal LM (prompt/response
pairs, the loss on the response), and the AR side of the throughput benchmark."""
from __future__ import annotations

from pathlib import Path

import torch

from .trainer import Trainer

IGNORE = -100  # transformers' label for "no loss here"


def response_labels(input_ids: torch.Tensor, prompt_mask: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Labels for next-token SFT: the response up to and including its first EOS; the prompt and the
    EOS padding after it get IGNORE (the model's loss shifts them: logits at i - 1 predict label i)."""
    response = ~prompt_mask.bool()
    eos = (input_ids == eos_token_id) & response
    after_first_eos = (eos.long().cumsum(-1) - eos.long()) > 0
    return input_ids.masked_fill(~response | after_first_eos, IGNORE)


class CausalLMTrainer(Trainer):
    """Next-token cross-entropy through the model's own `labels=` loss: on every token of a packed
    batch (a tensor), or on the response tokens of an SFT batch ({"input_ids", "prompt_mask"})."""

    def __init__(self, *args, tokenizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer = tokenizer

    def compute_loss(self, model, batch, step, generator):
        if isinstance(batch, torch.Tensor):
            return model(input_ids=batch, labels=batch).loss, batch.numel()
        if self.tokenizer is None or self.tokenizer.eos_token_id is None:
            raise ValueError("SFT of a causal LM needs the tokenizer's EOS token (where each response ends)")
        ids = batch["input_ids"]
        labels = response_labels(ids, batch["prompt_mask"], self.tokenizer.eos_token_id)
        return model(input_ids=ids, labels=labels).loss, ids.numel()

    def save_model(self, model, path: Path, state_dict: dict | None = None) -> None:
        model.save_pretrained(path, **({} if state_dict is None else {"state_dict": state_dict}))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
