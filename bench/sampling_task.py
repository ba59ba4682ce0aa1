"""The race on a task with exact answers: the SFT'd AR model against the SFT'd diffusion LM.

Both models were fine-tuned on the same examples of the built-in arithmetic task
(configs/task_sft_ar.yaml, configs/task_sft_dlm.yaml) and solve the same held-out problems
(unseen number combinations; word problems with unseen names and objects). Configurations, each
at batch 1 and batch 8: the AR model greedy with its KV cache; the DLM vanilla (one block, one
token per step), in blocks of 8, with confidence-threshold parallel decoding (0.9 / 0.7 / 0.5, in
one block or in blocks of 8), with a prefix cache and with a dual cache (Fast-dLLM; blocks of 8,
16 and 32), and with those caches' full pass every block (Fast-dLLM's), every 2nd block or only at
the first (`refresh_every`; the share of problems answered in exactly the same text as with a full
pass at every block is recorded), and with Fast-dLLM's factor rule (0.5 and 1) in place of the
threshold. Measured per configuration (`mmdlm.eval.task`): exact-answer accuracy, tokens/s (the
response up to and including its first EOS, counted alike for both models), NFE per token and
tokens committed per forward. Equal quality: accuracy within one point of AR greedy at the same
batch size.

The held-out problems are cut into rounds; every round runs every configuration on its slice, so
that the load of a shared machine hits all configurations alike. Then, for AR and the fastest DLM
configuration at each batch size, where the time goes (`time_split`: the share of the prompt's
pass, and of the DLM's full passes, appends and windows).

    python bench/sampling_task.py      # writes bench/results/sampling_task.{json,png}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmdlm.data.arithmetic import problems  # noqa: E402
from mmdlm.eval.task import GEN_LENGTH, Tally, evaluate_ar, evaluate_dlm  # noqa: E402
from mmdlm.io import atomic_write_text, save_figure  # noqa: E402

CONFIGS = [
    {"method": "ar_greedy"},
    {"method": "dlm_vanilla"},
    {"method": "dlm_blocks", "block_length": 8},
    {"method": "dlm_parallel", "threshold": 0.9},
    *({"method": "dlm_parallel", "block_length": 8, "threshold": t} for t in (0.9, 0.7, 0.5)),
    {"method": "dlm_prefix_cache", "block_length": 8, "threshold": 0.9, "cache": "prefix"},
    *({"method": "dlm_dual_cache", "block_length": 8, "threshold": t, "cache": "dual"} for t in (0.9, 0.7, 0.5)),
    *({"method": "dlm_dual_cache", "block_length": b, "threshold": 0.9, "cache": "dual"} for b in (16, 32)),
    # How often does the approximate cache need its full pass? Every block (above, Fast-dLLM's) against every
    # 2nd block and only the first (the finished blocks appended to the stale cache; see mmdlm.text.generate).
    {"method": "dlm_prefix_cache", "block_length": 8, "threshold": 0.9, "cache": "prefix", "refresh_every": 4},
    *({"method": "dlm_dual_cache", "block_length": 4, "threshold": 0.9, "cache": "dual", "refresh_every": r}
      for r in (1, 2, 8)),
    *({"method": "dlm_dual_cache", "block_length": 8, "threshold": 0.9, "cache": "dual", "refresh_every": r}
      for r in (2, 4)),
    {"method": "dlm_dual_cache", "block_length": 16, "threshold": 0.9, "cache": "dual", "refresh_every": 2},
    # Fast-dLLM's factor rule instead of the threshold: how many a step commits depends on all their confidences.
    *({"method": "dlm_dual_cache", "block_length": b, "factor": f, "cache": "dual"}
      for b in (16, 32) for f in (0.5, 1.0)),
]
EQUAL_QUALITY = 0.01  # accuracy at most one point below AR greedy's


def run_config(cfg: dict, ar, tokenizer, pipe, records, batch_size: int, gen_length: int = GEN_LENGTH) -> Tally:
    if cfg["method"].startswith("ar_"):
        return evaluate_ar(ar, tokenizer, records, batch_size=batch_size, max_new_tokens=gen_length)
    return evaluate_dlm(pipe, records, batch_size=batch_size, gen_length=gen_length, steps=gen_length,
                        block_length=cfg.get("block_length"), threshold=cfg.get("threshold"), factor=cfg.get("factor"),
                        cache=cfg.get("cache", "none"), refresh_every=cfg.get("refresh_every", 1),
                        rule=cfg.get("rule", "confidence"))


def race(ar, tokenizer, pipe, records, *, configs=CONFIGS, batch_sizes=(1, 8), rounds: int = 1,
         gen_length: int = GEN_LENGTH) -> list[dict]:
    """One record per (batch size, configuration): its settings, `Tally.summary()`, the speed-up over
    AR greedy at that batch size, whether it keeps equal quality, and its first outputs."""
    if not any(c["method"] == "ar_greedy" for c in configs):
        raise ValueError("the race needs the ar_greedy configuration: every figure is relative to it")
    out = []
    for bs in batch_sizes:
        cut = [len(records) * k // rounds for k in range(rounds + 1)]
        tallies = [Tally() for _ in configs]
        for a, b in zip(cut, cut[1:]):
            for i, cfg in enumerate(configs):
                tallies[i] = tallies[i] + run_config(cfg, ar, tokenizer, pipe, records[a:b], bs, gen_length)
        ar_summary = tallies[next(i for i, c in enumerate(configs) if c["method"] == "ar_greedy")].summary()
        outputs = {_key(cfg): tally.outputs for cfg, tally in zip(configs, tallies)}
        for cfg, tally in zip(configs, tallies):
            s = tally.summary()
            every_block = outputs.get(_key({**cfg, "refresh_every": 1})) if cfg.get("cache") else None
            out.append({"batch_size": bs, "block_length": None, "threshold": None, "factor": None, "cache": None,
                        "refresh_every": 1,
                        **cfg, **s, "x_ar": round(s["tokens_per_s"] / ar_summary["tokens_per_s"], 3),
                        "equal_quality": s["accuracy"] >= ar_summary["accuracy"] - EQUAL_QUALITY,
                        # the share of problems solved in exactly the text of a full pass at every block
                        "same_output_as_every_block_refresh": None if every_block is None else
                        round(sum(a == b for a, b in zip(tally.outputs, every_block)) / len(every_block), 4),
                        "sample_outputs": tally.outputs[:3]})
    return out


def time_split(ar, tokenizer, pipe, records, results, batch_size: int, gen_length: int = GEN_LENGTH) -> dict:
    """Where the time goes at `batch_size`, for AR greedy and the fastest DLM configuration at equal quality
    (else the fastest): the share of each model's generation time in its forward passes by kind. AR: the
    prompt's pass (the prefill, one forward over each batch of prompts, timed alone) against the whole
    generation; DLM: one more run under torch.profiler, its passes labelled mmdlm.<kind> by the sampler."""
    from mmdlm.eval.task import _batches, _prompt_ids

    mine = [r for r in results if r["batch_size"] == batch_size]
    dlm = [r for r in mine if r["method"].startswith("dlm_")]
    best = max([r for r in dlm if r["equal_quality"]] or dlm, key=lambda r: r["tokens_per_s"])
    cfg = {k: best[k] for k in ("method", "block_length", "threshold", "factor", "cache", "refresh_every") if best[k]}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prefill, total = 0.0, run_config({"method": "ar_greedy"}, ar, tokenizer, pipe, records, batch_size,
                                     gen_length).seconds
    with torch.no_grad():
        for batch in _batches(records, batch_size):
            rows = _prompt_ids(tokenizer, batch)
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            t0 = time.perf_counter()
            ar(ids, attention_mask=mask, logits_to_keep=1)
            prefill += time.perf_counter() - t0
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        seconds = run_config(cfg, ar, tokenizer, pipe, records, batch_size, gen_length).seconds
    passes: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("mmdlm."):
            passes[event.key.removeprefix("mmdlm.")] = passes.get(event.key.removeprefix("mmdlm."), 0.0) + \
                event.cpu_time_total / 1e6
    return {"batch_size": batch_size, "n": len(records),
            "ar": {"seconds": round(total, 4), "prefill_share": round(prefill / total, 4)},
            "dlm": {"config": cfg, "seconds_under_profiler": round(seconds, 4),
                    "shares": {k: round(v / seconds, 4) for k, v in sorted(passes.items())},
                    "other_share": round(1 - sum(passes.values()) / seconds, 4)}}


def _key(cfg: dict) -> str:
    """A configuration, with its cache's refresh_every (1 when not given), as a hashable key."""
    return json.dumps({**cfg, "refresh_every": cfg.get("refresh_every", 1)}, sort_keys=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ar", default=str(ROOT / "assets" / "task-ar"))
    p.add_argument("--dlm", default=str(ROOT / "assets" / "task-dlm"))
    p.add_argument("--n", type=int, default=500, help="held-out problems (the first n)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=5, help="slices of the problems; each runs every configuration")
    p.add_argument("--gen-length", type=int, default=GEN_LENGTH)
    p.add_argument("--split-n", type=int, default=64, help="problems of the time split (where the time goes)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampling_task.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from mmdlm.pipelines import TextDiffusionPipeline
    from mmdlm.provenance import machine, versions
    from mmdlm.text.base import load_causal_lm, load_tokenizer

    ar, tokenizer = load_causal_lm(a.ar).eval(), load_tokenizer(a.ar)
    pipe = TextDiffusionPipeline.from_dlm(a.dlm)
    pipe.set_progress_bar_config(disable=True)
    records = problems("held_out", a.n)
    race(ar, tokenizer, pipe, records[:2], batch_sizes=[1], gen_length=a.gen_length)  # warm-up: lazy initialisation
    load_before = os.getloadavg()
    results = race(ar, tokenizer, pipe, records, batch_sizes=a.batch_sizes, rounds=a.rounds, gen_length=a.gen_length)
    split = [time_split(ar, tokenizer, pipe, records[:a.split_n], results, bs, a.gen_length) for bs in a.batch_sizes]
    for r in results:
        print(json.dumps({k: r[k] for k in ("batch_size", "method", "block_length", "threshold", "factor", "cache",
                                            "refresh_every", "accuracy",
                                            "tokens_per_s", "x_ar", "nfe_per_token", "tokens_per_forward")}))
    result = {
        "benchmark": "sampling_task",
        "records": results,
        "time_split": split,
        "settings": {"ar": os.path.relpath(a.ar, ROOT), "dlm": os.path.relpath(a.dlm, ROOT), "n": a.n,
                     "split": "held_out", "batch_sizes": a.batch_sizes, "rounds": a.rounds,
                     "gen_length": a.gen_length, "steps": a.gen_length, "torch_threads": torch.get_num_threads(),
                     "equal_quality": f"accuracy >= AR greedy's - {EQUAL_QUALITY} at the same batch size",
                     "tokens": "the response up to and including its first EOS, for both models"},
        "machine": machine() | {"load_average_before": [round(x, 2) for x in load_before],
                                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                                "shared": "a 2-core machine shared with other jobs: tokens/s are as measured, "
                                          "the rounds interleave the configurations so that load hits all alike"},
        "versions": versions(),
        "command": " ".join(["python bench/sampling_task.py", *sys.argv[1:]]),
    }
    out = Path(a.out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))


def label(r: dict) -> str:
    parts = [r["method"].removeprefix("dlm_")]
    if r.get("block_length"):
        parts.append(f"b{r['block_length']}")
    if r.get("threshold"):
        parts.append(f"t{r['threshold']}")
    if r.get("factor"):
        parts.append(f"f{r['factor']}")
    if r.get("refresh_every", 1) > 1:
        parts.append(f"r{r['refresh_every']}")
    return " ".join(parts)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["settings"]["batch_sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.5), squeeze=False)
    for ax, bs in zip(axes[0], sizes):
        recs = [r for r in result["records"] if r["batch_size"] == bs]
        ar = next(r for r in recs if r["method"] == "ar_greedy")
        ax.axhspan(100 * (ar["accuracy"] - EQUAL_QUALITY), 100 * max(ar["accuracy"], 0.0) + 0.3, color="grey",
                   alpha=0.15, label="equal quality (AR - 1 point)")
        for r in recs:
            is_ar = r["method"].startswith("ar_")
            ax.errorbar(r["tokens_per_s"], 100 * r["accuracy"], yerr=100 * r["accuracy_se"], fmt="*" if is_ar else "o",
                        ms=10 if is_ar else 5, color="C3" if is_ar else "C0", capsize=2)
            ax.annotate(label(r) + f" ({r['tokens_per_forward']:.1f}/fwd)", (r["tokens_per_s"], 100 * r["accuracy"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("tokens/s (log)")
        ax.set_ylabel("held-out exact-answer accuracy %")
        ax.set_title(f"arithmetic task, batch {bs}, n={recs[0]['n']}: AR (star) vs DLM", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
