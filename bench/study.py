"""The adaptation study: DLMs adapted from an AR teacher against a DLM trained from scratch.

One architecture and tokenizer (the teacher's), one corpus (the built-in standard library,
fixed train/validation split):

- the AR teacher, pretrained for N tokens (its folder's run.json / log.csv say how);
- one DLM per adaptation recipe, trained from the teacher's weights for M tokens;
- a DLM with the same architecture and random weights, trained for N + M tokens.

Every run is an `mmdlm adapt` config (the from-scratch one has `init: random`), trained here
in one process on a corpus packed once. During training the validation ELBO is measured at
log-spaced steps with the fixed-grid estimator of `mmdlm.eval.likelihood` on a fixed subset
of held-out rows (the curves); at the end every model is measured on more held-out rows
(ELBO with its Monte-Carlo standard error, the teacher's perplexity on the same tokens),
on infilling of held-out spans, and on samples scored by the teacher. Writes one JSON
(`results`) and a plot beside it; `bench/report.py` turns the JSON into the README section.

A finished run (its `study_run.json` matching the current settings) is reused on a rerun, and
an unfinished one continues from its latest checkpoint (every `checkpoint_every` steps; resume
is exact, and the curve points measured so far are kept in `curve.json`), so an interrupted
study continues where it stopped.

    python bench/study.py --config configs/study.yaml [--quick]   # (make study, make study-quick)
"""
from __future__ import annotations

import copy
import csv
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import yaml

from mmdlm.io import atomic_write_text, save_figure

RECIPE_NAMES = {"bidirectional": "Dream / DiffuGPT (bidirectional)", "annealed": "DiffuLLaMA (annealed mask)",
                "block": "NBDiff (block curriculum + AR guidance)", "causal": "causal"}
# Keys the study sets for every run; a recipe may not override them.
STUDY_KEYS = ("model", "output_dir", "max_steps", "dataset", "data_files", "max_files", "seed", "resume",
              "eval_every", "save_every", "max_train_sequences", "validation_fraction")
GOAL_RATIO, GOAL_GAP = 10.0, 0.15
CURVE_FILE = "curve.json"


# ---- configuration ----------------------------------------------------------------------------
def _default_recipes() -> dict:
    return {
        "dream": {"attention": "bidirectional", "shift": True, "mask_init": "mean"},
        "dream_noshift": {"attention": "bidirectional", "shift": False, "mask_init": "mean"},
        "dream_special": {"attention": "bidirectional", "shift": True, "mask_init": "special"},
        "diffullama": {"attention": "annealed", "anneal_steps": 150, "shift": True},
        "diffullama_noshift": {"attention": "annealed", "anneal_steps": 150, "shift": False},
        "nbdiff": {"attention": "block", "block_size": 16, "block_warmup_steps": 150, "ar_loss_weight": 0.5,
                   "shift": True},
    }


def _default_quick() -> dict:
    return {"output_dir": "outputs/study-quick", "results": "outputs/study-quick/adaptation_study.json",
            "max_files": 120, "adapt_steps": 2, "scratch_steps": 3, "adapt": {"batch_size": 4, "seq_len": 64},
            "curve_points": 2, "curve_rows": 8, "curve_grid": 2, "eval_rows": 8, "grid": 2, "replicates": 2,
            "infill_spans": 4, "span": 4, "left": 16, "right": 8, "prompts": 2, "prompt_len": 8, "gen_length": 8}


