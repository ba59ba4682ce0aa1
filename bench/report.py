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
    for name in ("vq", "discrete-shapes"):  # the discrete backbone's checkpoints (train-vq, train-mm)
        folder = ROOT / "assets" / name
        run_path, log_path = folder / "run.json", folder / "log.csv"
        if not run_path.exists() or not log_path.exists():
            continue
        run = json.loads(run_path.read_text())
        with log_path.open() as f:
            log = list(csv.DictReader(f))
        val = [r["val_loss"] for r in log if r["val_loss"]]
        cfg = run["config"]
        minutes = f"{float(log[-1]['elapsed_s']) / 60:.0f} min"
        if name == "vq":
            recipe = (f"VQModel on {' + '.join(cfg['datasets'])}, {cfg['image_size']}x{cfg['image_size']} -> "
                      f"{run['code_grid'][0]}x{run['code_grid'][1]} codes, {cfg['max_steps']} steps x "
                      f"{cfg['batch_size']}, {minutes}")
            count, loss_kind = f"{int(log[-1]['tokens']):,} (images)", "L1 + MSE + commitment, held-out images"
        else:
            recipe = (f"discrete backbone on {cfg['dataset']}, {run['code_grid'][0]}x{run['code_grid'][1]} VQ codes + "
                      f"{cfg['text_length']} caption tokens, {cfg['max_steps']} steps x {cfg['batch_size']}, {minutes}")
            count = f"{int(log[-1]['tokens']):,} (codes + caption tokens)"
            loss_kind = f"image CE + {cfg['text_loss_weight']} x text CE over masked tokens, held-out scenes"
        rows.append(f"| `assets/{name}` | {recipe} | {run['parameters']:,} | {count} | {float(log[-1]['loss']):.3f} | "
                    + (f"{float(val[-1]):.3f} ({loss_kind}) |" if val else "n/a |"))
    return "\n".join(rows)


