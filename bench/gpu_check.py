"""The GPU check (issue 25): one script, at most 8 minutes on one GPU, nothing downloaded.

    python bench/gpu_check.py                           # a CUDA GPU: bench/results/gpu.json (make gpu-check)
    python bench/gpu_check.py --device cpu --tiny       # the same phases at tiny sizes (make gpu-check DEVICE=cpu)

Each phase runs in a process of its own under a time limit (the whole check has `--budget` seconds); one that fails
or runs out of time is recorded as such, with whatever it measured before, and the next one runs:

- tests: the tests marked gpu (tests/test_gpu.py: every command and pipeline end to end on CUDA; the CUDA cases of
  tests/test_host_syncs.py); at tiny sizes on the CPU they are only collected;
- matmul: this GPU's bf16 matrix-product rate (8192^3, CUDA events), the second ceiling MFU is given against;
- adaptation: training tokens/s and MFU with random weights, bf16 autocast (accelerate), through the real trainers:
  a Qwen2-0.5B-shaped model at sequence 2048 and a GPT-2-small-shaped one at 1024; AR pretraining (the reference)
  and masked-diffusion adaptation with the 4D mask, mask-free, and compiled (regional torch.compile);
- sampling: generated tokens/s of the 0.5B model in bf16, AR with its KV cache against the DLM vanilla / prefix /
  dual cache, batch 1, 8 and 32; for the DLM at batch 8 the sampler overhead (the step's time less the model's
  forward time, timed with CUDA events around each forward) and host synchronisations per step;
- multimodal: training step time of the MM-DiT on SD3-VAE latents of 256x256 images (16 x 32 x 32) and of the
  discrete backbone on VQ codes of 256x256 images (16 x 16), bf16, with 64 caption tokens.

MFU = tokens/s x FLOPs per token / peak, FLOPs per token = 6 N + attention, N the parameters that multiply (all but
the embedding tables, the output head counted even where it is tied) and attention 12 L d S (6 L d S under causal
attention, whose kernels skip the upper half); the DLM computes its head on the masked positions only, and is
credited with all of them, as the AR model is. Peaks: 989 TFLOP/s (the H100 / H200 datasheet's dense bf16) and the
measured matmul rate.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                   ("TRANSFORMERS_VERBOSITY", "error")):
    os.environ.setdefault(key, value)

from mmdlm.io import atomic_write_text  # noqa: E402

PHASES = ("tests", "matmul", "adaptation", "sampling", "multimodal")
PHASE_LIMIT_S = {"tests": 120, "matmul": 25, "adaptation": 170, "sampling": 75, "multimodal": 50}  # 440 in all
DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}
GOALS = {"adaptation_mfu_0.5b": 0.40, "dlm_over_ar_0.5b": 0.95, "sampler_overhead_batch8": 0.05}

# Model shapes (transformers configs) at real and tiny sizes.
QWEN_05B = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096,
                tie_word_embeddings=True, rope_theta=1e6)
GPT2_124M = dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)
TINY_LM = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=True)
TINY_GPT2 = dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=512)


# ---------------------------------------------------------------- shared pieces
class Phase:
    """What a phase has measured so far, written (atomically) after every record, so that a phase stopped at its
    time limit still leaves its records."""

    def __init__(self, path: Path | None, device: str, tiny: bool):
        self.path, self.device, self.tiny = path, torch.device(device), tiny
        self.data: dict = {"records": []}

    def add(self, record: dict) -> None:
        self.data["records"].append(record)
        print(json.dumps(record), flush=True)
        self.save()

    def set(self, **values) -> None:
        self.data.update(values)
        self.save()

    def save(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def released() -> None:
    """Drop what the last measurement held: accelerate's process-wide state, Python garbage, cached GPU memory."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def causal_lm(shape: dict, device, attn_implementation: str = "sdpa"):
    """A causal LM with random weights, initialised on `device` (fast at 0.5B)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**shape)
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def matmul_parameters(model) -> int:
    """Parameters that multiply each token: all but the embedding tables, with the output head (tied or not)."""
    embeddings = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    head = model.get_output_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embeddings + head


def flops_per_token(model, seq_len: int, causal: bool) -> float:
    c = model.config
    layers = getattr(c, "num_hidden_layers", None) or c.n_layer
    width = getattr(c, "hidden_size", None) or c.n_embd
    attention = 12 * layers * width * seq_len * (0.5 if causal else 1.0)
    return 6 * matmul_parameters(model) + attention


def mfu(tokens_per_s: float, flops: float, peak_tflops: float | None) -> float | None:
    return None if not peak_tflops else round(tokens_per_s * flops / (peak_tflops * 1e12), 4)


# ---------------------------------------------------------------- phases
def phase_tests(phase: Phase, out_dir: Path, limit: float | None) -> None:
    """pytest on the tests marked gpu, stopped a little before `limit` (the results so far are read from its
    verbose output); at tiny sizes (the CPU) they are collected only."""
    import importlib.util
    import re
    import xml.etree.ElementTree as ET

    files = ["tests/test_gpu.py", "tests/test_host_syncs.py"]  # (importing all of tests/ would need gradio)
    junit, output = out_dir / "gpu-tests.xml", out_dir / "gpu-tests.log"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider"]
    if phase.tiny:
        command += ["-q", "--collect-only"]
    else:
        command += ["-v", "--junitxml", str(junit)]
        if importlib.util.find_spec("pytest_timeout") is not None:
            command += ["--timeout", "100"]  # one hanging test must not take the others with it
        if importlib.util.find_spec("xdist") is not None:  # 4 processes share the GPU: the models are tiny
            command += ["-n", "4"]
    command += files
    t0 = time.perf_counter()
    with output.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=None if limit is None else max(limit - 15, 5))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
    seconds = round(time.perf_counter() - t0, 1)
    text = output.read_text()
    print(text[-6000:], flush=True)
    if phase.tiny:
        collected = sum(1 for line in text.splitlines() if "::" in line)
        phase.set(collected=collected, ran=False, seconds=seconds, exit_code=code)
        if code != 0:
            raise RuntimeError(f"pytest could not collect the gpu tests (exit {code})")
        return
    outcome = {}  # test id -> PASSED / FAILED / ERROR / SKIPPED, from the verbose lines
    for line in text.splitlines():
        m = re.search(r"(PASSED|FAILED|ERROR|SKIPPED)\s+(tests/\S+::\S+)", line) or \
            re.search(r"(tests/\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED)", line)
        if m:
            word, test = (m.group(1), m.group(2)) if m.group(1).isupper() else (m.group(2), m.group(1))
            outcome[test] = word
    failed = []
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            for bad in list(case.findall("failure")) + list(case.findall("error")):
                message = (bad.get("message") or "").strip().splitlines()
                failed.append(f"{case.get('classname')}::{case.get('name')}: {message[0][:300] if message else ''}")
    else:
        failed = [test for test, word in outcome.items() if word in ("FAILED", "ERROR")]
    counts = {word: sum(1 for w in outcome.values() if w == word) for word in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    phase.set(ran=True, seconds=seconds, exit_code=code, complete=junit.exists(), failed_tests=failed,
              passed=counts["PASSED"], failed=counts["FAILED"] + counts["ERROR"], skipped=counts["SKIPPED"])
    if not junit.exists():
        raise TimeoutError(f"pytest stopped after {seconds:.0f} s; {len(outcome)} tests had finished")


def phase_matmul(phase: Phase) -> None:
    """The bf16 (CPU: float32) matrix-product rate on random data, median of timed products after warm-ups."""
    n, dtype = (256, torch.float32) if phase.tiny else (8192, torch.bfloat16)
    a, b = (torch.randn(n, n, device=phase.device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(5 if phase.tiny else 20):
        phase.sync()
        t0 = time.perf_counter()
        a @ b
        phase.sync()
        times.append(time.perf_counter() - t0)
    tflops = 2 * n**3 / statistics.median(times) / 1e12
    phase.set(n=n, dtype=str(dtype).removeprefix("torch."), tflops=round(tflops, 1 if tflops > 1 else 4))


def _train_rate(trainer, steps: int, warmup: int, phase: Phase) -> tuple[float, list[float]]:
    """(seconds per step, per-round seconds) of `trainer.train_step`, after `warmup` steps."""
    for _ in range(warmup):
        trainer.train_step()
    phase.sync()
    rounds = []
    for _ in range(2):
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        phase.sync()
        rounds.append((time.perf_counter() - t0) / steps)
    return min(rounds), rounds


def phase_adaptation(phase: Phase, peak: float | None) -> None:
    """AR pretraining and masked-diffusion adaptation, random weights, through the real trainers."""
    from mmdlm.text.adapt import DiffusionConfig, DiffusionLM
    from mmdlm.training import TrainArgs
    from mmdlm.training.causal import CausalLMTrainer
    from mmdlm.training.diffusion import DiffusionTrainer

    if phase.tiny:
        sizes = {"qwen2-tiny": (TINY_LM, 64, 4), "gpt2-tiny": (TINY_GPT2, 64, 4)}
        steps, mixed = 2, "no"
    else:
        sizes = {"qwen2-0.5b": (QWEN_05B, 2048, 8), "gpt2-124m": (GPT2_124M, 1024, 16)}
        steps, mixed = 4, "bf16"
    variants = ["dlm mask-free", "ar", "dlm 4D mask"]
    flash = not phase.tiny and _flash_attention_installed()
    plan = [(size, v) for size in sizes for v in variants + (["dlm flash_attention_2"] if flash else [])]
    if not phase.tiny:  # compiling takes the longest: after every eager measurement of both sizes
        plan += [(size, v) for size in sizes for v in ("dlm mask-free compiled", "ar compiled")]
    phase.set(plan=[f"{s}: {v}" for s, v in plan], mixed_precision=mixed)
    with tempfile.TemporaryDirectory() as tmp:
        for size, variant in plan:
            shape, seq_len, batch = sizes[size]
            vocab = shape["vocab_size"]
            data = torch.randint(0, vocab - 1, (batch * 64, seq_len))
            args = TrainArgs(output_dir=f"{tmp}/run", max_steps=10_000, batch_size=batch, warmup_steps=0, lr=1e-5,
                             mixed_precision=mixed, compile="compiled" in variant, log_every=10_000,
                             device=phase.device.type)
            impl = "flash_attention_2" if "flash" in variant else "sdpa"
            model = causal_lm(shape, phase.device, impl)
            is_dlm = variant.startswith("dlm")
            if is_dlm:  # the last vocabulary row stands for [MASK]: the weights are random anyway
                model = DiffusionLM(model, DiffusionConfig(mask_token_id=vocab - 1))
                if "4D" in variant:
                    model.mask_free = False
                trainer = DiffusionTrainer(model, data, args)
            else:
                trainer = CausalLMTrainer(model, data, args)
            warmup = 3 if "compiled" in variant else 2
            seconds, rounds = _train_rate(trainer, steps, warmup, phase)
            inner = model.model if is_dlm else model
            tokens_per_s = batch * seq_len / seconds
            flops = flops_per_token(inner, seq_len, causal=not is_dlm)
            record = {"model": size, "variant": variant, "seq_len": seq_len, "batch_size": batch,
                      "parameters": sum(p.numel() for p in inner.parameters()),
                      "matmul_parameters": matmul_parameters(inner), "flops_per_token": flops,
                      "tokens_per_s": round(tokens_per_s, 1), "step_s": round(seconds, 4),
                      "round_step_s": [round(r, 4) for r in rounds], "peak_memory_gb": peak_memory_gb(),
                      "mfu_datasheet": mfu(tokens_per_s, flops, peak), "mask_free": getattr(model, "mask_free", None)}
            if is_dlm and "compiled" not in variant and phase.device.type == "cuda":  # (on the CPU the optimizer
                record["host_syncs_per_step"] = host_syncs(phase, trainer.train_step)  # reads its step counters)
            phase.add(record)
            del trainer, model, data
            released()


def host_syncs(phase: Phase, work) -> int | None:
    """The host synchronisations of `work()` (`mmdlm.devices.count_host_syncs`), None where the profiler fails."""
    from mmdlm.devices import count_host_syncs

    try:
        with count_host_syncs(cuda=phase.device.type == "cuda") as syncs:
            work()
    except Exception as err:  # noqa: BLE001 - a profiler that cannot run costs one figure, not the phase
        print(f"host syncs not counted: {type(err).__name__}: {err}", flush=True)
        return None
    return syncs.count


def _flash_attention_installed() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


class ForwardTimer:
    """Times every forward of a module with CUDA events (no synchronisation while it runs; CPU: the clock)."""

    def __init__(self, module, device):
        self.cuda, self.events, self.cpu_times, self._t0 = device.type == "cuda", [], [], 0.0
        self.hooks = [module.register_forward_pre_hook(self._start), module.register_forward_hook(self._end)]

    def _start(self, module, args):
        if self.cuda:
            self.events.append([torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)])
            self.events[-1][0].record()
        else:
            self._t0 = time.perf_counter()

    def _end(self, module, args, output):
        if self.cuda:
            self.events[-1][1].record()
        else:
            self.cpu_times.append(time.perf_counter() - self._t0)

    def seconds(self) -> float:
        """The forwards' total time (after a synchronisation)."""
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.events) / 1000
        return sum(self.cpu_times)

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def phase_sampling(phase: Phase) -> None:
    """Generated tokens/s: AR with its KV cache against the DLM's caches, the same weights, bf16."""
    from mmdlm.schedulers import MaskedDiffusionScheduler
    from mmdlm.text.adapt import DiffusionConfig, DiffusionLM
    from mmdlm.text.generate import block_ranges, generate

    shape, prompt_len, gen_len, block, batches = (
        (TINY_LM, 8, 8, 4, (1, 2)) if phase.tiny else (QWEN_05B, 128, 128, 32, (1, 8, 32)))
    dtype = torch.float32 if phase.tiny else torch.bfloat16
    model = causal_lm(shape, phase.device).to(dtype).eval()
    model.generation_config.eos_token_id = None  # every row generates gen_len tokens
    vocab = shape["vocab_size"]
    dlm = DiffusionLM(model, DiffusionConfig(mask_token_id=vocab - 1)).eval()
    phase.set(model="qwen2-tiny" if phase.tiny else "qwen2-0.5b", dtype=str(dtype).removeprefix("torch."),
              prompt_len=prompt_len, gen_len=gen_len, block_length=block, mask_free=dlm.mask_free)
    scheduler = MaskedDiffusionScheduler()
    g = torch.Generator(phase.device).manual_seed(0)

    @torch.no_grad()
    def run(method: str, b: int, n: int, timed: bool = True) -> tuple[float, int]:
        """(seconds, forward passes) of generating `n` tokens after `b` random prompts; untimed, nothing waits for
        the device (to count the sampler's own host synchronisations)."""
        prompt = torch.randint(0, vocab - 1, (b, prompt_len), generator=g, device=phase.device)
        if timed:
            phase.sync()
        t0 = time.perf_counter()
        if method == "ar":
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
            nfe = n
        else:
            ids = torch.cat([prompt, torch.full((b, n), vocab - 1, device=phase.device)], 1)
            nfe = generate(dlm, ids, scheduler, steps=n, blocks=block_ranges(prompt_len, prompt_len + n, block),
                           cache=method.removeprefix("dlm ")).nfe
        if timed:
            phase.sync()
        return time.perf_counter() - t0, nfe

    methods = ["ar", "dlm none", "dlm prefix", "dlm dual"]
    for b in batches:
        for method in methods:
            run(method, b, block)  # warm-up
            seconds, nfe = run(method, b, gen_len)
            record = {"method": method.replace("dlm none", "dlm vanilla"), "batch_size": b,
                      "tokens_per_s": round(b * gen_len / seconds, 1), "seconds": round(seconds, 3),
                      "nfe_per_token": round(nfe / gen_len, 3)}
            if method != "ar" and b == (8 if not phase.tiny else batches[-1]):
                timer = ForwardTimer(dlm, phase.device)
                total, nfe = run(method, b, gen_len)
                forward = timer.seconds()
                timer.remove()
                syncs = host_syncs(phase, lambda: run(method, b, gen_len, timed=False))
                record.update(step_ms=round(1000 * total / nfe, 3), forward_ms=round(1000 * forward / nfe, 3),
                              sampler_overhead=round(1 - forward / total, 4),
                              host_syncs_per_step=None if syncs is None else round(syncs / gen_len, 3))
            phase.add(record)


