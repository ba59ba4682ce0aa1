"""Devices, dtypes and host synchronisations: what a command or pipeline needs to run on an accelerator.
The ground floor: it imports nothing of mmdlm.

A host synchronisation is any point where Python must wait for the accelerator: reading a tensor's value
(`.item()`, `float(t)`, `int(t)`, `if t.any():`), an operation whose output size depends on the data
(boolean indexing, `nonzero`), a blocking copy between host and device. `count_host_syncs` counts them with
the profiler, on the CPU too, where the same operations stand in for them.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_device(name: str | None = None) -> torch.device:
    """The device `name` ("cpu", "cuda", "cuda:1", "mps", ...), checked; None: the machine's accelerator
    (torch.accelerator: CUDA, MPS, XPU, ...) when it has one, else the CPU."""
    if name is None:
        if torch.accelerator.is_available():
            return torch.device(torch.accelerator.current_accelerator().type)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {name!r}; e.g. cpu, cuda, cuda:1, mps ({err})") from err
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise ValueError(f"device {name!r} is not available on this machine; use cpu"
                         + (" or the default (the accelerator it has)" if torch.accelerator.is_available() else ""))
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {name!r}: this machine has {count} {device.type} device(s), numbered from 0")
    return device


def resolve_dtype(name: str | None) -> torch.dtype | None:
    """The torch dtype named `name` (float32, bfloat16, float16, or fp32, bf16, fp16); None stays None (the
    checkpoint's own dtype)."""
    if name is None:
        return None
    key = DTYPE_ALIASES.get(name, name)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)} (or fp32, bf16, fp16)")
    return DTYPES[key]


def bf16_supported() -> bool:
    """Whether this machine's CUDA GPU computes in bfloat16 natively (Ampere and later)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def default_mixed_precision() -> str:
    """accelerate's `mixed_precision` for "auto": bf16 on a GPU that has it, otherwise none."""
    return "bf16" if bf16_supported() else "no"


def generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A torch.Generator on `device` (where the tensors it draws live), seeded."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


# Operator events that wait for the device: a value read by the host (item, float, int, bool of a tensor) and an
# output whose size depends on the data (nonzero, which boolean indexing calls).
SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")
# CUDA runtime calls that block the host (a blocking copy between host and device ends in a stream synchronize).
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


@dataclass
class HostSyncs:
    """ops: operator events that wait for the device (`SYNC_OPS`, counted on every device); calls: CUDA runtime
    synchronisations (`SYNC_CALLS`; None when CUDA was not profiled, or the profiler saw no runtime call);
    names: each counted name's count."""

    ops: int = 0
    calls: int | None = None
    names: Counter = field(default_factory=Counter)

    @property
    def count(self) -> int:
        """The synchronisations: on CUDA the runtime's (blocking copies included; a value read from a CPU tensor
        is none), elsewhere the operator events that would be."""
        return self.ops if self.calls is None else self.calls


@contextlib.contextmanager
def count_host_syncs(cuda: bool | None = None):
    """Count the host synchronisations of the code run inside, with torch.profiler::

        with count_host_syncs() as syncs:
            pipe(...)
        syncs.ops, syncs.calls

    `cuda` (default: when CUDA is available) also profiles the CUDA runtime. The counts are filled in on exit."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    found = HostSyncs()
    with torch.profiler.profile(activities=activities) as prof:
        yield found
    runtime = False  # whether the profiler saw the CUDA runtime at all (else its count would mean nothing)
    for event in prof.events():
        runtime |= event.name.startswith("cuda")
        if event.name in SYNC_OPS or (cuda and event.name in SYNC_CALLS):
            found.names[event.name] += 1
    found.ops = sum(found.names[name] for name in SYNC_OPS)
    found.calls = sum(found.names[name] for name in SYNC_CALLS) if cuda and runtime else None
