"""Sampling speed and quality: the AR teacher against its diffusion LM, same prompts.

Configurations: the AR teacher through `model.generate` with its KV cache (greedy, sampled);
the DLM vanilla (one token per step), with confidence-threshold parallel decoding, and with
a KV cache (prefix, dual) plus parallel decoding, at a few block lengths and thresholds.
Every configuration generates exactly `gen_length` tokens for each held-out prompt (EOS does
not stop anyone). All of them run side by side in one process, in interleaved rounds (every
round runs every configuration, so machine noise hits all alike), and are scored on:
- tokens/s (median over rounds) and forward passes (NFE) per generated token;
- peak memory: growth of the process's resident high-water mark during the configuration
  (the mark is reset before each one);
- gen_ppl: perplexity of the generated tokens under the AR teacher, given the prompt. A looping
  sample has a low perplexity too, so it is only read beside the sample's mean token entropy,
  distinct-2 (share of distinct bigrams) and the share of repeated 4-grams, each compared with
  the held-out documents' own continuations of the same prompts (the reference text);
- infill_exact_match: held-out spans of standard-library code filled exactly (the DLM sees
  both sides; the AR teacher sees only the left context and writes the span greedily).

    python bench/sampling.py          # writes bench/results/sampling.{json,png}
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmdlm.data import load_text_splits  # noqa: E402
from mmdlm.eval.infill import exact_match, fill_spans_ar, fill_spans_dlm  # noqa: E402
from mmdlm.eval.infill import held_out as held_out_examples  # noqa: E402
from mmdlm.eval.likelihood import continuation_nll  # noqa: E402
from mmdlm.eval.samples import distinct_n, repeated_ngrams, token_entropy  # noqa: E402
from mmdlm.io import atomic_write_text, save_figure  # noqa: E402

CONFIGS = [
    {"method": "ar_greedy"},
    {"method": "ar_sampled", "temperature": 0.8},
    {"method": "dlm_vanilla", "block_length": 32},
    {"method": "dlm_parallel", "block_length": 32, "threshold": 0.9},
    {"method": "dlm_parallel", "block_length": 16, "threshold": 0.9},
    {"method": "dlm_prefix_cache", "block_length": 16, "cache": "prefix"},
    {"method": "dlm_prefix_cache_parallel", "block_length": 16, "threshold": 0.9, "cache": "prefix"},
    {"method": "dlm_prefix_cache_parallel", "block_length": 32, "threshold": 0.9, "cache": "prefix"},
    {"method": "dlm_dual_cache", "block_length": 16, "cache": "dual"},
    {"method": "dlm_dual_cache_parallel", "block_length": 8, "threshold": 0.9, "cache": "dual"},
    {"method": "dlm_dual_cache_parallel", "block_length": 16, "threshold": 0.9, "cache": "dual"},
    {"method": "dlm_dual_cache_parallel", "block_length": 16, "threshold": 0.7, "cache": "dual"},
    {"method": "dlm_dual_cache_parallel", "block_length": 16, "threshold": 0.5, "cache": "dual"},
    # sampled at the AR's temperature: greedy text of either kind loops, which open-text quality must not reward
    {"method": "dlm_vanilla_sampled", "block_length": 32, "temperature": 0.8},
    {"method": "dlm_dual_cache_parallel_sampled", "block_length": 16, "threshold": 0.9, "cache": "dual",
     "temperature": 0.8},
    {"method": "dlm_dual_cache_parallel_sampled", "block_length": 16, "threshold": 0.7, "cache": "dual",
     "temperature": 0.8},
]


def held_out(tokenizer, n_prompts: int, prompt_len: int, n_spans: int, span: int, left: int, right: int,
             seed: int = 0):
    """Prompts and infilling spans from the validation split (files never trained on)."""
    _, validation, _ = load_text_splits("stdlib")
    return held_out_examples(tokenizer, validation["text"], n_prompts=n_prompts, prompt_len=prompt_len,
                             n_spans=n_spans, span=span, left=left, right=right, seed=seed)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process's resident memory (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def reference_continuations(tokenizer, prompts: list[list[int]], gen_length: int) -> list[list[int]]:
    """The `gen_length` tokens that follow each prompt in its held-out document (a prompt is a document's start);
    prompts from documents too short for that are left out."""
    _, validation, _ = load_text_splits("stdlib")
    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in validation["text"]]
    n = len(prompts[0])
    follow = {tuple(d[:n]): d[n:n + gen_length] for d in docs}  # (documents sharing a start: one of them)
    return [c for p in prompts if len(c := follow.get(tuple(p), [])) == gen_length]


def text_quality(samples: list[list[int]]) -> dict:
    return {"entropy": round(token_entropy(torch.tensor(samples)), 3), "distinct_2": round(distinct_n(samples, 2), 3),
            "repeated_4grams": round(repeated_ngrams(samples, 4), 3)}


class Runner:
    """Loads the teacher and the DLM once; runs any configuration on the held-out data."""

    def __init__(self, a, prompts, spans):
        from mmdlm.text.adapt import load_dlm
        from mmdlm.text.base import load_causal_lm, load_tokenizer

        self.a, self.prompts, self.spans = a, prompts, spans
        self.tokenizer = load_tokenizer(a.teacher)
        self.teacher = load_causal_lm(a.teacher).eval()
        self.dlm, _ = load_dlm(a.dlm)
        self.dlm.eval()
        self.bos = self.tokenizer.bos_token_id

    def _scheduler(self, cfg):
        from mmdlm.schedulers import MaskedDiffusionScheduler

        c = self.dlm.config
        return MaskedDiffusionScheduler(schedule=c.schedule, eps=c.eps, threshold=cfg.get("threshold"),
                                        temperature=cfg.get("temperature", 0.0))

    @torch.no_grad()
    def continue_all(self, cfg) -> tuple[list[list[int]], int, float]:
        """Generate `gen_length` tokens after every prompt; returns (outputs, nfe, seconds)."""
        from mmdlm.text.generate import block_ranges, generate

        a, outputs, nfe, elapsed = self.a, [], 0, 0.0
        g = torch.Generator().manual_seed(0)
        scheduler = None if cfg["method"].startswith("ar_") else self._scheduler(cfg)
        for p in self.prompts:
            if scheduler is None:
                ids = torch.tensor([[self.bos] + p])
                sample = cfg.get("temperature") is not None
                torch.manual_seed(0)
                t0 = time.perf_counter()
                out = self.teacher.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.gen_length,
                                            min_new_tokens=a.gen_length, do_sample=sample,
                                            temperature=cfg.get("temperature"), top_k=None, top_p=None,
                                            pad_token_id=self.tokenizer.pad_token_id)
                elapsed += time.perf_counter() - t0
                outputs.append(out[0, len(p) + 1:].tolist())
                nfe += a.gen_length  # one prefill + gen_length - 1 cached steps
            else:
                ids = torch.tensor([[self.bos] + p + [self.dlm.mask_token_id] * a.gen_length])
                blocks = block_ranges(len(p) + 1, ids.shape[1], cfg["block_length"])
                t0 = time.perf_counter()
                res = generate(self.dlm, ids, scheduler, steps=a.gen_length, blocks=blocks,
                               cache=cfg.get("cache", "none"), generator=g)
                elapsed += time.perf_counter() - t0
                outputs.append(res.sequences[0, len(p) + 1:].tolist())
                nfe += res.nfe
        return outputs, nfe, elapsed

    def gen_ppl(self, outputs) -> float:
        prompts = torch.tensor([[self.bos] + p for p in self.prompts])
        return continuation_nll(self.teacher, prompts, torch.tensor(outputs)).ppl

    def infill_exact_match(self, cfg) -> float:
        if cfg["method"].startswith("ar_"):  # the AR teacher sees only the left context
            preds = fill_spans_ar(self.teacher, self.spans, self.bos, pad_token_id=self.tokenizer.pad_token_id)
        else:
            preds = fill_spans_dlm(self.dlm, self.spans, self.bos, self._scheduler(cfg), cache=cfg.get("cache", "none"),
                                   generator=torch.Generator().manual_seed(0))
        return exact_match(preds, self.spans)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(ROOT / "assets" / "teacher"))
    p.add_argument("--dlm", default=str(ROOT / "assets" / "dlm"))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--spans", type=int, default=64)
    p.add_argument("--span", type=int, default=6)
    p.add_argument("--left", type=int, default=48)
    p.add_argument("--right", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3, help="timing rounds; every round runs every configuration")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampling.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from mmdlm.text.base import load_tokenizer

    prompts, spans = held_out(load_tokenizer(a.teacher), a.prompts, a.prompt_len, a.spans, a.span, a.left, a.right)
    run = Runner(a, prompts, spans)
    for cfg in CONFIGS[:3]:  # warm-up: first calls pay for lazy initialisation
        run.continue_all(cfg)

    # Speed: every configuration once per round, rounds interleaved, median over rounds.
    speed = {i: [] for i in range(len(CONFIGS))}
    peak = {}
    outputs, nfes = {}, {}
    for r in range(a.rounds):
        for i, cfg in enumerate(CONFIGS):
            rss0 = _status_kb("VmRSS")
            _reset_peak_rss()
            out, nfe, seconds = run.continue_all(cfg)
            peak[i] = max(peak.get(i, 0.0), (_status_kb("VmHWM") - rss0) / 1024)
            speed[i].append(len(prompts) * a.gen_length / seconds)
            if r == 0:
                outputs[i], nfes[i] = out, nfe
            elif out != outputs[i]:
                raise SystemExit(f"configuration {cfg} is not deterministic across rounds")
    records = []
    for i, cfg in enumerate(CONFIGS):
        flat = [t for o in outputs[i] for t in o]
        rec = {"block_length": None, "threshold": None, "cache": None, **cfg,
               "tokens_per_s": round(statistics.median(speed[i]), 1),
               "tokens_per_s_rounds": [round(x, 1) for x in speed[i]],
               "nfe_per_token": round(nfes[i] / len(flat), 4),
               "gen_ppl": round(run.gen_ppl(outputs[i]), 3),
               **text_quality(outputs[i]),
               "infill_exact_match": round(run.infill_exact_match(cfg), 4),
               "peak_mem_mb": round(peak[i], 1),
               "sample_output": run.tokenizer.decode(outputs[i][0])}
        print(json.dumps({k: rec[k] for k in ("method", "block_length", "threshold", "tokens_per_s",
                                              "nfe_per_token", "gen_ppl", "entropy", "distinct_2",
                                              "infill_exact_match")}))
        records.append(rec)
    from mmdlm.provenance import machine, versions

    keys = ("prompts", "prompt_len", "gen_length", "spans", "span", "left", "right", "rounds")
    reference = reference_continuations(run.tokenizer, prompts, a.gen_length)
    result = {
        "benchmark": "sampling",
        "records": records,
        "reference_text": {"samples": len(reference), **text_quality(reference)},
        "settings": {k: getattr(a, k) for k in keys}
        | {"teacher": os.path.relpath(a.teacher, ROOT), "dlm": os.path.relpath(a.dlm, ROOT), "batch_size": 1,
           "torch_threads": torch.get_num_threads(),
           "peak_mem": "growth of the process's peak resident memory during a configuration's generations over "
                       "its resident memory before them (the high-water mark is reset before each)"},
        "resident_after_load_mb": round(_status_kb("VmRSS") / 1024, 1),
        "machine": machine(),
        "versions": versions(),
        "command": " ".join(["python bench/sampling.py", *sys.argv[1:]]),
    }
    out = Path(a.out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in result["records"]:
        label = r["method"] + (f" b{r['block_length']}" if r["block_length"] else "") + \
            (f" t{r['threshold']}" if r["threshold"] else "")
        marker = "s" if r["method"].startswith("ar_") else "o"
        ax.scatter(r["tokens_per_s"], r["gen_ppl"], marker=marker)
        ax.annotate(label, (r["tokens_per_s"], r["gen_ppl"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("tokens/s (log)")
    ax.set_ylabel("generative perplexity under the AR teacher")
    ax.set_title("sampling: speed against quality")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