@dataclass
class StudyConfig:
    """Adaptation against training from scratch: every recipe measured on held-out text, one table."""

    teacher: str = field(default="assets/teacher", metadata={
        "help": "the AR teacher (N tokens, read from its log.csv); its architecture and tokenizer are used throughout"})
    output_dir: str = field(default="outputs/study", metadata={"help": "one folder per run"})
    results: str = field(default="bench/results/adaptation_study.json", metadata={
        "help": "the study's JSON (the plot goes beside it, .png)"})
    adapt_steps: int = field(default=300, metadata={"help": "optimizer steps of every adapted run (M tokens)"})
    scratch_steps: int | None = field(default=None, metadata={
        "help": "steps of the from-scratch run (default: as many as N + M tokens take)"})
    adapt: dict = field(default_factory=lambda: {"batch_size": 32, "seq_len": 128, "lr": 1.0e-3,
                                                 "warmup_steps": 30}, metadata={
        "help": "mmdlm adapt keys shared by every run"})
    recipes: dict = field(default_factory=_default_recipes, metadata={
        "help": "name -> mmdlm adapt keys of each adapted run"})
    scratch: dict = field(default_factory=lambda: {"attention": "bidirectional", "shift": False, "lr": 2.0e-3,
                                                   "warmup_steps": 100}, metadata={
        "help": "mmdlm adapt keys of the from-scratch run (init: random)"})
    max_files: int | None = field(default=None, metadata={"help": "use only the first N files of the corpus"})
    curve_points: int = field(default=14, metadata={"help": "log-spaced validation points per run (plus step 0)"})
    curve_rows: int = field(default=256, metadata={"help": "held-out rows of the curve estimator"})
    curve_grid: int = field(default=4, metadata={"help": "t strata of the curve estimator"})
    eval_rows: int = field(default=512, metadata={"help": "held-out rows of the final estimator"})
    grid: int = field(default=8, metadata={"help": "t strata of the final ELBO estimator"})
    replicates: int = field(default=2, metadata={"help": "draws per (row, stratum) of the final estimator (>= 2)"})
    eval_batch_size: int = field(default=64, metadata={"help": "rows per evaluation batch"})
    infill_spans: int = field(default=64, metadata={"help": "held-out infilling spans"})
    span: int = field(default=6, metadata={"help": "tokens per infilling span"})
    left: int = field(default=48, metadata={"help": "left context of a span (tokens)"})
    right: int = field(default=16, metadata={"help": "right context of a span (tokens)"})
    prompts: int = field(default=16, metadata={"help": "held-out prompts for generative perplexity"})
    prompt_len: int = field(default=32, metadata={"help": "tokens per prompt"})
    gen_length: int = field(default=64, metadata={"help": "tokens sampled per prompt (one step per token)"})
    gen_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the samples"})
    threads: int = field(default=2, metadata={"help": "torch threads"})
    checkpoint_every: int = field(default=50, metadata={
        "help": "checkpoint every run this often (steps), so an interrupted study resumes mid-run (0: never)"})
    seed: int = field(default=0, metadata={"help": "seed of every run and of the held-out draws"})
    fresh: bool = field(default=False, metadata={"help": "retrain runs that already finished with these settings"})
    quick: bool = field(default=False, metadata={
        "help": "smoke test: apply quick_overrides (tiny runs, a slice of the corpus, results under outputs/)"})
    quick_overrides: dict = field(default_factory=_default_quick, metadata={"help": "what --quick changes"})


def apply_quick(c):
    """With `quick`, the keys of `quick_overrides` replace the config's (dicts merge one level)."""
    if not c.quick:
        return c
    names = {f.name for f in fields(c)}
    values = {}
    for key, value in c.quick_overrides.items():
        if key not in names or key in ("quick", "quick_overrides"):
            raise ValueError(f"quick_overrides has unknown key {key!r}")
        current = getattr(c, key)
        if isinstance(current, dict) and isinstance(value, dict) and key == "adapt":
            value = {**current, **value}
        values[key] = value
    return replace(c, **values)


def validate(c) -> None:
    from mmdlm.commands.adapt import AdaptConfig

    for name in ("adapt_steps", "curve_points", "curve_rows", "curve_grid", "eval_rows", "grid", "eval_batch_size",
                 "infill_spans", "span", "prompts", "gen_length", "threads"):
        if getattr(c, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(c, name)}")
    if c.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0: no checkpoints), got {c.checkpoint_every}")
    if c.replicates < 2:
        raise ValueError(f"replicates must be >= 2 (the standard error needs two draws per cell), got {c.replicates}")
    if c.scratch_steps is not None and c.scratch_steps < 1:
        raise ValueError(f"scratch_steps must be >= 1 or null, got {c.scratch_steps}")
    if c.curve_rows > c.eval_rows:
        raise ValueError(f"curve_rows ({c.curve_rows}) must not exceed eval_rows ({c.eval_rows})")
    if not c.recipes:
        raise ValueError("recipes is empty: nothing to compare with the from-scratch run")
    keys = {f.name for f in fields(AdaptConfig)}
    for name, overrides in {"adapt": c.adapt, "scratch": c.scratch, **c.recipes}.items():
        if not isinstance(overrides, dict):
            raise ValueError(f"{name} must be a mapping of mmdlm adapt keys, got {overrides!r}")
        bad = set(overrides) - keys
        if bad:
            raise ValueError(f"{name} has unknown mmdlm adapt keys {sorted(bad)}")
        fixed = set(overrides) & set(STUDY_KEYS)
        if fixed:
            raise ValueError(f"{name} sets {sorted(fixed)}, which the study sets for every run")
    if "scratch" in c.recipes:
        raise ValueError("'scratch' is the name of the from-scratch run; rename that recipe")


