"""Held-out prompts and infilling spans, and infilling exact match for DLMs and AR models.

A span is (left context, target, right context) in token ids, cut from a held-out document.
A DLM sees both sides and fills the target with `len(target)` denoising steps (greedy by
default); an AR model sees only the left side and writes the target greedily, a baseline
that shows what the right context is worth.
"""
from __future__ import annotations

import torch

from ..text.generate import default_blocks, generate

Span = tuple[list[int], list[int], list[int]]


def held_out(tokenizer, texts, *, n_prompts: int, prompt_len: int, n_spans: int, span: int, left: int,
             right: int, seed: int = 0) -> tuple[list[list[int]], list[Span]]:
    """Prompts (the first `prompt_len` tokens of documents) and spans drawn from `texts`.

    Documents shorter than `left + span + right + 1` tokens are skipped; documents are taken
    in an order fixed by `seed`, and each span starts at a position drawn from it.
    """
    if min(span, n_spans, n_prompts) < 0 or span < 1 or left < 0 or right < 0 or prompt_len < 0:
        raise ValueError("span must be >= 1, and counts and context lengths >= 0")
    g = torch.Generator().manual_seed(seed)
    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    docs = [d for d in docs if len(d) >= max(left + span + right + 1, prompt_len)]
    if not docs:
        raise ValueError(f"no held-out document has the {left + span + right + 1} tokens a span needs")
    order = torch.randperm(len(docs), generator=g).tolist()
    prompts = [docs[order[i % len(order)]][:prompt_len] for i in range(n_prompts)]
    spans = []
    for k in range(n_spans):
        d = docs[order[k % len(order)]]
        at = int(torch.randint(left, len(d) - span - right, (1,), generator=g))
        spans.append((d[at - left:at], d[at:at + span], d[at + span:at + span + right]))
    return prompts, spans


def _check_spans(spans: list[Span]) -> None:
    if not spans:
        raise ValueError("no spans to fill")
    shapes = {(len(a), len(b), len(c)) for a, b, c in spans}
    if len(shapes) > 1:
        raise ValueError(f"spans must share one (left, target, right) shape to be batched, got {sorted(shapes)}")


@torch.no_grad()
def fill_spans_dlm(dlm, spans: list[Span], bos: int | None, scheduler, *, batch_size: int = 64,
                   generator: torch.Generator | None = None, **generate_options) -> list[list[int]]:
    """The DLM's filling of each span's target, `len(target)` steps each, batched.

    Block-attention models decode on their own block grid (the target may span two blocks).
    """
    _check_spans(spans)
    prefix = [] if bos is None else [bos]
    mask, n = dlm.mask_token_id, len(spans[0][1])
    lo = len(prefix) + len(spans[0][0])
    blocks = default_blocks(dlm, lo, lo + n, None) if dlm.config.attention == "block" else [(lo, lo + n)]
    device = next(dlm.parameters()).device
    preds = []
    for a in range(0, len(spans), batch_size):
        ids = torch.tensor([prefix + left + [mask] * n + right for left, _, right in spans[a:a + batch_size]],
                           device=device)
        out = generate(dlm, ids, scheduler, steps=n, blocks=blocks, generator=generator, **generate_options)
        preds += out.sequences[:, lo:lo + n].tolist()
    return preds


@torch.no_grad()
def fill_spans_ar(model, spans: list[Span], bos: int | None, *, pad_token_id: int | None = None,
                  batch_size: int = 64) -> list[list[int]]:
    """A causal LM's greedy continuation of each left context, `len(target)` tokens (no right context)."""
    _check_spans(spans)
    prefix = [] if bos is None else [bos]
    n = len(spans[0][1])
    device = next(model.parameters()).device
    preds = []
    for a in range(0, len(spans), batch_size):
        ids = torch.tensor([prefix + left for left, _, _ in spans[a:a + batch_size]], device=device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=pad_token_id)
        preds += out[:, ids.shape[1]:].tolist()
    return preds


def exact_match(preds: list[list[int]], spans: list[Span]) -> float:
    """Share of spans whose target was reproduced token for token."""
    if len(preds) != len(spans) or not spans:
        raise ValueError(f"{len(preds)} predictions for {len(spans)} spans")
    return sum(p == s[1] for p, s in zip(preds, spans)) / len(spans)
