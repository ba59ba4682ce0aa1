"""`mmdlm eval-lm`: EleutherAI's lm-evaluation-harness on a mmdlm diffusion LM or a causal LM."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

BACKENDS = ("auto", "mmdlm", "hf")


@dataclass
class EvalLMConfig:
    """Run lm-eval tasks (offline: the shipped ones by default) on a DLM (lm-eval model `mmdlm`) or a
    causal LM (lm-eval's `hf`); write one record per label. Needs the eval extra (pip install mmdlm[eval])."""

    model: str = field(default="assets/dlm", metadata={
        "help": "a mmdlm diffusion LM folder or saved TextDiffusionPipeline, or a transformers causal LM folder"})
    tasks: list[str] | None = field(default=None, metadata={
        "help": "lm-eval task names (default: the shipped mmdlm_stdlib_mc, mmdlm_stdlib_line, mmdlm_stdlib_ppl)"})
    include_path: list[str] | None = field(default=None, metadata={
        "help": "more folders of lm-eval task YAMLs (lm-eval's own tasks are searched when a task is not found)"})
    backend: str = field(default="auto", metadata={
        "help": "auto (mmdlm for a DLM or pipeline folder, hf for a causal LM) | mmdlm | hf"})
    model_args: str = field(default="", metadata={
        "help": "more lm-eval model arguments, k=v,k=v (mmdlm: elbo_grid, steps, threshold, editing_threshold, "
                "...; see mmdlm.eval.harness)"})
    batch_size: int = field(default=16, metadata={"help": "requests per forward pass / pipeline call"})
    limit: int | None = field(default=None, metadata={"help": "only the first N documents of each task"})
    num_fewshot: int | None = field(default=None, metadata={"help": "few-shot examples (default: the task's)"})
    apply_chat_template: bool = field(default=False, metadata={
        "help": "prompt through the tokenizer's chat template (as mmdlm sft trains)"})
    device: str | None = field(default=None, metadata={
        "help": "cpu | cuda | cuda:1 | mps ... (default: the machine's accelerator when it has one, else cpu)"})
    seed: int = field(default=0, metadata={"help": "lm-eval's random seeds (and the DLM sampler's)"})
    output: str = field(default="bench/results/lm_eval.json", metadata={"help": "results file to update"})
    label: str | None = field(default=None, metadata={
        "help": "name the record (default: the model path); a file keeps one record per label"})


def backend_of(path: str) -> str:
    """mmdlm for a DLM folder or a saved pipeline, hf for a transformers causal LM folder."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"no model at {path}")
    if (folder / "mmdlm.json").is_file() or (folder / "model_index.json").is_file():
        return "mmdlm"
    if (folder / "config.json").is_file():
        return "hf"
    raise ValueError(f"{path} holds no model: no mmdlm.json, model_index.json or config.json")


def run(c) -> dict:
    """Evaluate `c.model` on `c.tasks` with lm-eval's `simple_evaluate` and update the results file."""
    from ..devices import resolve_device
    from ..diffusion._checks import check_int
    from ..eval import write_record
    from ..io import check_output_file
    from ..provenance import command_line

    if c.backend not in BACKENDS:
        raise ValueError(f"unknown backend {c.backend!r}; choose one of {', '.join(BACKENDS)}")
    check_int(c.batch_size, "batch_size", 1)
    for name in ("limit", "num_fewshot"):
        if getattr(c, name) is not None:
            check_int(getattr(c, name), name, 1 if name == "limit" else 0)
    check_output_file(c.output, "--output")
    device = str(resolve_device(c.device))  # (lm-eval's hf would assume cuda)
    backend = backend_of(c.model) if c.backend == "auto" else c.backend
    for folder in c.include_path or []:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--include-path {folder} is not a folder")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager, get_task_dict
        from lm_eval.utils import simple_parse_args_string

        from ..eval.harness import HarnessArgs  # (registers lm-eval's model "mmdlm")
        from ..eval.lm_tasks import TASKS, TASKS_DIR
    except ImportError as err:
        raise ValueError(f"mmdlm eval-lm needs lm-eval: pip install 'mmdlm[eval]' ({err})") from err

    model_args = {"pretrained": c.model, **simple_parse_args_string(c.model_args)}
    if backend == "mmdlm":
        HarnessArgs.make(**model_args)  # checked before any task or model loads
    tasks = c.tasks or list(TASKS)
    manager = TaskManager(include_path=[str(TASKS_DIR), *(c.include_path or [])], include_defaults=False)
    if not set(tasks) <= set(manager.all_tasks):  # lm-eval's own tasks: indexed only when asked for
        manager = TaskManager(include_path=[str(TASKS_DIR), *(c.include_path or [])])
        unknown = sorted(set(tasks) - set(manager.all_tasks))
        if unknown:
            raise ValueError(f"unknown lm-eval task(s) {', '.join(unknown)}; shipped: {', '.join(TASKS)}")
    if backend == "mmdlm":
        model_args.setdefault("seed", c.seed)
        # the greedy check costs a decode per request: made only when a task reads it (lambada-style acc)
        model_args.setdefault("check_greedy", any(task.OUTPUT_TYPE == "loglikelihood"
                                                  for task in _leaves(get_task_dict(tasks, manager))))
    else:
        model_args.setdefault("add_bos_token", True)  # [BOS] + context, as the DLM is prompted
    start = time.perf_counter()
    results = simple_evaluate(model=backend, model_args=model_args, tasks=tasks, task_manager=manager,
                              batch_size=c.batch_size, device=device, limit=c.limit, num_fewshot=c.num_fewshot,
                              apply_chat_template=c.apply_chat_template, log_samples=False, random_seed=c.seed,
                              numpy_random_seed=c.seed, torch_random_seed=c.seed, fewshot_random_seed=c.seed)
    seconds = time.perf_counter() - start
    scores = {task: {k.replace(",none", ""): v for k, v in metrics.items() if k != "alias"}
              for task, metrics in results["results"].items()}
    record = {"label": c.label or c.model, "model": c.model, "backend": backend,
              "model_args": {k: v for k, v in model_args.items() if k != "pretrained"}, "results": scores,
              "n": {task: n["effective"] for task, n in results.get("n-samples", {}).items()},
              "num_fewshot": results.get("n-shot"), "limit": c.limit, "device": device, "seconds": round(seconds, 1),
              "lm_eval": results.get("lm_eval_version") or _version("lm_eval"), "command": command_line()}
    write_record(c.output, record, benchmark="lm_eval", slot=("label",))
    print(json.dumps({"label": record["label"], "results": scores}, indent=2))
    print(f"record written to {c.output}")
    return record


def _leaves(tasks: dict) -> list:
    """The tasks of lm-eval's task dict, groups opened."""
    return [t for v in tasks.values() for t in (_leaves(v) if isinstance(v, dict) else [v])]


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
