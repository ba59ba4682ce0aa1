"""What each `mmdlm` sub-command does, as plain functions of its config dataclass."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

import torch

from .data import load_text_splits, pack_texts


def _packed_splits(c, tokenizer):
    train, validation, info = load_text_splits(c.dataset, data_files=c.data_files, text_column=c.text_column,
                                               validation_fraction=c.validation_fraction, max_files=c.max_files)
    train_ids = pack_texts(train["text"], tokenizer, c.seq_len)
    if c.max_train_sequences is not None:
        train_ids = train_ids[: c.max_train_sequences]
    try:
        val_ids = pack_texts(validation["text"], tokenizer, c.seq_len)
    except ValueError:  # a validation split shorter than one sequence: no evaluation
        val_ids = None
    return train_ids, val_ids, info


def _check_positions(model, seq_len: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len {seq_len} exceeds the model's {limit} positions "
                         "(max_position_embeddings); lower seq_len")


def _run_info(c, info, model, n_train) -> dict:
    return {"command": " ".join(["mmdlm"] + sys.argv[1:]), "config": asdict(c), "corpus": info.to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()), "train_sequences": n_train,
            "versions": versions()}


def machine() -> dict:
    import os
    import platform

    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def versions() -> dict:
    import platform

    import accelerate
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__}


def pretrain(c) -> None:
    """Train an AR teacher from scratch: BPE tokenizer, packed corpus, next-token loss."""
    from .data.tokenizer import train_bpe
    from .text.base import build_causal_lm, load_tokenizer
    from .training.causal import CausalLMTrainer

    if c.tokenizer:
        tokenizer = load_tokenizer(c.tokenizer)
    else:
        train, _, _ = load_text_splits(c.dataset, data_files=c.data_files, text_column=c.text_column,
                                       validation_fraction=c.validation_fraction, max_files=c.max_files)
        tokenizer = train_bpe(train["text"], c.vocab_size)
    model = build_causal_lm(c.model_config, tokenizer, seed=c.seed)
    _check_positions(model, c.seq_len)
    train_ids, val_ids, info = _packed_splits(c, tokenizer)
    trainer = CausalLMTrainer(model, train_ids, c, eval_data=val_ids, tokenizer=tokenizer,
                              run_info=_run_info(c, info, model, len(train_ids)))
    final = trainer.train()
    print(f"teacher saved to {final}; log {trainer.out / 'log.csv'}, curve {trainer.out / 'loss.png'}")


INITS = ("pretrained", "random")


def build_dlm(c):
    """(DiffusionLM, tokenizer) for an adapt config: the causal LM's weights, or its architecture only."""
    from .text.adapt import DiffusionLM
    from .text.base import load_causal_lm, load_tokenizer, random_causal_lm_like

    if c.init not in INITS:
        raise ValueError(f"unknown init {c.init!r}; choose one of {', '.join(INITS)}")
    tokenizer = load_tokenizer(c.model)
    model = load_causal_lm(c.model) if c.init == "pretrained" else random_causal_lm_like(c.model, seed=c.seed)
    _check_positions(model, c.seq_len)
    dlm = DiffusionLM.from_causal_lm(model, tokenizer, attention=c.attention, shift=c.shift,
                                     mask_token=c.mask_token, mask_init=c.mask_init,
                                     block_size=c.block_size if c.attention == "block" else None,
                                     anneal_steps=c.anneal_steps, schedule=c.schedule, eps=c.eps)
    return dlm, tokenizer


def adapt(c, *, data=None, trainer_cls=None, **trainer_options):
    """Adapt a causal LM into a diffusion LM and train it with the masked-diffusion loss.

    `data` = (train_ids, validation_ids or None, CorpusInfo) skips loading and packing the
    corpus (the study packs it once for all its runs); `trainer_cls` may be a subclass of
    `DiffusionTrainer`. Returns the trainer after training.
    """
    from .training.diffusion import DiffusionTrainer

    dlm, tokenizer = build_dlm(c)
    train_ids, val_ids, info = data if data is not None else _packed_splits(c, tokenizer)
    trainer = (trainer_cls or DiffusionTrainer)(
        dlm, train_ids, c, eval_data=val_ids, tokenizer=tokenizer, ar_loss_weight=c.ar_loss_weight,
        block_warmup_steps=c.block_warmup_steps, t_sampling=c.t_sampling, loss_normalize=c.loss_normalize,
        run_info=_run_info(c, info, dlm, len(train_ids)), **trainer_options)
    final = trainer.train()
    print(f"diffusion LM saved to {final}; log {trainer.out / 'log.csv'}, curve {trainer.out / 'loss.png'}")
    return trainer


