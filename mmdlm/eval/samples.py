"""Samples from diffusion and AR LMs after held-out prompts, scored by a reference AR model.

Generative perplexity (the reference model's perplexity of the sampled tokens given the
prompt, `likelihood.continuation_nll`) rewards text the reference finds likely, and also rewards repetition; the mean
per-sample token entropy is reported beside it to expose degenerate, repetitive samples.
"""
from __future__ import annotations

import math
from collections import Counter

import torch

from ..text.generate import default_blocks, generate


def _prompt_tensor(prompts: list[list[int]], bos: int | None, device) -> torch.Tensor:
    if not prompts or len({len(p) for p in prompts}) != 1:
        raise ValueError("prompts must be a non-empty list of token lists of one length")
    return torch.tensor([([] if bos is None else [bos]) + p for p in prompts], device=device)


@torch.no_grad()
def sample_dlm(dlm, prompts: list[list[int]], bos: int | None, scheduler, *, gen_length: int, steps: int,
               block_length: int | None = None, generator: torch.Generator | None = None,
               **generate_options) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids with BOS, generated ids), one row per prompt, decoded in one batch."""
    device = next(dlm.parameters()).device
    head = _prompt_tensor(prompts, bos, device)
    ids = torch.cat([head, torch.full((len(prompts), gen_length), dlm.mask_token_id, device=device)], 1)
    blocks = default_blocks(dlm, head.shape[1], ids.shape[1], block_length)
    out = generate(dlm, ids, scheduler, steps=steps, blocks=blocks, generator=generator, **generate_options)
    return head.cpu(), out.sequences[:, head.shape[1]:].cpu()


@torch.no_grad()
def sample_ar(model, prompts: list[list[int]], bos: int | None, *, gen_length: int, temperature: float = 1.0,
              pad_token_id: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids with BOS, generated ids) from a causal LM, `gen_length` tokens each (EOS does not stop)."""
    device = next(model.parameters()).device
    head = _prompt_tensor(prompts, bos, device)
    torch.manual_seed(seed)  # transformers samples from the global generator
    sample = temperature > 0
    out = model.generate(head, attention_mask=torch.ones_like(head), max_new_tokens=gen_length,
                         min_new_tokens=gen_length, do_sample=sample, temperature=temperature if sample else None,
                         top_k=None, top_p=None, pad_token_id=pad_token_id)
    return head.cpu(), out[:, head.shape[1]:].cpu()


def token_entropy(samples: torch.Tensor) -> float:
    """Mean over samples of the entropy (nats) of each sample's token histogram."""
    values = []
    for row in samples.tolist():
        counts = Counter(row)
        n = len(row)
        values.append(-sum(c / n * math.log(c / n) for c in counts.values()))
    return sum(values) / len(values)

