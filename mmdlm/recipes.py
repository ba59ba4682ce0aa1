"""What each `mmdlm` sub-command does, as plain functions of its config dataclass."""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict
from pathlib import Path

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
    return {"command": command_line(), "config": asdict(c), "corpus": info.to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()), "train_sequences": n_train,
            "versions": versions()}


def machine() -> dict:
    import os
    import platform

    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def command_line() -> str:
    """The running `mmdlm` command, quoted so that a shell runs it again as it was."""
    import shlex

    return shlex.join(["mmdlm", *sys.argv[1:]])


def versions() -> dict:
    import platform

    import accelerate
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__}


def _run_tokenizer(c, state):
    """The BPE of a pretraining run: trained once by the main process and kept in
    OUTPUT_DIR/tokenizer, which the other processes and a resumed run load (no retraining)."""
    from pathlib import Path

    from .data.tokenizer import train_bpe
    from .io import atomic_dir
    from .text.base import load_tokenizer

    folder = Path(c.output_dir) / "tokenizer"
    with state.main_process_first():
        if (folder / "tokenizer.json").exists() and (c.resume or not state.is_main_process):
            return load_tokenizer(str(folder))
        train, _, _ = load_text_splits(c.dataset, data_files=c.data_files, text_column=c.text_column,
                                       validation_fraction=c.validation_fraction, max_files=c.max_files)
        tokenizer = train_bpe(train["text"], c.vocab_size)
        with atomic_dir(folder) as tmp:
            tokenizer.save_pretrained(tmp)
        return tokenizer


def pretrain(c) -> None:
    """Train an AR teacher from scratch: BPE tokenizer, packed corpus, next-token loss."""
    from .text.base import build_causal_lm, load_tokenizer
    from .training import process_state
    from .training.causal import CausalLMTrainer

    c.validate()
    state = process_state()
    tokenizer = load_tokenizer(c.tokenizer) if c.tokenizer else _run_tokenizer(c, state)
    model = build_causal_lm(c.model_config, tokenizer, seed=c.seed)
    _check_positions(model, c.seq_len)
    train_ids, val_ids, info = _packed_splits(c, tokenizer)
    trainer = CausalLMTrainer(model, train_ids, c, eval_data=val_ids, tokenizer=tokenizer,
                              run_info=_run_info(c, info, model, len(train_ids)))
    final = trainer.train()
    trainer.announce("teacher", final)


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
    from .training import process_state
    from .training.diffusion import DiffusionTrainer

    c.validate()
    c.validate_lora()
    state = process_state()
    dlm, tokenizer = build_dlm(c)
    _maybe_lora(c, dlm, state)
    train_ids, val_ids, info = data if data is not None else _packed_splits(c, tokenizer)
    trainer = (trainer_cls or DiffusionTrainer)(
        dlm, train_ids, c, eval_data=val_ids, tokenizer=tokenizer, ar_loss_weight=c.ar_loss_weight,
        block_warmup_steps=c.block_warmup_steps, t_sampling=c.t_sampling, loss_normalize=c.loss_normalize,
        run_info=_run_info(c, info, dlm, len(train_ids)), **trainer_options)
    final = trainer.train()
    what = "LoRA adapter" if c.lora_r else "diffusion LM"
    trainer.announce(what, final)
    return trainer


def _maybe_lora(c, dlm, state) -> None:
    """LoRA on the DLM when lora_r > 0 (adapters initialised from the run's seed)."""
    if not c.lora_r:
        return
    from .training.lora import lora_dlm, trainable_parameters

    torch.manual_seed(c.seed)
    lora_dlm(dlm, c, base=c.model)
    n, total = trainable_parameters(dlm)
    state.print(f"LoRA r={c.lora_r}: training {n:,} of {total:,} parameters ({100 * n / total:.2f}%)")


