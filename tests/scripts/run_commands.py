"""Runs several `mmdlm` commands one after the other in this process; under `accelerate launch`
every process runs them, so one launch (one start-up) covers many training runs.

    accelerate launch ... run_commands.py SPEC.json

SPEC: {"runs": [[argv...], ...], "kill": {"run": i, "step": N}}. With "kill", every process
SIGKILLs itself right after optimizer step N of run i (a real kill, no clean-up), which ends
the launch; the runs before it have finished.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from accelerate.state import AcceleratorState, GradientState

import mmdlm.training.trainer as trainer_module
from mmdlm.cli import main

spec = json.loads(Path(sys.argv[1]).read_text())
kill = spec.get("kill")
original_step = trainer_module.Trainer.train_step

for i, argv in enumerate(spec["runs"]):
    if kill and kill["run"] == i:
        def train_step(self, _step=kill["step"]):
            loss = original_step(self)
            if self.step == _step:
                self.accelerator.wait_for_everyone()  # both processes are past the step
                os.kill(os.getpid(), signal.SIGKILL)
            return loss

        trainer_module.Trainer.train_step = train_step
    AcceleratorState._reset_state()  # the process group stays; the engine is set up again per run
    GradientState._reset_state()
    code = main(argv)
    if code:
        sys.exit(f"run {i} ({' '.join(argv[:1])}) failed with exit status {code}")
