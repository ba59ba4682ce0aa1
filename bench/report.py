"""Regenerate the benchmark tables of the README and docs/ from bench/results/*.json (never typed by hand).

    python bench/report.py          # rewrites the blocks between <!-- bench:NAME --> markers

It also draws bench/results/imagetext_stages.png from the image-text results.
"""
from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path

from mmdlm.io import save_figure

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
        f"Torch threads: {s['torch_threads']}; torch {r['versions']['torch']}, transformers "
        f"{r['versions']['transformers']}. Command: `{r['command']}`.",
    ])


def averaged_stages(folder: Path) -> list[int] | None:
    """The stages (1, 2, ...) whose weights the shipped pipeline in `folder` averages (its
    average.json, written by `mmdlm average`), or None when it is one stage's."""
    record = folder / "average.json"
    if not record.is_file():
        return None
    runs = sorted(folder.glob("stage*/run.json"), key=lambda p: int(p.parent.name[5:])) + [folder / "run.json"]
    stage_of = {f"{json.loads(r.read_text())['config']['output_dir']}/model": k for k, r in enumerate(runs, 1)}
    models = json.loads(record.read_text())["models"]
    unknown = [m for m in models if m not in stage_of]
    if unknown:
        raise ValueError(f"{record} averages {unknown}, which are not stages recorded in {folder}")
    return [stage_of[m] for m in models]


def _describe(folder: Path, run: dict, log: list[dict]) -> tuple[str, str, str]:
    """(recipe, training tokens, kind of validation loss) of a shipped checkpoint."""
    cfg, tokens = run["config"], int(log[-1]["tokens"])
    # a resumed run's clock starts again at 0: the time is the sum of the runs' last readings
    elapsed = [float(r["elapsed_s"]) for r in log]
    minutes = f"{sum(a for a, b in zip(elapsed, elapsed[1:] + [0.0]) if b < a) / 60:.0f} min"
    steps = str(cfg.get("max_steps"))
    if cfg.get("max_steps") and int(log[-1]["step"]) < cfg["max_steps"]:  # a run stopped early: its last step
        steps = f"{int(log[-1]['step'])} (of {cfg['max_steps']})"
    # a model trained in stages keeps the earlier stages' records in stage1/, stage2/, ...
    earlier = sorted((p for p in folder.glob("stage*") if p.is_dir() and p.name[5:].isdigit()),
                     key=lambda p: int(p.name[5:]), reverse=True)
    for stage in earlier:
        if not ((stage / "run.json").is_file() and (stage / "log.csv").is_file()):
            raise FileNotFoundError(f"{stage} lacks run.json or log.csv: the table would leave that stage out")
        with (stage / "log.csv").open() as f:
            tokens += int(list(csv.DictReader(f))[-1]["tokens"])
        steps = f"{json.loads((stage / 'run.json').read_text())['config']['max_steps']} + {steps}"
    if folder.name == "teacher":
        return "AR pretraining", f"{tokens:,}", "next-token CE"
    if folder.name == "vq":
        return (f"VQModel on {' + '.join(cfg['datasets'])}, {cfg['image_size']}x{cfg['image_size']} -> "
                f"{run['code_grid'][0]}x{run['code_grid'][1]} codes, {cfg['max_steps']} steps x {cfg['batch_size']}, "
                f"{minutes}", f"{tokens:,} (images)", "L1 + MSE + commitment, held-out images")
    held_out = f"held-out {'scenes' if cfg.get('dataset') == 'shapes' else 'examples'}"
    averaged = averaged_stages(folder)
    soup = f", the weights of stages {' and '.join(map(str, averaged))} averaged" if averaged else ""
    if cfg.get("backbone") == "discrete":
        return (f"discrete backbone on {cfg['dataset']}, {run['code_grid'][0]}x{run['code_grid'][1]} VQ codes + "
                f"{cfg['text_length']} caption tokens, {steps} steps x {cfg['batch_size']}{soup}",
                f"{tokens:,} (codes + caption tokens)",
                f"image CE + {cfg['text_loss_weight']} x text CE over masked tokens, {held_out}")
    if cfg.get("backbone") == "mmdit":
        return (f"MM-DiT (D-DiT) on {cfg['dataset']}, {cfg['image_size']}x{cfg['image_size']} "
                f"{'latents' if cfg.get('image_tokenizer') else 'pixels'}, {steps} steps x "
                f"{cfg['batch_size']}{soup}", f"{tokens:,} (image patches + caption tokens)",
                f"flow-matching MSE + {cfg['text_loss_weight']} x text ELBO per token, {held_out}")
    if cfg.get("dataset") == "arithmetic":  # mmdlm sft on the built-in task, of the AR teacher or of the DLM
        loss = "negative ELBO per response token" if (folder / "mmdlm.json").exists() else \
            "next-token CE per response token"
        return (f"SFT of `{cfg['model']}` on the arithmetic task, {steps} steps x {cfg['batch_size']}, {minutes}",
                f"{tokens:,}", f"{loss}, held-out problems")
    return (f"{cfg['attention']} attention, shift={cfg['shift']}, {cfg['schedule']} schedule", f"{tokens:,}",
            "negative ELBO per token")


def assets(_: dict | None = None) -> str:
    """The shipped checkpoints, from the run records copied beside them."""
    rows = ["| checkpoint | recipe | parameters | training tokens | final train loss | validation loss |",
            "|---|---|---:|---:|---:|---:|"]
    names = ["teacher", "dlm", "task-ar", "task-dlm", *sorted(p.name for p in (ROOT / "assets").glob("mmdit-*")),
             "vq", *sorted(p.name for p in (ROOT / "assets").glob("discrete-*"))]
    for name in names:
        folder = ROOT / "assets" / name
        run_path, log_path = folder / "run.json", folder / "log.csv"
        if not run_path.exists() or not log_path.exists():
            continue
        run = json.loads(run_path.read_text())
        with log_path.open() as f:
            log = list(csv.DictReader(f))
        recipe, tokens, loss_kind = _describe(folder, run, log)
        val = [float(r["val_loss"]) for r in log if r["val_loss"]]
        ppl = f"; ppl {math.exp(val[-1]):.1f}" if val and name in ("teacher", "dlm") else ""
        rows.append(f"| `assets/{name}` | {recipe} | {run['parameters']:,} | {tokens} | {float(log[-1]['loss']):.3f} | "
                    + (f"{val[-1]:.3f} ({loss_kind}{ppl}) |" if val else "n/a |"))
    return "\n".join(rows)


