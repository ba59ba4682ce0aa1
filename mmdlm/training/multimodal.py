"""What every multimodal backbone's training shares: the backbone registry, the data, the
per-sample task draw and caption dropout. Nothing here knows a model.

`mmdlm train-mm --config ...` reads a `TrainMMConfig` (mmdlm/commands/train_mm.py) and calls
`mmdlm.training.backbones.BACKBONES[config.backbone](config)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

TRAIN_TASKS = ("t2i", "caption", "joint")  # t2i: text clean; caption: image clean; joint: both noisy



def check_pretrained_architecture(config: Mapping, model_config: Mapping, source: str) -> None:
    """With `pretrained` the architecture is the checkpoint's `config`: a recipe's `model_config`
    (a later stage inherits its first stage's) must agree with it, so that a change is refused, not
    silently dropped."""
    def norm(v):
        return list(v) if isinstance(v, (list, tuple)) else v

    clash = [f"{key}={value!r} (the checkpoint has " + (f"{config[key]!r})" if key in config else "no such setting)")
             for key, value in model_config.items() if key not in config or norm(config[key]) != norm(value)]
    if clash:
        raise ValueError(f"model_config sets {', '.join(clash)}, but a pretrained model ({source}) keeps its own "
                         "architecture: remove those keys, or train from scratch without pretrained")


def lora_transformer(model, c):
    """With `c.lora_r` > 0, `model` with LoRA adapters (peft) and every other weight frozen.

    LoRA adapts pretrained weights, so it needs `c.pretrained` (recorded as the adapter's base)."""
    if not c.lora_r:
        return model
    from .lora import apply_lora, trainable_parameters

    c.validate_lora()
    if not c.pretrained:
        raise ValueError("lora_r > 0 adapts pretrained weights: give pretrained (a saved pipeline or transformer)")
    base = str(Path(c.pretrained).resolve()) if Path(c.pretrained).exists() else c.pretrained
    torch.manual_seed(c.seed)
    model = apply_lora(model, r=c.lora_r, alpha=c.lora_alpha, dropout=c.lora_dropout,
                       target_modules=c.lora_target_modules, base_model_name_or_path=base)
    n, total = trainable_parameters(model)
    print(f"LoRA r={c.lora_r}: training {n:,} of {total:,} parameters ({100 * n / total:.2f}%)")
    return model


LORA_FOLDER = "lora"


def savable_transformer(model, path):
    """The transformer a pipeline saves: a LoRA model's adapter goes to `path/lora` (peft format,
    loadable with `PeftModel.from_pretrained(base_transformer, path/lora)`) and the transformer with
    the adapter merged into its weights is returned (`merged_transformer`); any other model as it is."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    from .lora import merged_transformer

    model.save_pretrained(str(Path(path) / LORA_FOLDER))
    return merged_transformer(model)


def sampling_scheduler(cls, settings: Mapping, **defaults):
    """The scheduler a trained pipeline is saved with: `cls(**defaults)` with the recipe's `sampler`
    settings on top; an unknown setting is an error (diffusers' configs would drop it silently)."""
    import inspect

    if not isinstance(settings, Mapping):
        raise ValueError(f"sampler must map {cls.__name__} settings to values, got {settings!r}")
    known = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"sampler: {cls.__name__} has no setting(s) {sorted(unknown)}; it takes "
                         f"{', '.join(sorted(known))}")
    return cls(**{**defaults, **settings})


def check_task_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """The weights of `TRAIN_TASKS` (missing ones 0), checked: known names, >= 0, some > 0."""
    if not isinstance(weights, Mapping):
        raise ValueError(f"task_weights must map tasks to weights, e.g. {{'t2i': 0.5, 'caption': 0.5}}, "
                         f"got {weights!r}")
    unknown = set(weights) - set(TRAIN_TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)} in task_weights; training tasks are "
                         f"{', '.join(TRAIN_TASKS)}")
    out = {t: float(weights.get(t, 0.0)) for t in TRAIN_TASKS}
    if any(w < 0 for w in out.values()) or sum(out.values()) <= 0:
        raise ValueError(f"task_weights must be >= 0 with a positive sum, got {dict(weights)}")
    return out


