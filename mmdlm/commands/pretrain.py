"""`mmdlm pretrain`: an AR causal LM from scratch (the teacher of the adaptation recipes)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..data.corpus import TextSplits
from ..training.trainer import TrainArgs
from .common import DataArgs, attn_implementation_field, check_positions, packed_splits, run_info


@dataclass
class PretrainConfig(DataArgs, TrainArgs):
    """Pretrain a causal LM from scratch (the AR teacher)."""

    model_config: dict = field(default_factory=lambda: {"model_type": "llama"}, metadata={
        "help": "transformers config of the new model, with model_type"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer to use; default: train a byte-level BPE on the training split"})
    vocab_size: int = field(default=4096, metadata={"help": "size of the BPE trained when no tokenizer is given"})
    attn_implementation: str = attn_implementation_field()


def _run_tokenizer(c, state):
    """The BPE of a pretraining run: trained once by the main process and kept in
    OUTPUT_DIR/tokenizer, which the other processes and a resumed run load (no retraining)."""
    from pathlib import Path

    from ..data.tokenizer import train_bpe
    from ..io import atomic_dir
    from ..text.base import load_tokenizer

    folder = Path(c.output_dir) / "tokenizer"
    with state.main_process_first():
        if (folder / "tokenizer.json").exists() and (c.resume or not state.is_main_process):
            return load_tokenizer(str(folder))
        splits = TextSplits(c.dataset, data_files=c.data_files, text_column=c.text_column,
                            validation_fraction=c.validation_fraction, max_files=c.max_files)
        tokenizer = train_bpe(splits.documents("train"), c.vocab_size)  # read a batch at a time
        with atomic_dir(folder) as tmp:
            tokenizer.save_pretrained(tmp)
        return tokenizer


def run(c) -> None:
    """Train an AR teacher from scratch: BPE tokenizer, packed corpus, next-token loss."""
    from ..text.base import build_causal_lm, check_attn_implementation, load_tokenizer
    from ..training import process_state
    from ..training.causal import CausalLMTrainer
    from ..training.engines import low_memory_loading

    c.validate()
    check_attn_implementation(c.attn_implementation)  # before any data is read
    state = process_state()
    tokenizer = load_tokenizer(c.tokenizer) if c.tokenizer else _run_tokenizer(c, state)
    # with FSDP's RAM-efficient loading the main process initialises the weights, the others receive them
    empty = low_memory_loading() and not state.is_main_process
    model = build_causal_lm(c.model_config, tokenizer, seed=c.seed, attn_implementation=c.attn_implementation,
                            empty=empty)
    check_positions(model, c.seq_len)
    train_ids, val_ids, info = packed_splits(c, tokenizer, state)
    trainer = CausalLMTrainer(model, train_ids, c, eval_data=val_ids, tokenizer=tokenizer,
                              run_info=run_info(c, info, model, train_ids))
    final = trainer.train()
    trainer.announce("teacher", final)
