"""`mmdlm sft`: supervised fine-tuning on prompt/response pairs, the loss on the response: of a diffusion LM
(the prompt never noised), or of a causal LM (next-token cross-entropy)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ..provenance import command_line, versions
from ..training.lora import LoraArgs
from ..training.trainer import TrainArgs
from .common import attn_implementation_field, check_positions, maybe_lora


@dataclass
class SftConfig(LoraArgs, TrainArgs):
    """Supervised fine-tuning on prompt/response pairs, the loss on the response only: of a diffusion LM (the
    prompt is never noised), or of a causal LM (next-token cross-entropy)."""

    model: str = field(default="assets/dlm", metadata={
        "help": "the model to fine-tune: a mmdlm DLM folder, or a causal LM (a folder without mmdlm.json, a hub id)"})
    output_dir: str = field(default="outputs/sft", metadata={"help": "where the model, logs and checkpoints go"})
    dataset: str = field(default="stdlib", metadata={
        "help": "'stdlib' (built-in: the standard library's documented functions, prompt = signature + docstring, "
                "response = body), 'arithmetic' (built-in: multi-step problems with exact answers), a hub dataset "
                "name or a local folder"})
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
    data_cache: str | None = field(default=None, metadata={
        "help": "folder of the encoded examples, prepared once and shared by every process, resume and run with "
                "the same data, tokenizer and settings (default: $MMDLM_CACHE, else ~/.cache/mmdlm)"})
    seq_len: int = field(default=128, metadata={
        "help": "tokens per example: [BOS] prompt response EOS..., padded with EOS; longer examples are dropped"})
    t_sampling: str = field(default="stratified", metadata={"help": "uniform | stratified | antithetic"})
    loss_normalize: str = field(default="token", metadata={
        "help": "token (negative ELBO per response token) | masked (per masked token, DiffuLLaMA)"})
    ar_loss_weight: float = field(default=0.0, metadata={
        "help": "diffusion LM: weight of an auxiliary AR loss on the response (a causal pass, next-token "
                "cross-entropy)"})
    attn_implementation: str = attn_implementation_field()


def run(c) -> None:
    """Supervised fine-tuning, the loss on the response only. A diffusion LM: the prompt stays clean, the
    response is noised. A causal LM (a folder without mmdlm.json, or a hub id): next-token cross-entropy on
    the response up to its first EOS, saved as a plain transformers checkpoint."""
    from ..data.sft import prepared_sft
    from ..text.adapt import CONFIG_NAME, load_dlm
    from ..text.base import check_attn_implementation, load_causal_lm, load_tokenizer
    from ..training import process_state

    c.validate()
    check_attn_implementation(c.attn_implementation)  # before any data is read
    c.validate_lora()
    state = process_state()
    causal = not (Path(c.model) / CONFIG_NAME).exists()
    if causal:
        _check_causal_sft(c)
        model = load_causal_lm(c.model, attn_implementation=c.attn_implementation)
        tokenizer = load_tokenizer(c.model)
        check_positions(model, c.seq_len)
    else:  # a LoRA DLM is merged first, then trained on
        model, tokenizer = load_dlm(c.model, merge_lora=True, attn_implementation=c.attn_implementation)
        check_positions(model.model, c.seq_len)
        maybe_lora(c, model, state)
    fields = dict(prompt_field=c.prompt_field, response_field=c.response_field, messages_field=c.messages_field,
                  chat_template=c.chat_template)
    data, stats, source = prepared_sft(c.dataset, tokenizer=tokenizer, seq_len=c.seq_len, data_files=c.data_files,
                                       validation_fraction=c.validation_fraction, max_files=c.max_files,
                                       data_cache=c.data_cache, state=state, **fields)
    train, train_stats, val_stats = data["train"], stats["train"], stats["validation"]
    if train_stats.kept == 0:
        raise ValueError(f"no training example fits in seq_len {c.seq_len} with at least one EOS "
                         f"({train_stats.records} records, {train_stats.dropped_too_long} too long, "
                         f"{train_stats.dropped_empty} empty); raise seq_len or shorten the data")
    if c.max_train_examples is not None:
        train = {k: v[: c.max_train_examples] for k, v in train.items()}
    # Validation in a fixed shuffled order, so that a few eval batches span many sources; only the
    # rows the evaluation reads are taken (eval_batches x batch_size).
    order = torch.randperm(val_stats.kept, generator=torch.Generator().manual_seed(0))[: c.eval_batches * c.batch_size]
    val = {k: v[order] for k, v in data["validation"].items()} if val_stats.kept else None
    state.print(f"SFT data: {len(train['input_ids'])} training and {val_stats.kept} validation examples; dropped as "
                f"longer than seq_len {c.seq_len} (prompt + response + one EOS): {train_stats.dropped_too_long} "
                f"training, {val_stats.dropped_too_long} validation")
    info = {"command": command_line(), "config": asdict(c), "data": source,
            "train_stats": train_stats.to_dict(), "validation_stats": val_stats.to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "train_sequences": len(train["input_ids"]), "versions": versions()}
    if causal:
        from ..training.causal import CausalLMTrainer

        trainer = CausalLMTrainer(model, train, c, eval_data=val, tokenizer=tokenizer, run_info=info)
    else:
        from ..training.diffusion import DiffusionTrainer

        trainer = DiffusionTrainer(model, train, c, eval_data=val, tokenizer=tokenizer, t_sampling=c.t_sampling,
                                   loss_normalize=c.loss_normalize, ar_loss_weight=c.ar_loss_weight, run_info=info)
    final = trainer.train()
    what = "LoRA adapter" if c.lora_r else "fine-tuned causal LM" if causal else "fine-tuned diffusion LM"
    trainer.announce(what, final)


def _check_causal_sft(c) -> None:
    """A causal LM trains on next-token cross-entropy: refuse the keys only a diffusion LM reads."""
    if c.lora_r:
        raise ValueError(f"LoRA SFT is for diffusion LMs; {c.model} is a causal LM (no mmdlm.json): set lora_r 0")
    defaults = {f.name: f.default for f in fields(c)}
    for key in ("t_sampling", "loss_normalize", "ar_loss_weight"):
        if getattr(c, key) != defaults[key]:
            raise ValueError(f"{key} is a diffusion LM setting; {c.model} is a causal LM (no mmdlm.json), trained "
                             "with next-token cross-entropy on the response")
