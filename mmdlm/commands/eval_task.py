"""`mmdlm eval-task`: held-out problems of the built-in arithmetic task, solved by a diffusion LM beside an AR
model: each solution, then both models' exact-answer accuracy and speed."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ..provenance import command_line
from .common import DeviceArgs


@dataclass
class EvalTaskConfig(DeviceArgs):
    """Solve held-out problems of the built-in arithmetic task with a diffusion LM, beside an AR model:
    each solution, then both models' exact-answer accuracy and tokens/s."""

    model: str = field(default="assets/task-dlm", metadata={"help": "the diffusion LM (a mmdlm DLM folder)"})
    ar_model: str | None = field(default="assets/task-ar", metadata={
        "help": "the AR model measured beside it (a causal LM folder; '' or null in a recipe: the DLM alone)"})
    n: int = field(default=3, metadata={"help": "held-out problems (the first n)"})
    show: int = field(default=3, metadata={"help": "problems printed with each model's solution"})
    batch_size: int = field(default=1, metadata={"help": "problems per batch"})
    gen_length: int = field(default=32, metadata={"help": "masks after the prompt (the AR model's max new tokens)"})
    steps: int = field(default=32, metadata={"help": "denoising steps, split across the blocks (the most)"})
    block_length: int | None = field(default=16, metadata={"help": "semi-autoregressive block length"})
    threshold: float | None = field(default=0.9, metadata={
        "help": "parallel decoding: commit every token with confidence >= threshold (none: the commit schedule)"})
    factor: float | None = field(default=None, metadata={
        "help": "parallel decoding by Fast-dLLM's factor rule instead of the threshold (give --threshold none)"})
    cache: str = field(default="dual", metadata={"help": "KV cache: none | prefix | dual"})
    refresh_every: int = field(default=1, metadata={
        "help": "blocks per full pass of the approximate cache (1: every block, as Fast-dLLM)"})
    rule: str = field(default="confidence", metadata={
        "help": "which tokens to commit: confidence | margin | entropy | random | origin"})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's)"})
    output: str | None = field(default=None, metadata={"help": "also write the results as JSON here"})


LABELS = {"dlm": "DLM", "ar": "AR "}


def run(c) -> dict:
    """The first `c.n` held-out problems, solved by the DLM (and the AR model); prints each solution and
    both models' accuracy and speed, optionally writes JSON."""
    from ..data.arithmetic import problems
    from ..diffusion._checks import check_int
    from ..eval.task import evaluate_ar, evaluate_dlm
    from ..io import atomic_write_text, check_output_file
    from ..schedulers import MaskedDiffusionScheduler
    from ..text.base import load_causal_lm, load_tokenizer
    from ..text.generate import check_options
    from .common import load_text_pipeline

    for name in ("n", "batch_size", "gen_length"):
        check_int(getattr(c, name), name, 1)
    check_int(c.show, "show", 0)
    if c.block_length is not None:
        check_int(c.block_length, "block_length", 1)
    check_options(steps=c.steps, cache=c.cache, guidance_scale=0.0, refresh_every=c.refresh_every)
    MaskedDiffusionScheduler(rule=c.rule, threshold=c.threshold, factor=c.factor)  # checked before the models load
    if c.output:
        check_output_file(c.output, "--output")
    if c.threads is not None:
        check_int(c.threads, "threads", 1)
        torch.set_num_threads(c.threads)
    device, dtype = c.resolve()
    sampler = dict(steps=c.steps, block_length=c.block_length, threshold=c.threshold, factor=c.factor,
                   cache=c.cache, refresh_every=c.refresh_every, rule=c.rule)
    pipe = load_text_pipeline(c.model, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    records = problems("held_out", c.n)
    runs = {"dlm": lambda recs: evaluate_dlm(pipe, recs, batch_size=c.batch_size, gen_length=c.gen_length, **sampler)}
    if c.ar_model:
        ar = load_causal_lm(c.ar_model, dtype=dtype).to(device).eval()
        ar_tokenizer = load_tokenizer(c.ar_model)
        runs["ar"] = lambda recs: evaluate_ar(ar, ar_tokenizer, recs, batch_size=c.batch_size,
                                              max_new_tokens=c.gen_length)
    tallies = {}
    for name, solve in runs.items():
        solve(records[:1])  # warm-up (lazy initialisation), not counted
        tallies[name] = solve(records)
    refresh = "" if c.cache == "none" or c.refresh_every == 1 else f" (a full pass every {c.refresh_every} blocks)"
    commits = f"factor {c.factor}" if c.factor is not None else f"threshold {c.threshold}"
    how = {"dlm": f"{c.model}, {c.cache} cache{refresh}, blocks of {c.block_length or c.gen_length}, {commits}",
           "ar": f"{c.ar_model}, greedy with its KV cache"}
    for i, r in enumerate(records[: c.show]):
        print(f"--- held-out problem {i + 1} (answer {r['answer']}) ---\n{r['prompt'].rstrip()}")
        for name, tally in tallies.items():
            print(f"{LABELS[name]}: {tally.outputs[i].replace(chr(10), ' | ')}")  # one line per model
    summary = {name: tally.summary() for name, tally in tallies.items()}
    print()
    for name, s in summary.items():
        print(f"{LABELS[name]}: {tallies[name].correct}/{s['n']} right, {s['tokens_per_s']:.1f} tokens/s, "
              f"{s['tokens_per_forward']:.2f} tokens per forward, NFE per token {s['nfe_per_token']:.2f} "
              f"({how[name]})")
    result = {"model": c.model, "ar_model": c.ar_model,
              "settings": {**sampler, "gen_length": c.gen_length, "batch_size": c.batch_size,
                           "threads": torch.get_num_threads(), "device": str(device),
                           "dtype": str(dtype).removeprefix("torch.")},
              "results": summary, "outputs": {name: tally.outputs for name, tally in tallies.items()},
              "command": command_line()}
    if c.output:
        atomic_write_text(c.output, json.dumps(result, indent=2) + "\n")
        print(f"results written to {c.output}")
    return result
