"""`mmdlm adapt`: a pretrained causal LM becomes a masked diffusion LM (DiffuGPT / DiffuLLaMA, Dream, NBDiff)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..training.lora import LoraArgs
from ..training.trainer import TrainArgs
from .common import DataArgs, attn_implementation_field, check_positions, maybe_lora, packed_splits, run_info


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
    attn_implementation: str = attn_implementation_field()


INITS = ("pretrained", "random")


def build_dlm(c, *, empty: bool = False, check: bool = True):
    """(DiffusionLM, tokenizer) for an adapt config: the causal LM's weights, or its architecture only.

    `empty`: the model on the meta device (no weights read, no memory), to receive its weights
    from the main process (FSDP's RAM-efficient loading); `check=False` leaves the
    bidirectionality probe for once the weights are there."""
    from ..text.adapt import DiffusionLM
    from ..text.base import load_causal_lm, load_tokenizer, random_causal_lm_like

    if c.init not in INITS:
        raise ValueError(f"unknown init {c.init!r}; choose one of {', '.join(INITS)}")
    tokenizer = load_tokenizer(c.model)
    attn = dict(attn_implementation=c.attn_implementation, empty=empty)
    model = load_causal_lm(c.model, **attn) if c.init == "pretrained" else \
        random_causal_lm_like(c.model, seed=c.seed, **attn)
    check_positions(model, c.seq_len)
    dlm = DiffusionLM.from_causal_lm(model, tokenizer, attention=c.attention, shift=c.shift,
                                     mask_token=c.mask_token, mask_init=c.mask_init,
                                     block_size=c.block_size if c.attention == "block" else None,
                                     anneal_steps=c.anneal_steps, schedule=c.schedule, eps=c.eps, check=check)
    return dlm, tokenizer


def run(c, *, data=None, trainer_cls=None, **trainer_options):
    """Adapt a causal LM into a diffusion LM and train it with the masked-diffusion loss.

    `data` = (train_ids, validation_ids or None, CorpusInfo) skips loading and packing the
    corpus (the study packs it once for all its runs); `trainer_cls` may be a subclass of
    `DiffusionTrainer`. Returns the trainer after training.
    """
    from ..text.base import check_attn_implementation
    from ..training import process_state
    from ..training.diffusion import DiffusionTrainer
    from ..training.engines import low_memory_loading

    c.validate()
    check_attn_implementation(c.attn_implementation)  # before any data is read
    c.validate_lora()
    state = process_state()
    # Only the main process reads the weights; the others build the model empty. Not with LoRA: peft keeps
    # the trained token rows' original values in buffers that FSDP does not send (they would stay empty).
    lazy = low_memory_loading() and not c.lora_r
    dlm, tokenizer = build_dlm(c, empty=lazy and not state.is_main_process, check=not lazy)
    if lazy:  # what the main process's probe found on the weights, for the processes that have none yet
        from accelerate.utils import broadcast_object_list

        dlm.mask_free, dlm.keeps_masked_logits = broadcast_object_list([dlm.mask_free, dlm.keeps_masked_logits])
    maybe_lora(c, dlm, state)
    train_ids, val_ids, info = data if data is not None else packed_splits(c, tokenizer, state)
    trainer = (trainer_cls or DiffusionTrainer)(
        dlm, train_ids, c, eval_data=val_ids, tokenizer=tokenizer, ar_loss_weight=c.ar_loss_weight,
        block_warmup_steps=c.block_warmup_steps, t_sampling=c.t_sampling, loss_normalize=c.loss_normalize,
        run_info=run_info(c, info, dlm, train_ids), **trainer_options)
    if lazy:  # the weights are in place once sharded: the probe, on every process (a collective)
        trainer.accelerator.unwrap_model(trainer.model).check_bidirectional()
    final = trainer.train()
    what = "LoRA adapter" if c.lora_r else "diffusion LM"
    trainer.announce(what, final)
    return trainer
