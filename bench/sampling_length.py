"""Cost per generated token against length: does a step of the DLM get dearer as the text grows?

One prompt (the same for everyone), batch 1, `--lengths` tokens generated; ms per generated token
(wall time of the whole generation / length; median over interleaved rounds). Configurations:
- the AR teacher (assets/teacher) greedy through `model.generate` with its KV cache;
- the shipped DLM (assets/dlm, bidirectional) in blocks of `--block`: no cache (vanilla), prefix
  and dual cache (Fast-dLLM: a full pass refreshes the cache at every block start), and both caches
  with one full pass in all (`refresh_every`: later blocks append the finished one to the stale cache);
- a block-attention DLM (block size `--block`), no cache and prefix cache: the cache grows by
  appending each finished block (mmdlm.text.generate), and, for comparison, the path before that
  (a full pass at every block start, the append switched off in this process only).
There is no shipped block-attention DLM: this one is the teacher's weights adapted with attention
"block" and NOT trained (`DiffusionLM.from_causal_lm`: the structure and shape of a trained one,
its outputs meaningless). Every DLM commits one token per forward (steps = length, no threshold),
so the cost per token is the cost per forward and depends on the lengths only, not on the
weights or on how confident a model is. The models were trained on 256 positions; longer runs
lift the config's limit (`max_position_embeddings`): speed only, the text there is not meant to be read.

    python bench/sampling_length.py   # writes bench/results/sampling_length.{json,png}
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmdlm.io import atomic_write_text, save_figure  # noqa: E402

PROMPT = ("import os\nimport sys\n\n\ndef read_lines(path):\n    \"\"\"Return the lines of the file at path.\"\"\"\n"
          "    with open(path) as f:\n        return f.read().splitlines()\n\n\ndef main(argv):\n")
CONFIGS = [
    {"method": "ar_kv_cache", "model": "teacher"},
    {"method": "dlm_vanilla", "model": "bidirectional", "cache": "none"},
    {"method": "dlm_prefix_cache", "model": "bidirectional", "cache": "prefix"},
    {"method": "dlm_dual_cache", "model": "bidirectional", "cache": "dual"},
    # one full pass in all: every later block appends the finished one to the stale cache (refresh_every)
    {"method": "dlm_prefix_cache_one_full_pass", "model": "bidirectional", "cache": "prefix", "refresh_every": 10**6},
    {"method": "dlm_dual_cache_one_full_pass", "model": "bidirectional", "cache": "dual", "refresh_every": 10**6},
    {"method": "block_dlm_no_cache", "model": "block", "cache": "none"},
    {"method": "block_dlm_cache_full_refresh", "model": "block", "cache": "prefix", "append": False},
    {"method": "block_dlm_cache_append", "model": "block", "cache": "prefix"},
]
GOAL = 1.2  # the best DLM configuration's ms/token at the longest length within 1.2x of its ms/token at 64


@contextmanager
def append_off():
    """The sampler as it was before the cache append: every block starts with a full pass."""
    from mmdlm.text.generate import _Runner

    original = _Runner._appendable
    _Runner._appendable = lambda self, q0: False
    try:
        yield
    finally:
        _Runner._appendable = original


class Models:
    def __init__(self, teacher: str, dlm: str, block: int, longest: int, prompt_tokens: int):
        from mmdlm.text.adapt import DiffusionLM, load_dlm
        from mmdlm.text.base import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(teacher)
        prompt = [tokenizer.bos_token_id, *tokenizer(PROMPT, add_special_tokens=False)["input_ids"]]
        self.prompt = prompt[:prompt_tokens]
        if len(self.prompt) != prompt_tokens:
            raise ValueError(f"the prompt has only {len(self.prompt)} tokens; ask for fewer (--prompt-tokens)")
        self.pad = tokenizer.pad_token_id
        self.teacher = load_causal_lm(teacher).eval()
        self.dlm = {"bidirectional": load_dlm(dlm)[0].eval(),
                    "block": DiffusionLM.from_causal_lm(load_causal_lm(teacher), load_tokenizer(teacher),
                                                        attention="block", block_size=block).eval()}
        for model in (self.teacher, *(d.model for d in self.dlm.values())):  # speed only beyond 256 positions
            model.config.max_position_embeddings = max(model.config.max_position_embeddings,
                                                       len(self.prompt) + longest)
        self.block = block

    @torch.no_grad()
    def run(self, cfg: dict, length: int) -> tuple[list[int], int, float]:
        """(generated tokens, forward passes, seconds) of one generation of `length` tokens."""
        from mmdlm.schedulers import MaskedDiffusionScheduler
        from mmdlm.text.generate import default_blocks, generate

        if cfg["model"] == "teacher":
            ids = torch.tensor([self.prompt])
            t0 = time.perf_counter()
            out = self.teacher.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=length,
                                        min_new_tokens=length, do_sample=False, pad_token_id=self.pad)
            return out[0, len(self.prompt):].tolist(), length, time.perf_counter() - t0
        dlm = self.dlm[cfg["model"]]
        ids = torch.tensor([self.prompt + [dlm.mask_token_id] * length])
        blocks = default_blocks(dlm, len(self.prompt), ids.shape[1], self.block)
        t0 = time.perf_counter()
        with append_off() if cfg.get("append") is False else nullcontext():
            res = generate(dlm, ids, MaskedDiffusionScheduler(), steps=length, blocks=blocks, cache=cfg["cache"],
                           refresh_every=cfg.get("refresh_every", 1))
        return res.sequences[0, len(self.prompt):].tolist(), res.nfe, time.perf_counter() - t0


def measure(models: Models, lengths: list[int], rounds: int) -> list[dict]:
    """Every (configuration, length) once per round, the rounds interleaved; the median time per token."""
    times = {(i, n): [] for i in range(len(CONFIGS)) for n in lengths}
    outputs = {}
    for _ in range(rounds):
        for n in lengths:
            for i, cfg in enumerate(CONFIGS):
                tokens, nfe, seconds = models.run(cfg, n)
                times[i, n].append(seconds)
                outputs[i, n] = (tokens, nfe)
    records = []
    for i, cfg in enumerate(CONFIGS):
        for n in lengths:
            rec = {"length": n, "block_length": None if cfg["model"] == "teacher" else models.block, **cfg,
                   "ms_per_token": round(1000 * statistics.median(times[i, n]) / n, 3),
                   "ms_per_token_rounds": [round(1000 * t / n, 3) for t in times[i, n]],
                   "nfe_per_token": round(outputs[i, n][1] / n, 3)}
            if cfg["method"] == "block_dlm_cache_append":  # exactness on the real shape: the full refresh's tokens
                full = next(j for j, c in enumerate(CONFIGS) if c["method"] == "block_dlm_cache_full_refresh")
                rec["same_tokens_as_full_refresh"] = outputs[i, n][0] == outputs[full, n][0]
            if cfg.get("refresh_every"):  # a stale cache: the share of tokens that a pass at every block also wrote
                every = next(j for j, c in enumerate(CONFIGS) if c["model"] == cfg["model"] and
                             c["cache"] == cfg["cache"] and not c.get("refresh_every"))
                pairs = list(zip(outputs[i, n][0], outputs[every, n][0]))
                rec["tokens_as_every_block_refresh"] = round(sum(a == b for a, b in pairs) / len(pairs), 4)
            records.append(rec)
    return records


def goal(records: list[dict], lengths: list[int]) -> dict:
    """The best DLM configuration (lowest ms/token at the longest length): its cost there over its cost at 64."""
    longest = max(lengths)
    at = {(r["method"], r["length"]): r["ms_per_token"] for r in records}
    best = min((r for r in records if r["model"] != "teacher" and r["length"] == longest),
               key=lambda r: r["ms_per_token"])
    ratio = at[best["method"], longest] / at[best["method"], 64]
    return {"best_dlm": best["method"], "length": longest, "ratio_to_64": round(ratio, 3), "target": GOAL,
            "met": ratio <= GOAL}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(ROOT / "assets" / "teacher"))
    p.add_argument("--dlm", default=str(ROOT / "assets" / "dlm"))
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    p.add_argument("--block", type=int, default=16, help="decoding block length, and the block DLM's block size")
    p.add_argument("--prompt-tokens", type=int, default=32,
                   help="a multiple of --block: every block is then whole and takes exactly its length in steps")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampling_length.json"))
    a = p.parse_args()
    if 64 not in a.lengths:
        raise ValueError("--lengths must include 64: the goal compares the longest length with 64")
    if a.prompt_tokens % a.block or any(n % a.block for n in a.lengths):
        raise ValueError(f"--prompt-tokens and --lengths must be multiples of --block ({a.block}): every block whole")
    torch.set_num_threads(a.threads)
    from mmdlm.provenance import machine, versions

    models = Models(a.teacher, a.dlm, a.block, max(a.lengths), a.prompt_tokens)
    for cfg in CONFIGS:  # warm-up: lazy initialisation
        models.run(cfg, a.block * 2)
    load_before = os.getloadavg()
    records = measure(models, a.lengths, a.rounds)
    load_after = os.getloadavg()
    for r in records:
        print(json.dumps({k: r.get(k) for k in ("method", "length", "ms_per_token", "nfe_per_token",
                                                "same_tokens_as_full_refresh")}))
    result = {
        "benchmark": "sampling_length",
        "records": records,
        "goal": goal(records, a.lengths),
        "settings": {"teacher": os.path.relpath(a.teacher, ROOT), "dlm": os.path.relpath(a.dlm, ROOT),
                     "block_dlm": "the teacher's weights adapted with attention 'block' (block size "
                                  f"{a.block}), not trained: speed only",
                     "prompt_tokens": len(models.prompt), "lengths": a.lengths, "block": a.block, "batch_size": 1,
                     "rounds": a.rounds, "torch_threads": torch.get_num_threads(),
                     "dlm_decoding": "one token per forward (steps = length, no threshold)",
                     "timing": "wall time of one whole generation / length; median over the interleaved rounds"},
        "machine": machine() | {"load_average_before": [round(x, 2) for x in load_before],
                                "load_average_after": [round(x, 2) for x in load_after],
                                "shared": "a 2-core machine shared with other jobs: times are as measured, "
                                          "the rounds interleave the configurations so that load hits all alike"},
        "versions": versions(),
        "command": " ".join(["python bench/sampling_length.py", *sys.argv[1:]]),
    }
    print(json.dumps(result["goal"]))
    out = Path(a.out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in result["records"])):
        recs = [r for r in result["records"] if r["method"] == method]
        ax.plot([r["length"] for r in recs], [r["ms_per_token"] for r in recs], "*-" if method.startswith("ar") else
                "o-", color=f"C{i}", label=method)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens generated (batch 1)")
    ax.set_ylabel("ms per generated token (log)")
    s = result["settings"]
    ax.set_title(f"cost per token against length: block {s['block']}, prompt {s['prompt_tokens']} tokens, "
                 f"{s['torch_threads']} thread", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
