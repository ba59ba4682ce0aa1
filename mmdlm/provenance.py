"""Where a result came from: the machine, the command line and the library versions (for run.json
and benchmark records). The ground floor: it imports nothing of mmdlm."""
from __future__ import annotations

import sys

import torch


def machine() -> dict:
    import os
    import platform

    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def command_line(program: str = "mmdlm") -> str:
    """The running command (`program` and this process's arguments), quoted so that a shell runs it
    again as it was."""
    import shlex

    return shlex.join([*program.split(), *sys.argv[1:]])


def versions() -> dict:
    import platform

    import accelerate
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__}