def run_configs(c, teacher_tokens: int | None):
    """{name: AdaptConfig} for every recipe and the from-scratch run, and M, N + M."""
    from mmdlm.commands.adapt import AdaptConfig
    from mmdlm.config import build

    out = Path(c.output_dir)
    common = dict(model=c.teacher, dataset="stdlib", max_files=c.max_files, seed=c.seed, save_every=0,
                  eval_every=0)
    configs = {}
    for name, overrides in c.recipes.items():
        configs[name] = build(AdaptConfig, {**common, **c.adapt, **overrides, "output_dir": str(out / name),
                                            "max_steps": c.adapt_steps}, source=f"recipe {name}")
    first = next(iter(configs.values()))
    adapt_tokens = c.adapt_steps * _tokens_per_step(first)
    scratch = build(AdaptConfig, {**common, **c.adapt, "init": "random", **c.scratch,
                                  "output_dir": str(out / "scratch"), "max_steps": 1}, source="scratch")
    if c.scratch_steps is not None:
        steps = c.scratch_steps
    elif teacher_tokens is None:
        raise ValueError(f"the teacher {c.teacher} has no log.csv recording its pretraining tokens; "
                         "give scratch_steps")
    else:
        steps = math.ceil((teacher_tokens + adapt_tokens) / _tokens_per_step(scratch))
    configs["scratch"] = replace(scratch, max_steps=steps)
    for name, cfg in configs.items():
        if cfg.init == "random" and name != "scratch":
            raise ValueError(f"recipe {name} has init: random; only the scratch run starts from random weights")
    return configs, adapt_tokens


def _tokens_per_step(cfg) -> int:
    return cfg.batch_size * cfg.grad_accum * cfg.seq_len


def curve_steps(max_steps: int, points: int) -> list[int]:
    """About `points` log-spaced steps from max_steps / 64 to max_steps (the last always included)."""
    first = max(1, round(max_steps / 64))
    if points <= 1 or max_steps <= first:
        return [max_steps]
    ratio = (max_steps / first) ** (1 / (points - 1))
    return sorted({min(max_steps, round(first * ratio ** i)) for i in range(points)} | {max_steps})


# ---- the teacher ------------------------------------------------------------------------------
def teacher_info(path: str) -> dict:
    """What the teacher's folder says about its pretraining: recipe, command, tokens, corpus."""
    folder = Path(path)
    info: dict = {"path": path, "tokens": None}
    run, log = folder / "run.json", folder / "log.csv"
    if run.exists():
        r = json.loads(run.read_text())
        info.update({k: r.get(k) for k in ("command", "config", "parameters", "corpus", "versions")})
    if log.exists():
        with log.open() as f:
            rows = list(csv.DictReader(f))
        if rows:
            info["tokens"] = int(rows[-1]["tokens"])
            info["steps"] = int(rows[-1]["step"])
            val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
            info["final_train_log_val_loss"] = val[-1] if val else None
    return info


