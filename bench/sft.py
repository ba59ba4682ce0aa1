"""SFT on the built-in prompt/response set: held-out loss and generations, before and after.

Fine-tunes the shipped diffusion LM (assets/dlm) with configs/sft.yaml (every weight) and
configs/sft-lora.yaml (LoRA), then measures on held-out functions (the validation split of
the standard library, never trained on):
- held-out SFT loss: negative ELBO per response token (EOS padding included) under fixed noise;
- generation from the prompt (signature + docstring), greedy: whether the first line of the
  body matches the reference exactly, whether its first word does (`return`, `if`, ...),
  whether the output looks like a body (its first line is indented), and whether the model
  stopped (produced EOS) within the budget.

    OMP_NUM_THREADS=1 python bench/sft.py   # trains what is missing in outputs/, writes bench/results/sft.{json,png}
    python bench/sft.py --retrain       # trains again
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmdlm.cli import SftConfig  # noqa: E402
from mmdlm.config import build, load_yaml  # noqa: E402
from mmdlm.data.sft import encode_sft, load_sft_splits  # noqa: E402
from mmdlm.diffusion import corrupt, get_schedule, masked_diffusion_loss  # noqa: E402
from mmdlm.io import atomic_write_text  # noqa: E402
from mmdlm.pipelines import TextDiffusionPipeline  # noqa: E402
from mmdlm.provenance import machine, versions  # noqa: E402
from mmdlm.text.adapt import load_dlm  # noqa: E402


def first_line(text: str) -> str:
    return next((line.rstrip() for line in text.splitlines() if line.strip()), "")


@torch.no_grad()
def heldout_loss(path: str, data: dict, batch_size: int, draws: int) -> tuple[float, float]:
    """Negative ELBO per response token (EOS padding included, the training loss) and the same sum
    restricted to the body (the response up to its first EOS), per body token; the padding is
    masked as in training. Means over every held-out example, `draws` noise draws each."""
    dlm, tok = load_dlm(path, merge_lora=True)
    dlm.eval()
    schedule, eos = get_schedule(dlm.config.schedule, dlm.config.eps), tok.eos_token_id
    sums = {"response": [0.0, 0], "body": [0.0, 0]}
    for d in range(draws):
        for i in range(0, len(data["input_ids"]), batch_size):
            x0, prompt = data["input_ids"][i:i + batch_size], data["prompt_mask"][i:i + batch_size]
            g = torch.Generator().manual_seed(1000 * d + i)
            protect = prompt.clone()
            protect[:, 0] = True
            t = schedule.sample_t(len(x0), generator=g, method="stratified")
            x_t, masked = corrupt(x0, t, dlm.mask_token_id, schedule, protect=protect, generator=g)
            logits = dlm.predict(x_t)
            after_eos = ((x0 == eos) & ~protect).long().cumsum(1) > 1  # padding beyond the first EOS
            for name, keep in (("response", ~protect), ("body", ~protect & ~after_eos)):
                loss = masked_diffusion_loss(logits, x0, masked & keep, t, schedule, eligible=keep)
                sums[name][0] += loss.item() * int(keep.sum())
                sums[name][1] += int(keep.sum())
    return sums["response"][0] / sums["response"][1], sums["body"][0] / sums["body"][1]


@torch.no_grad()
def generations(path: str, records: list[dict], gen_length: int, block_length: int, batch: int) -> list[dict]:
    pipe = TextDiffusionPipeline.from_dlm(path)
    pipe.set_progress_bar_config(disable=True)
    eos = pipe.tokenizer.eos_token_id
    out = []
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        res = pipe([r["prompt"] for r in chunk], gen_length=gen_length, num_inference_steps=gen_length,
                   block_length=block_length, stop_at_eos=True, generator=torch.Generator().manual_seed(0))
        for r, text, seq in zip(chunk, res.texts, res.sequences):
            out.append({"prompt": r["prompt"], "reference": r["response"], "output": text,
                        "stopped": bool((seq[-gen_length:] == eos).any())})
    return out


def first_word(text: str) -> str:
    return next(iter(first_line(text).split()), "")


def score(gens: list[dict]) -> dict:
    n = len(gens)
    return {"first_line_exact": sum(first_line(g["output"]) == first_line(g["reference"]) for g in gens) / n,
            "first_word_match": sum(first_word(g["output"]) == first_word(g["reference"]) for g in gens) / n,
            "body_shaped": sum(first_line(g["output"]).startswith("    ") for g in gens) / n,
            "stopped": sum(g["stopped"] for g in gens) / n}


def train(config: Path, retrain: bool) -> dict:
    c = build(SftConfig, load_yaml(config), source=str(config))
    final = Path(c.output_dir) / "model"
    if retrain or not final.exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mmdlm", "sft", "--config", str(config)], check=True, cwd=ROOT)
        print(f"{config}: trained in {time.perf_counter() - t0:.0f} s")
    run = json.loads((Path(c.output_dir) / "run.json").read_text())
    with (Path(c.output_dir) / "log.csv").open() as f:
        log = list(csv.DictReader(f))
    return {"config": str(config), "model": str(final), "lora_r": c.lora_r, "max_steps": c.max_steps,
            "batch_size": c.batch_size, "lr": c.lr, "train_examples": run["train_sequences"],
            "trainable_parameters": run["trainable_parameters"], "parameters": run["parameters"],
            "train_seconds": float(log[-1]["elapsed_s"]), "final_train_loss": float(log[-1]["loss"]),
            "val_curve": [(int(r["step"]), float(r["val_loss"])) for r in log if r["val_loss"]],
            "train_stats": run["train_stats"], "validation_stats": run["validation_stats"]}


def plot(runs: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in runs.items():
        ax.plot(*zip(*r["val_curve"]), "o-", label=name)
    ax.set_xlabel("SFT step")
    ax.set_ylabel("validation loss (neg. ELBO per response token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="assets/dlm")
    p.add_argument("--configs", nargs="+", default=["configs/sft.yaml", "configs/sft-lora.yaml"])
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--prompts", type=int, default=96, help="held-out prompts generated from")
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--block-length", type=int, default=16)
    p.add_argument("--draws", type=int, default=4, help="noise draws per held-out example for the loss")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "sft.json"))
    p.add_argument("--rescore", action="store_true", help="recompute the scores of the generations in --out")
    a = p.parse_args()

    if a.rescore:  # the scores are functions of the stored generations
        record = json.loads(Path(a.out).read_text())
        for x in record["results"].values():
            x.update(score(x["generations"]))
        atomic_write_text(a.out, json.dumps(record, indent=2))
        return
    runs = {("lora" if (r := train(Path(c), a.retrain))["lora_r"] else "full"): r for c in a.configs}
    seq_len = build(SftConfig, load_yaml(a.configs[0])).seq_len
    _, val_records, source = load_sft_splits("stdlib")
    _, tok = load_dlm(a.base)
    data, stats = encode_sft(val_records, tok, seq_len)
    order = torch.randperm(stats.kept, generator=torch.Generator().manual_seed(0)).tolist()
    kept = [r for r in val_records if encode_sft([r], tok, seq_len)[1].kept]  # in encode_sft's order
    assert len(kept) == stats.kept
    # Prompts that leave room for the generation budget, in the fixed shuffled order.
    prompts = [kept[i] for i in order if len(tok(kept[i]["prompt"])["input_ids"]) + 1 + a.gen_length <= 256][:a.prompts]

    models = {"base (assets/dlm)": a.base, **{f"SFT {k}": r["model"] for k, r in runs.items()}}
    results = {}
    for name, path in models.items():
        t0 = time.perf_counter()
        gens = generations(path, prompts, a.gen_length, a.block_length, batch=16)
        response, body = heldout_loss(path, data, 32, a.draws)
        results[name] = {"heldout_loss": response, "heldout_body_loss": body, **score(gens), "generations": gens,
                         "eval_seconds": time.perf_counter() - t0}
        print(name, {k: v for k, v in results[name].items() if k != "generations"})

    example = min(range(len(prompts)), key=lambda i: abs(len(prompts[i]["response"]) - 80))
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    record = {"command": " ".join([f"{threads}python bench/sft.py", *sys.argv[1:]]), "machine": machine(),
              "versions": versions(), "data": source, "heldout_examples": stats.kept,
              "settings": {"seq_len": seq_len, "prompts": len(prompts), "gen_length": a.gen_length,
                           "steps": a.gen_length, "block_length": a.block_length, "rule": "confidence (greedy)",
                           "draws": a.draws, "torch_threads": torch.get_num_threads()},
              "runs": runs, "results": results, "example": example}
    out = Path(a.out)
    atomic_write_text(out, json.dumps(record, indent=2))
    plot(runs, out.with_suffix(".png"))
    print(f"written {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
