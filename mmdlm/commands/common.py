"""What several commands share: the text data options, the data and provenance of a training run,
LoRA, and loading the pipeline a sampling command runs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..data.corpus import prepared_text
from ..devices import resolve_device, resolve_dtype
from ..provenance import command_line, versions


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
    data_cache: str | None = field(default=None, metadata={
        "help": "folder of the tokenised corpus, prepared once and shared by every process, resume and run with "
                "the same data and tokenizer (default: $MMDLM_CACHE, else ~/.cache/mmdlm)"})
    streaming: bool = field(default=False, metadata={
        "help": "read the corpus as a stream, tokenised as training goes (for corpora bigger than the disk; "
                "nothing prepared): each process reads its share of the files, in order; resumes exactly with "
                "the same number of processes"})


def packed_splits(c, tokenizer, state=None):
    """(training rows, validation rows or None, CorpusInfo): the corpus tokenised once into the data
    cache and read from disk in rows of seq_len tokens (`mmdlm.data.corpus.prepared_text`), or with
    `streaming` this process's stream of rows (`mmdlm.data.streaming.streamed_text`)."""
    if c.streaming:
        from ..data.streaming import streamed_text

        if c.max_train_sequences is not None or c.max_files is not None:
            raise ValueError("max_train_sequences and max_files cap a prepared corpus; a stream has no length "
                             "(set max_steps)")
        return streamed_text(c.dataset, tokenizer=tokenizer, seq_len=c.seq_len, data_files=c.data_files,
                             text_column=c.text_column, validation_fraction=c.validation_fraction,
                             eval_rows=c.eval_batches * c.batch_size, state=state,
                             warn=(state.print if state is not None else print))
    train_ids, val_ids, info = prepared_text(c.dataset, tokenizer=tokenizer, seq_len=c.seq_len,
                                             data_files=c.data_files, text_column=c.text_column,
                                             validation_fraction=c.validation_fraction, max_files=c.max_files,
                                             data_cache=c.data_cache, state=state)
    if c.max_train_sequences is not None:
        train_ids = train_ids[: c.max_train_sequences]
    return train_ids, val_ids, info


def check_positions(model, seq_len: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len {seq_len} exceeds the model's {limit} positions "
                         "(max_position_embeddings); lower seq_len")


def run_info(c, info, model, train_data) -> dict:
    """What run.json records of a text run (`train_sequences`: None for a stream, which has no length)."""
    from ..training.trainer import is_stream

    return {"command": command_line(), "config": asdict(c), "corpus": info.to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_sequences": None if is_stream(train_data) else len(train_data), "versions": versions()}


def maybe_lora(c, dlm, state) -> None:
    """LoRA on the DLM when lora_r > 0 (adapters initialised from the run's seed)."""
    if not c.lora_r:
        return
    from ..training.lora import lora_dlm, trainable_parameters

    torch.manual_seed(c.seed)
    lora_dlm(dlm, c, base=c.model)
    n, total = trainable_parameters(dlm)
    state.print(f"LoRA r={c.lora_r}: training {n:,} of {total:,} parameters ({100 * n / total:.2f}%)")


def attn_implementation_field():
    """The `attn_implementation` option of the text commands."""
    return field(default="sdpa", metadata={
        "help": "sdpa | eager | flash_attention_2 (needs flash-attn; full attention only). sdpa uses its flash "
                "kernels itself where the attention allows (full or causal attention without padding)"})


@dataclass
class DeviceArgs:
    """Where a sampling command runs, and in which precision."""

    device: str | None = field(default=None, metadata={
        "help": "cpu | cuda | cuda:1 | mps ... (default: the machine's accelerator when it has one, else cpu)"})
    dtype: str | None = field(default=None, metadata={
        "help": "weights and activations: float32 | bfloat16 | float16 (default: float32)"})

    def resolve(self) -> tuple[torch.device, torch.dtype]:
        """(device, dtype), checked before anything loads."""
        return resolve_device(self.device), resolve_dtype(self.dtype) or torch.float32


def load_text_pipeline(path: str, *, device=None, dtype=torch.float32, attn_implementation: str = "sdpa",
                       **scheduler_options):
    """A TextDiffusionPipeline from a saved pipeline or a DLM folder, on `device` in `dtype` with attention by
    `attn_implementation`, its scheduler set to `scheduler_options`."""
    from ..pipelines import TextDiffusionPipeline

    pipe = TextDiffusionPipeline.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    pipe.scheduler.register_to_config(**scheduler_options)
    return pipe.to(device or resolve_device())


MM_MODEL = "assets/mmdit-shapes"


def multimodal_pipeline(path: str, device=None, dtype=torch.float32):
    """A saved multimodal pipeline on `device` (default: the accelerator, else the CPU) in `dtype`."""
    from ..pipelines.multimodal import load_pipeline

    pipe = load_pipeline(path)
    if not hasattr(pipe, "image_size"):
        raise ValueError(f"{path} holds a {type(pipe).__name__}, not a multimodal (image-text) pipeline")
    pipe = pipe.to(device or resolve_device(), dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_options(c, *names) -> dict:
    """The sampling options given (None: the pipeline's default), checked before the model loads."""
    from ..pipelines.multimodal import check_call_options

    out = {k: getattr(c, k) for k in names if getattr(c, k) is not None}
    check_call_options(**out)
    if getattr(c, "steps", None) is not None:
        if c.steps < 1:
            raise ValueError(f"steps must be >= 1, got {c.steps}")
        out["num_inference_steps"] = c.steps
    return out
