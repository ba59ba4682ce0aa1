"""LoRA through peft, for any torch module: transformers LMs, diffusers transformers, plain modules.

`apply_lora(model, r=...)` wraps a model in a peft `PeftModel` whose only trainable weights
are the low-rank adapters (plus, optionally, single embedding rows through peft's
`trainable_token_indices`, or whole modules through `modules_to_save`). The result trains
like any module, `save_pretrained` writes only the adapter, `merge_lora` folds it back into
plain weights. `lora_dlm` does this for a diffusion LM: the new [MASK] row of the embedding
(and of an untied output head) is trained with the adapter and saved in it, so a causal LM
adapted with LoRA reloads exactly from its base.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

ALL_LINEAR = "all-linear"


@dataclass
class LoraArgs:
    """LoRA settings of a training command (off while lora_r is 0)."""

    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains every weight (no LoRA)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator: updates are scaled by alpha / r"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "names (suffixes) of the Linear modules that get adapters; default: all linear layers but the head"})

    def validate_lora(self) -> None:
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0 disables LoRA), got {self.lora_r}")
        if self.lora_r and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


def apply_lora(model: torch.nn.Module, *, r: int, alpha: int | None = None, dropout: float = 0.0,
               target_modules: list[str] | str | None = None, trainable_token_indices=None,
               modules_to_save: list[str] | None = None, base_model_name_or_path: str | None = None):
    """Wrap `model` with LoRA adapters (peft); every other weight is frozen.

    `target_modules`: module-name suffixes such as ["to_q", "to_k", "to_v"] (diffusers) or
    ["q_proj", "v_proj"] (LLaMA); default every Linear layer except a transformers model's
    output head. `alpha` defaults to r (scale 1). `trainable_token_indices`: rows of an
    embedding to train in full, [ids] for the input embedding or {module name: [ids]}.
    """
    from peft import LoraConfig, get_peft_model  # imported here: the CLI loads this module for LoraArgs

    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    targets = target_modules or ALL_LINEAR
    if targets != ALL_LINEAR:
        targets = list(targets)
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()} | \
                  {name for name, _ in model.named_modules()}
        missing = [t for t in targets if t not in present and not any(n.endswith("." + t) for n in present)]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise ValueError(f"LoRA target module(s) {missing} not found in {type(model).__name__}; "
                             f"its Linear layers are named {linear}")
    config = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else r, lora_dropout=dropout,
                        target_modules=targets, trainable_token_indices=trainable_token_indices,
                        modules_to_save=modules_to_save)
    peft_model = get_peft_model(model, config)
    if base_model_name_or_path is not None:
        peft_model.peft_config["default"].base_model_name_or_path = base_model_name_or_path
    return peft_model


def merge_lora(model) -> torch.nn.Module:
    """The base model with the adapter folded into its weights (peft `merge_and_unload`)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise ValueError(f"{type(model).__name__} carries no LoRA adapter to merge")
    return model.merge_and_unload()


def merged_transformer(model):
    """A LoRA-wrapped diffusers model (`ModelMixin`) merged, leaving `model` as it is: each adapted
    layer is copied and merged by peft and every other tensor is shared with `model`, so saving a
    LoRA fine-tune of a large transformer costs its adapted layers, not a second model. Adapters
    that also train whole modules or token rows (peft's `modules_to_save`, `trainable_token_indices`)
    are merged by peft's `merge_and_unload` on a copy of the model."""
    import copy

    from accelerate import init_empty_weights
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    base = model.get_base_model()
    if any(isinstance(module, AuxiliaryTrainingWrapper) for module in base.modules()):
        return copy.deepcopy(model).merge_and_unload()
    state = {key.replace(".base_layer.", "."): value for key, value in base.state_dict().items() if "lora_" not in key}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            layer = copy.deepcopy(module)
            layer.merge()
            state.update({f"{name}.{key}": value for key, value in layer.get_base_layer().state_dict().items()})
    with init_empty_weights():  # parameters on the meta device until the state is assigned
        plain = type(base).from_config(base.config)
    plain.load_state_dict(state, strict=True, assign=True)
    return plain.train(base.training)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def _module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def lora_dlm(dlm, args: LoraArgs, base: str) -> None:
    """Put LoRA on a DiffusionLM's transformers model, in place; the [MASK] row trains with it.

    `base` is the checkpoint the adapter will name as its base (a causal LM or a DLM folder);
    a local path is recorded absolute so the adapter reloads from any working directory.
    """
    args.validate_lora()
    model = dlm.model
    if hasattr(model, "peft_config"):
        raise ValueError("this model already carries a LoRA adapter; merge it first (mmdlm merge-lora)")
    mask = [dlm.mask_token_id]
    rows = {_module_name(model, model.get_input_embeddings()): mask}
    head = model.get_output_embeddings()
    tied = getattr(model.config, "tie_word_embeddings", False)
    if head is not None and not tied:  # an untied head has its own [MASK] row, saved with the adapter
        rows[_module_name(model, head)] = mask
    base_name = str(Path(base).resolve()) if Path(base).exists() else base
    dlm.model = apply_lora(model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                           target_modules=args.lora_target_modules, trainable_token_indices=rows,
                           base_model_name_or_path=base_name)