def sampling(r: dict | None) -> str | None:
    if r is None:
        return None
    recs = r["records"]
    ar = next(x for x in recs if x["method"] == "ar_greedy")
    vanilla = next(x for x in recs if x["method"] == "dlm_vanilla")
    rows = ["| method | block | threshold | tokens/s | x vanilla DLM | x AR greedy | NFE/token | gen. ppl | "
            "distinct-2 | infill exact match | peak mem. MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in recs:
        rows.append(f"| {x['method']} | {x['block_length'] or ''} | {x['threshold'] or ''} | {x['tokens_per_s']:.1f} | "
                    f"{x['tokens_per_s'] / vanilla['tokens_per_s']:.2f} | "
                    f"{x['tokens_per_s'] / ar['tokens_per_s']:.2f} | "
                    f"{x['nfe_per_token']:.3f} | {x['gen_ppl']:.2f} | {x['distinct_2']:.2f} | "
                    f"{x['infill_exact_match']:.3f} | {x['peak_mem_mb']:.1f} |")
    s = r["settings"]
    rows += ["", f"{s['prompts']} held-out prompts of {s['prompt_len']} tokens, {s['gen_length']} tokens generated "
             f"each (batch {s['batch_size']}, EOS does not stop anyone); {s['spans']} held-out infilling spans of "
             f"{s['span']} tokens with {s['left']} tokens of left and {s['right']} of right context. tokens/s is the "
             f"median of {s['rounds']} interleaved rounds in one process. Peak memory: {s['peak_mem']}. "
             f"{s['torch_threads']} threads, torch {r['versions']['torch']}. Command: `{r['command']}`."]
    rows += ["", *sampling_goals(recs, vanilla, ar)]
    return "\n".join(rows)


def sampling_goals(recs: list[dict], vanilla: dict, ar: dict) -> list[str]:
    """The issue's goals, judged from the records. Equal quality: generative perplexity within 10% of the
    reference and infilling exact match no lower than the vanilla DLM's."""
    def same_quality(x, ref):
        return x["gen_ppl"] <= 1.1 * ref["gen_ppl"] and x["infill_exact_match"] >= vanilla["infill_exact_match"]

    fast = [x for x in recs if x.get("cache") and x.get("threshold")]
    lines = []
    ok = [x for x in fast if same_quality(x, vanilla)]
    best = max(ok or fast, key=lambda x: x["tokens_per_s"])
    ratio = best["tokens_per_s"] / vanilla["tokens_per_s"]
    lines.append(f"- Goal: cache + parallel decoding >= 5x the vanilla DLM at equal quality. Best "
                 f"{'at equal quality' if ok else '(none keeps equal quality)'}: {best['method']} block "
                 f"{best['block_length']} threshold {best['threshold']}, **{ratio:.2f}x** "
                 f"({'met' if ratio >= 5 and ok else 'not met'}).")
    dlm = [x for x in recs if x["method"].startswith("dlm_")]
    ok_ar = [x for x in dlm if x["gen_ppl"] <= 1.1 * ar["gen_ppl"]]
    best_ar = max(ok_ar or dlm, key=lambda x: x["tokens_per_s"])
    ratio_ar = best_ar["tokens_per_s"] / ar["tokens_per_s"]
    lines.append(f"- Goal: the DLM at least as fast as the AR teacher's cached greedy decoding (stretch 2x) at a "
                 f"generative perplexity within 10% of it. Fastest DLM configuration "
                 f"{'within 10%' if ok_ar else '(none is within 10%; fastest overall)'}: {best_ar['method']} block "
                 f"{best_ar['block_length']} threshold {best_ar['threshold']}, **{ratio_ar:.2f}x** the AR teacher, "
                 f"gen. ppl {best_ar['gen_ppl']:.2f} against {ar['gen_ppl']:.2f} "
                 f"({'met' if ratio_ar >= 1 and ok_ar else 'not met'}).")
    return lines


def vq(_: dict | None = None) -> str | None:
    """The judges of the image-text evaluation on VQ reconstructions (assets/vq/reconstruction.json)."""
    path = ROOT / "assets" / "vq" / "reconstruction.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    rows = ["| dataset | held-out images | judge on originals % | judge on VQ reconstructions % | PSNR dB | codes used |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, judge in (("shapes", "parser_accuracy"), ("digits", "classifier_accuracy")):
        if name in r:
            x = r[name]
            rows.append(f"| {name} | {x['n']} | {100 * x[judge + '_original']:.1f} | "
                        f"**{100 * x[judge + '_reconstruction']:.1f}** | {x['psnr_db']:.1f} | "
                        f"{x['codes_used']} of {r['codebook_size']} |")
    return "\n".join(rows + ["", f"Shapes: `parse_image` reads the whole scene right (both objects, relation); "
                              f"digits: `DigitClassifier`. {r['image_size']}x{r['image_size']} images, "
                              f"{r['downsample']}x downsampling. Command: `{r['command']}`."])


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


def sft(r: dict | None) -> str | None:
    if r is None:
        return None
    s, res = r["settings"], r["results"]
    rows = ["| model | trainable parameters | SFT steps x batch | training time | held-out loss | held-out body loss | "
            "first line exact | first word | body-shaped | stopped (EOS) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    runs = {f"SFT {k}": v for k, v in r["runs"].items()}
    for name, x in res.items():
        run = runs.get(name)
        what = "" if run is None else f"{run['trainable_parameters']:,} of {run['parameters']:,}"
        steps = "" if run is None else f"{run['max_steps']} x {run['batch_size']}"
        secs = "" if run is None else f"{run['train_seconds'] / 60:.1f} min"
        rows.append(f"| {name} | {what} | {steps} | {secs} | {x['heldout_loss']:.3f} | {x['heldout_body_loss']:.3f} | "
                    f"{x['first_line_exact']:.3f} | {x['first_word_match']:.3f} | "
                    f"{x['body_shaped']:.3f} | {x['stopped']:.3f} |")
    full = next(iter(r["runs"].values()))
    ts = full["train_stats"]
    rows += ["", f"Built-in set: {ts['records']:,} training functions, {ts['kept']:,} fit in {s['seq_len']} tokens "
             f"with at least one EOS ({ts['dropped_too_long']:,} dropped as too long); held-out loss over the "
             f"{r['heldout_examples']} held-out functions that fit ({s['draws']} noise draws each): negative ELBO per "
             f"response token, EOS padding included (the training loss), and the same restricted to the body "
             f"(up to its first EOS, per body token). Generation: {s['prompts']} held-out prompts, up to "
             f"{s['gen_length']} tokens, {s['steps']} steps, blocks of {s['block_length']}, {s['rule']}. "
             f"Torch threads: {s['torch_threads']}, torch {r['versions']['torch']}; training times on a shared, "
             f"busy 2-core machine. Command: `{r['command']}`."]
    i = r["example"]
    base = next(iter(res.values()))["generations"][i]
    rows += ["", "A held-out prompt, the reference body, and what each model writes:", "", "```python",
             base["prompt"] + base["reference"].rstrip("\n"), "```"]
    for name, x in res.items():
        g = x["generations"][i]
        rows += ["", f"{name}{'' if g['stopped'] else ' (did not stop)'}:", "", "```python",
                 g["prompt"] + g["output"].rstrip("\n"), "```"]
    return "\n".join(rows)


def ddp_equality(r: dict | None) -> str | None:
    if r is None:
        return None
    s = r["settings"]
    same = "identical" if r["ranks_identical"] else "NOT identical"
    return (f"Measured (`{r['command']}`: a {s['parameters']:,}-parameter DLM, {s['steps']} steps, batch "
            f"{s['batch_size']} x {s['seq_len']} tokens, lr {s['lr']}): the two processes' weights are {same}; "
            f"largest difference from the one-process run with grad_accum 2: "
            f"**{r['max_abs_diff_ddp_vs_single']:.1e}**, against a largest update of "
            f"{r['max_abs_update']:.1e} (torch {r['versions']['torch']}, accelerate {r['versions']['accelerate']}).")


RENDERERS = {"train_throughput": train_throughput, "assets": assets, "sampling": sampling, "quickstart": quickstart,
             "sft": sft, "ddp_equality": ddp_equality, "vq": vq}


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
