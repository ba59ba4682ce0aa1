"""bench/gpu_check.py, the GPU check, runs its phases at tiny sizes on the CPU (so that it cannot rot before a GPU
is lent), records a phase that fails or runs out of time, and bench/report.py renders its JSON."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402
import report  # noqa: E402


def test_tiny_check_runs_every_phase(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--in-process", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert {name: p["status"] for name, p in r["phases"].items()} == dict.fromkeys(gpu_check.PHASES, "ok")
    assert r["phases"]["tests"]["collected"] > 20  # the gpu tests import and collect (CI skips them)
    adaptation = {(x["model"], x["variant"]) for x in r["phases"]["adaptation"]["records"]}
    assert adaptation == {(m, v) for m in ("qwen2-tiny", "gpt2-tiny") for v in ("ar", "dlm mask-free", "dlm 4D mask")}
    sampling = r["phases"]["sampling"]["records"]
    assert {x["method"] for x in sampling} == {"ar", "dlm vanilla", "dlm prefix", "dlm dual"}
    timed = [x for x in sampling if "sampler_overhead" in x]
    assert len(timed) == 3 and all(0 < x["forward_ms"] < x["step_ms"] for x in timed)
    assert all(x["host_syncs_per_step"] <= 1.5 for x in timed)  # one per step, and a few per call
    assert [x["backbone"] for x in r["phases"]["multimodal"]["records"]] == ["mmdit", "discrete"]
    table = report.gpu(r)
    assert table.startswith("**A dry run at tiny sizes") and "| dlm dual |" in table and "| discrete |" in table


def test_a_phase_out_of_time_is_recorded_and_the_check_goes_on(tmp_path):
    args = gpu_check.argparse.Namespace(in_process=False, device="cpu", tiny=True)
    record = gpu_check.run_phase("matmul", args, tmp_path, None, limit=0.5)  # not even the imports fit
    assert record["status"] == "timeout" and "0 s" in record["error"]


def test_gpu_table_and_goals():
    adaptation = [{"model": "qwen2-0.5b", "variant": v, "seq_len": 2048, "batch_size": 8, "parameters": 494_032_768,
                   "tokens_per_s": t, "mfu_datasheet": m, "mfu_matmul": m * 989 / 790, "peak_memory_gb": 40.0}
                  for v, t, m in (("ar", 100_000.0, 0.38), ("dlm mask-free", 99_000.0, 0.41),
                                  ("dlm 4D mask", 80_000.0, 0.33))]
    sampling = [{"method": m, "batch_size": b, "tokens_per_s": 100.0 * b} for m in ("ar", "dlm vanilla")
                for b in (1, 8)]
    sampling[3].update(sampler_overhead=0.08, forward_ms=10.0, step_ms=10.9, host_syncs_per_step=1.0)
    phases = {"tests": {"status": "ok", "seconds": 60.0, "ran": True, "passed": 50, "failed": 1, "skipped": 0,
                        "failed_tests": ["tests.test_gpu::test_x: boom"]},
              "matmul": {"status": "ok", "seconds": 3.0, "tflops": 790.0, "dtype": "bfloat16"},
              "adaptation": {"status": "timeout", "seconds": 170.0, "error": "stopped after 170 s",
                             "records": adaptation},
              "sampling": {"status": "ok", "seconds": 30.0, "records": sampling, "model": "qwen2-0.5b",
                           "dtype": "bfloat16", "prompt_len": 128, "gen_len": 128, "block_length": 32,
                           "mask_free": True},
              "multimodal": {"status": "failed", "seconds": 5.0, "error": "RuntimeError: oom"}}
    r = {"device": "cuda", "tiny": False, "gpu": {"name": "NVIDIA H200", "memory_gb": 139.8, "cuda": "13.0"},
         "versions": {"torch": "2.11.0", "transformers": "5.17.0", "diffusers": "0.42.1"},
         "peak_tflops": {"datasheet_bf16": 989.0, "matmul_measured": 790.0}, "command": "python bench/gpu_check.py",
         "seconds": 400.0, "phases": phases, "goals": gpu_check.goals(phases)}
    assert r["goals"]["met"] == {"adaptation_mfu_0.5b": True, "dlm_over_ar_0.5b": True,
                                 "sampler_overhead_batch8": False}
    table = report.gpu(r)
    assert "**50 passed, 1 failed**" in table and "- failed: `tests.test_gpu::test_x: boom`" in table
    assert "best variant: **41.0%** (met)" in table and "**dlm mask-free / ar 0.990** (met)" in table
    assert "| qwen2-0.5b (494M) | dlm mask-free | 2048 x 8 | 99,000 | 41.0 | 51.3 | 40.0 |  |" in table
    assert "| dlm vanilla | 100.0 | 800.0 | 1.00 | 8.0 | 10.0 | 1.0 |" in table
    assert "adaptation timeout (stopped after 170 s)" in table and "multimodal failed (RuntimeError: oom)" in table
    assert report.gpu(None).startswith("**Not run on a GPU yet**")  # no gpu.json: said plainly
