"""`mmdlm merge-lora`: fold a LoRA adapter into its base, a plain diffusion LM."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MergeLoraConfig:
    """Fold a LoRA adapter (mmdlm adapt/sft with lora_r > 0) into its base: a plain diffusion LM."""

    adapter: str | None = field(default=None, metadata={"help": "the LoRA DLM folder (OUTPUT_DIR/model of the run)"})
    output: str | None = field(default=None, metadata={"help": "folder for the merged diffusion LM"})
    base_model: str | None = field(default=None, metadata={
        "help": "base checkpoint, if it moved since training (default: the path recorded in the adapter)"})


def run(c) -> None:
    """Fold a LoRA adapter into its base and save a plain diffusion LM checkpoint."""
    from pathlib import Path

    from ..io import check_output_dir
    from ..text.adapt import ADAPTER_CONFIG, load_dlm

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