def load_text_pipeline(path: str, **scheduler_options):
    """A TextDiffusionPipeline from a saved pipeline (model_index.json) or a DLM folder (mmdlm.json)."""
    from pathlib import Path

    from .pipelines import TextDiffusionPipeline

    if (Path(path) / "model_index.json").exists():
        pipe = TextDiffusionPipeline.from_pretrained(path)
        pipe.scheduler.register_to_config(**scheduler_options)
        return pipe
    return TextDiffusionPipeline.from_dlm(path, **scheduler_options)


def generate(c) -> dict:
    """Continue `prompt` and/or fill the placeholders of `infill`; print and optionally save."""
    from .io import atomic_write_text
    from .schedulers import MaskedDiffusionScheduler
    from .text.generate import CACHES

    if c.prompt is None and c.infill is None:
        raise ValueError("nothing to do: give --prompt and/or --infill")
    for name in ("steps", "gen_length"):
        if getattr(c, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(c, name)}")
    if c.block_length is not None and c.block_length < 1:
        raise ValueError(f"block_length must be >= 1, got {c.block_length}")
    if c.cache not in CACHES:
        raise ValueError(f"unknown cache {c.cache!r}; choose one of {', '.join(CACHES)}")
    if c.history not in (None, "terminal") and not c.history.endswith((".gif", ".html")):
        raise ValueError(f"history must be 'terminal' or a path ending in .gif or .html, got {c.history!r}")
    sampling = dict(rule=c.rule, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, alg_temp=c.alg_temp,
                    threshold=c.threshold)
    MaskedDiffusionScheduler(**sampling)  # validates every sampling option before the model loads
    pipe = load_text_pipeline(c.model, **sampling)
    pipe.set_progress_bar_config(disable=True)
    settings = {**sampling, "steps": c.steps, "cache": c.cache, "gen_length": c.gen_length,
                "block_length": c.block_length, "guidance_scale": c.guidance_scale, "seed": c.seed}
    results: dict = {"model": c.model, "settings": settings}
    jobs = []
    if c.prompt is not None:
        jobs.append(("continuation", _unescape(c.prompt), dict(gen_length=c.gen_length, block_length=c.block_length,
                                                    guidance_scale=c.guidance_scale)))
    if c.infill is not None:
        jobs.append(("infill", _unescape(c.infill), dict(gen_length=0)))
    for kind, text, kw in jobs:
        out = pipe(text, num_inference_steps=c.steps, cache=c.cache, stop_at_eos=c.stop_at_eos,
                   return_history=c.history is not None, generator=torch.Generator().manual_seed(c.seed), **kw)
        results[kind] = {"input": text, "output": out.texts[0], "nfe": out.nfe}
        shown = f"{text}\033[1m{out.texts[0]}\033[0m" if kind == "continuation" else out.texts[0]
        print(f"--- {kind} ---\n{shown}\n")
        if c.history is not None:
            _show_history(pipe, out.history, c.history, kind)
    if c.output:
        atomic_write_text(c.output, json.dumps(results, indent=2))
        print(f"results written to {c.output}")
    return results


def _unescape(text: str) -> str:
    """Let shell users write newlines and tabs as \\n and \\t."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _show_history(pipe, history, target: str, kind: str) -> None:
    from pathlib import Path

    from .text import history as h

    bos = int(pipe.tokenizer.bos_token_id is not None)
    all_frames = h.frames(pipe.tokenizer, history, pipe.config.mask_token_id, start=bos)
    if target == "terminal":
        h.play_terminal(all_frames)
        return
    path = Path(target)
    path = path.with_name(f"{path.stem}-{kind}{path.suffix}")
    (h.write_gif if path.suffix == ".gif" else h.write_html)(all_frames, path)
    print(f"unmasking history written to {path}")
