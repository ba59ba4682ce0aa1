"""The `mmdlm` command: one entry point, one sub-command per job, each readable from a YAML recipe."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, fields

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
    remasking: bool = field(default=False, metadata={
        "help": "committed tokens can be taken back when new predictions outrank them (rule confidence)"})
    guidance_scale: float = field(default=0.0, metadata={"help": "classifier-free guidance (the prompt masked)"})
    stop_at_eos: bool = field(default=True, metadata={"help": "stop once EOS is generated"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    history: str | None = field(default=None, metadata={
        "help": "show the unmasking: 'terminal' (animation), or a path ending in .gif or .html"})
    output: str | None = field(default=None, metadata={"help": "also write the results as JSON here"})


@dataclass
class TrainMMConfig(LoraArgs, TrainArgs):
    """Train a multimodal backbone on image-caption pairs (text-to-image, captioning, joint)."""

    backbone: str | None = field(default=None, metadata={
        "help": "which backbone to train (a name registered in mmdlm.training.multimodal.BACKBONES)"})
    dataset: str = field(default="shapes", metadata={
        "help": "'shapes' or 'digits' (built in), a hub dataset name or a local folder (e.g. an imagefolder)"})
    data_files: list[str] | None = field(default=None, metadata={
        "help": "local files: images with a metadata.jsonl/.csv, or .json(l)/.csv/.parquet"})
    image_column: str = field(default="image", metadata={"help": "column holding the images"})
    text_column: str = field(default="text", metadata={"help": "column holding the captions"})
    caption_column: str | None = field(default=None, metadata={
        "help": "column the captioning and joint tasks learn to write (default: text_column, which t2i always "
                "reads); built-in shapes: 'canonical' writes every relation as 'left of' / 'above'"})
    image_size: int = field(default=32, metadata={"help": "image side in pixels (resized and centre-cropped)"})
    text_length: int = field(default=16, metadata={"help": "tokens on the caption canvas (caption, then EOS)"})
    n_train: int | None = field(default=None, metadata={
        "help": "training examples (shapes: rendered, default one per training caption; others: the first N)"})
    n_eval: int = field(default=256, metadata={"help": "evaluation examples for the validation loss (0: none)"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "caption tokenizer (folder or hub id); default: a word-level tokenizer trained on the captions"})
    model_config: dict = field(default_factory=dict, metadata={
        "help": "arguments of the backbone's model (with pretrained, the checkpoint's: any key given must agree)"})
    pretrained: str | None = field(default=None, metadata={"help": "pretrained backbone weights to start from"})
    text_loss_weight: float = field(default=1.0, metadata={"help": "loss = image loss + w x text loss"})
    task_weights: dict = field(default_factory=lambda: {"t2i": 0.4, "caption": 0.4, "joint": 0.2}, metadata={
        "help": "share of each training task (t2i: text clean, caption: image clean, joint: both noisy)"})
    caption_dropout: float = field(default=0.1, metadata={
        "help": "probability of hiding the caption of a t2i sample (classifier-free guidance)"})
    image_tokenizer: str | None = field(default=None, metadata={
        "help": "image autoencoder: a VAE (continuous) or VQ model (discrete) folder; default: per backbone"})
    image_dropout: float = field(default=0.1, metadata={
        "help": "probability of hiding the image of a captioning sample behind pure noise (text guidance; mmdit)"})
    text_schedule: str = field(default="linear", metadata={
        "help": "masking schedule of the text: linear | cosine | loglinear (mmdit; the discrete backbone masks "
                "its captions on the cosine schedule)"})
    image_schedule: str = field(default="cosine", metadata={
        "help": "training mask ratios of the image codes, m(t) at t ~ U(0, 1): cosine (MaskGIT; most of them "
                "high) | linear (uniform: more nearly clean images) | loglinear (discrete)"})
    logit_mean: float = field(default=0.0, metadata={
        "help": "image noise levels sigma = sigmoid(N(logit_mean, logit_std)) (SD3's logit-normal; mmdit)"})
    logit_std: float = field(default=1.0, metadata={"help": "see logit_mean"})
    ema_decay: float = field(default=0.0, metadata={
        "help": "save an exponential moving average of the weights with this decay (0: the last weights; mmdit)"})
    flow_shift: float = field(default=1.0, metadata={
        "help": "shift of the saved FlowMatchEulerDiscreteScheduler (SD3: 3.0): > 1 spends more sampling steps at "
                "high noise (mmdit)"})
    sampler: dict = field(default_factory=dict, metadata={
        "help": "settings of the saved sampling scheduler: FlowMatchEulerDiscreteScheduler's (mmdit; e.g. "
                "{stochastic_sampling: true}) or MaskedDiffusionScheduler's (discrete; e.g. {remasking: true, "
                "alg_temp: 2.0})"})

    # options only one of the built-in backbones reads: the other refuses them when they are set
    BACKBONE_ONLY = {"image_dropout": "mmdit", "text_schedule": "mmdit", "logit_mean": "mmdit",
                     "logit_std": "mmdit", "ema_decay": "mmdit", "flow_shift": "mmdit", "image_schedule": "discrete"}

    def validate(self) -> None:
        from .training.multimodal import check_task_weights

        super().validate()
        if self.backbone in self.BACKBONE_ONLY.values():
            defaults = {f.name: f.default for f in fields(self)}
            for name, owner in self.BACKBONE_ONLY.items():
                if owner != self.backbone and getattr(self, name) != defaults[name]:
                    raise ValueError(f"{name} is an option of the {owner} backbone; the {self.backbone} "
                                     "backbone does not read it")
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
        for name in ("caption_dropout", "image_dropout", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.logit_std <= 0 or self.flow_shift <= 0:
            raise ValueError(f"logit_std and flow_shift must be positive, got logit_std={self.logit_std}, "
                             f"flow_shift={self.flow_shift}")
        from .diffusion import get_schedule

        get_schedule(self.text_schedule)
        get_schedule(self.image_schedule)
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
    text_steps: int | None = field(default=None, metadata={
        "help": "steps the text is generated in, of --steps (default: the pipeline's: all, half in joint)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str | None = field(default=None, metadata={"help": "cpu | cuda | ... (default: cuda when available)"})
    output: str = field(default="bench/results/imagetext.json", metadata={"help": "results file to update"})
    label: str | None = field(default=None, metadata={
        "help": "name the record (e.g. 'stage 3'): a file keeps one record per backbone, dataset and label"})
    samples_dir: str | None = field(default=None, metadata={"help": "also write grids of generated images here"})


@dataclass
class AverageConfig:
    """Average the transformer weights of saved pipelines of one model (a model soup) into a new pipeline."""

    models: list[str] = field(default_factory=list, metadata={
        "help": "saved pipeline folders: two or more, with the same transformer architecture and tokenizer"})
    output: str | None = field(default=None, metadata={"help": "folder for the averaged pipeline"})
    weights: list[float] | None = field(default=None, metadata={
        "help": "one weight per model, normalised to sum 1 (default: equal)"})


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class DemoConfig:
    """Launch the Gradio demo (demos/app.py): text, text-to-image, captioning and questions, shown step by step."""

    text_model: str = field(default="assets/dlm", metadata={
        "help": "text checkpoint: a mmdlm diffusion LM folder or a saved TextDiffusionPipeline"})
    mm_model: str | None = field(default="assets/mmdit-shapes", metadata={
        "help": "default checkpoint of the image tabs: a saved multimodal pipeline (the shipped MM-DiT, or "
                "assets/discrete-shapes, or your own)"})
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


MM_MODEL = "assets/mmdit-shapes"


@dataclass
class T2IConfig:
    """Draw images from a caption with any mmdlm multimodal pipeline; write PNGs and a GIF of the denoising."""

    prompt: str | None = field(default=None, metadata={"positional": True, "help": "the caption to draw"})
    model: str = field(default=MM_MODEL, metadata={
        "help": "a saved multimodal pipeline folder (DualDiffusionPipeline, UnifiedDiscretePipeline, ...)"})
    n: int = field(default=4, metadata={"help": "images to draw"})
    steps: int | None = field(default=None, metadata={"help": "denoising steps (default: the pipeline's)"})
    guidance_scale: float | None = field(default=None, metadata={
        "help": "classifier-free guidance by the caption (default: the pipeline's)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    output_dir: str = field(default="outputs/t2i", metadata={"help": "where the PNGs and the GIF go"})
    gif: bool = field(default=True, metadata={"help": "also write a GIF of the denoising (all images side by side)"})
    device: str | None = field(default=None, metadata={"help": "cpu | cuda | ... (default: cuda when available)"})


@dataclass
class CaptionConfig:
    """Caption an image, or answer about it, with any mmdlm multimodal pipeline."""

    image: str | None = field(default=None, metadata={"positional": True, "help": "path of the image"})
    model: str = field(default=MM_MODEL, metadata={"help": "a saved multimodal pipeline folder"})
    question: str | None = field(default=None, metadata={
        "help": "question answering / caption infilling: a text with <|mask:N|> placeholders where the answer "
                "goes, e.g. 'a small <|mask:1|> circle left of a large blue square'"})
    n: int = field(default=1, metadata={"help": "texts per image (vary with --temperature)"})
    steps: int | None = field(default=None, metadata={"help": "denoising steps (default: the pipeline's)"})
    text_guidance_scale: float | None = field(default=None, metadata={
        "help": "classifier-free guidance of the text by the image (default: the pipeline's)"})
    temperature: float | None = field(default=None, metadata={"help": "sampling temperature of the text tokens"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    output: str | None = field(default=None, metadata={"help": "also write the result as JSON here"})
    device: str | None = field(default=None, metadata={"help": "cpu | cuda | ... (default: cuda when available)"})


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


def _run_t2i(c: T2IConfig) -> None:
    from .recipes import t2i

    t2i(c)


def _run_caption(c: CaptionConfig) -> None:
    from .recipes import caption

    caption(c)


def _run_train_vq(c: TrainVQConfig) -> None:
    from .training.vq import train_vq

    train_vq(c)


def _run_eval_mm(c: EvalMMConfig) -> None:
    from .recipes import eval_mm

    eval_mm(c)


def _run_average(c: AverageConfig) -> None:
    from .recipes import average

    average(c)


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


def _run_study(c: StudyConfig) -> None:
    from .study import run_study

    run_study(c)


COMMANDS = {
    "pretrain": (PretrainConfig, _run_pretrain),
    "adapt": (AdaptConfig, _run_adapt),
    "sft": (SftConfig, _run_sft),
    "merge-lora": (MergeLoraConfig, _run_merge_lora),
    "generate": (GenerateConfig, _run_generate),
    "train-mm": (TrainMMConfig, _run_train_mm),
    "train-vq": (TrainVQConfig, _run_train_vq),
    "eval-mm": (EvalMMConfig, _run_eval_mm),
    "average": (AverageConfig, _run_average),
    "demo": (DemoConfig, _run_demo),
    "study": (StudyConfig, _run_study),
    "t2i": (T2IConfig, _run_t2i),
    "caption": (CaptionConfig, _run_caption),
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
    except KeyboardInterrupt:  # Ctrl-C: one line, and the shell's exit status for SIGINT
        print(f"\nmmdlm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
