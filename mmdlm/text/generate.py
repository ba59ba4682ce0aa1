"""A first sampler for diffusion LMs: start from [MASK], commit the best tokens step by step.

`denoise` works on token ids: every [MASK] in `ids` is filled over `steps` steps, block by
block (semi-autoregressive, LLaDA style) when blocks are given. At each step the model
predicts all masked tokens and commits as many as the noise schedule says (from t to s the
expected share still masked is mask_prob(s)/mask_prob(t)), choosing them by a commit rule.
Block-attention models are decoded on their own block grid, so every block sees a clean past.
"""
from __future__ import annotations

import re

import torch

from ..diffusion import get_schedule, tokens_to_commit, unmask_step

PLACEHOLDER = re.compile(r"<\|mask:(\d+)\|>")


def block_ranges(start: int, end: int, block_length: int, *, align: bool = False) -> list[tuple[int, int]]:
    """Cut [start, end) into blocks of `block_length`; with `align`, on the absolute grid."""
    if block_length < 1:
        raise ValueError(f"block_length must be >= 1, got {block_length}")
    edges = list(range((start // block_length + 1) * block_length if align else start + block_length,
                       end, block_length))
    bounds = [start, *edges, end]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


@torch.no_grad()
def denoise(dlm, ids: torch.Tensor, *, steps: int, blocks: list[tuple[int, int]] | None = None,
            rule: str = "confidence", temperature: float = 0.0, attention_mask: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill every mask token of `ids` (B, L); returns a new tensor."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = ids.clone()
    mask_id = dlm.mask_token_id
    blocks = blocks or [(0, x.shape[1])]
    schedule = get_schedule(dlm.config.schedule, dlm.config.eps)
    per_block = [steps // len(blocks) + (i < steps % len(blocks)) for i in range(len(blocks))]
    positions = torch.arange(x.shape[1], device=x.device)
    for (lo, hi), n_steps in zip(blocks, per_block):
        in_block = (positions >= lo) & (positions < hi)
        n_steps = max(n_steps, 1)
        for k in range(n_steps):
            editable = in_block[None] & (x == mask_id)
            n_masked = editable.sum(-1)
            if not n_masked.any():
                break
            t, s = 1 - k / n_steps, 1 - (k + 1) / n_steps
            n_commit = tokens_to_commit(n_masked, t, s, schedule)
            logits = dlm.predict(x, attention_mask)
            x, _ = unmask_step(x, logits, mask_id, n_commit, rule=rule, temperature=temperature,
                               editable=editable, generator=generator)
    return x


def _prefix(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _check_length(dlm, n: int, what: str) -> None:
    limit = dlm.max_length
    if limit is not None and n > limit:
        raise ValueError(f"{what} needs {n} tokens but the model's context is {limit}; shorten it")


def _blocks(dlm, start: int, end: int, block_length: int | None):
    if dlm.config.attention == "block":
        return block_ranges(start, end, block_length or dlm.config.block_size, align=True)
    return block_ranges(start, end, block_length or (end - start))


def continue_text(dlm, tokenizer, prompt: str, *, gen_length: int = 64, steps: int = 64,
                  block_length: int | None = None, generator: torch.Generator | None = None, **kw) -> str:
    """Generate `gen_length` tokens after `prompt`; the text stops at the first EOS."""
    if gen_length < 1:
        raise ValueError(f"gen_length must be >= 1, got {gen_length}")
    prompt_ids = _prefix(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not prompt_ids:
        raise ValueError("empty prompt and the tokenizer has no BOS token to start from")
    _check_length(dlm, len(prompt_ids) + gen_length, f"prompt ({len(prompt_ids)} tokens) + gen_length")
    device = next(dlm.parameters()).device
    ids = torch.tensor([prompt_ids + [dlm.mask_token_id] * gen_length], device=device)
    blocks = _blocks(dlm, len(prompt_ids), ids.shape[1], block_length)
    out = denoise(dlm, ids, steps=steps, blocks=blocks, generator=generator, **kw)[0, len(prompt_ids):].tolist()
    if tokenizer.eos_token_id in out:
        out = out[: out.index(tokenizer.eos_token_id)]
    return tokenizer.decode(out)


def parse_infill(tokenizer, text: str, mask_id: int) -> list[int]:
    """Token ids of `text` with each `<|mask:N|>` replaced by N mask ids."""
    pieces = PLACEHOLDER.split(text)
    if len(pieces) == 1:
        raise ValueError("infill text has no <|mask:N|> placeholder (e.g. 'def f(x):<|mask:8|>')")
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i % 2:
            n = int(piece)
            if n < 1:
                raise ValueError("a <|mask:N|> placeholder needs N >= 1")
            ids += [mask_id] * n
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


def infill_text(dlm, tokenizer, text: str, *, steps: int = 32, generator: torch.Generator | None = None,
                **kw) -> str:
    """Fill the `<|mask:N|>` spans of `text`, keeping everything else; returns the whole text."""
    prefix = _prefix(tokenizer)
    ids = prefix + parse_infill(tokenizer, text, dlm.mask_token_id)
    _check_length(dlm, len(ids), "the infill text")
    device = next(dlm.parameters()).device
    x = torch.tensor([ids], device=device)
    blocks = _blocks(dlm, len(prefix), len(ids), None) if dlm.config.attention == "block" else None
    out = denoise(dlm, x, steps=steps, blocks=blocks, generator=generator, **kw)
    return tokenizer.decode(out[0, len(prefix):].tolist())