def sampling(r: dict | None) -> str | None:
    if r is None:
        return None
    recs, ref = r["records"], r["reference_text"]
    ar = next(x for x in recs if x["method"] == "ar_greedy")
    vanilla = next(x for x in recs if x["method"] == "dlm_vanilla")
    rows = ["| method | block | threshold | tokens/s | x vanilla DLM | x AR greedy | NFE/token | gen. ppl | "
            "entropy | distinct-2 | repeated 4-grams | infill exact match | peak mem. MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in recs:
        rows.append(f"| {x['method']} | {x['block_length'] or ''} | {x['threshold'] or ''} | {x['tokens_per_s']:.1f} | "
                    f"{x['tokens_per_s'] / vanilla['tokens_per_s']:.2f} | "
                    f"{x['tokens_per_s'] / ar['tokens_per_s']:.2f} | "
                    f"{x['nfe_per_token']:.3f} | {x['gen_ppl']:.2f} | {x['entropy']:.2f} | {x['distinct_2']:.2f} | "
                    f"{x['repeated_4grams']:.2f} | {x['infill_exact_match']:.3f} | {x['peak_mem_mb']:.1f} |")
    rows.append(f"| reference text | | | | | | | | {ref['entropy']:.2f} | {ref['distinct_2']:.2f} | "
                f"{ref['repeated_4grams']:.2f} | | |")
    s = r["settings"]
    rows += ["", f"{s['prompts']} held-out prompts of {s['prompt_len']} tokens, {s['gen_length']} tokens generated "
             f"each (batch {s['batch_size']}, EOS does not stop anyone); {s['spans']} held-out infilling spans of "
             f"{s['span']} tokens with {s['left']} tokens of left and {s['right']} of right context. tokens/s is the "
             f"median of {s['rounds']} interleaved rounds in one process. Entropy: mean over samples of the entropy "
             f"(nats) of a sample's token histogram; repeated 4-grams: share of a sample's 4-grams seen earlier in "
             f"it; reference text: the held-out documents' own {s['gen_length']} tokens after the same prompts "
             f"({ref['samples']} of them). Peak memory: {s['peak_mem']}. Torch threads: {s['torch_threads']}; "
             f"torch {r['versions']['torch']}; {_load(r['machine'])}. Command: `{r['command']}`."]
    rows += ["", *sampling_goals(recs, ar, ref)]
    return "\n".join(rows)


def _load(m: dict) -> str:
    """The machine's load average (1 min) around a benchmark, where it was recorded: on a shared 2-core machine
    it says how far tokens/s are from an idle machine's."""
    if "load_average_before" not in m:
        return f"{m['cpus']} CPUs"
    return (f"{m['cpus']} CPUs, load average {m['load_average_before'][0]} before and "
            f"{m['load_average_after'][0]} after")


def sampling_goals(recs: list[dict], ar: dict, ref: dict) -> list[str]:
    """The issue's goals, judged from the records. Equal quality on open text: the sample's token entropy within
    5% of the reference text's (degenerate, looping text fails here whatever its perplexity), generative
    perplexity within 10% of the configuration compared with, and infilling exact match no lower than its."""
    def lively(x):
        return abs(x["entropy"] - ref["entropy"]) <= 0.05 * ref["entropy"]

    def same_quality(x, base):
        return lively(x) and x["gen_ppl"] <= 1.1 * base["gen_ppl"] and x["infill_exact_match"] >= \
            base["infill_exact_match"]

    passing = ", ".join(f"{x['method']}{'' if x['block_length'] is None else ' b' + str(x['block_length'])}"
                        f"{'' if x['threshold'] is None else ' t' + str(x['threshold'])}" for x in recs if lively(x))
    lines = [f"- Entropy within 5% of the reference text's ({ref['entropy']:.2f} nats): {passing or 'none'}; the "
             "others' text is more repetitive or more random than the reference, and their perplexity cannot stand "
             "for quality."]
    # each fast configuration against the vanilla DLM at its own temperature (greedy or sampled)
    vanillas = {x.get("temperature"): x for x in recs if x["method"].startswith("dlm_vanilla")}
    fast = [x for x in recs if x.get("cache") and x.get("threshold") and x.get("temperature") in vanillas]
    ok = [x for x in fast if lively(vanillas[x.get("temperature")]) and same_quality(x, vanillas[x.get("temperature")])]
    best = max(ok or fast, key=lambda x: x["tokens_per_s"] / vanillas[x.get("temperature")]["tokens_per_s"])
    base = vanillas[best.get("temperature")]
    ratio = best["tokens_per_s"] / base["tokens_per_s"]
    lines.append(f"- Goal: cache + parallel decoding >= 5x the vanilla DLM at equal quality. Best "
                 f"{'at equal quality' if ok else '(none keeps equal quality)'}: {best['method']} block "
                 f"{best['block_length']} threshold {best['threshold']}, **{ratio:.2f}x** {base['method']} "
                 f"({'met' if ratio >= 5 and ok else 'not met'}).")
    base = next((x for x in (ar, *[y for y in recs if y["method"] == "ar_sampled"]) if lively(x)), None)
    dlm = [x for x in recs if x["method"].startswith("dlm_")]
    if base is None:
        lines.append("- Goal: the DLM at least as fast as the AR teacher at equal quality: not judged, no AR "
                     "configuration passes the entropy rule.")
        return lines
    ok_ar = [x for x in dlm if lively(x) and x["gen_ppl"] <= 1.1 * base["gen_ppl"]]
    best_ar = max(ok_ar or dlm, key=lambda x: x["tokens_per_s"])
    ratio_ar = best_ar["tokens_per_s"] / base["tokens_per_s"]
    lines.append(f"- Goal: the DLM at least as fast as the AR teacher (stretch 2x) at equal quality, against "
                 f"{base['method']} (the first AR configuration that passes the entropy rule). Fastest DLM "
                 f"configuration {'at equal quality' if ok_ar else '(none keeps equal quality; fastest overall)'}: "
                 f"{best_ar['method']} block {best_ar['block_length']} threshold {best_ar['threshold']}, "
                 f"**{ratio_ar:.2f}x**, gen. ppl {best_ar['gen_ppl']:.2f} against {base['gen_ppl']:.2f} "
                 f"({'met' if ratio_ar >= 1 and ok_ar else 'not met'}).")
    return lines


def _commits(cfg: dict) -> str:
    """How a race configuration decides how many tokens a step commits."""
    if cfg.get("factor") is not None:
        return f"factor {cfg['factor']}"
    return "schedule" if cfg.get("threshold") is None else f"threshold {cfg['threshold']}"


def label_of(cfg: dict) -> str:
    """A DLM configuration of the race in words."""
    every = cfg.get("refresh_every", 1)
    return (f"{cfg.get('cache') or 'no'} cache" + (f" with a full pass every {every} blocks" if every > 1 else "") +
            f", block {cfg.get('block_length')}, {_commits(cfg)}")


def _fastest_dlm(r: dict, batch_size: int) -> tuple[list[dict], list[dict], dict]:
    """(the DLM records at `batch_size`, those at equal quality, the fastest of those, else of all)."""
    dlm = [x for x in r["records"] if x["batch_size"] == batch_size and x["method"].startswith("dlm_")]
    ok = [x for x in dlm if x["equal_quality"]]
    return dlm, ok, max(ok or dlm, key=lambda x: x["tokens_per_s"])


def sampling_task_summary(r: dict | None) -> str | None:
    """The race's headline for the README: AR greedy against the fastest DLM configuration at equal quality."""
    if r is None:
        return None
    rows = ["| batch | AR greedy: correct, tokens/s | fastest DLM at equal quality | correct | tokens/s | x AR | "
            "tokens per forward |", "|---:|---|---|---:|---:|---:|---:|"]
    for bs in r["settings"]["batch_sizes"]:
        ar = next(x for x in r["records"] if x["batch_size"] == bs and x["method"] == "ar_greedy")
        _, ok, best = _fastest_dlm(r, bs)
        name = label_of(best) + ("" if ok else " (none at equal quality)")
        rows.append(f"| {bs} | {100 * ar['accuracy']:.1f}%, {ar['tokens_per_s']:.0f} | {name} | "
                    f"{100 * best['accuracy']:.1f}% | {best['tokens_per_s']:.0f} | **{best['x_ar']:.2f}** | "
                    f"{best['tokens_per_forward']:.2f} |")
    s = r["settings"]
    return "\n".join(rows + ["", f"{s['n']} held-out problems, torch threads {s['torch_threads']}, "
                                  f"{_load(r['machine'])}; every configuration in "
                                  "[docs/results-text.md](docs/results-text.md#the-race-on-a-task)."])


def sampling_task(r: dict | None) -> str | None:
    """The race on the arithmetic task (bench/sampling_task.py): AR greedy against the DLM's samplers."""
    if r is None:
        return None
    s = r["settings"]
    rows = ["| batch | method | block | commits | cache | full pass every (blocks) | accuracy % (+- s.e.) | "
            "same text as every block | tokens/s | x AR greedy | NFE/token | tokens/forward | equal quality |",
            "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for x in r["records"]:
        same = x.get("same_output_as_every_block_refresh")
        every = x.get("refresh_every", 1) if x["cache"] else None
        commits = "" if x["method"].startswith("ar_") else _commits(x).replace("threshold ", "t ")
        rows.append(f"| {x['batch_size']} | {x['method']} | {x['block_length'] or ''} | {commits} | "
                    f"{x['cache'] or ''} | {every or ''} | {100 * x['accuracy']:.1f} +- {100 * x['accuracy_se']:.1f} | "
                    f"{'' if same is None or every == 1 else f'{100 * same:.1f}%'} | "
                    f"{x['tokens_per_s']:.1f} | {x['x_ar']:.2f} | {x['nfe_per_token']:.3f} | "
                    f"{x['tokens_per_forward']:.2f} | {'yes' if x['equal_quality'] else 'no'} |")
    lines = []
    for bs in s["batch_sizes"]:
        dlm, ok, best = _fastest_dlm(r, bs)
        which = "at equal quality" if ok else "(none at equal quality)"
        vanilla = next((x for x in dlm if x["method"] == "dlm_vanilla"), None)
        x_vanilla = best["tokens_per_s"] / vanilla["tokens_per_s"] if vanilla else None
        against_vanilla = "" if vanilla is None else (
            f"; **{x_vanilla:.1f}x** the vanilla DLM, goal >= 5x: {'met' if ok and x_vanilla >= 5 else 'not met'}")
        lines.append(f"- Batch {bs}: fastest DLM configuration {which}: {label_of(best)}, **{best['x_ar']:.2f}x** "
                     f"AR greedy ({100 * best['accuracy']:.1f}% correct, {best['tokens_per_forward']:.2f} tokens per "
                     "forward; "
                     f"goal >= 2x: {'met' if ok and best['x_ar'] >= 2 else 'not met'}{against_vanilla}).")
    names = {"full_pass": "full passes", "append": "appends (exact)", "append_stale": "appends to the stale cache",
             "window": "window steps"}
    for t in r.get("time_split", []):
        d = t["dlm"]
        passes = ", ".join(f"{names.get(k, k)} {100 * v:.0f}%" for k, v in d["shares"].items())
        lines.append(f"- Where the time goes at batch {t['batch_size']} ({t['n']} problems): AR greedy spends "
                     f"{100 * t['ar']['prefill_share']:.0f}% of its time in the prompt's pass; the DLM "
                     f"({label_of(d['config'])}) {passes}, and {100 * d['other_share']:.0f}% outside the model.")
    m = r["machine"]
    rows += ["", f"{s['n']} held-out problems of the arithmetic task (unseen number combinations; word problems "
             f"with unseen names and objects), {s['gen_length']} masks after each prompt for the DLM "
             f"({s['steps']} steps at most, split across the blocks) and at most {s['gen_length']} new tokens for "
             f"the AR model; tokens: {s['tokens']}. Equal quality: {s['equal_quality']}. {s['rounds']} rounds, each "
             f"running every configuration on its slice of the problems. Torch threads: {s['torch_threads']}, "
             f"{_load(m)} ({m['shared']}); torch {r['versions']['torch']}. "
             f"Command: `{r['command']}`.", "", *lines]
    return "\n".join(rows)


def _one_pass(records: list[dict]) -> str:
    """What the bidirectional caches with a single full pass are, and how many of their tokens a pass at every
    block start also wrote."""
    stale = [x for x in records if "tokens_as_every_block_refresh" in x]
    if not stale:
        return ""
    by_method: dict[str, list[str]] = {}
    for x in stale:
        by_method.setdefault(x["method"], []).append(f"{100 * x['tokens_as_every_block_refresh']:.0f}%")
    shares = "; ".join(f"{m}: {', '.join(v)}" for m, v in by_method.items())
    return ("*_one_full_pass: the bidirectional caches with one full pass in all, every later block appended to the "
            "stale cache (`refresh_every`); the share of their tokens that a full pass at every block start also "
            f"wrote, by length: {shares}. ")


def sampling_length(r: dict | None) -> str | None:
    """Cost per generated token against length (bench/sampling_length.py): AR with its KV cache, the DLM's caches."""
    if r is None:
        return None
    s, g = r["settings"], r["goal"]
    lengths, longest = s["lengths"], max(s["lengths"])
    at = {(x["method"], x["length"]): x for x in r["records"]}
    rows = ["| method | cache | " + " | ".join(str(n) for n in lengths) + f" | {longest} / 64 | NFE/token |",
            "|---|---|" + "---:|" * (len(lengths) + 2)]
    for method in dict.fromkeys(x["method"] for x in r["records"]):
        first = at[method, lengths[0]]
        cost = [at[method, n]["ms_per_token"] for n in lengths]
        rows.append(f"| {method} | {first.get('cache') or 'KV'} | " + " | ".join(f"{c:.2f}" for c in cost) +
                    f" | {at[method, longest]['ms_per_token'] / at[method, 64]['ms_per_token']:.2f}x | "
                    f"{first['nfe_per_token']:.2f} |")
    same = [x["same_tokens_as_full_refresh"] for x in r["records"] if "same_tokens_as_full_refresh" in x]
    rows += ["", f"ms per generated token (batch 1) for {', '.join(map(str, lengths))} tokens after a prompt of "
             f"{s['prompt_tokens']} tokens; {s['timing']}, {s['rounds']} rounds. AR: {s['teacher']} greedy through "
             f"`generate` with its KV cache; DLM: {s['dlm']} (bidirectional) in blocks of {s['block']}, "
             f"{s['dlm_decoding']}; block DLM: {s['block_dlm']}. cache_full_refresh: the block DLM's cache rebuilt by "
             f"a full pass at every block start (the path before the append); cache_append: the finished block "
             f"appended to the cache (same tokens as the full refresh at {sum(same)} of {len(same)} lengths). "
             + _one_pass(r["records"]) +
             f"Torch threads: {s['torch_threads']}, {_load(r['machine'])}; torch {r['versions']['torch']}. "
             f"Command: `{r['command']}`.", "",
             f"- Goal: the best DLM configuration's cost per token at {g['length']} within {g['target']}x of its "
             f"cost at 64: {g['best_dlm']}, **{g['ratio_to_64']:.2f}x** ({'met' if g['met'] else 'not met'})."]
    return "\n".join(rows)


def vq(_: dict | None = None) -> str | None:
    """The judges of the image-text evaluation on VQ reconstructions (assets/vq/reconstruction.json)."""
    path = ROOT / "assets" / "vq" / "reconstruction.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    rows = ["| dataset | held-out images | judge on originals % | judge on VQ reconstructions % | PSNR dB "
            "| codes used |",
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


def data_scale(r: dict | None) -> str | None:
    if r is None:
        return None
    s, goals = r["settings"], r["goals"]
    rows = ["| corpus | text | tokens | prepare: time | prepare: peak RSS | reuse: time | reuse: peak RSS | "
            "training: peak RSS per process | training: launch to first step |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["runs"]:
        train = x["train"]
        rows.append(f"| {x['scale']}x | {x['text_bytes'] / 1e6:,.0f} MB | {x['prepare']['tokens'] / 1e6:,.1f} M | "
                    f"{x['prepare']['seconds']:,.1f} s | {x['prepare']['peak_rss_mb']:,.0f} MB | "
                    f"{x['reuse']['seconds']:.2f} s | {x['reuse']['peak_rss_mb']:,.0f} MB | "
                    f"{' / '.join(f'{m:,.0f}' for m in train['peak_rss_mb_per_rank'])} MB | "
                    f"{train['seconds_to_first_step']:.1f} s |")
    growth, reuse = r["rss_growth"], r["reuse_over_prepare"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    return "\n".join(rows + [
        "",
        f"Peak RSS growth from {r['runs'][0]['scale']}x to {r['runs'][-1]['scale']}x: preparing process "
        f"{100 * growth['prepare']:+.1f}%, training processes {100 * growth['train']:+.1f}% (goal: within "
        f"{100 * goals['rss_growth_max']:.0f}%: {verdict(max(growth.values()) <= goals['rss_growth_max'])}). "
        f"Reuse over preparation time: {', '.join(f'{100 * v:.2f}%' for v in reuse)} (goal: under "
        f"{100 * goals['reuse_over_prepare_max']:.0f}%: {verdict(max(reuse) <= goals['reuse_over_prepare_max'])}).",
        "",
        f"Corpus: {s['corpus']}. Prepare: one process tokenises it into the data cache (`prepared_text`, what the "
        f"main process of the first run does; `datasets` streams the files); reuse: the same call with the cache "
        f"in place (every other process, resume and later run). Training: `mmdlm adapt` of {s['model']} under "
        f"{s['launch']}, {s['processes']} processes, {s['steps']} steps x batch {s['batch_size']} x {s['seq_len']} "
        f"tokens; the time to the first step includes starting the processes and loading the model. Peak RSS: "
        f"each process's `ru_maxrss` (the token file's mapped pages included). Machine: {r['machine']['note']}; "
        f"torch {r['versions']['torch']}. Command: `{r['command']}`.",
    ])


def _ratio(x: dict) -> str:
    if x.get("reached_before_training"):
        return "before training"
    if x.get("token_efficiency_ratio") is not None:
        return f"{x['token_efficiency_ratio']:.1f}x"
    return f"not reached (< {x['token_efficiency_ratio_at_most']:.1f}x)"


def adaptation_study(r: dict | None) -> str | None:
    if r is None:
        return None
    teacher, recs = r["teacher"], r["records"]
    best = next(x for x in recs if x["name"] == r["best_recipe"])
    g = r["goals"]
    rows = ["| run | recipe | shift | [MASK] init | training tokens | tokens to reach scratch final | "
            "token-efficiency ratio | ELBO ppl (+- s.e.) | vs AR ppl | infill exact match | gen. ppl (entropy) | "
            "train tokens/s |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| AR teacher | AR pretraining | | | {teacher['tokens']:,} | | | {teacher['ar_ppl']:.2f} (exact) | | "
            f"{teacher['infill_exact_match_left_only']:.3f} (left context only) | "
            f"{teacher['gen_ppl_own_samples']:.2f} ({teacher['gen_entropy']:.2f}) | |"]
    for x in recs:
        scratch = x["kind"] == "scratch"
        reach = "" if scratch else ("0" if x["reached_before_training"] else
                                    f"{x['tokens_to_scratch_final']:,.0f}" if x["tokens_to_scratch_final"] else "-")
        recipe = x["recipe"] + (f", block {x['block_size']}" if x["block_size"] else "") + \
            (f", AR weight {x['ar_loss_weight']}" if x["ar_loss_weight"] else "") + \
            ("" if x["same_factorisation_as_scratch"] else " (block-causal bound)")
        name = f"**{x['name']}**" if x["name"] == r["best_recipe"] else x["name"]
        rows.append(f"| {name} | {recipe} | {'yes' if x['shift'] else 'no'} | "
                    f"{'' if scratch else x['mask_init']} | {x['tokens']:,} | {reach} | "
                    f"{'' if scratch else _ratio(x)} | {x['dlm_elbo_ppl']:.2f} +- {x['dlm_elbo_ppl_se']:.2f} | "
                    f"{x['ppl_gap_vs_ar']:+.0%} | {x['infill_exact_match']:.3f} | {x['gen_ppl']:.2f} "
                    f"({x['gen_entropy']:.2f}) | {x['train_tokens_per_s']:,.0f} |")
    adapted = [x for x in recs if x["kind"] == "adapted"]
    met_ratio = [x["name"] for x in adapted if x["goal_ratio_met"]]
    missed_ratio = [f"{x['name']} ({_ratio(x)})" for x in adapted if not x["goal_ratio_met"]]
    closest = min(adapted, key=lambda x: x["ppl_gap_vs_ar"])
    e = r["estimator"]
    best_ratio = _ratio(best)
    lines = [
        ("**Smoke test (`--quick`): tiny runs, not a result.** " if r["quick"] else "") +
        f"Best recipe: **{best['name']}**, token-efficiency ratio **{best_ratio}** (goal >= "
        f"{g['token_efficiency_ratio_at_least']:.0f}x: {'met' if g['ratio_met'] else 'not met'}); its ELBO "
        f"perplexity {best['dlm_elbo_ppl']:.2f} +- {best['dlm_elbo_ppl_se']:.2f} against the teacher's "
        f"{r['ar_ppl']:.2f}, {best['ppl_gap_vs_ar']:+.0%} (goal within +{g['ppl_gap_at_most']:.0%}: "
        f"{'met' if g['gap_met'] else 'not met'}).",
        "",
        "- Token-efficiency goal (>= 10x) met by: " + (", ".join(met_ratio) or "none") +
        ("; missed by: " + ", ".join(missed_ratio) if missed_ratio else "") + ".",
        "- Perplexity goal (within 15% of the teacher) met by: " + (", ".join(g["gap_met_by"]) or "none") +
        f"; closest: {closest['name']} at {closest['ppl_gap_vs_ar']:+.0%}.",
        "",
        *rows,
        "",
        f"N = {r['teacher_tokens']:,} teacher tokens (`{teacher.get('command')}`), M = {r['adapt_tokens']:,} tokens "
        f"per adapted run, {r['scratch_tokens']:,} tokens from scratch. ELBO: {e['final']['rows']} held-out rows of "
        f"{e['final']['seq_len']} tokens, {e['final']['grid']} t strata x {e['final']['replicates']} draws each; "
        f"the AR perplexity on exactly the same tokens. Curves and the token-efficiency column: "
        f"{e['curves']['rows']} of those rows, {e['curves']['grid']} strata, {e['curves']['points']} log-spaced "
        f"points per run. Infilling: {r['held_out']['infill_spans']} held-out spans of {r['held_out']['span']} "
        f"tokens ({r['held_out']['left']} left, {r['held_out']['right']} right context), greedy. Samples: "
        f"{r['held_out']['prompts']} held-out prompts of {r['held_out']['prompt_len']} tokens, "
        f"{r['held_out']['gen_length']} tokens each at temperature {r['held_out']['gen_temperature']}, scored by "
        f"the teacher (entropy: mean per-sample token entropy, nats). Torch threads: {r['threads']}; torch "
        f"{r['versions']['torch']}, transformers {r['versions']['transformers']}; the machine was shared with other "
        f"jobs, so tokens/s are as measured, not benchmarks. Training time summed over the runs "
        f"{sum(x['train_seconds'] for x in recs) / 60:.0f} min, final measurements "
        f"{sum(x['eval_seconds'] for x in recs) / 60:.0f} min (the run that wrote this file took "
        f"{r['elapsed_s'] / 60:.1f} min, reusing the finished runs). "
        f"Command: `{r['command']}`.",
    ]
    return "\n".join(lines)


def _tokens(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}M"


def adaptation_parity(r: dict | None) -> str | None:
    """bench/results/adaptation_parity.json: one recipe adapted for longer, to the teacher's perplexity."""
    if r is None:
        return None
    rows = ["| adaptation tokens M | steps | run | ELBO ppl (+- s.e.) | vs AR teacher | infill exact match | "
            "gen. ppl (entropy) |", "|---:|---:|---|---:|---:|---:|---:|"]
    t = r["teacher"]
    rows.append(f"| | | AR teacher | {t['ar_ppl']:.2f} (exact) | | {t['infill_exact_match_left_only']:.3f} (left "
                f"context only) | {t['gen_ppl_own_samples']:.2f} ({t['gen_entropy']:.2f}) |")
    for p in r["points"]:
        source = {"trained here": "trained here"}.get(p["source"], f"`{p['source']}`")
        if p["differs"]:
            source += " (trained with " + ", ".join(f"{k} {v}" for k, v in p["differs"].items()) + ")"
        rows.append(f"| {_tokens(p['tokens'])} | {p['steps']} | {source} | {p['dlm_elbo_ppl']:.2f} +- "
                    f"{p['dlm_elbo_ppl_se']:.2f} | {p['gap']:+.0%} | {p['infill_exact_match']:.3f} | "
                    f"{p['gen_ppl']:.2f} ({p['gen_entropy']:.2f}) |")
    a = r["analysis"]
    reach = "; ".join(f"within {t['gap']:.0%} of the teacher: **{_tokens(t['tokens'])}** tokens, {t['how']}"
                      for t in a["targets"])
    fit = a["fit"]
    law = "" if fit is None else \
        f" Power law fitted to the {len(r['points'])} gaps: gap = {fit['a']:.3g} x M^{fit['b']:.2f}."
    return "\n".join([
        ("**Smoke test, not a result.** " if r["quick"] else "") +
        ("" if r["complete"] else f"**Partial: {len(r['points'])} of {len(r['lengths'])} lengths measured.** ") +
        f"Recipe {r['recipe']} ({r['recipe_description']}), AR teacher perplexity {r['ar_ppl']:.2f} on the same "
        f"tokens. Tokens needed: {reach}.{law}",
        "",
        *rows,
        "",
        "Each length is its own run with its own schedule (warmup, cosine decay to the last step), measured like the "
        "study's runs: the same held-out rows, fixed-grid ELBO estimator, spans and prompts. The "
        "ELBO bounds the DLM's NLL from above, so the gap shown is an upper bound. Interpolation: straight line in "
        "log gap against log M between measured lengths; extrapolation: the power law. "
        f"Torch threads: {r['threads']}; torch {r['versions']['torch']}. Command: `{r['command']}`.",
    ])


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _attributes(r: dict, task: str) -> str:
    values = [r.get(f"{task}_{a}") for a in ("colour", "shape", "size", "axis", "relation")]
    return "" if any(v is None for v in values) else " / ".join(f"{100 * v:.0f}" for v in values)


def _sampler(record: dict) -> str:
    """The image sampler of an eval-mm record, in a few words."""
    sched = record.get("scheduler") or {}
    if sched.get("class") == "FlowMatchEulerDiscreteScheduler":
        return f"{'stochastic sampling' if sched.get('stochastic_sampling') else 'Euler steps'}, shift {sched['shift']}"
    if sched.get("class") == "MaskedDiffusionScheduler":
        return (f"remasking, alg_temp {sched['alg_temp']}" if sched.get("remasking") else f"rule {sched['rule']}")
    return sched.get("class", "unrecorded")


def imagetext(r: dict | None) -> str | None:
    """One row per (backbone, dataset) of bench/results/imagetext.json (`mmdlm eval-mm`)."""
    if r is None or not r.get("records"):
        return None
    rows = ["| backbone | dataset | n | steps | t2i accuracy % | t2i colour / shape / size / axis / relation % | "
            "caption accuracy % | caption exact match % | caption colour / shape / size / axis / relation % | "
            "joint consistency % | joint distinct | s / image | s / caption |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for x in r["records"]:
        name = x["backbone"] + (f" ({x['label']})" if x.get("label") else "")
        rows.append(f"| {name} | {x['dataset']} | {x['n']} | {x.get('num_inference_steps') or ''} | "
                    f"{_pct(x.get('t2i_accuracy'))} | {_attributes(x, 't2i')} | {_pct(x.get('caption_accuracy'))} | "
                    f"{_pct(x.get('caption_exact_match'))} | {_attributes(x, 'caption')} | "
                    f"{_pct(x.get('joint_consistency'))} | {x.get('joint_distinct', '')} | "
                    f"{x.get('s_per_image') or ''} | {x.get('s_per_caption') or ''} |")
        guidance = ", ".join(f"{k} {x[k]}" for k in ("guidance_scale", "text_guidance_scale") if k in x)
        machine = x.get("machine") or {}
        notes.append(f"{name} / {x['dataset']}: `{x.get('command', '')}`"
                     + (f" ({guidance})" if guidance else "") + f"; sampler: {_sampler(x)}"
                     + f"; batch {x.get('batch_size')}, device {x.get('device')}, {machine.get('cpus')} CPUs"
                     + f", torch {(x.get('versions') or {}).get('torch')}.")
    return "\n".join(rows + [""] + ["Shapes: held-out scenes (never in training); accuracy = every attribute right "
                                    "(t2i: read back from the image by `parse_image`; captions: parsed, either "
                                    "phrasing of a relation counts; axis = the relation's axis, horizontal or "
                                    "vertical, right whichever object comes first); exact match = the dataset's "
                                    "own caption word for word; joint = the image's reading equals the caption's; "
                                    "joint distinct = how many different pictures (shapes) or digits the n joint "
                                    "captions name. Digits: the test split, judged by `DigitClassifier`. Seconds per "
                                    "sample at the batch size given, after an untimed warm-up."] + [""] + notes)


def _stage(record: dict) -> int:
    label = record.get("label") or ""
    if not label.startswith("stage ") or not label[6:].isdigit():
        raise ValueError(f"a stage record needs a label 'stage N', got {label!r} ({record.get('model')})")
    return int(label[6:])


BACKBONES = {"mmdit": "MM-DiT", "discrete": "discrete"}  # how the tables and plots name a backbone


def _stage_groups(r: dict) -> dict[tuple[str, str], list[dict]]:
    """The stage records of `r` by (dataset, backbone), datasets in order and the MM-DiT first, each
    group sorted by stage."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for x in r["records"]:
        groups.setdefault((x["dataset"], x["backbone"]), []).append(x)
    return {key: sorted(groups[key], key=_stage) for key in sorted(groups, key=lambda k: (k[0], k[1] != "mmdit"))}


def imagetext_stages(r: dict | None, assets: Path = ROOT / "assets") -> str | None:
    """Accuracy after each training stage, from bench/results/imagetext_stages.json
    (`mmdlm eval-mm --label "stage N" --output bench/results/imagetext_stages.json`); the shipped
    models in `assets` (BACKBONE-DATASET) say whether one averages stages."""
    if r is None or not r.get("records"):
        return None
    groups = _stage_groups(r)
    rows = ["| held-out, per stage | n | text-to-image % | captioning % | joint % |", "|---|---:|---:|---:|---:|"]
    soups = []  # the shipped models that average stages rather than being the last one
    for (dataset, backbone), records in groups.items():
        if len({x["n"] for x in records}) != 1:
            raise ValueError(f"{backbone} / {dataset}: stages evaluated on different n, not comparable")
        shipped = assets / f"{backbone}-{dataset}"
        averaged = averaged_stages(shipped) if shipped.is_dir() else None
        if averaged:
            soups.append(f"the {BACKBONES.get(backbone, backbone)} on {dataset} ships the average of stages "
                         f"{' and '.join(map(str, averaged))}, whose figures are in the table above")

        def cells(field: str) -> str:
            values = [_pct(x.get(field)) for x in records]
            return " / ".join(values[:-1] + [values[-1] if averaged else f"**{values[-1]}**"])

        stages = " / ".join(str(_stage(x)) for x in records)
        rows.append(f"| {BACKBONES.get(backbone, backbone)} on {dataset}, stage {stages} | {records[0]['n']} | "
                    f"{cells('t2i_accuracy')} | {cells('caption_accuracy')} | {cells('joint_consistency')} |")
    samplers = "; ".join(sorted({f"{BACKBONES.get(x['backbone'], x['backbone'])}: {_sampler(x)}"
                                 for group in groups.values() for x in group}))
    return "\n".join(rows + ["", "Each stage's model evaluated as the shipped one is, with the pipeline's call "
                                 "defaults (steps, guidance, temperatures) and the sampler its recipe saves ("
                                 + samplers + "); the last stage's is the "
                                 "shipped model" + "".join(f", except that {s}" for s in soups) + ". Commands of "
                                 f"the form `{records[-1]['command']}`."])


def _sizes(records) -> str:
    """The sample counts `n` of `records`, e.g. "256" or "256/1024"."""
    return "/".join(sorted({str(x["n"]) for x in records if "n" in x}, key=int))


def plot_imagetext_stages(r: dict | None, shipped: dict | None, path: Path) -> bool:
    """Held-out accuracy after each training stage (bench/results/imagetext_stages.json), one panel
    per dataset, the goal at 90% and each shipped model's default-steps figures from
    bench/results/imagetext.json (`shipped`) marked after its last stage. Writes `path` atomically;
    False when there are no stage records."""
    if r is None or not r.get("records"):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, dict[str, list[dict]]] = {}
    for (dataset, backbone), records in _stage_groups(r).items():
        groups.setdefault(dataset, {})[backbone] = records
    final = {(x["dataset"], x["backbone"]): x for x in (shipped or {}).get("records", []) if not x.get("label")}
    tasks = {"t2i_accuracy": ("text-to-image", "-"), "joint_consistency": ("joint", "--"),
             "caption_accuracy": ("captioning", ":")}
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4), squeeze=False)
    for ax, (dataset, backbones) in zip(axes[0], groups.items()):
        for i, (backbone, records) in enumerate(backbones.items()):
            colour = f"C{i}"
            stages = [_stage(x) for x in records]
            for field, (task, style) in tasks.items():  # a task an evaluation left out is not drawn
                points = [(stage, 100 * x[field]) for stage, x in zip(stages, records) if x.get(field) is not None]
                if points:
                    ax.plot(*zip(*points), style, marker="o", ms=3, color=colour,
                            label=f"{BACKBONES.get(backbone, backbone)} {task}")
                if final.get((dataset, backbone), {}).get(field) is not None:
                    ax.plot(stages[-1] + 0.4, 100 * final[dataset, backbone][field], "*", ms=9, color=colour)
        ax.axhline(90, color="grey", lw=0.8)
        ax.text(1, 91, "goal 90%", fontsize=7, color="grey")
        stages_n = _sizes(x for records in backbones.values() for x in records)
        shipped_n = _sizes(x for (d, _), x in final.items() if d == dataset)
        ax.set_title(f"{dataset}, held-out: stages (n={stages_n}); stars: the shipped models at their default "
                     f"steps (n={shipped_n})", fontsize=8)
        ax.set_xlabel("training stage")
        ax.set_ylabel("accuracy %")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    return True


# lm-eval metrics: (key in a record's results, shown as, format of a value and of its standard error)
LM_EVAL_METRICS = [("acc", "accuracy", "pct"), ("acc_norm", "accuracy, length-normalised", "pct"),
                   ("exact_match,first_line", "exact match", "pct"), ("bits_per_byte", "bits per byte (lower: better)",
                                                                      "num"),
                   ("byte_perplexity", "byte perplexity (lower: better)", "num")]


def _lm_eval_value(scores: dict, key: str, kind: str) -> str:
    if key not in scores:
        return ""
    value, se = scores[key], scores.get(key.replace(",", "_stderr,", 1) if "," in key else f"{key}_stderr")
    if kind == "pct":
        return f"{100 * value:.1f}" + (f" ± {100 * se:.1f}" if isinstance(se, (int, float)) else "")
    return f"{value:.3f}"


def lm_eval(r: dict | None) -> str | None:
    """lm-evaluation-harness on the shipped tasks: one column per record (the DLMs first)."""
    if r is None:
        return None
    records = sorted(r["records"], key=lambda x: (x["backend"] != "mmdlm", x["label"] != "DLM", x["label"]))
    tasks = list(dict.fromkeys(task for x in records for task in x["results"]))
    rows = ["| task | metric | " + " | ".join(x["label"] for x in records) + " |",
            "|---|---|" + "---:|" * len(records)]
    for task in tasks:
        for key, name, kind in LM_EVAL_METRICS:
            cells = [_lm_eval_value(x["results"].get(task, {}), key, kind) for x in records]
            if any(cells):
                rows.append(f"| {task} | {name} | " + " | ".join(cells) + " |")
    n = {task: n for x in records for task, n in x["n"].items()}
    runs = "; ".join(f"{x['label']}: `{x['model']}` (lm-eval model {x['backend']}"
                     + (", " + ", ".join(f"{k}={v}" for k, v in x["model_args"].items()) if x["model_args"] else "")
                     + f"; {x['seconds'] / 60:.1f} min)" for x in records)
    x = records[0]
    return "\n".join(rows + ["", f"lm-eval {x['lm_eval']}, zero-shot, documents: "
                              + ", ".join(f"{task} {k}" for task, k in n.items())
                              + f" (± one standard error, lm-eval's). Runs: {runs}; {x['machine']['cpus']} CPUs, "
                              f"torch {x['versions']['torch']}, shared with other jobs. The DLM's likelihoods are "
                              "ELBO lower bounds (Monte Carlo: elbo_grid noise levels x elbo_replicates draws), the "
                              "teacher's exact; its generations: one token per step, greedy. Command: `make eval-lm`."])
def _millions(n: int) -> str:
    return f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def gpu(r: dict | None) -> str | None:
    """bench/results/gpu.json (`make gpu-check`, bench/gpu_check.py): the GPU tests, training throughput and MFU,
    sampling speed, multimodal step times, and the issue's goals."""
    if r is None:
        return ("**Not run on a GPU yet** (no device time was available once `make gpu-check` was ready), so there "
                "is no GPU figure here. The tests marked `gpu` are skipped without CUDA.")
    phases, g, peak = r["phases"], r.get("gpu") or {}, r["peak_tflops"]
    where = f"{g['name']} ({g['memory_gb']} GB, CUDA {g['cuda']})" if g else f"the {r['device']}"
    v = r["versions"]
    lines = []
    if r["tiny"]:
        lines += ["**A dry run at tiny sizes (bench/gpu_check.py --tiny): not a result.**", ""]
    matmul = phases.get("matmul", {})
    lines.append(f"Measured on {where}: torch {v['torch']}, transformers {v['transformers']}, diffusers "
                 f"{v.get('diffusers')}; {matmul.get('dtype', 'bf16')} matmul {peak['matmul_measured']} TFLOP/s "
                 f"measured, {peak['datasheet_bf16'] or 'n/a'} on the datasheet. `{r['command']}`, "
                 f"{r['seconds']:.0f} s.")
    tests = phases.get("tests", {})
    if tests.get("ran"):
        lines += ["", f"GPU tests (`pytest -m gpu`): **{tests['passed']} passed, {tests['failed']} failed**, "
                      f"{tests['skipped']} skipped, {tests['seconds']:.0f} s."]
        lines += [f"- failed: `{name}`" for name in tests.get("failed_tests", [])]
    elif "collected" in tests:
        lines += ["", f"GPU tests: {tests['collected']} collected, not run (no GPU)."]
    met = r["goals"]["met"]

    def goal(key, text, value):
        verdict = "not measured" if met[key] is None else ("met" if met[key] else "not met")
        return f"- {text}: **{value}** ({verdict})"

    def percent(x):
        return "n/a" if x is None else f"{_pct(x)}%"

    goals = r["goals"]
    lines += ["", "Goals (issue 25):",
              goal("adaptation_mfu_0.5b", "adaptation of the 0.5B model at >= 40% MFU (bf16, against 989 TFLOP/s), "
                   "best variant", percent(goals["adaptation_mfu_0.5b"])),
              goal("dlm_over_ar_0.5b", "DLM / AR training tokens/s >= 0.95 at 0.5B, like for like",
                   ", ".join(f"{k} {x:.3f}" for k, x in goals["dlm_over_ar_pairs"].items()) or "n/a"),
              goal("sampler_overhead_batch8", "sampler overhead (step time less forward time) < 5% at batch 8, "
                   "worst DLM cache", percent(goals["sampler_overhead_batch8"]))]
    adaptation = phases.get("adaptation", {}).get("records", [])
    if adaptation:
        lines += ["", "| model | variant | sequence x batch | tokens/s | MFU % (datasheet) | MFU % (measured matmul) "
                      "| peak GB | host syncs / step |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for x in adaptation:
            lines.append(f"| {x['model']} ({_millions(x['parameters'])}) | {x['variant']} | {x['seq_len']} x "
                         f"{x['batch_size']} | {x['tokens_per_s']:,.0f} | {_pct(x.get('mfu_datasheet'))} | "
                         f"{_pct(x.get('mfu_matmul'))} | {x.get('peak_memory_gb') or ''} | "
                         f"{x.get('host_syncs_per_step', '')} |")
    sampling = phases.get("sampling", {})
    if sampling.get("records"):
        batches = sorted({x["batch_size"] for x in sampling["records"]})
        by = {(x["method"], x["batch_size"]): x for x in sampling["records"]}
        top = batches[-1]
        lines += ["", f"Sampling: {sampling['model']} in {sampling['dtype']}, prompts of {sampling['prompt_len']} "
                      f"tokens, {sampling['gen_len']} tokens generated, the DLM in blocks of {sampling['block_length']}"
                      " with one token per step (mask-free full passes: "
                      f"{'yes' if sampling.get('mask_free') else 'no'}).", "",
                  "| method | " + " | ".join(f"tokens/s, batch {b}" for b in batches) +
                  f" | x AR at batch {top} | sampler overhead % | forward / step ms | host syncs / step |",
                  "|---|" + "---:|" * (len(batches) + 4)]
        for method in dict.fromkeys(x["method"] for x in sampling["records"]):
            cells = [f"{by[(method, b)]['tokens_per_s']:,.1f}" if (method, b) in by else "" for b in batches]
            timed = next((x for x in sampling["records"] if x["method"] == method and "sampler_overhead" in x), {})
            ratio = (f"{by[(method, top)]['tokens_per_s'] / by[('ar', top)]['tokens_per_s']:.2f}"
                     if (method, top) in by and ("ar", top) in by else "")
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {ratio} | {_pct(timed.get('sampler_overhead'))} | "
                         f"{timed.get('forward_ms', '')} | {timed.get('host_syncs_per_step', '')} |")
        timed_batch = next((x["batch_size"] for x in sampling["records"] if "sampler_overhead" in x), None)
        lines += ["", f"Sampler overhead at batch {timed_batch}: 1 - (the model's forward time, CUDA events around "
                      "every forward) / (the generation's time)."]
    mm = phases.get("multimodal", {}).get("records", [])
    if mm:
        lines += ["", "| backbone (256x256 images) | parameters | tokens per sample (image + text) | batch | step ms | "
                      "samples/s | MFU % (datasheet) | peak GB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for x in mm:
            lines.append(f"| {x['backbone']} | {_millions(x['parameters'])} | {x['image_tokens']} + "
                         f"{x['text_tokens']} | {x['batch_size']} | {1000 * x['step_s']:.1f} | {x['samples_per_s']} | "
                         f"{_pct(x.get('mfu_datasheet'))} | {x.get('peak_memory_gb') or ''} |")
    status = [f"{name} {p['status']}" + (f" ({p['error']})" if p.get("error") else "") for name, p in phases.items()]
    lines += ["", "Phases: " + "; ".join(status) + ". MFU: FLOPs per token 6N (N: the parameters that multiply, "
              "the output head included) + 12 L d S for full attention, 6 L d S for causal."]
    return "\n".join(lines)


RENDERERS = {"train_throughput": train_throughput, "assets": assets, "sampling": sampling,
             "sampling_task": sampling_task, "sampling_task.summary": sampling_task_summary,
             "sampling_length": sampling_length, "quickstart": quickstart,
             "sft": sft, "ddp_equality": ddp_equality, "adaptation_study": adaptation_study,
             "adaptation_parity": adaptation_parity, "imagetext": imagetext,
             "imagetext_stages": imagetext_stages, "vq": vq, "lm_eval": lm_eval,
             "gpu": gpu, "data_scale": data_scale}


def load_result(name: str) -> dict | None:
    """bench/results/NAME.json, or None when that benchmark has not been run."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def blocks():
    """(name, table) of every block that bench/results/NAME.json (or assets/) has data for; block NAME.VIEW is
    another view of NAME.json."""
    for name, render in RENDERERS.items():
        block = render(load_result(name.split(".")[0]))
        if block is not None:
            yield name, block


def pages() -> list[Path]:
    """The files whose <!-- bench:NAME --> blocks are generated: the README and docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def block_pattern(name: str) -> re.Pattern:
    name = re.escape(name)
    return re.compile(rf"(<!-- bench:{name} -->\n)(?:.*?\n)?(<!-- /bench:{name} -->)", re.S)


def main() -> int:
    texts = {page: page.read_text() for page in pages()}
    for name, block in blocks():
        holders = [page for page, text in texts.items() if block_pattern(name).search(text)]
        if not holders:
            print(f"no page has a <!-- bench:{name} --> block (README.md, docs/*.md)", file=sys.stderr)
            return 1
        for page in holders:
            texts[page] = block_pattern(name).sub(lambda m: m.group(1) + block + "\n" + m.group(2), texts[page])
    for page, text in texts.items():
        if text != page.read_text():
            page.write_text(text)
    plot_imagetext_stages(load_result("imagetext_stages"), load_result("imagetext"), RESULTS / "imagetext_stages.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
