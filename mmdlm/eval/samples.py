"""Samples from diffusion and AR LMs after held-out prompts, scored by a reference AR model.

Generative perplexity (the reference model's perplexity of the sampled tokens given the
prompt, `likelihood.continuation_nll`) rewards text the reference finds likely, and also rewards repetition: greedy
text that loops scores better than any honest sample. So it is reported only beside the mean per-sample token
entropy (`token_entropy`) and repetition (`distinct_n`, `repeated_ngrams`), which expose degenerate samples.
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



def _ngrams(row: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]


def distinct_n(samples: torch.Tensor | list[list[int]], n: int = 2) -> float:
    """Mean over samples of the share of distinct n-grams among a sample's n-grams (1: no n-gram repeats)."""
    rows = samples.tolist() if isinstance(samples, torch.Tensor) else samples
    grams = [_ngrams(row, n) for row in rows]
    return sum(len(set(g)) / max(len(g), 1) for g in grams) / len(rows)


def repeated_ngrams(samples: torch.Tensor | list[list[int]], n: int = 4) -> float:
    """Mean over samples of the share of n-grams that already occurred earlier in the same sample (0: none)."""
    rows = samples.tolist() if isinstance(samples, torch.Tensor) else samples
    shares = []
    for row in rows:
        seen, repeats, grams = set(), 0, _ngrams(row, n)
        for g in grams:
            repeats += g in seen
            seen.add(g)
        shares.append(repeats / max(len(grams), 1))
    return sum(shares) / len(rows)