def sft(c) -> None:
    """Supervised fine-tuning of a diffusion LM: the prompt stays clean, the response is noised."""
    from .data.sft import encode_sft, load_sft_splits
    from .text.adapt import load_dlm
    from .training import process_state
    from .training.diffusion import DiffusionTrainer

    c.validate()
    c.validate_lora()
    state = process_state()
    dlm, tokenizer = load_dlm(c.model, merge_lora=True)  # a LoRA DLM is merged first, then trained on
    _check_positions(dlm.model, c.seq_len)
    _maybe_lora(c, dlm, state)
    train_records, val_records, source = load_sft_splits(c.dataset, data_files=c.data_files,
                                                         validation_fraction=c.validation_fraction,
                                                         max_files=c.max_files)
    fields = dict(prompt_field=c.prompt_field, response_field=c.response_field, messages_field=c.messages_field,
                  chat_template=c.chat_template)
    train, train_stats = encode_sft(train_records, tokenizer, c.seq_len, **fields)
    val, val_stats = encode_sft(val_records, tokenizer, c.seq_len, **fields)
    if train_stats.kept == 0:
        raise ValueError(f"no training example fits in seq_len {c.seq_len} with at least one EOS "
                         f"({train_stats.records} records, {train_stats.dropped_too_long} too long, "
                         f"{train_stats.dropped_empty} empty); raise seq_len or shorten the data")
    if c.max_train_examples is not None:
        train = {k: v[: c.max_train_examples] for k, v in train.items()}
    # Validation in a fixed shuffled order, so that a few eval batches span many sources.
    order = torch.randperm(val_stats.kept, generator=torch.Generator().manual_seed(0))
    val = {k: v[order] for k, v in val.items()} if val_stats.kept else None
    state.print(f"SFT data: {len(train['input_ids'])} training and {val_stats.kept} validation examples; dropped as "
                f"longer than seq_len {c.seq_len} (prompt + response + one EOS): {train_stats.dropped_too_long} "
                f"training, {val_stats.dropped_too_long} validation")
    info = {"command": command_line(), "config": asdict(c), "data": source,
            "train_stats": train_stats.to_dict(), "validation_stats": val_stats.to_dict(),
            "parameters": sum(p.numel() for p in dlm.parameters()),
            "trainable_parameters": sum(p.numel() for p in dlm.parameters() if p.requires_grad),
            "train_sequences": len(train["input_ids"]), "versions": versions()}
    trainer = DiffusionTrainer(dlm, train, c, eval_data=val, tokenizer=tokenizer, t_sampling=c.t_sampling,
                               loss_normalize=c.loss_normalize, run_info=info)
    final = trainer.train()
    what = "LoRA adapter" if c.lora_r else "fine-tuned diffusion LM"
    trainer.announce(what, final)


def merge_lora(c) -> None:
    """Fold a LoRA adapter into its base and save a plain diffusion LM checkpoint."""
    from pathlib import Path

    from .io import check_output_dir
    from .text.adapt import ADAPTER_CONFIG, load_dlm

    if not c.adapter or not c.output:
        raise ValueError("give --adapter (a LoRA DLM folder) and --output (where the merged model goes)")
    if not (Path(c.adapter) / ADAPTER_CONFIG).exists():
        raise ValueError(f"{c.adapter} holds no LoRA adapter ({ADAPTER_CONFIG}); nothing to merge")
    if Path(c.output).resolve() == Path(c.adapter).resolve():
        raise ValueError("--output must differ from --adapter")
    check_output_dir(c.output, "--output")
    dlm, tokenizer = load_dlm(c.adapter, base_model=c.base_model, merge_lora=True)
    dlm.save_pretrained(c.output, tokenizer=tokenizer)
    print(f"merged model saved to {c.output}")


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
    from .diffusion._checks import check_int
    from .io import atomic_write_text, check_output_file
    from .schedulers import MaskedDiffusionScheduler
    from .text.generate import check_options

    if c.prompt is None and c.infill is None:
        raise ValueError("nothing to do: give --prompt and/or --infill")
    check_int(c.gen_length, "gen_length", 1)
    if c.block_length is not None:
        check_int(c.block_length, "block_length", 1)
    check_options(steps=c.steps, cache=c.cache, guidance_scale=c.guidance_scale)
    if c.history not in (None, "terminal") and not c.history.endswith((".gif", ".html")):
        raise ValueError(f"history must be 'terminal' or a path ending in .gif or .html, got {c.history!r}")
    for name, path in (("--output", c.output), ("--history", c.history)):
        if path not in (None, "terminal"):
            check_output_file(path, name)
    sampling = dict(rule=c.rule, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, alg_temp=c.alg_temp,
                    threshold=c.threshold, remasking=c.remasking)
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
    for _, text, kw in jobs:  # every job checked (lengths against the model's context) before any runs
        pipe.check_inputs(text, num_inference_steps=c.steps, cache=c.cache, **kw)
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


