"""Real multi-process runs on CPU (gloo), launched the way users launch them: accelerate launch
with the shipped configs/accelerate/cpu.yaml. Each takes seconds (process start-up dominates)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TEXT, tiny_causal_lm
from safetensors.torch import load_file, save_file

from mmdlm.data import pack_texts
from mmdlm.text.adapt import DiffusionLM

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"
ACCELERATE = Path(sys.executable).with_name("accelerate")
sys.path.insert(0, str(SCRIPTS))

from train_worker import run  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*argv, processes: int = 2, timeout: int = 120, config: str = "cpu.yaml",
           check: bool = True) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/CONFIG ...`, on a free port."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "configs" / "accelerate" / config),
           "--num_processes", str(processes), "--main_process_port", str(free_port()), *map(str, argv)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture
def tiny_run(tmp_path, tokenizer):
    """A tiny DLM folder and an SFT-style dataset (prompt positions protected) on disk."""
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    dlm.save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    ids = pack_texts(TEXT, tokenizer, 16)
    prompt = torch.arange(16)[None].expand(len(ids), -1) < torch.arange(len(ids))[:, None] % 5 + 1
    save_file({"input_ids": ids, "prompt_mask": prompt.contiguous()}, str(tmp_path / "data.safetensors"))

    def spec(name, **args):
        base = dict(output_dir=str(tmp_path / name), max_steps=3, batch_size=2, lr=1e-2, warmup_steps=0,
                    log_every=1, eval_batches=1, save_every=2, seed=0)
        path = tmp_path / f"{name}.json"
        s = {"model": str(tmp_path / "dlm"), "data": str(tmp_path / "data.safetensors"),
             "out": str(tmp_path / name / "weights"), "args": {**base, **args}}
        path.write_text(json.dumps(s))
        return path, s
    return spec


def test_two_processes_equal_one_process_with_accumulation(tiny_run, tmp_path):
    """2 processes x batch 2 (DDP, gloo) == 1 process x batch 2 x grad_accum 2: same global batch,
    same noise per example; both processes hold identical weights."""
    path, _ = tiny_run("ddp")
    launch(SCRIPTS / "train_worker.py", path)
    rank0 = load_file(str(tmp_path / "ddp" / "weights" / "weights-rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp" / "weights" / "weights-rank1.safetensors"))
    _, spec = tiny_run("single", grad_accum=2)
    single = run(spec)
    start = DiffusionLM.from_pretrained(tmp_path / "dlm").state_dict()

    assert rank0.keys() == rank1.keys() == single.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), k
    moved = max((rank0[k] - start[k]).abs().max().item() for k in rank0)
    diff = max((rank0[k] - single[k]).abs().max().item() for k in rank0)
    print(f"max |DDP - single| = {diff:.3e}; max update from init = {moved:.3e}")
    assert moved > 1e-3  # the runs really trained
    assert diff < 1e-5
    run_info = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run_info["num_processes"] == 2 and "MULTI_CPU" in run_info["distributed_type"]
    assert (tmp_path / "ddp" / "checkpoints" / "step-0000002" / "trainer_state.json").exists()
