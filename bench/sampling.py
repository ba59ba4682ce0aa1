"""Sampling speed and quality: the AR teacher against its diffusion LM, same prompts.

Configurations: the AR teacher through `model.generate` with its KV cache (greedy, sampled);
the DLM vanilla (one token per step), with confidence-threshold parallel decoding, and with
a KV cache (prefix, dual) plus parallel decoding, at a few block lengths and thresholds.
Every configuration generates exactly `gen_length` tokens for each held-out prompt (EOS does
not stop anyone), runs in its own process (so that peak memory is its own), and is scored on:
- tokens/s and forward passes (NFE) per generated token;
- gen_ppl: perplexity of the generated tokens under the AR teacher, given the prompt;
- infill_exact_match: held-out spans of standard-library code filled exactly (the DLM sees
  both sides; the AR teacher sees only the left context and writes the span greedily).

    python bench/sampling.py          # writes bench/results/sampling.{json,png}
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmdlm.data import load_text_splits  # noqa: E402
from mmdlm.eval.infill import exact_match, fill_spans_ar, fill_spans_dlm  # noqa: E402
from mmdlm.eval.infill import held_out as held_out_examples  # noqa: E402
from mmdlm.eval.likelihood import continuation_nll  # noqa: E402
from mmdlm.io import atomic_write_text  # noqa: E402

CONFIGS = [
    {"method": "ar_greedy"},
    {"method": "ar_sampled", "temperature": 0.8},
    {"method": "dlm_vanilla", "block_length": 32},
    {"method": "dlm_parallel", "block_length": 32, "threshold": 0.9},
    {"method": "dlm_parallel", "block_length": 16, "threshold": 0.9},
    {"method": "dlm_prefix_cache_parallel", "block_length": 32, "threshold": 0.9, "cache": "prefix"},
    {"method": "dlm_prefix_cache_parallel", "block_length": 16, "threshold": 0.9, "cache": "prefix"},
    {"method": "dlm_prefix_cache_parallel", "block_length": 16, "threshold": 0.7, "cache": "prefix"},
    {"method": "dlm_dual_cache_parallel", "block_length": 16, "threshold": 0.9, "cache": "dual"},
    {"method": "dlm_dual_cache_parallel", "block_length": 16, "threshold": 0.7, "cache": "dual"},
]


def held_out(tokenizer, n_prompts: int, prompt_len: int, n_spans: int, span: int, left: int, right: int,
             seed: int = 0):
    """Prompts and infilling spans from the validation split (files never trained on)."""
    _, validation, _ = load_text_splits("stdlib")
    return held_out_examples(tokenizer, validation["text"], n_prompts=n_prompts, prompt_len=prompt_len,
                             n_spans=n_spans, span=span, left=left, right=right, seed=seed)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(cfg: dict, a) -> dict:
    """Run one configuration in this process and return its record."""
    from mmdlm.schedulers import MaskedDiffusionScheduler
    from mmdlm.text.adapt import load_dlm
    from mmdlm.text.base import load_causal_lm, load_tokenizer
    from mmdlm.text.generate import block_ranges, generate

    torch.manual_seed(0)
    tokenizer = load_tokenizer(a.teacher)
    teacher = load_causal_lm(a.teacher).eval()
    data = json.loads(Path(a.data).read_text())
    prompts, spans = data["prompts"], data["spans"]
    bos = tokenizer.bos_token_id
    is_ar = cfg["method"].startswith("ar_")
    if not is_ar:
        dlm, dtok = load_dlm(a.dlm)
        dlm.eval()
        mask = dlm.mask_token_id
        scheduler = MaskedDiffusionScheduler(schedule=dlm.config.schedule, eps=dlm.config.eps,
                                             threshold=cfg.get("threshold"))
    g = torch.Generator().manual_seed(0)
    outputs, nfe, elapsed = [], 0, 0.0
    rss_before = _rss_mb()
    for p in prompts:
        if is_ar:
            ids = torch.tensor([[bos] + p])
            sample = cfg.get("temperature") is not None
            t0 = time.perf_counter()
            with torch.no_grad():
                out = teacher.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.gen_length,
                                       min_new_tokens=a.gen_length, do_sample=sample,
                                       temperature=cfg.get("temperature"), top_k=None, top_p=None,
                                       pad_token_id=tokenizer.pad_token_id)
            elapsed += time.perf_counter() - t0
            outputs.append(out[0, len(p) + 1:].tolist())
            nfe += a.gen_length  # one prefill (counted as a pass) + gen_length - 1 cached steps
        else:
            ids = torch.tensor([[bos] + p + [mask] * a.gen_length])
            blocks = block_ranges(len(p) + 1, ids.shape[1], cfg["block_length"])
            t0 = time.perf_counter()
            res = generate(dlm, ids, scheduler, steps=a.gen_length, blocks=blocks, cache=cfg.get("cache", "none"),
                           generator=g)
            elapsed += time.perf_counter() - t0
            outputs.append(res.sequences[0, len(p) + 1:].tolist())
            nfe += res.nfe
    peak_growth = max(0.0, _peak_rss_mb() - rss_before)
    gen = continuation_nll(teacher, torch.tensor([[bos] + p for p in prompts]), torch.tensor(outputs))
    if is_ar:
        preds = fill_spans_ar(teacher, spans, bos, pad_token_id=tokenizer.pad_token_id)
    else:
        preds = fill_spans_dlm(dlm, spans, bos, scheduler, cache=cfg.get("cache", "none"), generator=g)
    n_tokens = len(prompts) * a.gen_length
    return {
        **{"block_length": None, "threshold": None, "cache": None}, **cfg,
        "tokens_per_s": round(n_tokens / elapsed, 1),
        "nfe_per_token": round(nfe / n_tokens, 4),
        "gen_ppl": round(gen.ppl, 3),
        "infill_exact_match": round(exact_match(preds, spans), 4),
        "peak_mem_mb": round(peak_growth, 1),
        "resident_after_load_mb": round(rss_before, 1),
        "sample_output": tokenizer.decode(outputs[0]),
    }


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
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampling.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration (JSON)
    p.add_argument("--data", help=argparse.SUPPRESS)  # internal: the held-out prompts and spans (JSON file)
    a = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if a.one:
        print(json.dumps(run_one(json.loads(a.one), a)))
        return
    from mmdlm.text.base import load_tokenizer

    prompts, spans = held_out(load_tokenizer(a.teacher), a.prompts, a.prompt_len, a.spans, a.span, a.left, a.right)
    data_file = Path(tempfile.mkdtemp()) / "held_out.json"
    data_file.write_text(json.dumps({"prompts": prompts, "spans": spans}))
    records = []
    keys = ("teacher", "dlm", "prompts", "prompt_len", "gen_length", "spans", "span", "left", "right")
    passthrough = [x for k in keys for x in (f"--{k.replace('_', '-')}", str(getattr(a, k)))]
    for cfg in CONFIGS:
        cmd = [sys.executable, __file__, *passthrough, "--data", str(data_file), "--one", json.dumps(cfg)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if done.returncode != 0:
            raise SystemExit(f"configuration {cfg} failed:\n{done.stderr[-3000:]}")
        rec = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps({k: rec[k] for k in ("method", "block_length", "threshold", "tokens_per_s",
                                              "nfe_per_token", "gen_ppl", "infill_exact_match")}))
        records.append(rec)
    from mmdlm.recipes import machine, versions

    result = {
        "benchmark": "sampling",
        "records": records,
        "settings": {k: getattr(a, k) for k in keys if k not in ("teacher", "dlm")}
        | {"teacher": os.path.relpath(a.teacher, ROOT), "dlm": os.path.relpath(a.dlm, ROOT), "batch_size": 1,
           "torch_threads": torch.get_num_threads(),
           "peak_mem": "growth of the process's peak resident memory during generation over its size after loading"},
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
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
