"""Any mmdlm pipeline, step by step: an iterator over its denoising steps, for live views.

`iterate_steps(pipe, prompt, ...)` runs the pipeline in a worker thread and yields a `Step`
after every denoising step (the tensors its `callback_on_step_end` received, copied, and an
image preview when the pipeline can give one), then a `Done` with the pipeline's output. The
worker waits for each step to be taken, so a consumer sees every step; closing the iterator
early stops the pipeline at its next step (without waiting for it: a web server may close the
iterator from its event loop). Errors of the pipeline (e.g. a `ValueError` for a bad input) are
raised by the iterator. `lock`, when given, is held by the worker for the whole call, so a
pipeline shared between users never runs two calls at once, even while a stopped one finishes
its step. With `heartbeat`, the iterator also yields `Waiting` whenever no step has come for that
many seconds (the worker waits for the lock, or a step is slow): a consumer that can only be
stopped between items (a web server's generator) is never held inside one for long.

Image previews come from the pipeline's `preview_images(callback_kwargs)` when it has one
(the current estimate, (B, 3, H, W) in [-1, 1]), else from `decode_latents(latents)` when the
callback receives latents (the diffusers habit), else there is none while it runs.
"""
from __future__ import annotations

import contextlib
import inspect
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

CALLBACK_ARGS = ("callback_on_step_end", "callback_on_step_end_tensor_inputs")


@dataclass
class Step:
    """One denoising step: `index` counts steps from 1; `tensors` holds CPU copies of the
    callback's tensors; `images` the preview in [-1, 1], or None."""

    index: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    images: torch.Tensor | None = None


@dataclass
class Done:
    output: Any


@dataclass
class Waiting:
    """No step for `heartbeat` seconds (the pipeline waits for its lock, or computes a slow step)."""


class _Stopped(Exception):
    """Raised inside the pipeline's callback when the consumer has gone."""


def call_parameters(pipe) -> set[str] | None:
    """The keyword arguments `pipe(...)` accepts (None: any, it takes **kwargs)."""
    params = inspect.signature(pipe.__call__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def split_supported(pipe, kwargs: dict) -> tuple[dict, list[str]]:
    """(the options `pipe` accepts, the names of those it does not)."""
    names = call_parameters(pipe)
    if names is None:
        return dict(kwargs), []
    return {k: v for k, v in kwargs.items() if k in names}, [k for k in kwargs if k not in names]


def can_preview(pipe) -> bool:
    """Whether `preview_images` can show this pipeline's images while it runs."""
    return hasattr(pipe, "preview_images") or (
        "latents" in getattr(pipe, "_callback_tensor_inputs", ()) and hasattr(pipe, "decode_latents"))


def preview_images(pipe, tensors: dict) -> torch.Tensor | None:
    """The pipeline's current image estimate from its callback tensors, or None."""
    if hasattr(pipe, "preview_images"):
        return pipe.preview_images(tensors)
    if tensors.get("latents") is not None and hasattr(pipe, "decode_latents"):
        return pipe.decode_latents(tensors["latents"]).clamp(-1, 1)
    return None


def iterate_steps(pipe, *args, tensor_inputs: tuple[str, ...] | None = None, preview: bool = True,
                  lock: threading.Lock | None = None, heartbeat: float | None = None,
                  **kwargs) -> Iterator[Step | Waiting | Done]:
    """Run `pipe(*args, **kwargs)` and yield a `Step` after each denoising step, then `Done`.

    `tensor_inputs`: callback tensors to copy into each step (default: all the pipeline
    offers, `pipe._callback_tensor_inputs`). A pipeline without `callback_on_step_end` yields
    only `Done`. `heartbeat`: seconds without a step after which `Waiting` is yielded (None: never).
    """
    if any(k in kwargs for k in CALLBACK_ARGS):
        raise ValueError("iterate_steps sets the step callback itself; drop callback_on_step_end from the options")
    accepted = call_parameters(pipe)
    stepwise = accepted is None or "callback_on_step_end" in accepted
    offered = list(getattr(pipe, "_callback_tensor_inputs", []))
    names = [n for n in (offered if tensor_inputs is None else tensor_inputs) if n in offered]
    if stepwise and (accepted is None or "callback_on_step_end_tensor_inputs" in accepted):
        kwargs["callback_on_step_end_tensor_inputs"] = names
    else:
        names = []

    updates: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    count = 0

    def put(item) -> None:
        while not stop.is_set():
            try:
                updates.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def on_step(pipeline, i, t, callback_kwargs):
        nonlocal count
        count += 1
        tensors = {k: v.detach().cpu().clone() for k, v in callback_kwargs.items() if isinstance(v, torch.Tensor)}
        images = None
        if preview:
            with torch.no_grad():
                images = preview_images(pipeline, callback_kwargs)
            images = None if images is None else images.detach().float().cpu()
        put(Step(count, tensors, images))
        return {}

    def work() -> None:
        try:
            extra = {"callback_on_step_end": on_step} if stepwise else {}
            with lock or contextlib.nullcontext():
                if stop.is_set():
                    return
                result: Any = Done(pipe(*args, **kwargs, **extra))
        except _Stopped:
            return
        except BaseException as err:  # handed to the consumer, raised there
            result = err
        try:
            put(result)
        except _Stopped:
            pass

    worker = threading.Thread(target=work, name="mmdlm-pipeline", daemon=True)
    worker.start()
    last = time.monotonic()
    try:
        while True:
            try:
                item = updates.get(timeout=0.1)
            except queue.Empty:
                if not worker.is_alive() and updates.empty():
                    raise RuntimeError("the pipeline thread ended without a result") from None
                if heartbeat is not None and time.monotonic() - last >= heartbeat:
                    last = time.monotonic()
                    yield Waiting()
                continue
            last = time.monotonic()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Done):
                return
    finally:
        stop.set()  # the worker ends at its next step and releases the lock
