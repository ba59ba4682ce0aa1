"""The `mmdlm` sub-commands, one module each: its config dataclass (every field a flag and a key of
its YAML recipe, `mmdlm.config`) and `run(config)`. Heavy imports stay inside `run`."""
from __future__ import annotations

from . import (
    adapt,
    average,
    caption,
    demo,
    eval_lm,
    eval_mm,
    generate,
    merge_lora,
    pretrain,
    sft,
    t2i,
    train_mm,
    train_vq,
)

# name -> (config class, run)
COMMANDS = {
    "pretrain": (pretrain.PretrainConfig, pretrain.run),
    "adapt": (adapt.AdaptConfig, adapt.run),
    "sft": (sft.SftConfig, sft.run),
    "merge-lora": (merge_lora.MergeLoraConfig, merge_lora.run),
    "generate": (generate.GenerateConfig, generate.run),
    "train-mm": (train_mm.TrainMMConfig, train_mm.run),
    "train-vq": (train_vq.TrainVQConfig, train_vq.run),
    "eval-mm": (eval_mm.EvalMMConfig, eval_mm.run),
    "eval-lm": (eval_lm.EvalLMConfig, eval_lm.run),
    "average": (average.AverageConfig, average.run),
    "demo": (demo.DemoConfig, demo.run),
    "t2i": (t2i.T2IConfig, t2i.run),
    "caption": (caption.CaptionConfig, caption.run),
}
