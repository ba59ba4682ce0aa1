"""Regenerate the README's benchmark tables from bench/results/*.json (never typed by hand).

    python bench/report.py          # rewrites the blocks between <!-- bench:NAME --> markers
"""
from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def train_throughput(r: dict | None) -> str | None:
    if r is None:
        return None
    s = r["settings"]
    return "\n".join([
        "| loss | tokens/s (median) | ratio DLM/AR | goal |",
        "|---|---:|---:|---:|",
        f"| autoregressive (teacher) | {r['ar_tokens_per_s']:,.0f} | | |",
        f"| masked diffusion ({s['dlm_recipe']}) | {r['dlm_tokens_per_s']:,.0f} | "
        f"**{r['ratio']:.3f}** | >= {r['goal_ratio']} |",
        "",
        f"{s['parameters']:,}-parameter model, batch {s['batch_size']} x {s['seq_len']} tokens, "
        f"{s['rounds']} alternating rounds of {s['steps_per_round']} optimizer steps, "
        f"{s['torch_threads']} threads, torch {r['versions']['torch']}, transformers "
        f"{r['versions']['transformers']}. Command: `{r['command']}`.",
    ])


def assets(_: dict | None = None) -> str:
    """The shipped checkpoints, from the run records copied beside them."""
    rows = ["| checkpoint | recipe | parameters | training tokens | final train loss | validation loss |",
            "|---|---|---:|---:|---:|---:|"]
    for name in ("teacher", "dlm"):
        folder = ROOT / "assets" / name
        run_path, log_path = folder / "run.json", folder / "log.csv"
        if not run_path.exists() or not log_path.exists():
            continue
        run = json.loads(run_path.read_text())
        with log_path.open() as f:
            log = list(csv.DictReader(f))
        val = [r["val_loss"] for r in log if r["val_loss"]]
        cfg = run["config"]
        recipe = "AR pretraining" if name == "teacher" else \
            f"{cfg['attention']} attention, shift={cfg['shift']}, {cfg['schedule']} schedule"
        loss_kind = "next-token CE" if name == "teacher" else "negative ELBO per token"
        rows.append(f"| `assets/{name}` | {recipe} | {run['parameters']:,} | {int(log[-1]['tokens']):,} | "
                    f"{float(log[-1]['loss']):.3f} | {float(val[-1]):.3f} ({loss_kind}; ppl "
                    f"{math.exp(float(val[-1])):.1f}) |" if val else "| n/a |")
    for folder in sorted((ROOT / "assets").glob("mmdit-*")):  # multimodal checkpoints (train-mm)
        run_path, log_path = folder / "run.json", folder / "log.csv"
        if not run_path.exists() or not log_path.exists():
            continue
        run = json.loads(run_path.read_text())
        with log_path.open() as f:
            log = list(csv.DictReader(f))
        val = [r["val_loss"] for r in log if r["val_loss"]]
        cfg = run["config"]
        recipe = (f"MM-DiT (D-DiT) on {cfg['dataset']}, {cfg['image_size']}x{cfg['image_size']} "
                  f"{'latents' if cfg.get('image_tokenizer') else 'pixels'}, {cfg['max_steps']} steps x "
                  f"{cfg['batch_size']}, {float(log[-1]['elapsed_s']) / 60:.0f} min")
        rows.append(f"| `assets/{folder.name}` | {recipe} | {run['parameters']:,} | {int(log[-1]['tokens']):,} "
                    f"(image patches + caption tokens) | {float(log[-1]['loss']):.3f} | "
                    + (f"{float(val[-1]):.3f} (flow-matching MSE + {cfg['text_loss_weight']} x text ELBO per "
                       "token, held-out scenes) |" if val else "n/a |"))
    return "\n".join(rows)


