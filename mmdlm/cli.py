"""The `mmdlm` command: one entry point, one sub-command per job (mmdlm/commands), each readable from
a YAML recipe."""
from __future__ import annotations

import argparse
import os
import sys

from . import config as cfg
from .commands import COMMANDS
from .commands.adapt import AdaptConfig
from .commands.average import AverageConfig
from .commands.caption import CaptionConfig
from .commands.common import DataArgs
from .commands.eval_lm import EvalLMConfig
from .commands.eval_mm import EvalMMConfig
from .commands.generate import GenerateConfig
from .commands.merge_lora import MergeLoraConfig
from .commands.pretrain import PretrainConfig
from .commands.sft import SftConfig
from .commands.t2i import T2IConfig
from .commands.train_mm import TrainMMConfig
from .commands.train_vq import TrainVQConfig
from .demo.config import DemoConfig

__all__ = ["COMMANDS", "AdaptConfig", "AverageConfig", "CaptionConfig", "DataArgs", "DemoConfig", "EvalLMConfig",
           "EvalMMConfig", "GenerateConfig", "MergeLoraConfig", "PretrainConfig", "SftConfig", "T2IConfig",
           "TrainMMConfig", "TrainVQConfig", "main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmdlm", description="Discrete diffusion for text and images.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (cls, _) in COMMANDS.items():
        sp = sub.add_parser(name, help=cls.__doc__, description=cls.__doc__)
        cfg.add_arguments(sp, cls)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import torch

    if not torch.accelerator.is_available():  # DeepSpeed (mmdlm[scale]) would warn, when imported, that it found none
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    cls, run = COMMANDS[args.command]
    try:
        run(cfg.resolve(cls, args))
    except (ValueError, FileNotFoundError) as err:
        print(f"mmdlm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, and the shell's exit status for SIGINT
        print(f"\nmmdlm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