def eval_mm(c) -> dict:
    """Evaluate a saved multimodal pipeline and update the results file."""
    from .eval.imagetext import evaluate, write_record
    from .pipelines.multimodal import load_pipeline

    if not c.model:
        raise ValueError("give the pipeline to evaluate: --model PATH")
    kwargs = {k: getattr(c, k) for k in ("guidance_scale", "text_guidance_scale", "text_steps")
              if getattr(c, k) is not None}
    pipe = load_pipeline(c.model).to(c.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.set_progress_bar_config(disable=True)
    record = evaluate(pipe, c.dataset, n=c.n, num_inference_steps=c.steps, seed=c.seed, batch_size=c.batch_size,
                      tasks=c.tasks, samples_dir=c.samples_dir, **kwargs)
    record = {**record, "model": c.model, "command": command_line()}
    if c.label:
        record["label"] = c.label
    write_record(c.output, record)
    shown = {k: record[k] for k in ("backbone", "dataset", "n", "t2i_accuracy", "caption_accuracy",
                                    "joint_consistency", "s_per_image", "s_per_caption")}
    print(json.dumps(shown, indent=2))
    print(f"record written to {c.output}")
    return record


def average(c) -> None:
    """Average saved pipelines' transformer weights; save the result with `average.json` (the
    sources and weights) inside it, atomically."""
    from .io import atomic_dir
    from .pipelines.averaging import average_pipelines, normalised_weights

    if not c.models or not c.output:
        raise ValueError("give --models (two or more saved pipelines) and --output")
    if any(Path(m).resolve() == Path(c.output).resolve() for m in c.models):
        raise ValueError("--output must differ from every --models folder")
    weights = normalised_weights(c.weights, len(c.models))
    pipe = average_pipelines(c.models, weights)
    record = {"models": c.models, "weights": weights, "command": command_line(), "versions": versions()}
    with atomic_dir(c.output) as tmp:
        pipe.save_pretrained(tmp)
        (Path(tmp) / "average.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{type(pipe).__name__} with the transformer weights of {len(c.models)} pipelines averaged saved to "
          f"{c.output}")


def _unescape(text: str) -> str:
    """Let shell users write newlines and tabs as \\n and \\t."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _show_history(pipe, history, target: str, kind: str) -> None:
    from pathlib import Path

    from .text import history as h

    bos = int(pipe.tokenizer.bos_token_id is not None)
    all_frames = h.frames(pipe.tokenizer, history, pipe.mask_token_id, start=bos)
    if target == "terminal":
        h.play_terminal(all_frames)
        return
    path = Path(target)
    path = path.with_name(f"{path.stem}-{kind}{path.suffix}")
    (h.write_gif if path.suffix == ".gif" else h.write_html)(all_frames, path)
    print(f"unmasking history written to {path}")


def _multimodal_pipeline(path: str, device: str | None):
    from .pipelines.multimodal import load_pipeline

    pipe = load_pipeline(path)
    if not hasattr(pipe, "image_size"):
        raise ValueError(f"{path} holds a {type(pipe).__name__}, not a multimodal (image-text) pipeline")
    pipe = pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call_options(c, *names) -> dict:
    """The sampling options given (None: the pipeline's default), checked before the model loads."""
    from .pipelines.multimodal import check_call_options

    out = {k: getattr(c, k) for k in names if getattr(c, k) is not None}
    check_call_options(**out)
    if getattr(c, "steps", None) is not None:
        if c.steps < 1:
            raise ValueError(f"steps must be >= 1, got {c.steps}")
        out["num_inference_steps"] = c.steps
    return out


def write_denoising_gif(history: list[dict], path, duration_ms: int = 120) -> None:
    """A GIF of the denoising: one frame per step with every image side by side (the current
    clean-image estimate; the last frame is the result, held for a second)."""
    from .images import image_grid, to_pil
    from .io import atomic_file

    frames = [image_grid(to_pil(h["images"]), cols=len(h["images"])) for h in history if h.get("images") is not None]
    if not frames:
        raise ValueError("the pipeline returned no image history to animate")
    scale = max(1, 128 // frames[0].height)  # small images are enlarged for viewing (nearest neighbour)
    frames = [f.resize((f.width * scale, f.height * scale), 0) for f in frames]
    with atomic_file(path) as tmp:
        frames[0].save(tmp, save_all=True, append_images=frames[1:],
                       duration=[duration_ms] * (len(frames) - 1) + [1000], loop=0)


T2I_OUTPUT = re.compile(r"t2i-(\d+\.png|denoising\.gif)")  # what `mmdlm t2i` writes


def t2i(c) -> list:
    """`mmdlm t2i PROMPT`: PNGs (and a GIF of the denoising) in c.output_dir; returns their paths.

    The files form one set: the location is checked before generating, the set is written in a
    temporary folder there and then moved in, and the t2i-* files of an earlier run it does not
    replace are removed; a failure leaves the folder as it was.
    """
    import tempfile

    from .io import check_output_dir

    if not c.prompt:
        raise ValueError("give the caption to draw: mmdlm t2i \"a small red circle left of a large blue square\"")
    if c.n < 1:
        raise ValueError(f"n must be >= 1, got {c.n}")
    options = _call_options(c, "guidance_scale")
    folder = check_output_dir(c.output_dir, "--output-dir")
    names = [f"t2i-{i}.png" for i in range(c.n)] + (["t2i-denoising.gif"] if c.gif else [])
    for name in names:
        if (folder / name).is_dir():
            raise ValueError(f"{folder / name} is a folder; remove it or choose another --output-dir")
    pipe = _multimodal_pipeline(c.model, c.device)
    out = pipe(prompt=c.prompt, task="t2i", num_images_per_prompt=c.n, generator=torch.Generator().manual_seed(c.seed),
               return_history=c.gif, **options)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".t2i-", dir=folder) as tmp:
        for name, image in zip(names, out.images):
            image.save(Path(tmp) / name)
        if c.gif:
            write_denoising_gif(out.history or [], Path(tmp) / names[-1])
        stale = [p for p in folder.iterdir() if T2I_OUTPUT.fullmatch(p.name) and p.name not in names and p.is_file()]
        for name in names:
            os.replace(Path(tmp) / name, folder / name)
        for path in stale:
            path.unlink()
    print(f"{c.n} image(s) of {c.prompt!r} written to {folder}/t2i-*.png")
    if c.gif:
        print(f"denoising written to {folder / names[-1]}")
    return [folder / name for name in names]


def caption(c) -> list[str]:
    """`mmdlm caption IMAGE [--question ...]`: print (and optionally save) the text(s)."""
    from .images import open_image
    from .io import atomic_write_text, check_output_file

    if not c.image:
        raise ValueError("give the image to caption: mmdlm caption path/to/image.png")
    path = Path(c.image)
    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    image = open_image(path)
    if c.n < 1:
        raise ValueError(f"n must be >= 1, got {c.n}")
    options = _call_options(c, "text_guidance_scale", "temperature")
    if c.output:
        check_output_file(c.output, "--output")
    task = "caption" if c.question is None else "vqa"
    pipe = _multimodal_pipeline(c.model, c.device)
    out = pipe(prompt=c.question, image=image, task=task, num_images_per_prompt=c.n,
               generator=torch.Generator().manual_seed(c.seed), **options)
    for text in out.texts:
        print(text)
    if c.output:
        atomic_write_text(c.output, json.dumps({"model": c.model, "image": str(path), "question": c.question,
                                                "task": task, "texts": out.texts}, indent=2))
    return out.texts