def sampling(r: dict | None) -> str | None:
    if r is None:
        return None
    recs = r["records"]
    by = {(x["method"], x["block_length"], x["threshold"]): x for x in recs}
    ar = by[("ar_greedy", None, None)]
    vanilla = next(x for x in recs if x["method"] == "dlm_vanilla")
    rows = ["| method | block | threshold | tokens/s | x vanilla DLM | x AR greedy | NFE/token | gen. ppl | "
            "infill exact match | peak mem. MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in recs:
        rows.append(f"| {x['method']} | {x['block_length'] or ''} | {x['threshold'] or ''} | {x['tokens_per_s']:.1f} | "
                    f"{x['tokens_per_s'] / vanilla['tokens_per_s']:.2f} | "
                    f"{x['tokens_per_s'] / ar['tokens_per_s']:.2f} | "
                    f"{x['nfe_per_token']:.3f} | {x['gen_ppl']:.2f} | {x['infill_exact_match']:.3f} | "
                    f"{x['peak_mem_mb']:.1f} |")
    s = r["settings"]
    rows += ["", f"{s['prompts']} held-out prompts of {s['prompt_len']} tokens, {s['gen_length']} tokens generated "
             f"each (batch {s['batch_size']}, EOS does not stop anyone); {s['spans']} held-out infilling spans of "
             f"{s['span']} tokens with {s['left']} tokens of left and {s['right']} of right context. "
             f"Peak memory: {s['peak_mem']}. {s['torch_threads']} threads, torch {r['versions']['torch']}. "
             f"Command: `{r['command']}`."]
    return "\n".join(rows)


def quickstart(_: dict | None = None) -> str | None:
    """What `make quickstart` printed last on this machine (outputs/quickstart.json)."""
    path = ROOT / "outputs" / "quickstart.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    cont, infill = r["continuation"], r["infill"]
    return "\n".join([
        f"Continuation (the prompt `{cont['input']!r}`, then up to {r['settings']['gen_length']} generated tokens; "
        f"{cont['nfe']} forward passes, greedy):", "", "```python", cont["input"] + cont["output"], "```", "",
        f"Infilling of `{infill['input']!r}`:", "", "```python", infill["output"].rstrip("\n"), "```"])


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _attributes(r: dict, task: str) -> str:
    values = [r.get(f"{task}_{a}") for a in ("colour", "shape", "size", "relation")]
    return "" if any(v is None for v in values) else " / ".join(f"{100 * v:.0f}" for v in values)


def imagetext(r: dict | None) -> str | None:
    """One row per (backbone, dataset) of bench/results/imagetext.json (`mmdlm eval-mm`)."""
    if r is None or not r.get("records"):
        return None
    rows = ["| backbone | dataset | n | steps | t2i accuracy % | t2i colour / shape / size / relation % | "
            "caption accuracy % | caption exact match % | caption colour / shape / size / relation % | "
            "joint consistency % | s / image | s / caption |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for x in r["records"]:
        rows.append(f"| {x['backbone']} | {x['dataset']} | {x['n']} | {x.get('num_inference_steps') or ''} | "
                    f"{_pct(x.get('t2i_accuracy'))} | {_attributes(x, 't2i')} | {_pct(x.get('caption_accuracy'))} | "
                    f"{_pct(x.get('caption_exact_match'))} | {_attributes(x, 'caption')} | "
                    f"{_pct(x.get('joint_consistency'))} | {x.get('s_per_image') or ''} | "
                    f"{x.get('s_per_caption') or ''} |")
        guidance = ", ".join(f"{k} {x[k]}" for k in ("guidance_scale", "text_guidance_scale") if k in x)
        machine = x.get("machine") or {}
        notes.append(f"{x['backbone']} / {x['dataset']}: `{x.get('command', '')}`"
                     + (f" ({guidance})" if guidance else "")
                     + f"; batch {x.get('batch_size')}, device {x.get('device')}, {machine.get('cpus')} CPUs"
                     + f", torch {(x.get('versions') or {}).get('torch')}.")
    return "\n".join(rows + [""] + ["Shapes: held-out scenes (never in training); accuracy = every attribute right "
                                    "(t2i: read back from the image by `parse_image`; captions: parsed, either "
                                    "phrasing of a relation counts); exact match = the dataset's own caption "
                                    "word for word; joint = the image's reading equals the caption's. Digits: the "
                                    "test split, judged by `DigitClassifier`. Seconds per sample at the batch size "
                                    "given, after an untimed warm-up."] + [""] + notes)


RENDERERS = {"train_throughput": train_throughput, "assets": assets, "sampling": sampling, "quickstart": quickstart,
             "imagetext": imagetext}


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, render in RENDERERS.items():
        path = RESULTS / f"{name}.json"
        block = render(json.loads(path.read_text()) if path.exists() else None)
        if block is None:
            continue
        pattern = re.compile(rf"(<!-- bench:{name} -->\n)(?:.*?\n)?(<!-- /bench:{name} -->)", re.S)
        if not pattern.search(text):
            print(f"README has no <!-- bench:{name} --> block", file=sys.stderr)
            return 1
        text = pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text)
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
