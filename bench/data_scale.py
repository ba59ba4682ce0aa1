"""Data that scales: memory per process and start-up time of the on-disk corpus, for corpora of 1x, 4x
and 16x the built-in one.

The built-in corpus (this Python's standard library, the files `mmdlm adapt` reads by default) is
written k times over as k jsonl files (k = 1, 4, 16; identical copies: an honest way to grow it
for memory and time, not for learning). For each size, on a fresh data cache:

1. prepare: one process prepares the corpus for `adapt` (what the main process of a run does
   the first time: `datasets` reads the files, the tokenizer writes the token file): wall time
   and peak RSS.
2. reuse: the same call again (what every other process, every resume and every later run with
   the same data pays): wall time and peak RSS.
3. train: `accelerate launch --config_file configs/accelerate/cpu.yaml` (2 processes, gloo)
   `mmdlm adapt` on the shipped teacher for a few steps on that corpus: each process's peak RSS
   and the time from the launch to the first optimizer step.

Peak RSS is the kernel's high-water mark of each process (`ru_maxrss`): the token file's pages
count in it when mapped, shared between the processes of the machine.

    python bench/data_scale.py          # bench/results/data_scale.{json,png} (~12 minutes on 2 shared cores)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def child_prepare(files: list[str], cache: str, model: str, seq_len: int) -> dict:
    """In a fresh process: `prepared_text` as `mmdlm adapt` calls it; seconds and peak RSS."""
    from mmdlm.data.corpus import prepared_text
    from mmdlm.text.adapt import DiffusionLM
    from mmdlm.text.base import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model)
    DiffusionLM.from_causal_lm(load_causal_lm(model), tokenizer)  # adds [MASK], as adapt does
    rss_before = _peak_rss_mb()
    start = time.perf_counter()
    train, validation, info = prepared_text("local", tokenizer=tokenizer, seq_len=seq_len, data_files=files,
                                            data_cache=cache)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(_peak_rss_mb(), 1),
            "peak_rss_before_mb": round(rss_before, 1), "train_rows": len(train),
            "tokens": len(train) * seq_len, "documents": info.train_docs + info.validation_docs}


def child_rank(argv: list[str], out: str) -> None:
    """One process of the launch: `mmdlm ARGV`, then its peak RSS into OUT/rss-rankN.json."""
    from mmdlm.cli import main

    code = main(argv)
    rank = int(os.environ.get("RANK", 0))
    Path(out, f"rss-rank{rank}.json").write_text(json.dumps({"rank": rank, "peak_rss_mb": _peak_rss_mb()}))
    sys.exit(code)


def _run_child(*args: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _env(folder: Path) -> dict:
    """One torch thread a process; `datasets`' Arrow copies of the corpus in `folder` (removed after)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(folder / "hf-datasets")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(files: list[str], cache: str, model: str, out: Path, a, env: dict) -> dict:
    """2 processes of `mmdlm adapt` under accelerate launch: per-rank peak RSS, time to the first step."""
    argv = ["adapt", "--model", model, "--dataset", "local", "--data-files", *files, "--data-cache", cache,
            "--seq-len", str(a.seq_len), "--batch-size", str(a.batch_size), "--max-steps", str(a.steps),
            "--warmup-steps", "0", "--log-every", "1", "--eval-batches", "2", "--output-dir", str(out)]
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "cpu.yaml"), "--num_processes", "2", "--main_process_port",
           str(_free_port()), __file__, "--child", "rank", str(out), "--", *argv]
    out.mkdir(parents=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_step = None
    while proc.poll() is None:
        log = out / "log.csv"
        if first_step is None and log.exists() and len(log.read_text().splitlines()) > 1:
            first_step = time.perf_counter() - start
        time.sleep(0.05)
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(err[-3000:])
    ranks = sorted((json.loads(p.read_text()) for p in out.glob("rss-rank*.json")), key=lambda r: r["rank"])
    return {"seconds_to_first_step": round(first_step, 2), "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mb_per_rank": [round(r["peak_rss_mb"], 1) for r in ranks]}


def write_corpus(folder: Path, copies: int, max_files: int | None) -> list[str]:
    """The built-in corpus (its first `max_files` files, train and validation documents alike), `copies`
    times: one jsonl file a copy."""
    from mmdlm.data.corpus import _stdlib_documents, _stdlib_files

    root, files = _stdlib_files(max_files)
    first = folder / "copy-00.jsonl"
    with first.open("w") as f:
        for _, text in _stdlib_documents(root, files, "train", validation_fraction=0.0):  # every file
            f.write(json.dumps({"text": text}) + "\n")
    paths = [first]
    for i in range(1, copies):
        paths.append(folder / f"copy-{i:02d}.jsonl")
        shutil.copyfile(first, paths[-1])
    return [str(p) for p in paths]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmdlm.io import save_figure

    runs = result["runs"]
    scales = [r["scale"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(scales, [r["prepare"]["peak_rss_mb"] for r in runs], "o-", label="preparing process")
    left.plot(scales, [r["reuse"]["peak_rss_mb"] for r in runs], "s-", label="reusing process")
    for rank in range(2):
        left.plot(scales, [r["train"]["peak_rss_mb_per_rank"][rank] for r in runs], "^-",
                  label=f"training, rank {rank}")
    left.set_xscale("log", base=2)
    left.set_xticks(scales, [f"{s}x" for s in scales])
    left.set_ylim(bottom=0)
    left.set_xlabel("corpus size (x the built-in corpus)")
    left.set_ylabel("peak RSS per process (MB)")
    left.legend(fontsize=8)
    right.plot(scales, [r["prepare"]["seconds"] for r in runs], "o-", label="prepare (first run)")
    right.plot(scales, [r["reuse"]["seconds"] for r in runs], "s-", label="reuse (later runs, resumes)")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xticks(scales, [f"{s}x" for s in scales])
    right.set_xlabel("corpus size (x the built-in corpus)")
    right.set_ylabel("seconds")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle("Data on disk: memory per process and start-up, by corpus size")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        if sys.argv[2] == "prepare":
            files, cache, model, seq_len = json.loads(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
            print(json.dumps(child_prepare(files, cache, model, seq_len)))
        else:  # rank OUT -- argv
            child_rank(sys.argv[sys.argv.index("--") + 1:], sys.argv[3])
        return
    from mmdlm.io import atomic_write_text
    from mmdlm.provenance import machine, versions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--model", default=str(ROOT / "assets" / "teacher"))
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-files", type=int, default=None,
                   help="the built-in corpus's first N files only (the 1x corpus; default: all of them)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_scale.json"))
    a = p.parse_args()

    runs = []
    with tempfile.TemporaryDirectory(prefix="data-scale-") as tmp:
        for scale in a.scales:
            folder = Path(tmp) / f"x{scale}"
            (folder / "corpus").mkdir(parents=True)
            files = write_corpus(folder / "corpus", scale, a.max_files)
            cache = str(folder / "cache")
            size = sum(Path(f).stat().st_size for f in files)
            print(f"{scale}x: {len(files)} files, {size / 1e6:.0f} MB of text", flush=True)
            env = _env(folder)
            prepare = _run_child("prepare", json.dumps(files), cache, a.model, str(a.seq_len), env=env)
            print(f"  prepared in {prepare['seconds']:.1f} s, peak RSS {prepare['peak_rss_mb']:.0f} MB", flush=True)
            reuse = _run_child("prepare", json.dumps(files), cache, a.model, str(a.seq_len), env=env)
            print(f"  reused in {reuse['seconds']:.2f} s, peak RSS {reuse['peak_rss_mb']:.0f} MB", flush=True)
            trained = train(files, cache, a.model, folder / "run", a, env)
            print(f"  trained: {trained}", flush=True)
            disk = sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file())
            runs.append({"scale": scale, "files": len(files), "text_bytes": size, "cache_bytes": disk,
                         "prepare": prepare, "reuse": reuse, "train": trained})
            shutil.rmtree(folder)  # the corpus, its data cache and datasets' Arrow copy
    base = runs[0]
    which = "all its" if a.max_files is None else f"its first {a.max_files}"
    peaks = {"prepare": [r["prepare"]["peak_rss_mb"] for r in runs],
             "train": [max(r["train"]["peak_rss_mb_per_rank"]) for r in runs]}
    result = {
        "benchmark": "data_scale",
        "runs": runs,
        "rss_growth": {k: round(max(v) / v[0] - 1, 4) for k, v in peaks.items()},
        "reuse_over_prepare": [round(r["reuse"]["seconds"] / r["prepare"]["seconds"], 4) for r in runs],
        "goals": {"rss_growth_max": 0.10, "reuse_over_prepare_max": 0.05},
        "settings": {"model": os.path.relpath(a.model, ROOT), "seq_len": a.seq_len, "batch_size": a.batch_size,
                     "steps": a.steps, "processes": 2, "launch": "accelerate launch --config_file "
                     "configs/accelerate/cpu.yaml (gloo)", "torch_threads": 1,
                     "max_files": a.max_files,
                     "corpus": f"the built-in corpus ({which} files, {base['text_bytes'] / 1e6:.1f} MB of text) "
                               "written k times as k jsonl files"},
        "machine": {**machine(), "note": "a shared 2-core machine (other jobs were running)"},
        "versions": versions(),
        "command": "python bench/data_scale.py " + " ".join(sys.argv[1:]),
    }
    out = Path(a.out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("rss_growth", "reuse_over_prepare")}))


if __name__ == "__main__":
    main()