# ---- one run ----------------------------------------------------------------------------------
def _curve_trainer_cls():
    from mmdlm.eval.likelihood import dlm_elbo
    from mmdlm.training.diffusion import DiffusionTrainer
    from mmdlm.training.trainer import STATE_FILE, latest_checkpoint

    class CurveTrainer(DiffusionTrainer):
        """Measures the validation ELBO with the fixed-grid estimator at chosen steps (kept in curve.json)."""

        def __init__(self, *args, curve_ids, curve_at, curve_grid, eval_batch_size, eval_seed, **kwargs):
            super().__init__(*args, **kwargs)
            self.curve_ids, self.curve_at = curve_ids, set(curve_at)
            self.curve_grid, self.eval_batch_size, self.eval_seed = curve_grid, eval_batch_size, eval_seed
            self.curve: list[dict] = []
            self.eval_seconds = 0.0
            self.resumed_tokens = 0

        def should_evaluate(self, step):
            return step in self.curve_at or step == self.args.max_steps

        def evaluate(self):
            t0 = time.perf_counter()
            dlm = self.accelerator.unwrap_model(self.model)
            # One draw per (row, stratum): the curve needs no standard error, only the same noise at each point.
            nll = dlm_elbo(dlm, self.curve_ids, grid=self.curve_grid, replicates=1,
                           batch_size=self.eval_batch_size, seed=self.eval_seed).nll
            self.curve.append({"step": self.step, "tokens": self.tokens, "elbo": nll})
            self.eval_seconds += time.perf_counter() - t0
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / CURVE_FILE, json.dumps(self.curve))
            return nll

        def train(self):
            ckpt = latest_checkpoint(self.out) if self.args.resume else None
            if ckpt is not None and (self.out / CURVE_FILE).exists():
                # Resume replays the same batches and noise: keep the points up to the checkpoint.
                state = json.loads((ckpt / STATE_FILE).read_text())
                self.curve = [p for p in json.loads((self.out / CURVE_FILE).read_text())
                              if p["step"] <= state["step"]]
                self.resumed_tokens = state["tokens"]
            else:
                self.evaluate()  # the starting point: the adapted teacher, or random weights
            return super().train()

    return CurveTrainer


def _settings_key(c, cfg) -> dict:
    """Everything a finished run's results depend on (a rerun reuses them only if it matches)."""
    # The precision the run really used ("auto" is "no" on a CPU), so a default that changed name matches.
    adapt = {**asdict(cfg), "mixed_precision": cfg.resolved_mixed_precision()}
    return {"adapt": adapt, "curve": [c.curve_points, c.curve_rows, c.curve_grid],
            "final": [c.eval_rows, c.grid, c.replicates, c.eval_batch_size],
            "held_out": [c.infill_spans, c.span, c.left, c.right, c.prompts, c.prompt_len, c.gen_length,
                         c.gen_temperature], "seed": c.seed}


def same_settings(stored: dict | None, key: dict) -> bool:
    """Whether a run recorded with `stored` settings matches `key`. An mmdlm adapt key added
    after the run was recorded matches when it holds its default (defaults keep old behaviour)."""
    from mmdlm.commands.adapt import AdaptConfig

    if not stored:
        return False
    key = json.loads(json.dumps(key))
    defaults = json.loads(json.dumps({f.name: f.default for f in fields(AdaptConfig)}, default=str))
    added = set(key["adapt"]) - set(stored.get("adapt", {}))
    if any(key["adapt"][k] != defaults.get(k) for k in added):
        return False
    current = {**key, "adapt": {k: v for k, v in key["adapt"].items() if k not in added}}
    return stored == current


def measure_dlm(dlm, c, data: dict, teacher) -> dict:
    """Final held-out metrics of a trained DLM."""
    from mmdlm.eval.infill import exact_match, fill_spans_dlm
    from mmdlm.eval.likelihood import continuation_nll, dlm_elbo
    from mmdlm.eval.samples import sample_dlm, token_entropy
    from mmdlm.schedulers import MaskedDiffusionScheduler

    dlm.eval()
    t0 = time.perf_counter()
    elbo = dlm_elbo(dlm, data["eval_ids"], grid=c.grid, replicates=c.replicates, batch_size=c.eval_batch_size,
                    seed=c.seed)
    greedy = MaskedDiffusionScheduler(schedule=dlm.config.schedule, eps=dlm.config.eps)
    preds = fill_spans_dlm(dlm, data["spans"], data["bos"], greedy, batch_size=c.eval_batch_size)
    sampler = MaskedDiffusionScheduler(schedule=dlm.config.schedule, eps=dlm.config.eps, rule="random",
                                       temperature=c.gen_temperature)
    head, samples = sample_dlm(dlm, data["prompts"], data["bos"], sampler, gen_length=c.gen_length,
                               steps=c.gen_length, generator=torch.Generator().manual_seed(c.seed))
    gen = continuation_nll(teacher, head, samples)
    return {"elbo": elbo.to_dict(), "infill_exact_match": exact_match(preds, data["spans"]),
            "gen_ppl": gen.ppl, "gen_entropy": token_entropy(samples),
            "sample": data["tokenizer"].decode(samples[0].tolist()), "eval_seconds": time.perf_counter() - t0}