def phase_multimodal(phase: Phase, peak: float | None) -> None:
    """Training step time of both multimodal backbones at 256x256-image sizes, through their trainers."""
    from mmdlm.multimodal.discrete import UnifiedDiscreteTransformer
    from mmdlm.multimodal.mmdit import DualDiffusionTransformer2DModel
    from mmdlm.training import TrainArgs
    from mmdlm.training.discrete import DiscreteTrainer
    from mmdlm.training.mmdit import MMDiTTrainer

    class Words:  # what the MM-DiT trainer reads of a tokenizer: nothing but its presence
        pass

    text_len, vocab = (8, 64) if phase.tiny else (64, 32000)
    batch, steps, mixed = (2, 2, "no") if phase.tiny else (16, 4, "bf16")
    width, heads = (32, 2) if phase.tiny else (768, 12)
    side, grid = (8, 4) if phase.tiny else (32, 16)  # latent side (SD3 VAE: 256 / 8), code grid (VQ: 256 / 16)
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in ("mmdit", "discrete"):
            args = TrainArgs(output_dir=f"{tmp}/{backbone}", max_steps=10_000, batch_size=batch, warmup_steps=0,
                             lr=1e-5, mixed_precision=mixed, log_every=10_000, device=phase.device.type)
            torch.manual_seed(0)
            n = batch * 8
            text = torch.randint(0, vocab - 1, (n, text_len))
            tasks = {"t2i": 0.4, "caption": 0.4, "joint": 0.2}
            if backbone == "mmdit":
                model = DualDiffusionTransformer2DModel(
                    sample_size=side, patch_size=2, in_channels=16, out_channels=16,
                    num_layers=2 if phase.tiny else 12, attention_head_dim=width // heads, num_attention_heads=heads,
                    joint_attention_dim=width, caption_projection_dim=width, pooled_projection_dim=width,
                    pos_embed_max_size=side // 2, vocab_size=vocab, text_length=text_len, mask_token_id=vocab - 1)
                data = {"latents": torch.randn(n, 16, side, side), "text_ids": text}
                trainer = MMDiTTrainer(model, data, args, tokenizer=Words(), task_weights=tasks)
                tokens = (side // 2) ** 2 + text_len
            else:
                model = UnifiedDiscreteTransformer(
                    codebook_size=64 if phase.tiny else 8192, vocab_size=vocab, mask_token_id=vocab - 1,
                    sample_size=grid, text_length=text_len, num_layers=1 if phase.tiny else 6,
                    num_single_layers=1 if phase.tiny else 12, num_attention_heads=heads,
                    attention_head_dim=width // heads, axes_dims_rope=(4, 6, 6) if phase.tiny else (16, 24, 24))
                codebook = model.config.codebook_size
                data = {"codes": torch.randint(0, codebook, (n, grid * grid)), "text_ids": text}
                trainer = DiscreteTrainer(model, data, args, task_weights=tasks)
                tokens = grid * grid + text_len
            seconds, rounds = _train_rate(trainer, steps, 2, phase)
            parameters = sum(p.numel() for p in model.parameters())
            flops = 6 * parameters + 12 * _blocks(model) * width * tokens  # per token: every block attends to all
            tokens_per_s = batch * tokens / seconds
            phase.add({"backbone": backbone, "batch_size": batch, "tokens_per_sample": tokens,
                       "image_tokens": tokens - text_len, "text_tokens": text_len, "parameters": parameters,
                       "step_s": round(seconds, 4), "round_step_s": [round(r, 4) for r in rounds],
                       "samples_per_s": round(batch / seconds, 1), "tokens_per_s": round(tokens_per_s, 1),
                       "mfu_datasheet": mfu(tokens_per_s, flops, peak), "peak_memory_gb": peak_memory_gb()})
            del trainer, model, data
            released()


def _blocks(model) -> int:
    return sum(len(m) for name, m in model.named_children() if isinstance(m, torch.nn.ModuleList))


# ---------------------------------------------------------------- the orchestration
def run_phase(name: str, a, out_dir: Path, peak: float | None, limit: float) -> dict:
    """Run phase `name` (in a process of its own unless `a.in_process`) within `limit` seconds; its record:
    status ok / failed / timeout, seconds, the error, and what it measured."""
    path = out_dir / f"phase-{name}.json"
    path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    status, error = "ok", None
    if a.in_process:
        try:
            _phase(name, Phase(path, a.device, a.tiny), out_dir, peak)
        except Exception as err:  # noqa: BLE001 - a failed phase is a result; the next one runs
            status, error = "failed", f"{type(err).__name__}: {err}"
            traceback.print_exc()
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--device", a.device,
                   "--phase-out", str(path), "--out-dir", str(out_dir), "--limit", str(limit),
                   *(["--tiny"] if a.tiny else []), *(["--peak", str(peak)] if peak else [])]
        process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
        try:
            code = process.wait(timeout=max(limit, 1))
            if code != 0:
                status, error = "failed", f"exit code {code} (see the log)"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status, error = "timeout", f"stopped after {limit:.0f} s"
    result = json.loads(path.read_text()) if path.exists() else {}
    error = result.pop("error", None) or error
    if isinstance(error, str) and error.startswith("TimeoutError"):
        status = "timeout"
    return {"status": status, "seconds": round(time.perf_counter() - t0, 1), "error": error, **result}


def _phase(name: str, phase: Phase, out_dir: Path, peak: float | None, limit: float | None = None) -> None:
    if name == "tests":
        phase_tests(phase, out_dir, limit)
    elif name == "matmul":
        phase_matmul(phase)
    elif name == "adaptation":
        phase_adaptation(phase, peak)
    elif name == "sampling":
        phase_sampling(phase)
    else:
        phase_multimodal(phase, peak)


def environment(device: str) -> dict:
    import importlib.metadata

    from mmdlm.provenance import machine, versions

    packages = {}
    for name in ("diffusers", "datasets", "peft", "huggingface_hub", "safetensors", "tokenizers"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            packages[name] = importlib.metadata.version(name)
    gpu = {}
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = {"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1), "cuda": torch.version.cuda,
               "multiprocessors": p.multi_processor_count, "bf16": torch.cuda.is_bf16_supported()}
    return {"machine": machine(), "versions": {**versions(), **packages}, "gpu": gpu}


def goals(phases: dict) -> dict:
    """The issue's goals, judged from the records (None where the records are missing)."""
    adaptation = {(r["model"], r["variant"]): r for r in phases.get("adaptation", {}).get("records", [])}
    big = next((m for m, _ in adaptation if m.endswith("0.5b")), None)

    def best(names, key):
        values = [adaptation[(big, v)][key] for v in names if (big, v) in adaptation and adaptation[(big, v)][key]]
        return max(values) if values else None

    dlm_variants = ["dlm mask-free", "dlm 4D mask", "dlm mask-free compiled", "dlm flash_attention_2"]
    ratios = {}
    for dlm, ar in (("dlm mask-free", "ar"), ("dlm mask-free compiled", "ar compiled")):
        if (big, dlm) in adaptation and (big, ar) in adaptation:
            ratios[f"{dlm} / {ar}"] = round(adaptation[(big, dlm)]["tokens_per_s"] / adaptation[(big, ar)]
                                            ["tokens_per_s"], 3)
    overheads = [r["sampler_overhead"] for r in phases.get("sampling", {}).get("records", [])
                 if "sampler_overhead" in r]
    out = {"adaptation_mfu_0.5b": best(dlm_variants, "mfu_datasheet"),
           "dlm_over_ar_0.5b": max(ratios.values()) if ratios else None, "dlm_over_ar_pairs": ratios,
           "sampler_overhead_batch8": max(overheads) if overheads else None}
    out["met"] = {k: None if out[k] is None else (out[k] < goal if k == "sampler_overhead_batch8" else out[k] >= goal)
                  for k, goal in GOALS.items()}
    out["targets"] = GOALS
    return out


def summary(result: dict) -> str:
    lines = [f"gpu check ({result['device']}{', tiny' if result['tiny'] else ''}): "
             f"{result['seconds']:.0f} s, peak {result['peak_tflops']}"]
    for name, p in result["phases"].items():
        head = f"  {name:<11} {p['status']:<8} {p['seconds']:>6.1f} s"
        if name == "tests":
            head += (f"  passed {p.get('passed')}, failed {p.get('failed')}, skipped {p.get('skipped')}"
                     if p.get("ran") else f"  collected {p.get('collected')}")
        if p.get("error"):
            head += f"  ({p['error'][:120]})"
        lines.append(head)
        for r in p.get("records", []):
            keys = ("model", "variant", "method", "backbone", "batch_size", "tokens_per_s", "mfu_datasheet",
                    "sampler_overhead", "host_syncs_per_step", "step_s")
            lines.append("      " + ", ".join(f"{k}={r[k]}" for k in keys if r.get(k) is not None))
    lines.append(f"  goals: {json.dumps(result['goals']['met'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (the tiny dry run)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (for the CPU and the test suite)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu.json"))
    p.add_argument("--copy-to", default=None, help="also copy the JSON, the log and the test report here ($OUT)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all phases together")
    p.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    p.add_argument("--in-process", action="store_true", help="run the phases in this process, without time limits")
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # one phase, in a child process
    p.add_argument("--phase-out", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    p.add_argument("--peak", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; run with --device cpu --tiny for the dry run", file=sys.stderr)
        return 2
    if a.phase:  # a child process: one phase; its error goes into its JSON for the parent to report
        phase = Phase(Path(a.phase_out), a.device, a.tiny)
        try:
            _phase(a.phase, phase, Path(a.out_dir), a.peak, a.limit)
        except Exception as err:
            phase.set(error=f"{type(err).__name__}: {err}")
            raise
        return 0

    start = time.perf_counter()
    out_dir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    result = {"benchmark": "gpu", "device": a.device, "tiny": a.tiny, **environment(a.device),
              "command": " ".join(["python bench/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "budget_s": a.budget, "phases": {}}
    name = torch.cuda.get_device_name() if a.device == "cuda" else ""
    datasheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
    result["peak_tflops"] = {"datasheet_bf16": datasheet, "matmul_measured": None}
    for phase in a.phases:
        left = a.budget - (time.perf_counter() - start)
        if left < 5:
            result["phases"][phase] = {"status": "skipped", "seconds": 0.0, "error": "no time left in the budget"}
            continue
        peak = datasheet if not a.tiny else None
        result["phases"][phase] = run_phase(phase, a, out_dir, peak, min(PHASE_LIMIT_S[phase], left))
        if phase == "matmul" and result["phases"][phase].get("tflops"):
            result["peak_tflops"]["matmul_measured"] = result["phases"][phase]["tflops"]
    measured = result["peak_tflops"]["matmul_measured"]
    for phase in ("adaptation", "multimodal"):  # MFU against the measured matmul rate too
        for r in result["phases"].get(phase, {}).get("records", []):
            if measured and not a.tiny and r.get("mfu_datasheet") is not None and datasheet:
                r["mfu_matmul"] = round(r["mfu_datasheet"] * datasheet / measured, 4)
    result["goals"] = goals(result["phases"])
    result["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(a.out, json.dumps(result, indent=2, default=str) + "\n")
    print(summary(result), flush=True)
    if a.copy_to:
        Path(a.copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(a.out, Path(a.copy_to) / "gpu.json")
        for name in ("gpu-tests.xml", "gpu-tests.log"):
            if (out_dir / name).exists():
                shutil.copy(out_dir / name, Path(a.copy_to) / name)
    shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
