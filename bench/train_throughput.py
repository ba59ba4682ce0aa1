"""Training throughput: masked-diffusion loss against the AR loss, same model, same batches.

Both trainers start from the same causal LM (the shipped teacher by default) and run real
optimizer steps through `mmdlm.training`; rounds alternate AR and DLM so that machine noise
hits both alike. The two losses cost the same FLOPs, so the goal is a ratio >= 0.95.

    python bench/train_throughput.py            # writes bench/results/train_throughput.{json,png}
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmdlm.data import load_text_splits, pack_texts  # noqa: E402
from mmdlm.io import atomic_write_text, save_figure  # noqa: E402
from mmdlm.provenance import machine, versions  # noqa: E402
from mmdlm.text.adapt import DiffusionLM  # noqa: E402
from mmdlm.text.base import load_causal_lm, load_tokenizer  # noqa: E402
from mmdlm.training import TrainArgs  # noqa: E402
from mmdlm.training.causal import CausalLMTrainer  # noqa: E402
from mmdlm.training.diffusion import DiffusionTrainer  # noqa: E402


def measure(trainer, steps: int) -> float:
    start_tokens, t0 = trainer.tokens, time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (trainer.tokens - start_tokens) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "assets" / "teacher"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput.json"))
    a = p.parse_args()

    tokenizer = load_tokenizer(a.model)
    teacher = load_causal_lm(a.model)
    train, _, info = load_text_splits("stdlib", max_files=200)
    data = pack_texts(train["text"], tokenizer, a.seq_len)
    steps = a.rounds * a.steps_per_round + 2
    with tempfile.TemporaryDirectory() as tmp:
        def args(name):
            return TrainArgs(output_dir=f"{tmp}/{name}", max_steps=steps, batch_size=a.batch_size,
                             warmup_steps=0, seed=0)
        ar = CausalLMTrainer(copy.deepcopy(teacher), data, args("ar"))
        dlm = DiffusionLM.from_causal_lm(copy.deepcopy(teacher), copy.deepcopy(tokenizer))
        dl = DiffusionTrainer(dlm, data, args("dlm"))
        for trainer in (ar, dl):  # warm-up step, not timed
            trainer.train_step()
        ar_runs, dl_runs = [], []
        for _ in range(a.rounds):
            ar_runs.append(measure(ar, a.steps_per_round))
            dl_runs.append(measure(dl, a.steps_per_round))
    ar_tps, dl_tps = statistics.median(ar_runs), statistics.median(dl_runs)
    result = {
        "benchmark": "train_throughput",
        "ar_tokens_per_s": round(ar_tps, 1),
        "dlm_tokens_per_s": round(dl_tps, 1),
        "ratio": round(dl_tps / ar_tps, 4),
        "goal_ratio": 0.95,
        "ar_rounds": [round(x, 1) for x in ar_runs],
        "dlm_rounds": [round(x, 1) for x in dl_runs],
        "settings": {"model": os.path.relpath(a.model, ROOT), "batch_size": a.batch_size, "seq_len": a.seq_len,
                     "rounds": a.rounds, "steps_per_round": a.steps_per_round,
                     "parameters": sum(p.numel() for p in teacher.parameters()),
                     "dlm_recipe": "bidirectional + shift, linear schedule, stratified t",
                     "torch_threads": torch.get_num_threads()},
        "machine": machine(),
        "versions": versions(),
        "corpus": info.to_dict(),
        "command": " ".join(["python bench/train_throughput.py", *sys.argv[1:]]),
    }
    out = Path(a.out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("ar_tokens_per_s", "dlm_tokens_per_s", "ratio")}))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    rounds = range(1, len(result["ar_rounds"]) + 1)
    ax.plot(rounds, result["ar_rounds"], "o-", label=f"AR loss (median {result['ar_tokens_per_s']:,.0f})")
    ax.plot(rounds, result["dlm_rounds"], "s-", label=f"diffusion loss (median {result['dlm_tokens_per_s']:,.0f})")
    ax.set_xlabel("round")
    ax.set_ylabel("training tokens/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"training throughput, ratio {result['ratio']:.3f}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    main()