def run_one(name: str, cfg, c, data: dict, teacher, log) -> dict:
    """Train one run (or reuse a finished one) and measure it."""
    from mmdlm.commands.adapt import run as adapt
    from mmdlm.text.adapt import load_dlm

    folder = Path(cfg.output_dir)
    record_path = folder / "study_run.json"
    key = _settings_key(c, cfg)
    if record_path.exists() and not c.fresh:
        rec = json.loads(record_path.read_text())
        if same_settings(rec.get("settings"), key):
            log(f"{name}: reusing the finished run in {folder}")
            return rec
    folder.mkdir(parents=True, exist_ok=True)
    settings_path = folder / "study_settings.json"
    if c.fresh or not settings_path.exists() or not same_settings(json.loads(settings_path.read_text()), key):
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # never resume a run made with other settings
        atomic_write_text(settings_path, json.dumps(key))
    atomic_write_text(folder / "adapt.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    # Checkpoints only make the run resumable; the settings key above does not depend on them.
    train_cfg = replace(cfg, save_every=c.checkpoint_every, keep_checkpoints=1, resume=c.checkpoint_every > 0)
    log(f"{name}: training {cfg.max_steps} steps ({cfg.max_steps * _tokens_per_step(cfg):,} tokens), "
        f"{cfg.attention} attention, shift={cfg.shift}, init={cfg.init}")
    t0 = time.perf_counter()
    trainer = adapt(train_cfg, data=(data["train_ids"], None, data["corpus"]), trainer_cls=_curve_trainer_cls(),
                    curve_ids=data["curve_ids"], curve_at=curve_steps(cfg.max_steps, c.curve_points),
                    curve_grid=c.curve_grid, eval_batch_size=c.eval_batch_size, eval_seed=c.seed)
    wall = time.perf_counter() - t0
    train_seconds = wall - trainer.eval_seconds  # this session's share, when the run was resumed
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the final model is in model/
    dlm, _ = load_dlm(folder / "model")
    log(f"{name}: trained in {train_seconds:.0f} s (+{trainer.eval_seconds:.0f} s of curve evaluation); measuring")
    metrics = measure_dlm(dlm, c, data, teacher)
    rec = {
        "name": name, "kind": "scratch" if cfg.init == "random" else "adapted",
        "recipe": "from scratch" if cfg.init == "random" else RECIPE_NAMES[cfg.attention],
        "attention": cfg.attention, "shift": cfg.shift, "mask_init": cfg.mask_init,
        "block_size": cfg.block_size if cfg.attention == "block" else None,
        "anneal_steps": cfg.anneal_steps if cfg.attention == "annealed" else None,
        "block_warmup_steps": cfg.block_warmup_steps if cfg.attention == "block" else None,
        "ar_loss_weight": cfg.ar_loss_weight, "lr": cfg.lr, "seed": cfg.seed,
        "steps": cfg.max_steps, "tokens": trainer.tokens,
        "command": f"mmdlm adapt --config {folder / 'adapt.yaml'}", "config": asdict(cfg),
        "train_seconds": train_seconds, "resumed_at_tokens": trainer.resumed_tokens,
        "train_tokens_per_s": (trainer.tokens - trainer.resumed_tokens) / max(train_seconds, 1e-9),
        "curve": trainer.curve, **metrics, "settings": key,
    }
    atomic_write_text(record_path, json.dumps(rec, indent=2))
    log(f"{name}: ELBO ppl {math.exp(rec['elbo']['nll']):.2f} +- {rec['elbo']['ppl_se']:.2f}, "
        f"infill EM {rec['infill_exact_match']:.3f}, gen ppl {rec['gen_ppl']:.2f}")
    return rec


# ---- analysis ---------------------------------------------------------------------------------
def tokens_to_reach(curve: list[dict], target: float) -> float | None:
    """Training tokens at which the curve first reaches `target` (linear between measured points)."""
    pts = sorted((p["tokens"], p["elbo"]) for p in curve)
    for i, (tok, val) in enumerate(pts):
        if val <= target:
            if i == 0:
                return float(tok)
            (t0, v0) = pts[i - 1]
            return t0 + (v0 - target) / (v0 - val) * (tok - t0)
    return None


def analyse(records: list[dict], ar: dict, scratch_tokens: int) -> dict:
    """Token-efficiency ratios, perplexity gaps and goals; the best recipe."""
    scratch = next(r for r in records if r["kind"] == "scratch")
    target = scratch["curve"][-1]["elbo"]
    for r in records:
        r["dlm_elbo_ppl"] = math.exp(r["elbo"]["nll"])
        r["dlm_elbo_ppl_se"] = r["elbo"]["ppl_se"]
        r["ppl_gap_vs_ar"] = r["dlm_elbo_ppl"] / ar["ppl"] - 1
        r["same_factorisation_as_scratch"] = r["attention"] != "block" or scratch["attention"] == "block"
        if r["kind"] == "scratch":
            continue
        reach = tokens_to_reach(r["curve"], target)
        r["tokens_to_scratch_final"] = reach
        # None when never reached (then the ratio is below `..._at_most`) or reached before any training.
        r["token_efficiency_ratio"] = scratch_tokens / reach if reach else None
        r["token_efficiency_ratio_at_most"] = None if reach is not None else scratch_tokens / r["tokens"]
        r["reached_before_training"] = reach == 0
        r["goal_ratio_met"] = reach is not None and (reach == 0 or scratch_tokens / reach >= GOAL_RATIO)
        r["goal_gap_met"] = r["ppl_gap_vs_ar"] <= GOAL_GAP
    adapted = [r for r in records if r["kind"] == "adapted"]
    like = [r for r in adapted if r["same_factorisation_as_scratch"]] or adapted
    best = min(like, key=lambda r: (not r["reached_before_training"], -(r["token_efficiency_ratio"] or 0.0),
                                    r["elbo"]["nll"]))
    return {"scratch_final_curve_elbo": target, "best": best}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in result["records"]:
        pts = [(p["tokens"], math.exp(p["elbo"])) for p in r["curve"] if p["tokens"] > 0]
        if not pts:
            continue
        style = dict(color="black", lw=2.2) if r["kind"] == "scratch" else dict(lw=1.4)
        ax.plot(*zip(*pts), "o-", ms=3, label=r["name"], **style)
        if r.get("tokens_to_scratch_final"):
            ax.plot([r["tokens_to_scratch_final"]], [math.exp(result["scratch_final_curve_elbo"])], "kx", ms=7)
    ax.axhline(math.exp(result["scratch_final_curve_elbo"]), color="black", ls=":", lw=1,
               label="from scratch, final")
    ax.axhline(result["teacher"]["ar_ppl_curve_rows"], color="gray", ls="--", lw=1, label="AR teacher (ppl)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens (adapted runs: adaptation tokens only)")
    ax.set_ylabel("validation ELBO perplexity (fixed-grid estimator)")
    ax.set_title(f"Adaptation vs from scratch ({'quick smoke test' if result['quick'] else 'full study'})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


# ---- the shared data and the teacher ----------------------------------------------------------
def held_out_data(c, seq_len: int, log) -> dict:
    """The packed training rows and every held-out draw of the study (the same for every run and every rerun)."""
    from mmdlm.data import load_text_splits, pack_texts
    from mmdlm.eval.infill import held_out
    from mmdlm.text.base import load_tokenizer

    tokenizer = load_tokenizer(c.teacher)
    train, validation, corpus = load_text_splits("stdlib", max_files=c.max_files)
    train_ids = pack_texts(train["text"], tokenizer, seq_len)
    val_ids = pack_texts(validation["text"], tokenizer, seq_len)
    if len(val_ids) < c.eval_rows:
        raise ValueError(f"the validation split has {len(val_ids)} rows of {seq_len} tokens, fewer than "
                         f"eval_rows={c.eval_rows}; lower eval_rows or use more files")
    order = torch.randperm(len(val_ids), generator=torch.Generator().manual_seed(c.seed))
    eval_ids = val_ids[order[:c.eval_rows]]
    prompts, spans = held_out(tokenizer, validation["text"], n_prompts=c.prompts, prompt_len=c.prompt_len,
                              n_spans=c.infill_spans, span=c.span, left=c.left, right=c.right, seed=c.seed)
    log(f"corpus: {len(train_ids):,} training rows, {len(val_ids):,} validation rows of {seq_len} tokens")
    return {"train_ids": train_ids, "corpus": corpus, "eval_ids": eval_ids, "curve_ids": eval_ids[:c.curve_rows],
            "validation_rows": len(val_ids), "prompts": prompts, "spans": spans, "bos": tokenizer.bos_token_id,
            "tokenizer": tokenizer}


def measure_teacher(c, data: dict):
    """The AR teacher (loaded) and its held-out figures on exactly the rows, spans and prompts the DLMs get."""
    from mmdlm.eval.infill import exact_match, fill_spans_ar
    from mmdlm.eval.likelihood import ar_nll, continuation_nll
    from mmdlm.eval.samples import sample_ar, token_entropy
    from mmdlm.text.base import load_causal_lm

    tokenizer = data["tokenizer"]
    teacher = load_causal_lm(c.teacher).eval()
    ar = ar_nll(teacher, data["eval_ids"], batch_size=c.eval_batch_size)
    ar_curve = ar_nll(teacher, data["curve_ids"], batch_size=c.eval_batch_size)
    preds = fill_spans_ar(teacher, data["spans"], tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                          batch_size=c.eval_batch_size)
    head, samples = sample_ar(teacher, data["prompts"], tokenizer.bos_token_id, gen_length=c.gen_length,
                              temperature=c.gen_temperature, pad_token_id=tokenizer.pad_token_id, seed=c.seed)
    return teacher, {"ar": ar.to_dict(), "ar_ppl": ar.ppl, "ar_ppl_curve_rows": ar_curve.ppl,
                     "infill_exact_match_left_only": exact_match(preds, data["spans"]),
                     "gen_ppl_own_samples": continuation_nll(teacher, head, samples).ppl,
                     "gen_entropy": token_entropy(samples)}


# ---- the study --------------------------------------------------------------------------------
def run_study(c, command: str | None = None) -> dict:
    from mmdlm.provenance import command_line, machine, versions

    started = time.perf_counter()
    c = apply_quick(c)
    validate(c)
    torch.set_num_threads(c.threads)

    def log(msg):
        print(f"[study {time.perf_counter() - started:7.0f}s] {msg}", flush=True)

    teacher_meta = teacher_info(c.teacher)
    configs, adapt_tokens = run_configs(c, teacher_meta["tokens"])
    seq_len = configs["scratch"].seq_len
    if any(cfg.seq_len != seq_len for cfg in configs.values()):
        raise ValueError("every run must use one seq_len (the held-out rows are packed once)")
    scratch_tokens = configs["scratch"].max_steps * _tokens_per_step(configs["scratch"])
    log(f"teacher {c.teacher}: N = {teacher_meta['tokens']} tokens; adaptation M = {adapt_tokens:,} tokens; "
        f"from scratch {scratch_tokens:,} tokens")

    data = held_out_data(c, seq_len, log)
    teacher_meta["same_corpus"] = (teacher_meta.get("corpus") or {}).get("files_sha256") == \
        data["corpus"].files_sha256
    teacher, measured = measure_teacher(c, data)
    teacher_meta.update(measured)
    log(f"teacher: AR ppl {measured['ar_ppl']:.2f} on {measured['ar']['tokens']:,} held-out tokens")

    records = [run_one(name, cfg, c, data, teacher, log) for name, cfg in configs.items()]
    found = analyse(records, teacher_meta["ar"], scratch_tokens)
    best = found["best"]
    result = {
        "benchmark": "adaptation_study",
        "quick": c.quick,
        "token_efficiency_ratio": best["token_efficiency_ratio"],
        "token_efficiency_ratio_at_most": best["token_efficiency_ratio_at_most"],
        "best_recipe": best["name"],
        "dlm_elbo_ppl": best["dlm_elbo_ppl"],
        "dlm_elbo_ppl_se": best["dlm_elbo_ppl_se"],
        "ar_ppl": teacher_meta["ar_ppl"],
        "ppl_gap": best["ppl_gap_vs_ar"],
        "goals": {"token_efficiency_ratio_at_least": GOAL_RATIO, "ppl_gap_at_most": GOAL_GAP,
                  "ratio_met": best["goal_ratio_met"], "gap_met": best["goal_gap_met"],
                  "ratio_met_by": [r["name"] for r in records if r.get("goal_ratio_met")],
                  "gap_met_by": [r["name"] for r in records if r.get("goal_gap_met")]},
        "teacher_tokens": teacher_meta["tokens"], "adapt_tokens": adapt_tokens, "scratch_tokens": scratch_tokens,
        "scratch_final_curve_elbo": found["scratch_final_curve_elbo"],
        "teacher": teacher_meta,
        "records": records,
        "estimator": {
            "elbo": "negative ELBO per token, Monte Carlo over t on a fixed stratified grid (one t per row and "
                    "stratum, u ~ U(0,1) within it), linear schedule weight 1/t, t in [eps, 1]; standard error "
                    "from the spread of replicate draws within each (row, stratum) cell",
            "scored_tokens": "positions 1..L-1 of each held-out row, for the DLMs and the AR teacher alike",
            "block_models": "scored under their block-causal factorisation (per-block t, clean earlier blocks, "
                            "as in training): a sum of per-block ELBOs, also an upper bound on the NLL",
            "final": {"rows": c.eval_rows, "seq_len": seq_len, "grid": c.grid, "replicates": c.replicates},
            "curves": {"rows": c.curve_rows, "grid": c.curve_grid, "replicates": 1,
                       "points": c.curve_points, "spacing": "log-spaced steps, plus step 0"},
            "token_efficiency": "from-scratch tokens / adaptation tokens at which the adapted curve first reaches "
                                "the from-scratch run's final curve value (linear between measured points)",
        },
        "held_out": {"eval_rows": c.eval_rows, "validation_rows": data["validation_rows"],
                     "infill_spans": c.infill_spans,
                     "span": c.span, "left": c.left, "right": c.right, "prompts": c.prompts,
                     "prompt_len": c.prompt_len, "gen_length": c.gen_length, "gen_temperature": c.gen_temperature,
                     "gen_steps": c.gen_length, "gen_rule": "random (counts from the schedule)",
                     "infill": "greedy confidence decoding, one step per token"},
        "corpus": data["corpus"].to_dict(),
        "seeds": {"study": c.seed, "runs": {r["name"]: r["seed"] for r in records}},
        "threads": c.threads,
        "machine": machine(),
        "versions": versions(),
        "command": command or command_line("python bench/study.py"),
        "config": {k: v for k, v in asdict(c).items() if k != "quick_overrides"},
        "elapsed_s": time.perf_counter() - started,
    }
    out = Path(c.results)
    atomic_write_text(out, json.dumps(result, indent=2, allow_nan=False) + "\n")
    plot(result, out.with_suffix(".png"))
    log(f"results written to {out} and {out.with_suffix('.png')}")
    return copy.deepcopy(result)


def config_main(name: str, cls, run, argv: list[str] | None = None) -> int:
    """The command line of a bench script run by a config dataclass `cls`: its flags (and --config), then
    `run(config)`; a bad value or a missing file ends it with one line and exit status 2."""
    import argparse
    import sys

    from mmdlm.config import add_arguments, resolve

    parser = argparse.ArgumentParser(prog=f"bench/{name}.py", description=cls.__doc__)
    add_arguments(parser, cls)
    try:
        run(resolve(cls, parser.parse_args(argv)))
    except (ValueError, FileNotFoundError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return config_main("study", StudyConfig, run_study, argv)


if __name__ == "__main__":
    raise SystemExit(main())
