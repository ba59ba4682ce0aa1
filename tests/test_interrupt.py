"""A training run killed with SIGKILL, then resumed, ends with the weights of an uninterrupted run;
a kill during a checkpoint save leaves the previous checkpoint as the latest one. The killed run
is a subprocess; the reference and the resumed runs run here, all on one thread."""
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_causal_lm
from safetensors.torch import load_file

from mmdlm import cli
from mmdlm.training import latest_checkpoint

ROOT = Path(__file__).resolve().parent.parent
PAUSE_SCRIPT = Path(__file__).resolve().parent / "scripts" / "cli_with_pause.py"


def _env(**extra):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer_factory):
    root = tmp_path_factory.mktemp("interrupt")
    tokenizer = tokenizer_factory()
    tiny_causal_lm("llama", tokenizer).save_pretrained(root / "causal")
    tokenizer.save_pretrained(root / "causal")
    from conftest import TEXT
    (root / "corpus.txt").write_text("".join(TEXT))

    def argv(out):
        return ["adapt", "--model", str(root / "causal"), "--dataset", "local", "--data-files",
                str(root / "corpus.txt"), "--seq-len", "16", "--batch-size", "4", "--max-steps", "6",
                "--save-every", "2", "--warmup-steps", "0", "--lr", "1e-2", "--log-every", "1",
                "--eval-batches", "1", "--output-dir", str(out)]

    reference = root / "reference"
    _in_process(argv(reference))
    return root, argv, load_file(str(reference / "model" / "model.safetensors"))


def _in_process(argv) -> str:
    """Run `mmdlm ARGV` here, on one thread like the killed subprocess (same kernels, same bits)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert cli.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return out.getvalue()


def _kill_at(pause_at: str, argv, marker: Path, sig=signal.SIGKILL) -> tuple[int, str]:
    """(exit status, stderr) of `mmdlm ARGV` sent `sig` at the pause."""
    # SIGINT back to its default in the child: a shell without job control starts background jobs (a test
    # suite run with `&`) with SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    proc = subprocess.Popen([sys.executable, str(PAUSE_SCRIPT), *argv], env=_env(PAUSE_AT=pause_at,
                            PAUSE_MARKER=str(marker)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, f"the run ended before pausing: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the run never reached the pause"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _resume(argv) -> None:
    printed = _in_process([*argv, "--resume"])
    assert "resumed from" in printed and "(step 2)" in printed  # not a silent restart


def _assert_same(reference, out: Path):
    resumed = load_file(str(out / "model" / "model.safetensors"))
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4", "5", "6"]


def test_sigkill_between_checkpoints_then_resume(setup):
    root, argv, reference = setup
    out = root / "killed-mid-way"
    _kill_at("step:3", argv(out), root / "mid.marker")
    assert not (out / "model").exists()
    assert latest_checkpoint(out).name == "step-0000002"
    _resume(argv(out))
    _assert_same(reference, out)


def test_sigkill_during_a_save_leaves_the_previous_checkpoint(setup):
    root, argv, reference = setup
    out = root / "killed-in-save"
    _kill_at("save:4", argv(out), root / "save.marker")
    ckpts = out / "checkpoints"
    partial = ckpts / ".step-0000004.tmp"
    assert partial.is_dir() and not (ckpts / "step-0000004").exists()  # killed between write and rename
    assert latest_checkpoint(out).name == "step-0000002"
    _resume(argv(out))
    assert not partial.exists()  # the resumed run removed the leftover
    _assert_same(reference, out)


def test_ctrl_c_is_one_line_then_resume(setup):
    """SIGINT (Ctrl-C): `mmdlm adapt: interrupted`, exit status 130, no traceback; the run resumes."""
    root, argv, reference = setup
    out = root / "ctrl-c"
    code, err = _kill_at("step:3", argv(out), root / "ctrl-c.marker", sig=signal.SIGINT)
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().split("\n")[-1] == "mmdlm adapt: interrupted"
    _resume(argv(out))
    _assert_same(reference, out)
