"""Data parallelism equals gradient accumulation: 2 CPU processes (gloo) against 1 process.

Trains a small diffusion LM for a few steps twice from the same start: under
`accelerate launch --config_file configs/accelerate/cpu.yaml` (2 processes x batch b) and in
one process with grad_accum 2 (batch b), and records how far apart the weights end up.

    python bench/ddp_equality.py        # writes bench/results/ddp_equality.json
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "scripts"))

from train_worker import run  # noqa: E402

from mmdlm.data import load_text_splits, pack_texts  # noqa: E402
from mmdlm.data.tokenizer import train_bpe  # noqa: E402
from mmdlm.io import atomic_write_text  # noqa: E402
from mmdlm.provenance import machine, versions  # noqa: E402
from mmdlm.text.adapt import DiffusionLM  # noqa: E402
from mmdlm.text.base import build_causal_lm  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ddp_equality.json"))
    a = p.parse_args()

    train, _, _ = load_text_splits("stdlib", max_files=40)
    tokenizer = train_bpe(train["text"], 512)
    model_config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": a.seq_len}
    dlm = DiffusionLM.from_causal_lm(build_causal_lm(model_config, tokenizer), tokenizer)
    ids = pack_texts(train["text"], tokenizer, a.seq_len)[:256]
    args = dict(max_steps=a.steps, batch_size=a.batch_size, lr=3e-3, warmup_steps=0, log_every=1, eval_batches=1,
                seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dlm.save_pretrained(tmp / "dlm", tokenizer=tokenizer)
        save_file({"input_ids": ids}, str(tmp / "data.safetensors"))
        specs = {}
        for name, extra in (("ddp", {}), ("single", {"grad_accum": 2})):
            specs[name] = {"model": str(tmp / "dlm"), "data": str(tmp / "data.safetensors"),
                           "out": str(tmp / name / "weights"),
                           "args": {**args, **extra, "output_dir": str(tmp / name)}}
            (tmp / f"{name}.json").write_text(json.dumps(specs[name]))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                  str(ROOT / "configs/accelerate/cpu.yaml"), "--main_process_port", str(port),
                  str(ROOT / "tests/scripts/train_worker.py"), str(tmp / "ddp.json")]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        subprocess.run(launch, check=True, env=env, capture_output=True)
        ranks = [load_file(str(tmp / "ddp" / "weights" / f"weights-rank{i}.safetensors")) for i in (0, 1)]
        single = run(specs["single"])
        start = DiffusionLM.from_pretrained(tmp / "dlm").state_dict()
    diff = max((ranks[0][k] - single[k]).abs().max().item() for k in single)
    moved = max((ranks[0][k] - start[k]).abs().max().item() for k in single)
    record = {"command": " ".join(["python", "bench/ddp_equality.py", *sys.argv[1:]]), "machine": machine(),
              "versions": versions(),
              "settings": {"steps": a.steps, "batch_size": a.batch_size, "seq_len": a.seq_len, "lr": 3e-3,
                           "parameters": sum(v.numel() for v in start.values()),
                           "ddp": "2 processes x batch_size, accelerate launch configs/accelerate/cpu.yaml (gloo)",
                           "single": "1 process x batch_size x grad_accum 2"},
              "ranks_identical": all(torch.equal(ranks[0][k], ranks[1][k]) for k in single),
              "max_abs_diff_ddp_vs_single": diff, "max_abs_update": moved}
    atomic_write_text(a.out, json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k not in ("machine", "versions")}, indent=2))


if __name__ == "__main__":
    main()
