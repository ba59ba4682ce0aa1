"""The `mmdlm` command: one entry point, one sub-command per job, each readable from a YAML recipe."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from . import config as cfg
from .training.trainer import TrainArgs


@dataclass
class DataArgs:
    dataset: str = field(default="stdlib", metadata={
        "help": "'stdlib' (built-in: this Python's standard library), a hub dataset name or a local folder"})
    data_files: list[str] | None = field(default=None, metadata={"help": "local .txt/.json/.jsonl/.csv/.parquet files"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    validation_fraction: float = field(default=0.05, metadata={"help": "share of documents held out"})
    max_files: int | None = field(default=None, metadata={"help": "built-in corpus: use only the first N files"})
    max_train_sequences: int | None = field(default=None, metadata={"help": "cap on packed training sequences"})
    seq_len: int = field(default=128, metadata={"help": "tokens per packed training sequence"})


@dataclass
class PretrainConfig(DataArgs, TrainArgs):
    """Pretrain a causal LM from scratch (the AR teacher)."""

    model_config: dict = field(default_factory=lambda: {"model_type": "llama"}, metadata={
        "help": "transformers config of the new model, with model_type"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer to use; default: train a byte-level BPE on the training split"})
    vocab_size: int = field(default=4096, metadata={"help": "size of the BPE trained when no tokenizer is given"})


@dataclass
class AdaptConfig(DataArgs, TrainArgs):
    """Adapt a pretrained causal LM into a masked diffusion LM."""

    model: str = field(default="assets/teacher", metadata={"help": "causal LM: local folder or hub id"})
    init: str = field(default="pretrained", metadata={
        "help": "pretrained (adapt the model's weights) | random (a DLM from scratch with the model's architecture "
                "and tokenizer)"})
    attention: str = field(default="bidirectional", metadata={
        "help": "bidirectional | annealed | block | causal"})
    anneal_steps: int = field(default=0, metadata={"help": "annealed: steps over which the mask opens"})
    block_size: int = field(default=16, metadata={"help": "block: target block size"})
    block_warmup_steps: int = field(default=0, metadata={
        "help": "block: steps over which the block size doubles from 1 to block_size (NBDiff)"})
    ar_loss_weight: float = field(default=0.0, metadata={"help": "weight of an auxiliary AR loss"})
    shift: bool = field(default=True, metadata={"help": "position i predicts token i+1 (keep the AR alignment)"})
    mask_token: str = field(default="<|mask|>", metadata={"help": "added when the tokenizer has no mask token"})
    mask_init: str = field(default="mean", metadata={"help": "new [MASK] row: mean | special"})
    schedule: str = field(default="linear", metadata={"help": "linear | cosine | loglinear"})
    eps: float = field(default=1e-3, metadata={"help": "smallest noise level t"})
    t_sampling: str = field(default="stratified", metadata={"help": "uniform | stratified | antithetic"})
    loss_normalize: str = field(default="token", metadata={"help": "token (ELBO per token) | masked"})


@dataclass
class GenerateConfig:
    """Generate with a diffusion LM: continue a prompt and/or fill masked spans."""

    model: str = field(default="assets/dlm", metadata={
        "help": "a mmdlm diffusion LM folder (mmdlm adapt output) or a saved TextDiffusionPipeline"})
    prompt: str | None = field(default=None, metadata={
        "help": "text to continue (\\n and \\t are read as newline and tab)"})
    infill: str | None = field(default=None, metadata={
        "help": "text with <|mask:N|> placeholders (N tokens each) to fill"})
    gen_length: int = field(default=64, metadata={"help": "tokens to generate after the prompt"})
    steps: int = field(default=64, metadata={"help": "denoising steps"})
    block_length: int | None = field(default=None, metadata={
        "help": "semi-autoregressive block length (default: the whole generation; block models: their block size)"})
    rule: str = field(default="confidence", metadata={
        "help": "which tokens to commit: confidence | margin | entropy | random | origin"})
    threshold: float | None = field(default=None, metadata={
        "help": "parallel decoding: commit every token with confidence >= threshold (at least one per step)"})
    cache: str = field(default="none", metadata={"help": "KV cache: none | prefix | dual (exact for block models)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0 = greedy)"})
    top_k: int | None = field(default=None, metadata={"help": "sample among the k most likely tokens"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling mass"})
    alg_temp: float = field(default=0.0, metadata={"help": "randomness in choosing which tokens to commit (Dream)"})
    guidance_scale: float = field(default=0.0, metadata={"help": "classifier-free guidance (the prompt masked)"})
    stop_at_eos: bool = field(default=True, metadata={"help": "stop once EOS is generated"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    history: str | None = field(default=None, metadata={
        "help": "show the unmasking: 'terminal' (animation), or a path ending in .gif or .html"})
    output: str | None = field(default=None, metadata={"help": "also write the results as JSON here"})


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


def _run_pretrain(c: PretrainConfig) -> None:
    from .recipes import pretrain

    pretrain(c)


def _run_adapt(c: AdaptConfig) -> None:
    from .recipes import adapt

    adapt(c)


def _run_generate(c: GenerateConfig) -> None:
    from .recipes import generate

    generate(c)


def _run_study(c: StudyConfig) -> None:
    from .study import run_study

    run_study(c)


COMMANDS = {
    "pretrain": (PretrainConfig, _run_pretrain),
    "adapt": (AdaptConfig, _run_adapt),
    "generate": (GenerateConfig, _run_generate),
    "study": (StudyConfig, _run_study),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmdlm", description="Discrete diffusion for text and images.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (cls, _) in COMMANDS.items():
        sp = sub.add_parser(name, help=cls.__doc__, description=cls.__doc__)
        cfg.add_arguments(sp, cls)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cls, run = COMMANDS[args.command]
    try:
        run(cfg.resolve(cls, args))
    except (ValueError, FileNotFoundError) as err:
        print(f"mmdlm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
