"""Sampling from a diffusion LM: one loop, with caches, parallel decoding and guidance as options.

`generate` fills every [MASK] of `ids`, block by block (semi-autoregressive, LLaDA style).
Each step runs the model, and a `MaskedDiffusionScheduler` commits some of the block's masked
tokens (by a commit schedule, or every token above a confidence threshold). Options:

- cache="prefix": at the start of each block one full pass fills a KV cache of everything
  before the block; steps then run only the block and what follows it. For block-attention
  models this is exact (earlier blocks are clean and never see later ones), and the cache is
  not rebuilt: each new block appends the finished one to it by running only the positions
  the cache lacks, so no pass runs the prefix again; for bidirectional models it is
  Fast-dLLM's approximate prefix cache, refreshed by a full pass every `refresh_every` blocks
  (1: every block, as Fast-dLLM). Between refreshes the finished block is appended the same
  way, its keys/values computed against the stale cache: cheaper, and approximate twice over.
- cache="dual": the cache also keeps the positions after the block (Fast-dLLM's dual cache):
  steps run the block alone. Between refreshes the positions after the block keep the
  keys/values of the last full pass.
- guidance_scale > 0: classifier-free guidance; the unconditional pass masks the prompt.
- stop_at_eos: once a row has produced EOS (or another of the `eos_token_id` given, e.g. a chat
  template's end of turn), its remaining masks become EOS (no EOS flood to decode, nothing after
  EOS in the text); the loop ends when every row has.

With shift, token i is predicted at position i-1, so each pass also includes the position
just before the block.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..diffusion._checks import check_finite, check_int, check_steps

CACHES = ("none", "prefix", "dual")


@dataclass
class GenerationResult:
    sequences: torch.LongTensor
    nfe: int  # forward passes through the model (a guided step counts two)
    history: list[torch.LongTensor] | None = None


def block_ranges(start: int, end: int, block_length: int, *, align: bool = False,
                 origin: int = 0) -> list[tuple[int, int]]:
    """Cut [start, end) into blocks of `block_length`; with `align`, on the grid that starts at
    `origin` (a row's first real token: its left padding)."""
    if block_length < 1:
        raise ValueError(f"block_length must be >= 1, got {block_length}")
    first = origin + ((start - origin) // block_length + 1) * block_length if align else start + block_length
    bounds = [start, *range(first, end, block_length), end]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def default_blocks(dlm, start: int, end: int, block_length: int | None, origin: int = 0) -> list[tuple[int, int]]:
    """Block-attention models decode on their own block grid (from `origin`, the row's first real
    token); others in `block_length` chunks."""
    if dlm.config.attention == "block":
        return block_ranges(start, end, block_length or dlm.config.block_size, align=True, origin=origin)
    return block_ranges(start, end, block_length or (end - start))


def _select(cache: DynamicCache, index: torch.Tensor) -> DynamicCache:
    """A new cache holding the key/value entries at `index` (in that order) of every layer."""
    out = DynamicCache()
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys.index_select(-2, index), layer.values.index_select(-2, index), i)
    return out


class _Runner:
    """Runs the model on a window of positions, with or without cached keys/values."""

    def __init__(self, dlm, attention_mask, length, device, refresh_every: int = 1):
        self.dlm, self.attention_mask, self.nfe, self.refresh_every = dlm, attention_mask, 0, refresh_every
        self.stale_blocks = 0  # blocks started since the last full pass
        self.shift = int(dlm.config.shift)
        # With causal or block-causal attention nothing after the current block can matter.
        self.past_only = dlm.config.attention in ("causal", "block")
        if attention_mask is None:
            self.positions = torch.arange(length, device=device)[None]
            self.pattern = dlm.pattern(length, device)
        else:  # left padding: positions (and block grids) counted from each row's first real token
            self.positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            self.pattern = dlm.pattern(length, device, self.positions)
        self.cache, self.cached = None, None  # cached: absolute positions held by the cache, in order
        self.prefix, self.suffix = 0, None

    def _run(self, kind: str, x, q, kv, *, own_pattern: bool = False, **kwargs):
        """The model on queries `q` over keys `kv`; `own_pattern`: the queries and keys are one prefix of the
        sequence, whose pattern the model builds itself (mask-free where it can). `kind` labels the pass for
        torch.profiler ("mmdlm.<kind>")."""
        pad = None if self.attention_mask is None else self.attention_mask[:, kv]
        positions = self.positions.expand(x.shape[0], -1)[:, q]
        self.nfe += 1
        pattern = None if own_pattern else self.pattern[..., q, :][..., kv]
        with torch.profiler.record_function(f"mmdlm.{kind}"):
            return self.dlm(x[:, q], pad, pattern=pattern, position_ids=positions, **kwargs)

    def full(self, x, lo, hi, keep_cache: str):
        """Run the whole sequence; return aligned logits for [lo, hi); optionally keep a cache."""
        q0, end = lo - self.shift, hi if self.past_only else x.shape[1]
        q = torch.arange(end, device=x.device)
        out = self._run("full_pass", x, q, q, own_pattern=True, use_cache=keep_cache != "none",
                        logits_to_keep=torch.arange(q0, hi - self.shift, device=x.device))
        if keep_cache != "none":
            keep = torch.arange(q0, device=x.device)
            if keep_cache == "dual":
                keep = torch.cat([keep, torch.arange(hi, end, device=x.device)])
            self.cache = _select(self.dlm.cache_of(out), keep)
            self._hold(q0, hi if keep_cache == "dual" and end > hi else None, x.device)
            self.stale_blocks = 0
        return out.logits

    def window(self, x, lo, hi, cache: str):
        """Run only the positions the cache lacks; return aligned logits for [lo, hi)."""
        q0 = lo - self.shift
        q = torch.arange(q0, hi if cache == "dual" or self.past_only else x.shape[1], device=x.device)
        out = self._run("window", x, q, torch.cat([self.cached, q]), cache=self.cache, use_cache=True,
                        logits_to_keep=torch.arange(hi - lo, device=x.device))
        self.cache.crop(-len(q))
        return out.logits

    def refresh(self, x, lo, hi, cache: str):
        """Start the block [lo, hi) with a cache of everything before it; return aligned logits for [lo, hi).

        When the cache held from the previous block stays exact, run only the positions it lacks (the finished
        block and this one) and keep the finished block's keys/values: the append of block-attention models.
        Otherwise one full pass."""
        q0 = lo - self.shift
        if not self._appendable(q0):
            self.stale_blocks += 1
            if self.cache is None or self.stale_blocks >= self.refresh_every:
                return self.full(x, lo, hi, cache)
            return self.append_stale(x, lo, hi, cache)
        held = self.prefix  # past-only: the cache holds [0, held) and nothing after
        q = torch.arange(held, hi, device=x.device)
        out = self._run("append", x, q, torch.cat([self.cached, q]), cache=self.cache, use_cache=True,
                        logits_to_keep=torch.arange(q0 - held, hi - self.shift - held, device=x.device))
        self.cache.crop(q0 - hi)  # keep [0, q0)
        self._hold(q0, None, x.device)
        return out.logits

    def append_stale(self, x, lo, hi, cache: str):
        """Start the block [lo, hi) without a full pass: the positions the cache lacks before the block (the
        finished block) run with the block, over the cache as it is, and are appended to it; cached positions
        after the block keep their old keys/values. Return aligned logits for [lo, hi)."""
        q0, length = lo - self.shift, x.shape[1]
        end = hi if cache == "dual" or self.past_only else length
        arange = lambda a, b: torch.arange(a, b, device=x.device)  # noqa: E731
        held, suffix = self.prefix, self.suffix  # the cache holds [0, held), then [suffix, length)
        if suffix is not None and suffix < hi:  # the block's own positions leave the cache: they are queries now
            self.cache = _select(self.cache, torch.cat([arange(0, held), held + arange(hi - suffix, length - suffix)]))
            suffix = hi
        after = arange(suffix, length) if suffix is not None else arange(0, 0)
        q = arange(held, end)
        out = self._run("append_stale", x, q, torch.cat([arange(0, held), after, q]), cache=self.cache,
                        use_cache=True, logits_to_keep=arange(q0 - held, q0 - held + hi - lo))
        # Now [0, held), the positions after, then q: keep [0, q0) (the finished block joins), then those after.
        n = len(after)
        self.cache = _select(self.cache, torch.cat([arange(0, held), held + n + arange(0, q0 - held),
                                                    arange(held, held + n)]))
        self._hold(q0, suffix, x.device)
        return out.logits

    def _hold(self, prefix: int, suffix: int | None, device) -> None:
        """Record that the cache holds positions [0, prefix), then [suffix, length) (none when None)."""
        self.prefix, self.suffix = prefix, suffix
        after = torch.arange(suffix, len(self.positions[0]), device=device) if suffix is not None else None
        self.cached = torch.arange(prefix, device=device) if after is None else \
            torch.cat([torch.arange(prefix, device=device), after])

    def _appendable(self, q0: int) -> bool:
        """Whether the held cache, of positions [0, held) filled when the previous block [held + shift, ..)
        started, is still exact: past-only attention (the cache is that prefix), held <= q0, and no held
        position sees a position the previous block may have changed (past-only patterns are transitive, so
        their keys/values depend on unchanged tokens only). True for block-attention models decoded on their
        block grid and for causal ones."""
        if not self.past_only or self.cache is None:
            return False
        held = self.prefix
        return held <= q0 and not bool(self.pattern[..., :held, held + self.shift:].any())


def _status(x, lo: int, hi: int, mask_id: int, stops: torch.Tensor | None, start: int, *,
            last: bool) -> tuple[bool, bool]:
    """(the block [lo, hi) holds no mask any more, every row has written one of the `stops` token ids in
    [start, hi)), read from the device at once: the sampling loop's one host synchronisation per step (none
    after a block's `last` step when no stop is watched: that step commits whatever is left)."""
    if last and stops is None:
        return True, False
    finished = torch.ones((), dtype=torch.bool, device=x.device) if last else ~(x[:, lo:hi] == mask_id).any()
    code = finished.long()
    if stops is not None:
        code = code + 2 * torch.isin(x[:, start:hi], stops).any(-1).all().long()
    code = int(code)
    return bool(code & 1), bool(code & 2)


def check_options(*, steps: int, cache: str, guidance_scale: float, refresh_every: int = 1) -> None:
    """The options of `generate` other than the scheduler's, checked before anything runs."""
    check_steps(steps)
    if cache not in CACHES:
        raise ValueError(f"unknown cache {cache!r}; choose one of {', '.join(CACHES)}")
    check_finite(guidance_scale, "guidance_scale")
    check_int(refresh_every, "refresh_every", 1)


@torch.no_grad()
def generate(dlm, ids: torch.LongTensor, scheduler, *, steps: int, blocks: list[tuple[int, int]] | None = None,
             attention_mask: torch.Tensor | None = None, cache: str = "none", refresh_every: int = 1,
             guidance_scale: float = 0.0, prompt_mask: torch.BoolTensor | None = None,
             eos_token_id: int | list[int] | None = None,
             stop_at_eos: bool = False, record_history: bool = False, callback=None,
             generator: torch.Generator | None = None, **step_options) -> GenerationResult:
    """Fill every mask token of `ids` (B, L). `blocks` cut the masked region (default: one block).

    `steps` is the budget for the whole generation, split evenly across blocks; with a
    threshold a block may finish early. `callback(step, t, x)` runs after every step.
    `refresh_every`: blocks per full pass of an approximate cache (see the module's docstring).
    """
    check_options(steps=steps, cache=cache, guidance_scale=guidance_scale, refresh_every=refresh_every)
    if guidance_scale > 0 and cache != "none":
        raise ValueError("classifier-free guidance runs without a cache (cache='none')")
    if guidance_scale > 0 and (prompt_mask is None or not prompt_mask.any()):
        raise ValueError("classifier-free guidance needs a prompt to mask (prompt_mask)")
    mask_id = dlm.mask_token_id
    x = ids.clone()
    masked = (x == mask_id).any(0).nonzero().flatten()
    if len(masked) == 0:
        return GenerationResult(x, 0, [] if record_history else None)
    region = (int(masked[0]), int(masked[-1]) + 1)
    blocks = blocks or [region]
    if dlm.config.shift and region[0] == 0:
        raise ValueError("with shift, position 0 cannot be generated: start the input with BOS or a prompt token")
    runner = _Runner(dlm, attention_mask, x.shape[1], x.device, refresh_every)
    history = [x.clone()] if record_history else None
    per_block = [steps // len(blocks) + (i < steps % len(blocks)) for i in range(len(blocks))]
    step_index = 0
    stops = (torch.as_tensor(eos_token_id, device=x.device).flatten()  # the first is EOS
             if stop_at_eos and eos_token_id is not None else None)

    for (lo, hi), budget in zip(blocks, per_block):
        scheduler.set_timesteps(max(budget, 1), device=x.device)
        levels = scheduler.levels
        confidence = None  # carried from step to step by a remasking or editing scheduler
        for k, t in enumerate(levels):  # the last step commits whatever is left
            if guidance_scale > 0:
                c = runner.full(x, lo, hi, "none")
                u = runner.full(x.masked_fill(prompt_mask, mask_id), lo, hi, "none")
                logits = u + (1 + guidance_scale) * (c - u)
            elif cache == "none":
                logits = runner.full(x, lo, hi, cache)
            elif k == 0:
                logits = runner.refresh(x, lo, hi, cache)
            else:
                logits = runner.window(x, lo, hi, cache)
            out = scheduler.step(logits, t, x[:, lo:hi], mask_token_id=mask_id, confidence=confidence,
                                 generator=generator, **step_options)
            x[:, lo:hi], confidence = out.prev_sample, out.confidence
            step_index += 1
            if record_history:
                history.append(x.clone())
            if callback is not None:
                callback(step_index, t, x)
            finished, all_eos = _status(x, lo, hi, mask_id, stops, region[0], last=k == len(levels) - 1)
            if finished:
                break
        if stops is not None:  # rows that wrote a stop token: their later masks become EOS (the first)
            done = torch.isin(x[:, region[0]:hi], stops).any(-1, keepdim=True)
            rest = x[:, hi:]
            x[:, hi:] = torch.where(done & (rest == mask_id), stops[0], rest)
            if all_eos:
                break
    return GenerationResult(x, runner.nfe, history)

