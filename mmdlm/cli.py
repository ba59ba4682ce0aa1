"""The `mmdlm` command: one entry point, one sub-command per job, each readable from a YAML recipe."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from . import config as cfg
from .training.lora import LoraArgs
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
class AdaptConfig(LoraArgs, DataArgs, TrainArgs):
    """Adapt a pretrained causal LM into a masked diffusion LM."""

    model: str = field(default="assets/teacher", metadata={"help": "causal LM: local folder or hub id"})
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
class SftConfig(LoraArgs, TrainArgs):
    """Supervised fine-tuning of a diffusion LM on prompt/response pairs (the prompt is never noised)."""

    model: str = field(default="assets/dlm", metadata={"help": "the diffusion LM to fine-tune (a mmdlm DLM folder)"})
    output_dir: str = field(default="outputs/sft", metadata={"help": "where the model, logs and checkpoints go"})
    dataset: str = field(default="stdlib", metadata={
        "help": "'stdlib' (built-in: the standard library's documented functions, prompt = signature + docstring, "
                "response = body), a hub dataset name or a local folder"})
    data_files: list[str] | None = field(default=None, metadata={"help": "local .jsonl/.json/.csv/.parquet files"})
    prompt_field: str = field(default="prompt", metadata={"help": "field holding the prompt"})
    response_field: str = field(default="response", metadata={"help": "field holding the response"})
    messages_field: str = field(default="messages", metadata={
        "help": "field holding a chat (list of {role, content}, the assistant's answer last); "
                "used with the chat template"})
    chat_template: bool | None = field(default=None, metadata={
        "help": "format with the tokenizer's chat template (default: when the tokenizer has one)"})
    validation_fraction: float = field(default=0.05, metadata={
        "help": "share held out when the data has no validation split"})
    max_files: int | None = field(default=None, metadata={"help": "built-in set: use only the first N stdlib files"})
    max_train_examples: int | None = field(default=None, metadata={"help": "cap on training examples"})
    seq_len: int = field(default=128, metadata={
        "help": "tokens per example: [BOS] prompt response EOS..., padded with EOS; longer examples are dropped"})
    t_sampling: str = field(default="stratified", metadata={"help": "uniform | stratified | antithetic"})
    loss_normalize: str = field(default="token", metadata={
        "help": "token (negative ELBO per response token) | masked (per masked token, DiffuLLaMA)"})


@dataclass
class MergeLoraConfig:
    """Fold a LoRA adapter (mmdlm adapt/sft with lora_r > 0) into its base: a plain diffusion LM."""

    adapter: str | None = field(default=None, metadata={"help": "the LoRA DLM folder (OUTPUT_DIR/model of the run)"})
    output: str | None = field(default=None, metadata={"help": "folder for the merged diffusion LM"})
    base_model: str | None = field(default=None, metadata={
        "help": "base checkpoint, if it moved since training (default: the path recorded in the adapter)"})


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


@dataclass
class TrainMMConfig(TrainArgs):
    """Train a multimodal backbone on image-caption pairs (text-to-image, captioning, joint)."""

    backbone: str | None = field(default=None, metadata={
        "help": "which backbone to train (a name registered in mmdlm.training.multimodal.BACKBONES)"})
    dataset: str = field(default="shapes", metadata={
        "help": "'shapes' or 'digits' (built in), a hub dataset name or a local folder (e.g. an imagefolder)"})
    data_files: list[str] | None = field(default=None, metadata={
        "help": "local files: images with a metadata.jsonl/.csv, or .json(l)/.csv/.parquet"})
    image_column: str = field(default="image", metadata={"help": "column holding the images"})
    text_column: str = field(default="text", metadata={"help": "column holding the captions"})
    image_size: int = field(default=32, metadata={"help": "image side in pixels (resized and centre-cropped)"})
    text_length: int = field(default=16, metadata={"help": "tokens on the caption canvas (caption, then EOS)"})
    n_train: int | None = field(default=None, metadata={
        "help": "training examples (shapes: rendered, default one per training caption; others: the first N)"})
    n_eval: int = field(default=256, metadata={"help": "evaluation examples for the validation loss (0: none)"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "caption tokenizer (folder or hub id); default: a word-level tokenizer trained on the captions"})
    model_config: dict = field(default_factory=dict, metadata={"help": "arguments of the backbone's model"})
    pretrained: str | None = field(default=None, metadata={"help": "pretrained backbone weights to start from"})
    text_loss_weight: float = field(default=1.0, metadata={"help": "loss = image loss + w x text loss"})
    task_weights: dict = field(default_factory=lambda: {"t2i": 0.4, "caption": 0.4, "joint": 0.2}, metadata={
        "help": "share of each training task (t2i: text clean, caption: image clean, joint: both noisy)"})
    caption_dropout: float = field(default=0.1, metadata={
        "help": "probability of hiding the caption of a t2i sample (classifier-free guidance)"})
    image_tokenizer: str | None = field(default=None, metadata={
        "help": "image autoencoder: a VAE (continuous) or VQ model (discrete) folder; default: per backbone"})

    def validate(self) -> None:
        from .training.multimodal import check_task_weights

        super().validate()
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.text_length < 1:
            raise ValueError(f"text_length must be >= 1, got {self.text_length}")
        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {self.n_train}")
        if self.n_eval < 0:
            raise ValueError(f"n_eval must be >= 0, got {self.n_eval}")
        if self.text_loss_weight < 0:
            raise ValueError(f"text_loss_weight must be >= 0, got {self.text_loss_weight}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        check_task_weights(self.task_weights)


@dataclass
class TrainVQConfig(TrainArgs):
    """Train a small VQ model (diffusers VQModel): the image tokenizer of the discrete backbone."""

    datasets: list[str] = field(default_factory=lambda: ["shapes", "digits"], metadata={
        "help": "image sets to train on: 'shapes', 'digits' (built in), hub names or local folders"})
    image_column: str = field(default="image", metadata={"help": "column holding the images (non-built-in sets)"})
    image_size: int = field(default=32, metadata={"help": "image side in pixels"})
    n_train: int | None = field(default=None, metadata={"help": "training images per dataset (default: all)"})
    n_eval: int = field(default=256, metadata={"help": "held-out images per built-in set for the validation loss"})
    vq_config: dict = field(default_factory=dict, metadata={
        "help": "VQModel arguments over mmdlm's small default (mmdlm.training.vq.DEFAULT_VQ)"})
    restart_every: int = field(default=50, metadata={"help": "restart unused codes every N steps (0: never)"})
    restart_until: float = field(default=0.5, metadata={"help": "share of the run during which codes are restarted"})
    ema_decay: float = field(default=0.99, metadata={"help": "decay of the codebook's moving averages (k-means)"})
    n_report: int = field(default=256, metadata={
        "help": "held-out images on which the parser / classifier judge the reconstructions"})

    def validate(self) -> None:
        super().validate()
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {self.n_train}")
        if self.n_eval < 0 or self.n_report < 1:
            raise ValueError(f"n_eval must be >= 0 and n_report >= 1, got {self.n_eval} and {self.n_report}")


@dataclass
class EvalMMConfig:
    """Evaluate a multimodal pipeline on shapes or digits; write one record per (backbone, dataset)."""

    model: str | None = field(default=None, metadata={"help": "a saved multimodal pipeline folder"})
    dataset: str = field(default="shapes", metadata={"help": "shapes | digits"})
    n: int = field(default=64, metadata={"help": "samples per task"})
    steps: int | None = field(default=None, metadata={"help": "denoising steps (default: the pipeline's)"})
    tasks: list[str] = field(default_factory=lambda: ["t2i", "caption", "joint"], metadata={
        "help": "which of t2i, caption, joint to evaluate"})
    batch_size: int = field(default=16, metadata={"help": "samples per pipeline call"})
    guidance_scale: float | None = field(default=None, metadata={"help": "image guidance (default: the pipeline's)"})
    text_guidance_scale: float | None = field(default=None, metadata={
        "help": "text guidance (default: the pipeline's)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str | None = field(default=None, metadata={"help": "cpu | cuda | ... (default: cuda when available)"})
    output: str = field(default="bench/results/imagetext.json", metadata={"help": "results file to update"})
    samples_dir: str | None = field(default=None, metadata={"help": "also write grids of generated images here"})


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class DemoConfig:
    """Launch the Gradio demo (demos/app.py): text, text-to-image, captioning and questions, shown step by step."""

    text_model: str = field(default="assets/dlm", metadata={
        "help": "text checkpoint: a mmdlm diffusion LM folder or a saved TextDiffusionPipeline"})
    mm_model: str | None = field(default=None, metadata={
        "help": "default checkpoint of the image tabs: a saved multimodal pipeline (none is shipped yet)"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to bind; 0.0.0.0 makes the demo reachable from other machines"})
    port: int | None = field(default=None, metadata={"help": "port; none: 7860, or the next free one"})
    allow_paths: bool | None = field(default=None, metadata={
        "help": "let visitors load other checkpoint folders by path; none: only when bound to localhost"})
    device: str | None = field(default=None, metadata={"help": "cpu | cuda | ... (default: cuda when available)"})
    max_prompt_chars: int = field(default=2000, metadata={"help": "longest prompt or question accepted"})
    max_gen_length: int = field(default=256, metadata={"help": "most tokens generated per request"})
    max_steps: int = field(default=256, metadata={"help": "most denoising steps per request"})
    max_file_size: str = field(default="2mb", metadata={"help": "largest upload (e.g. 500kb, 2mb)"})
    max_image_pixels: int = field(default=4_194_304, metadata={"help": "largest uploaded image, in pixels"})
    concurrency: int = field(default=1, metadata={"help": "generations that run at once (the rest wait in a queue)"})
    queue_size: int = field(default=16, metadata={"help": "requests that may wait; more are turned away"})
    frame_delay: float = field(default=0.05, metadata={
        "help": "pause after each shown step, in seconds, so the unmasking can be followed (0: full speed)"})

    def validate(self) -> None:
        for name in ("max_prompt_chars", "max_gen_length", "max_steps", "max_image_pixels", "concurrency",
                     "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port must be from 1 to 65535, got {self.port}")
        if self.frame_delay < 0:
            raise ValueError(f"frame_delay must be >= 0, got {self.frame_delay}")
        size = self.max_file_size.strip().lower()
        number = size.rstrip("kmgb")
        if not number.replace(".", "", 1).isdigit() or size[len(number):] not in ("", "b", "kb", "mb", "gb"):
            raise ValueError(f"max_file_size must look like 500kb or 2mb, got {self.max_file_size!r}")

    def paths_allowed(self) -> bool:
        return self.host in LOOPBACK if self.allow_paths is None else self.allow_paths


def _run_pretrain(c: PretrainConfig) -> None:
    from .recipes import pretrain

    pretrain(c)


def _run_adapt(c: AdaptConfig) -> None:
    from .recipes import adapt

    adapt(c)


def _run_sft(c: SftConfig) -> None:
    from .recipes import sft

    sft(c)


def _run_merge_lora(c: MergeLoraConfig) -> None:
    from .recipes import merge_lora

    merge_lora(c)


def _run_generate(c: GenerateConfig) -> None:
    from .recipes import generate

    generate(c)


def _run_train_mm(c: TrainMMConfig) -> None:
    from .training.multimodal import BACKBONES

    c.validate()
    if c.backbone not in BACKBONES:
        known = ", ".join(sorted(BACKBONES)) or "none is registered in this installation"
        what = "no backbone given (--backbone)" if c.backbone is None else f"unknown backbone {c.backbone!r}"
        raise ValueError(f"{what}; choose one of: {known}")
    BACKBONES[c.backbone](c)


def _run_train_vq(c: TrainVQConfig) -> None:
    from .training.vq import train_vq

    train_vq(c)


def _run_eval_mm(c: EvalMMConfig) -> None:
    from .recipes import eval_mm

    eval_mm(c)


def _run_demo(c: DemoConfig) -> None:
    import importlib.util
    from pathlib import Path

    c.validate()
    app = Path(__file__).resolve().parents[1] / "demos" / "app.py"
    if not app.is_file():
        raise FileNotFoundError(f"the demo app is not at {app}; run `mmdlm demo` from a source checkout "
                                "(pip install -e .)")
    spec = importlib.util.spec_from_file_location("mmdlm_demo_app", app)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.serve(c)


COMMANDS = {
    "pretrain": (PretrainConfig, _run_pretrain),
    "adapt": (AdaptConfig, _run_adapt),
    "sft": (SftConfig, _run_sft),
    "merge-lora": (MergeLoraConfig, _run_merge_lora),
    "generate": (GenerateConfig, _run_generate),
    "train-mm": (TrainMMConfig, _run_train_mm),
    "train-vq": (TrainVQConfig, _run_train_vq),
    "eval-mm": (EvalMMConfig, _run_eval_mm),
    "demo": (DemoConfig, _run_demo),
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
