"""`mmdlm ARGS...` that pauses at a chosen point so a test can SIGKILL it there.

    PAUSE_AT=step:N   pause after optimizer step N (between checkpoints)
    PAUSE_AT=save:N   pause inside the save of checkpoint N: its temporary folder is written,
                      the rename to checkpoints/step-N has not happened
While paused, the file named by PAUSE_MARKER exists; the process sleeps until killed.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import mmdlm.training.trainer as trainer_module
from mmdlm.cli import main

kind, _, n = os.environ["PAUSE_AT"].partition(":")
N, MARKER = int(n), Path(os.environ["PAUSE_MARKER"])


def pause() -> None:
    MARKER.write_text("paused")
    time.sleep(600)


if kind == "step":
    original_step = trainer_module.Trainer.train_step

    def train_step(self):
        loss = original_step(self)
        if self.step == N:
            pause()
        return loss

    trainer_module.Trainer.train_step = train_step
elif kind == "save":
    original_replace = trainer_module.replace_dir

    def replace_dir(tmp, path):
        if Path(path).name == f"step-{N:07d}":
            pause()
        original_replace(tmp, path)

    trainer_module.replace_dir = replace_dir
else:
    raise SystemExit(f"unknown PAUSE_AT {os.environ['PAUSE_AT']!r}")

sys.exit(main(sys.argv[1:]))
