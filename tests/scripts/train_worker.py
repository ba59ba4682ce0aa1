"""Trains a tiny DLM saved by a test and writes this process's weights (run under accelerate launch).

    python train_worker.py SPEC.json      # or: accelerate launch ... train_worker.py SPEC.json

SPEC: {"model": DLM folder, "data": safetensors of the dataset, "out": folder, "args": TrainArgs keys}.
Each process writes OUT/weights-rank{i}.safetensors, so a test can compare the processes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def run(spec: dict) -> dict:
    from mmdlm.text.adapt import load_dlm
    from mmdlm.training import TrainArgs
    from mmdlm.training.diffusion import DiffusionTrainer

    dlm, tokenizer = load_dlm(spec["model"])
    data = load_file(spec["data"])
    trainer = DiffusionTrainer(dlm, data, TrainArgs(**spec["args"]), eval_data=data, tokenizer=tokenizer)
    trainer.train()
    a = trainer.accelerator
    weights = {k: v.detach().clone() for k, v in a.unwrap_model(trainer.model).state_dict().items()}
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / f"weights-rank{a.process_index}.safetensors"))
    return weights


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