def draw_tasks(batch_size: int, weights: Mapping[str, float], generator: torch.Generator | None = None,
               device=None) -> torch.LongTensor:
    """One task per sample: indices into `TRAIN_TASKS`, shape (batch_size,).

    Systematic sampling: each task gets batch_size x its share of the weights, rounded up or
    down at random (so Muddit's half text-to-image / half captioning batch is exact), in a
    random order. Reproducible for a generator.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    w = list(check_task_weights(weights).values())
    where = generator.device if generator is not None else device  # a generator draws on its own device
    u = (torch.rand(1, generator=generator, dtype=torch.float64, device=where)
         + torch.arange(batch_size, device=where)) / batch_size
    tasks = torch.zeros(batch_size, dtype=torch.long, device=where)
    for k in range(1, len(w)):  # task = how many of the cumulative shares (Python numbers) u has passed
        tasks += u >= sum(w[:k]) / sum(w)
    tasks = tasks[torch.randperm(batch_size, generator=generator, device=where)]
    return tasks.to(device) if device is not None else tasks


def encode_split(split: Mapping[str, torch.Tensor], key: str, encode: Callable) -> dict[str, torch.Tensor]:
    """A split of `mm_training_data` with its pixels replaced by `key`: encode(pixels) (VAE
    latents, VQ codes); the caption columns stay as they are."""
    return {key: encode(split["pixels"]), **{k: v for k, v in split.items() if k != "pixels"}}


def task_texts(batch: Mapping[str, torch.Tensor], t2i: torch.BoolTensor) -> torch.LongTensor:
    """The caption ids each sample works on: the prompt (`text_ids`) for text-to-image, the
    caption to write (`caption_ids`, when the data has a caption column) for the other tasks."""
    if "caption_ids" not in batch:
        return batch["text_ids"]
    return torch.where(t2i[:, None].to(batch["text_ids"].device), batch["text_ids"], batch["caption_ids"])


def drop_captions(text_ids: torch.LongTensor, p: float, mask_token_id: int, generator: torch.Generator | None = None,
                  *, rows: torch.BoolTensor | None = None) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """Caption dropout for classifier-free guidance: each row (of `rows`, default all) is
    replaced with probability `p` by an all-mask caption, the same "no caption" the
    unconditional pass sees at sampling time. Returns (new ids, which rows were dropped)."""
    if not 0 <= p < 1:
        raise ValueError(f"caption dropout must be in [0, 1), got {p}")
    where = generator.device if generator is not None else text_ids.device  # a generator draws on its own device
    draw = torch.rand(text_ids.shape[0], generator=generator, device=where).to(text_ids.device) < p
    if rows is not None:
        draw &= rows.to(draw.device)
    return torch.where(draw[:, None], torch.full_like(text_ids, mask_token_id), text_ids), draw


@dataclass
class MMData:
    """Training (and evaluation) data as dicts of tensors: `pixels` (N, 3, H, W) in [-1, 1],
    `text_ids` (N, text_length) and, with a `caption_column`, `caption_ids` (N, text_length),
    the format `mmdlm.training.Trainer` takes."""

    train: dict[str, torch.Tensor]
    eval: dict[str, torch.Tensor] | None
    tokenizer: object
    info: dict = field(default_factory=dict)


def load_caption_tokenizer(path: str | None, texts):
    """The tokenizer at `path` (given a mask and EOS token if it lacks them), or a word-level
    tokenizer trained on `texts`."""
    from ..data.tokenizer import train_word_tokenizer
    from ..multimodal.text import ensure_caption_tokens
    from ..text.base import load_tokenizer

    if path:
        return ensure_caption_tokens(load_tokenizer(path))
    return train_word_tokenizer(texts)


def pipeline_tokenizer(path: str | None) -> str | None:
    """The `tokenizer/` folder of the mmdlm pipeline saved at `path`, if it is one. Training on
    from a pipeline keeps its token ids: a word-level tokenizer learnt afresh orders words by
    their counts in the new data (a second stage on shapes swapped "red" and "cyan"). Other
    folders (an SD3 pipeline with its CLIP tokenizer) give None."""
    from .. import pipelines  # noqa: F401  (registers every mmdlm pipeline)
    from ..pipelines.multimodal import PIPELINES, saved_pipeline_class

    if not path or not (Path(path) / "tokenizer").is_dir() or saved_pipeline_class(path) not in PIPELINES:
        return None
    return str(Path(path) / "tokenizer")


def mm_training_data(c) -> MMData:
    """Images and captions of `c.dataset` (a `TrainMMConfig`), tokenised on the caption canvas:
    `text_ids` from `c.text_column` and, when `c.caption_column` names another column, the
    captions to write from it as `caption_ids` (the word-level tokenizer learns both).

    Evaluation data: the built-in sets' test split (`c.n_eval` examples; for shapes, held-out
    scenes), a source's "validation" split if it has one, else none. The tokenizer: `c.tokenizer`,
    else the one of the pipeline `c.pretrained` names, else one learnt on the training captions.
    """
    from ..data.imagetext import BUILTINS, load_image_texts
    from ..multimodal.text import encode_captions

    keys = {c.text_column: "text_ids"}  # dataset column -> key of the tokenised data
    if c.caption_column and c.caption_column != c.text_column:
        keys[c.caption_column] = "caption_ids"

    def load(split: str, n: int | None) -> tuple[torch.Tensor, dict[str, list[str]]]:
        pixels, texts = load_image_texts(c.dataset, split=split, n=n, image_column=c.image_column,
                                         text_columns=list(keys), image_size=c.image_size,
                                         data_files=c.data_files, seed=c.seed)
        return pixels, {keys[column]: values for column, values in texts.items()}

    def tokenised(pixels, columns) -> dict[str, torch.Tensor]:
        return {"pixels": pixels, **{k: encode_captions(tokenizer, v, c.text_length) for k, v in columns.items()}}

    pixels, columns = load("train", c.n_train)
    tokenizer = load_caption_tokenizer(c.tokenizer or pipeline_tokenizer(c.pretrained),
                                       [t for texts in columns.values() for t in texts])
    train = tokenised(pixels, columns)
    eval_data = None
    if c.n_eval:
        split = "test" if c.dataset in BUILTINS and not c.data_files else "validation"
        try:
            eval_data = tokenised(*load(split, c.n_eval))
        except ValueError as err:
            if f"no {split!r} split" not in str(err):
                raise
    info = {"dataset": c.dataset, "train_examples": len(pixels),
            "eval_examples": 0 if eval_data is None else len(eval_data["pixels"]), "vocab_size": len(tokenizer)}
    return MMData(train, eval_data, tokenizer, info)
