"""The adaptation curve to parity: how many adaptation tokens a DLM needs to come within 30% and 15% of its
AR teacher's perplexity.

One recipe of the adaptation study (bench/study.py: its teacher, corpus, held-out rows and estimator, read
from the study's config) is adapted for several lengths M, each its own run with its own full schedule
(warmup, then cosine decay to the last step), and measured exactly as the study measures its runs. A run
the study already finished with the same settings is taken from the study's JSON; a run finished here is
reused on a rerun, an unfinished one resumes. A finished `mmdlm adapt` folder of the same recipe (the shipped
DLM) can be a point too: it is measured, not retrained, when its recorded config matches the recipe at that
length up to the differences the config declares.

The tokens at which the gap (DLM ELBO perplexity / teacher perplexity - 1) first reaches each target are
interpolated between measured lengths (straight line in log gap against log tokens); when the longest run
does not reach a target, a power law gap = a * M^b fitted to every point (least squares in log-log)
extrapolates it, and the result says so. The ELBO bounds the DLM's NLL from above, so the gap it shows is an
upper bound on the true one.

    python bench/parity.py --config configs/parity.yaml   # (make parity)
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import yaml

from mmdlm.io import atomic_write_text, save_figure

# run.json keys that say where and how often a run wrote things, not what it learned.
BOOKKEEPING = {"output_dir", "save_every", "keep_checkpoints", "eval_every", "eval_batches", "log_every", "resume"}


@dataclass
class ParityConfig:
    """One recipe of the adaptation study trained for longer, to the teacher's perplexity."""

    study: str = field(default="configs/study.yaml", metadata={
        "help": "the study's config: teacher, corpus, held-out rows, estimator, recipes, shared adapt keys"})
    study_results: str | None = field(default="bench/results/adaptation_study.json", metadata={
        "help": "the study's JSON: a run it finished with the same settings is a point (null: none)"})
    recipe: str = field(default="dream", metadata={"help": "the study recipe to train for longer"})
    steps: list = field(default_factory=lambda: [300, 600, 1200], metadata={
        "help": "optimizer steps of each run (M = steps x batch x seq_len tokens), each its own schedule"})
    trained: dict = field(default_factory=dict, metadata={
        "help": "steps -> {path: a finished mmdlm adapt run of this recipe (its output_dir, or a model folder with "
            "its run.json), differs: {adapt key: the value it was trained with}}"})
    gaps: list = field(default_factory=lambda: [0.30, 0.15], metadata={
        "help": "targets: DLM ELBO perplexity within this fraction of the teacher's"})
    output_dir: str = field(default="outputs/parity", metadata={"help": "one folder per run"})
    results: str = field(default="bench/results/adaptation_parity.json", metadata={
        "help": "the JSON (the plot goes beside it, .png)"})


def load_study(c):
    """The study's config (the settings every point shares)."""
    from study import StudyConfig, apply_quick, validate

    from mmdlm.config import build

    path = Path(c.study)
    if not path.is_file():
        raise FileNotFoundError(f"no study config at {path}")
    s = apply_quick(build(StudyConfig, yaml.safe_load(path.read_text()) or {}, source=str(path)))
    validate(s)
    if c.recipe not in s.recipes:
        raise ValueError(f"recipe {c.recipe!r} is not in {path} (it has {sorted(s.recipes)})")
    return s


def validate(c, s) -> None:
    steps = list(c.steps) + [int(k) for k in c.trained]
    if not steps or any(not isinstance(n, int) or n < 1 for n in steps):
        raise ValueError(f"steps must be positive integers, got {steps}")
    if len(set(steps)) != len(steps):
        raise ValueError(f"a length is given twice (steps and trained): {sorted(steps)}")
    if not c.gaps or any(not 0 < g < 10 for g in c.gaps):
        raise ValueError(f"gaps must be fractions above 0 (0.15: within 15%), got {c.gaps}")
    for n, spec in c.trained.items():
        if not isinstance(spec, dict) or set(spec) - {"path", "differs"} or "path" not in spec:
            raise ValueError(f"trained[{n}] must be {{path: folder, differs: {{key: value}}}}, got {spec!r}")


def run_config(c, s, steps: int):
    """The mmdlm adapt config of the recipe at `steps` (what bench/study.py would train)."""
    from mmdlm.commands.adapt import AdaptConfig
    from mmdlm.config import build

    values = dict(model=s.teacher, dataset="stdlib", max_files=s.max_files, seed=s.seed, save_every=0, eval_every=0)
    values.update({**s.adapt, **s.recipes[c.recipe], "max_steps": steps,
                   "output_dir": str(Path(c.output_dir) / f"{c.recipe}-{steps}")})
    return build(AdaptConfig, values, source=f"recipe {c.recipe} at {steps} steps")


