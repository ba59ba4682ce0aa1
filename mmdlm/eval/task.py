"""Exact answers on the arithmetic task's held-out problems, and how fast they come.

The AR model decodes with transformers' `generate` (its KV cache, greedy); a diffusion LM with
`TextDiffusionPipeline` under the sampler options given (steps, blocks, threshold, cache, rule).
Both see the same prompts ([BOS] + problem, as in SFT), left-padded into batches, and are
measured alike:

- accuracy: the result the response ends with (`...=N`) equals the problem's answer;
- tokens: the response up to and including its first EOS (all of it when there is none), the
  same count for both models; tokens/s = those tokens over the wall-clock time of the batches'
  calls (tokenising the prompts included, decoding the outputs not);
- NFE per token: forward passes times the rows they ran on, over the tokens counted;
- tokens committed per forward: per row, the positions a forward pass committed (AR: one; a DLM:
  the masks its sampler filled, EOS padding after the answer included, but not the masks turned
  into EOS once every row had stopped).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..data.arithmetic import exact_match

GEN_LENGTH = 32  # the task's longest response + EOS is 32 tokens with the shipped BPE


@dataclass
class Tally:
    """Sums over the batches of one configuration; `+` merges two (e.g. rounds of a benchmark)."""

    n: int = 0
    correct: int = 0
    tokens: int = 0  # the responses up to and including their first EOS
    seconds: float = 0.0
    nfe: int = 0  # forward passes (a batch's pass counts once)
    row_forwards: int = 0  # forward passes times the rows they ran on
    committed: int = 0  # positions committed by forward passes, summed over rows
    by_family: dict = field(default_factory=dict)  # family -> [correct, n]
    outputs: list = field(default_factory=list)  # the responses (text up to the first EOS)

    def __add__(self, other: "Tally") -> "Tally":
        fams = {k: [a + b for a, b in zip(self.by_family.get(k, [0, 0]), other.by_family.get(k, [0, 0]))]
                for k in {*self.by_family, *other.by_family}}
        return Tally(self.n + other.n, self.correct + other.correct, self.tokens + other.tokens,
                     self.seconds + other.seconds, self.nfe + other.nfe, self.row_forwards + other.row_forwards,
                     self.committed + other.committed, fams, self.outputs + other.outputs)

    def summary(self) -> dict:
        acc = self.correct / max(self.n, 1)
        se = math.sqrt(acc * (1 - acc) / max(self.n, 1))
        return {"n": self.n, "accuracy": round(acc, 4), "accuracy_se": round(se, 4),
                "accuracy_by_family": {k: round(c / max(m, 1), 4) for k, (c, m) in sorted(self.by_family.items())},
                "tokens": self.tokens, "seconds": round(self.seconds, 3),
                "tokens_per_s": round(self.tokens / max(self.seconds, 1e-9), 1),
                "nfe": self.nfe, "nfe_per_token": round(self.row_forwards / max(self.tokens, 1), 4),
                "tokens_per_forward": round(self.committed / max(self.row_forwards, 1), 4)}


def _prompt_ids(tokenizer, records) -> list[list[int]]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in records]


def _score(tokenizer, records, generated: list[list[int]], seconds: float, nfe: int, committed: int) -> Tally:
    """A batch's Tally from each row's generated ids (cut at the first EOS)."""
    eos = tokenizer.eos_token_id
    cut = [g[: g.index(eos) + 1] if eos in g else g for g in generated]
    texts = [tokenizer.decode(c[:-1] if c and c[-1] == eos else c) for c in cut]
    right = exact_match(texts, [r["answer"] for r in records])
    fams: dict = {}
    for r, ok in zip(records, right):
        f = fams.setdefault(r["family"], [0, 0])
        f[0], f[1] = f[0] + ok, f[1] + 1
    return Tally(len(records), sum(right), sum(map(len, cut)), seconds, nfe, nfe * len(records), committed, fams,
                 texts)


def _batches(records, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not records:
        raise ValueError("no problems to evaluate")
    return [records[i:i + batch_size] for i in range(0, len(records), batch_size)]


@torch.no_grad()
def evaluate_ar(model, tokenizer, records, *, batch_size: int = 1, max_new_tokens: int = GEN_LENGTH) -> Tally:
    """Greedy decoding with the KV cache (`model.generate`), stopping at EOS."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    total = Tally()
    for batch in _batches(records, batch_size):
        t0 = time.perf_counter()
        rows = _prompt_ids(tokenizer, batch)
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             temperature=None, top_k=None, top_p=None, eos_token_id=eos, pad_token_id=pad)
        generated = out[:, width:].tolist()
        seconds = time.perf_counter() - t0
        steps = out.shape[1] - width  # one prefill + (steps - 1) cached passes, each commits a token per row
        total = total + _score(tokenizer, batch, generated, seconds, steps, steps * len(batch))
    return total


@torch.no_grad()
def evaluate_dlm(pipe, records, *, batch_size: int = 1, gen_length: int = GEN_LENGTH, steps: int | None = None,
                 block_length: int | None = None, threshold: float | None = None, factor: float | None = None,
                 cache: str = "none", refresh_every: int = 1, rule: str = "confidence") -> Tally:
    """`pipe` (a TextDiffusionPipeline) on each batch: `gen_length` masks after the prompt, `steps`
    (default `gen_length`: one token per step without a threshold) split across the blocks."""
    mask_id = pipe.mask_token_id
    total = Tally()
    for batch in _batches(records, batch_size):
        filled = {"masks": len(batch) * gen_length, "committed": 0}

        def count(_pipe, _i, _t, tensors):
            left = int((tensors["sequences"][:, -gen_length:] == mask_id).sum())
            filled["committed"] += filled["masks"] - left
            filled["masks"] = left
            return {}

        t0 = time.perf_counter()
        out = pipe([r["prompt"] for r in batch], gen_length=gen_length, block_length=block_length,
                   num_inference_steps=steps or gen_length, threshold=threshold, factor=factor, cache=cache,
                   refresh_every=refresh_every, rule=rule,
                   output_type="ids", callback_on_step_end=count, callback_on_step_end_tensor_inputs=["sequences"])
        generated = out.sequences[:, -gen_length:].tolist()
        seconds = time.perf_counter() - t0
        total = total + _score(pipe.tokenizer, batch, generated, seconds, out.nfe, filled["committed"])
    return total