def from_study(c, s, cfg) -> dict | None:
    """The study's record of this run when the study finished it with exactly these settings."""
    from study import _settings_key, same_settings

    if not c.study_results or not Path(c.study_results).is_file():
        return None
    study = json.loads(Path(c.study_results).read_text())
    for rec in study.get("records", []):
        if rec["name"] == c.recipe:
            key = _settings_key(s, replace(cfg, output_dir=rec["config"]["output_dir"]))
            if same_settings(rec.get("settings"), key):
                return rec
    return None


def check_trained(folder: Path, cfg, differs: dict) -> dict:
    """The run.json of a finished adapt folder, checked against `cfg`: every training key equal, apart from
    the declared differences (a key newer than the run must hold its default)."""
    from mmdlm.commands.adapt import AdaptConfig

    run = folder / "run.json"
    if not run.is_file():
        raise FileNotFoundError(f"{folder} has no run.json: not a finished mmdlm adapt run")
    record = json.loads(run.read_text())
    recorded = dict(record.get("config") or {})
    if recorded.get("mixed_precision") == "auto":  # the precision the run resolved it to
        recorded["mixed_precision"] = record.get("mixed_precision")
    wanted = json.loads(json.dumps({**asdict(cfg), "mixed_precision": cfg.resolved_mixed_precision()}))
    defaults = json.loads(json.dumps({f.name: f.default for f in AdaptConfig.__dataclass_fields__.values()},
                                     default=str))
    found = {}
    for key, value in wanted.items():
        if key in BOOKKEEPING:
            continue
        have = recorded.get(key, defaults.get(key))
        if have != value:
            found[key] = have
    if found != differs:
        raise ValueError(f"{folder} was trained with {found} where the recipe has "
                         f"{ {k: wanted[k] for k in found} }; declared differences: {differs}")
    return record


def fit_power_law(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(a, b) of gap = a * tokens^b, least squares in log-log; None with fewer than two usable points."""
    pts = [(math.log(t), math.log(g)) for t, g in points if t > 0 and g > 0]
    if len(pts) < 2:
        return None
    x = torch.tensor([p[0] for p in pts], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pts], dtype=torch.float64)
    b = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return math.exp(float(y.mean()) - b * float(x.mean())), b


def tokens_to_gap(points: list[tuple[float, float]], target: float, fit) -> dict:
    """Tokens at which the gap first reaches `target`: measured, interpolated, or extrapolated by `fit`."""
    pts = sorted(points)
    for i, (tok, gap) in enumerate(pts):
        if gap <= target:
            if i == 0:
                return {"tokens": tok, "how": "reached by the shortest run"}
            (t0, g0) = pts[i - 1]
            frac = (math.log(g0) - math.log(target)) / (math.log(g0) - math.log(gap))
            return {"tokens": math.exp(math.log(t0) + frac * (math.log(tok) - math.log(t0))), "how": "interpolated"}
    if fit is None or fit[1] >= 0:
        return {"tokens": None, "how": "not reached, and the gap does not shrink with M: no extrapolation"}
    a, b = fit
    return {"tokens": math.exp((math.log(target) - math.log(a)) / b), "how": "extrapolated by the power law"}


def analyse(points: list[dict], ar_ppl: float, gaps: list[float]) -> dict:
    pairs = [(p["tokens"], p["dlm_elbo_ppl"] / ar_ppl - 1) for p in points]
    fit = fit_power_law(pairs)
    return {"fit": None if fit is None else {"a": fit[0], "b": fit[1]},
            "targets": [{"gap": g, **tokens_to_gap(pairs, g, fit)} for g in gaps]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ar = result["ar_ppl"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for p in result["points"]:
        pts = [(q["tokens"], math.exp(q["elbo"])) for q in p.get("curve") or [] if q["tokens"] > 0]
        if pts:
            ax.plot(*zip(*pts), "-", lw=0.8, alpha=0.45, color="tab:blue")
    xs = [p["tokens"] for p in result["points"]]
    ax.errorbar(xs, [p["dlm_elbo_ppl"] for p in result["points"]],
                yerr=[p["dlm_elbo_ppl_se"] for p in result["points"]], fmt="o", color="tab:blue", capsize=3,
                label=f"{result['recipe']}: final ELBO ppl of each run (curves: during training)")
    fit = result["analysis"]["fit"]
    ends = [t["tokens"] for t in result["analysis"]["targets"] if t["tokens"]]
    if fit:
        grid = torch.logspace(math.log10(min(xs)), math.log10(max(xs + ends)), 50).tolist()
        ax.plot(grid, [ar * (1 + fit["a"] * m ** fit["b"]) for m in grid], "--", color="tab:blue", lw=1,
                label=f"power-law fit of the gap (exponent {fit['b']:.2f})")
    ax.axhline(ar, color="gray", lw=1.2, label=f"AR teacher ({ar:.1f})")
    for g in result["gaps"]:
        ax.axhline(ar * (1 + g), color="gray", ls=":", lw=1)
        ax.annotate(f"+{g:.0%}", (min(xs), ar * (1 + g)), fontsize=7, va="bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("adaptation tokens M")
    ax.set_ylabel("held-out ELBO perplexity (fixed grid)")
    ax.set_title("Adaptation to parity" + (" (quick smoke test)" if result["quick"] else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def run_parity(c, command: str | None = None) -> dict:
    from study import RECIPE_NAMES, _tokens_per_step, held_out_data, measure_dlm, measure_teacher, run_one, teacher_info

    from mmdlm.provenance import command_line, machine, versions
    from mmdlm.text.adapt import load_dlm

    started = time.perf_counter()
    s = load_study(c)
    validate(c, s)
    torch.set_num_threads(s.threads)

    def log(msg):
        print(f"[parity {time.perf_counter() - started:7.0f}s] {msg}", flush=True)

    lengths = sorted([*c.steps, *(int(k) for k in c.trained)])
    configs = {n: run_config(c, s, n) for n in lengths}
    data = held_out_data(s, configs[lengths[0]].seq_len, log)
    teacher, teacher_meta = measure_teacher(s, data)
    teacher_meta = {**teacher_info(s.teacher), **teacher_meta}
    log(f"teacher: AR ppl {teacher_meta['ar_ppl']:.2f}; recipe {c.recipe} at {lengths} steps")
    points: list[dict] = []
    # The finished folders first (minutes), then the runs to train, shortest first.
    for n in sorted(lengths, key=lambda n: (n not in c.trained and str(n) not in c.trained, n)):
        cfg = configs[n]
        name = f"{c.recipe}-{n}"
        trained = c.trained.get(n, c.trained.get(str(n)))
        if trained:
            folder = Path(trained["path"])
            run = check_trained(folder, cfg, trained.get("differs") or {})
            log(f"{name}: measuring the finished run in {folder}")
            dlm, _ = load_dlm(folder / "model" if (folder / "model").is_dir() else folder)
            rec = {"name": name, "source": str(folder), "differs": trained.get("differs") or {},
                   "command": run.get("command"), "tokens": n * _tokens_per_step(cfg), "curve": [],
                   **measure_dlm(dlm, s, data, teacher)}
        elif (rec := from_study(c, s, cfg)) is not None:
            log(f"{name}: the study's finished run ({c.study_results})")
            rec = {**rec, "name": name, "source": c.study_results, "differs": {}}
        else:
            rec = {**run_one(name, cfg, s, data, teacher, log), "source": "trained here", "differs": {}}
        rec.update({"steps": n, "dlm_elbo_ppl": math.exp(rec["elbo"]["nll"]), "dlm_elbo_ppl_se": rec["elbo"]["ppl_se"],
                    "gap": math.exp(rec["elbo"]["nll"]) / teacher_meta["ar_ppl"] - 1})
        rec.pop("settings", None)
        points = sorted([*points, rec], key=lambda p: p["tokens"])
        result = {
            "benchmark": "adaptation_parity", "quick": s.quick, "recipe": c.recipe,
            "recipe_description": RECIPE_NAMES[cfg.attention],
            "recipe_config": asdict(configs[lengths[-1]]), "ar_ppl": teacher_meta["ar_ppl"], "gaps": c.gaps,
            "lengths": lengths, "complete": len(points) == len(lengths), "points": points,
            "analysis": analyse(points, teacher_meta["ar_ppl"], c.gaps), "teacher": teacher_meta,
            "study_config": c.study, "threads": s.threads, "machine": machine(),
            "versions": versions(), "command": command or command_line("python bench/parity.py"),
            "elapsed_s": time.perf_counter() - started,
        }
        out = Path(c.results)
        atomic_write_text(out, json.dumps(result, indent=2, allow_nan=False) + "\n")
        plot(result, out.with_suffix(".png"))
        log(f"{name}: {rec['tokens']:,} tokens, ELBO ppl {rec['dlm_elbo_ppl']:.2f} ({rec['gap']:+.0%} vs the teacher); "
            f"results in {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    from study import config_main

    return config_main("parity", ParityConfig, run_parity, argv)


if __name__ == "__main__":
    raise SystemExit(main())
