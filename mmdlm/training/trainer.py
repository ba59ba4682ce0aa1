"""A small accelerate trainer with hooks, shared by every recipe.

A recipe subclasses `Trainer` and implements `compute_loss(model, batch, step, generator)`;
everything else (accumulation, mixed precision, warmup + cosine LR, atomic checkpoints with
exact resume, progress bar, CSV log, loss curve) lives here once.

Exact resume and data parallelism: the batch order and the noise of every micro-batch are
pure functions of (seed, step, global micro-batch index), where micro-batch c of a step holds
the examples at positions [c*b, (c+1)*b) of the step's global batch (b = batch_size). So a run
resumed from a checkpoint replays the same batches and masks as an uninterrupted run, and P
processes x A accumulation steps train exactly like P' x A' with P*A = P'*A' (up to the
order of floating-point sums).

Checkpoints are collective (every process calls accelerate's `save_state`, as FSDP and
DeepSpeed need) into `checkpoints/.step-N.tmp`, then renamed to `checkpoints/step-N` by the
main process once `trainer_state.json` is written: a kill at any moment leaves either the
complete folder or a temporary one that `--resume` ignores and removes. A checkpoint is data,
never code (`checkpoint`): the trainer's own state is JSON and safetensors.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Union

import torch
from accelerate.utils import DistributedType
from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..cards import add_training
from ..devices import default_mixed_precision, resolve_device
from ..diffusion._checks import check_bool, check_finite, is_real
from ..io import atomic_dir, atomic_write_text, check_output_dir, replace_dir, save_figure
from .checkpoint import check_data_only, load_states, remove_code, save_states
from .engines import accelerator, full_weights

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
LOG_FIELDS = ["step", "tokens", "loss", "lr", "tokens_per_s", "elapsed_s", "val_loss"]
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "trackio", "swanlab")


@dataclass
class TrainArgs:
    """Optimisation settings common to every recipe."""

    output_dir: str = field(default="outputs/run", metadata={"help": "where the model, logs and checkpoints go"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "sequences per micro-batch and process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    warmup_steps: int = field(default=100, metadata={"help": "linear LR warmup, then cosine decay to 0"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 disables)"})
    mixed_precision: str = field(default="auto", metadata={
        "help": "auto (bf16 on a GPU that has it, else no) | no | bf16 | fp16 (accelerate)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass (less memory, about a third more compute)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the model's repeated blocks (regional compilation; the first steps compile)"})
    device: str | None = field(default=None, metadata={
        "help": "cpu to train there even on a GPU machine (default: accelerate's choice, the GPU when there is one; "
                "CUDA_VISIBLE_DEVICES chooses among GPUs)"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many recent checkpoints to keep"})
    eval_every: int = field(default=0, metadata={"help": "validation loss every N steps (0: only at the end)"})
    eval_batches: int = field(default=8, metadata={"help": "validation micro-batches per evaluation"})
    log_every: int = field(default=10, metadata={"help": "CSV log row every N steps"})
    seed: int = field(default=0, metadata={"help": "seed for init, data order and noise"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in output_dir"})
    report_to: str | None = field(default=None, metadata={
        "help": "also log to an accelerate tracker: tensorboard | wandb | mlflow | ... (log.csv and loss.png always)"})

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "save_every", "eval_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (is_real(self.lr) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        check_finite(self.weight_decay, "weight_decay")
        check_finite(self.max_grad_norm, "max_grad_norm")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got "
                             f"{self.mixed_precision!r}")
        if self.device is not None and self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r} (accelerate places each process on "
                             "its GPU: choose them with CUDA_VISIBLE_DEVICES)")
        if self.device is not None:
            resolve_device(self.device)  # available on this machine
        for name in ("gradient_checkpointing", "compile"):
            check_bool(getattr(self, name), name)
        if self.report_to not in (None, "none", *TRACKERS):
            raise ValueError(f"unknown report_to {self.report_to!r}; choose one of none, {', '.join(TRACKERS)}")
        check_output_dir(self.output_dir, "output_dir")

    def resolved_mixed_precision(self) -> str:
        """`mixed_precision` with "auto" resolved for this machine (and `device`)."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        return "no" if self.device == "cpu" else default_mixed_precision()


# A dataset is one tensor of examples (N, ...) or a dict of such tensors, row i of each
# belonging to example i (e.g. {"input_ids", "prompt_mask"}, or {"pixels", "text_ids"}). Rows
# read from disk on demand (`mmdlm.data.prepare.TokenRows`) serve as tensors: anything with
# len() whose [index] (a LongTensor of row numbers) gives those rows as a tensor.
Data = Union[torch.Tensor, Mapping[str, torch.Tensor]]


def is_stream(data) -> bool:
    """A stream of rows (`mmdlm.data.streaming.PackedStream`): read in order with `next_rows(n)`,
    one per process, checkpointed by each process, instead of rows taken by index."""
    return hasattr(data, "next_rows")


def data_len(data: Data) -> int:
    if not isinstance(data, Mapping):
        return len(data) if not isinstance(data, torch.Tensor) or data.ndim else 0
    lengths = {len(v) for v in data.values()}
    if len(lengths) > 1:
        raise ValueError(f"the tensors of a dataset must have one length each, got {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def take(data: Data, index, device) -> Data:
    """Rows `index` of every tensor in `data`, on `device` (to a GPU through pinned memory: the copy does not make
    the host wait for the device)."""
    index = torch.as_tensor(list(index), dtype=torch.long)

    def moved(rows: torch.Tensor) -> torch.Tensor:
        if rows.device.type == "cpu" and torch.device(device).type == "cuda":
            return rows.pin_memory().to(device, non_blocking=True)
        return rows.to(device)

    if not isinstance(data, Mapping):
        return moved(data[index])
    return {k: moved(v[index]) for k, v in data.items()}


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder (`checkpoints/step-N` holding trainer_state.json).

    Temporary folders of an interrupted save (`.step-N.tmp`) never match.
    """
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [(int(m.group(1)), p) for p in root.iterdir()
            if (m := CHECKPOINT_RE.match(p.name)) and (p / STATE_FILE).exists()]
    return max(done)[1] if done else None


class Trainer:
    """Subclass and implement `compute_loss`; optionally `save_model` and `eval_loss`."""

    def __init__(self, model: torch.nn.Module, train_data: Data, args: TrainArgs,
                 eval_data: Data | None = None, run_info: dict | None = None):
        args.validate()
        if not is_stream(train_data) and data_len(train_data) == 0:
            raise ValueError("train_data is empty: no training example to learn from")
        self.args = args
        tracker = None if args.report_to in (None, "none") else args.report_to
        self.mixed_precision = args.resolved_mixed_precision()
        self.accelerator = accelerator(gradient_accumulation_steps=args.grad_accum,
                                       mixed_precision=self.mixed_precision, log_with=tracker,
                                       project_dir=args.output_dir, cpu=args.device == "cpu")
        self.train_data, self.eval_data = train_data, eval_data
        self.run_info = run_info or {}
        self.out = Path(args.output_dir)
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            # No dataloader goes through accelerate: DeepSpeed takes the recipe's batch, accumulation
            # and clipping (DeepSpeed clips; accelerate's clip_grad_norm_ leaves it to DeepSpeed).
            ds = self.accelerator.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"] = args.batch_size, args.grad_accum
            ds["gradient_clipping"] = args.max_grad_norm
        # The dtype of every weight before an engine takes it (DeepSpeed's bf16 casts the model).
        self.dtypes = {name: p.dtype for name, p in model.named_parameters()}
        if args.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if args.compile:
            compile_blocks(model)
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        # Empty groups left out (LoRA trains no bias): DeepSpeed drops them, the LR schedule would not.
        groups = [{"params": ps, "weight_decay": wd} for ps, wd in ((decay, args.weight_decay), (no_decay, 0.0)) if ps]
        optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))
        scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
        # The scheduler is stepped by hand once per optimizer step: accelerate's wrapper would
        # step it once per process, but one step here is already global across processes.
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        self.states = {"lr_scheduler": scheduler}  # checkpointed as data (register_state)
        self.process_states = {}  # each process's own (a stream's position)
        if is_stream(train_data):
            self.register_state("train_stream", train_data, per_process=True)
        self.step, self.tokens = 0, 0

    def register_state(self, name: str, obj, per_process: bool = False) -> None:
        """Checkpoint `obj` (anything with state_dict / load_state_dict) with the trainer's state:
        the main process's, or with `per_process` every process's own."""
        (self.process_states if per_process else self.states)[name] = obj

    # ---- hooks -------------------------------------------------------------------------
    def compute_loss(self, model, batch: Data, step: int, generator: torch.Generator):
        """Return (loss, tokens counted for throughput). `batch` has the structure of the data."""
        raise NotImplementedError

    def eval_loss(self, model, batch: Data, generator: torch.Generator) -> torch.Tensor:
        return self.compute_loss(model, batch, self.args.max_steps, generator)[0]

    def save_model(self, model, path: Path) -> None:
        """Write the final model into `path`: `model` is unwrapped and holds the full weights,
        whichever engine trained it (`engines.full_weights`)."""
        model.save_pretrained(path)

    @contextlib.contextmanager
    def final_weights(self):
        """The weights to save are the model's (a recipe may swap others in, on every process)."""
        yield

    def should_evaluate(self, step: int) -> bool:
        """Whether to compute the validation loss after optimizer step `step` (always after the last)."""
        return step == self.args.max_steps or bool(self.args.eval_every and step % self.args.eval_every == 0)

    # ---- data and noise: pure functions of (seed, step) ---------------------------------
    def _batch(self, step: int, micro: int) -> torch.Tensor:
        a = self.accelerator
        if is_stream(self.train_data):  # this process's next rows, in the stream's order
            return self.train_data.next_rows(self.args.batch_size).to(a.device)
        start = (step * self.args.grad_accum + micro) * self.args.batch_size * a.num_processes \
            + a.process_index * self.args.batch_size
        n = data_len(self.train_data)
        idx = [int(self._order(i // n)[i % n]) for i in range(start, start + self.args.batch_size)]
        return take(self.train_data, idx, a.device)

    def _order(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation of the examples (a tensor: 8 bytes an example, not a Python list)."""
        cache = getattr(self, "_orders", {})
        if epoch not in cache:
            g = torch.Generator().manual_seed(self.args.seed * 1_000_003 + epoch)
            cache = {epoch: torch.randperm(data_len(self.train_data), generator=g)}
            self._orders = cache
        return cache[epoch]

    def _generator(self, step: int, micro: int) -> torch.Generator:
        """Noise of this process's micro-batch, keyed by its index in the step's global batch
        (the same index `_batch` uses), so it does not depend on how the batch is split."""
        a = self.accelerator
        chunk = micro * a.num_processes + a.process_index
        seed = hash((self.args.seed, step, chunk)) % 2**62
        return torch.Generator(a.device).manual_seed(seed)

    # ---- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Every process writes its part into `.step-N.tmp`; the main process then renames it."""
        a = self.accelerator
        root = self.out / "checkpoints"
        path = root / f"step-{self.step:07d}"
        tmp = root / f".{path.name}.tmp"
        if a.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        a.wait_for_everyone()
        a.save_state(str(tmp), safe_serialization=True)
        if self.process_states:
            i = a.process_index
            data = save_states(self.process_states, tmp, f"process_{i}.safetensors")
            atomic_write_text(tmp / f"process_{i}.json", json.dumps(data))
        a.wait_for_everyone()
        if a.is_main_process:
            remove_code(tmp)
            state = {"step": self.step, "tokens": self.tokens, "num_processes": a.num_processes,
                     "args": asdict(self.args), "states": save_states(self.states, tmp)}
            atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))
            replace_dir(tmp, path)
            done = sorted(p for p in root.iterdir() if CHECKPOINT_RE.match(p.name))
            for old in done[: max(0, len(done) - max(1, self.args.keep_checkpoints))]:
                # Renamed first, so a kill during the removal leaves no half-deleted step-N.
                gone = old.with_name(f".{old.name}.del")
                os.replace(old, gone)
                shutil.rmtree(gone, ignore_errors=True)
        a.wait_for_everyone()
        return path

    def _remove_partial_checkpoints(self) -> None:
        """Leftovers of a save or a removal that a kill interrupted."""
        root = self.out / "checkpoints"
        if self.accelerator.is_main_process and root.is_dir():
            for p in root.iterdir():
                if p.name.startswith(".step-") and p.name.endswith((".tmp", ".del", ".old")):
                    shutil.rmtree(p, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, path: Path) -> None:
        state_file = Path(path) / STATE_FILE
        if not state_file.exists():
            raise ValueError(f"{path} is not a mmdlm training checkpoint (no {STATE_FILE})")
        try:
            state = json.loads(state_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{state_file} is corrupt: {err}") from err
        check_data_only(path)
        try:
            self.accelerator.load_state(str(path))
        except SafetensorError as err:
            raise ValueError(f"the weights in {path} are damaged or truncated (safetensors: {err})") from err
        load_states(self.states, state.get("states", {}), path, self.accelerator.device)
        if self.process_states:
            if state["num_processes"] != self.accelerator.num_processes:
                raise ValueError(f"{path} was written by {state['num_processes']} processes, this run has "
                                 f"{self.accelerator.num_processes}: a streamed corpus resumes with the same number")
            i = self.accelerator.process_index
            try:
                data = json.loads((Path(path) / f"process_{i}.json").read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"the state of process {i} in {path} is missing or corrupt: {err}") from err
            load_states(self.process_states, data, path, "cpu", f"process_{i}.safetensors")
        self.step, self.tokens = state["step"], state["tokens"]

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        if self.eval_data is None or data_len(self.eval_data) == 0:
            return None
        self.model.eval()
        losses = []
        bs, n = self.args.batch_size, data_len(self.eval_data)
        for i in range(min(self.args.eval_batches, math.ceil(n / bs))):
            batch = take(self.eval_data, range(i * bs, min((i + 1) * bs, n)), self.accelerator.device)
            g = torch.Generator(self.accelerator.device).manual_seed(10_000 + i)
            losses.append(self.eval_loss(self.model, batch, g).float())
        self.model.train()
        return torch.stack(losses).mean().item()  # one read of the device for the whole evaluation

    # ---- the loop ------------------------------------------------------------------------
    def train_step(self) -> torch.Tensor:
        """One optimizer step over `grad_accum` micro-batches; returns the mean loss, a 0-d tensor on the device
        (reading it makes the host wait for the step: `train` reads it only when it logs)."""
        a, args = self.accelerator, self.args
        loss_sum, tokens = 0.0, 0
        for micro in range(args.grad_accum):
            batch = self._batch(self.step, micro)
            with a.accumulate(self.model):
                loss, n_tok = self.compute_loss(self.model, batch, self.step, self._generator(self.step, micro))
                a.backward(loss)
                if a.sync_gradients and args.max_grad_norm > 0:
                    a.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                if a.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach().float() / args.grad_accum
            tokens += n_tok
        self.step += 1
        self.tokens += tokens * a.num_processes
        # The loss of the whole global batch (the mean over processes), the same on every process.
        return a.reduce(loss_sum.to(a.device), "mean") if a.num_processes > 1 else loss_sum

    def train(self) -> Path:
        a, args = self.accelerator, self.args
        log_path = self.out / "log.csv"
        rows: list[dict] = []
        self._remove_partial_checkpoints()
        if args.resume:
            ckpt = latest_checkpoint(self.out)
            if ckpt is None:
                a.print(f"--resume: no checkpoint in {self.out / 'checkpoints'}; starting from step 0")
            else:
                self.load_checkpoint(ckpt)
                a.print(f"resumed from {ckpt} (step {self.step})")
                if log_path.exists():
                    with log_path.open() as f:
                        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        record = {"args": asdict(args), "num_processes": a.num_processes, "distributed_type": str(a.distributed_type),
                  "mixed_precision": self.mixed_precision, **self.run_info}
        if a.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "run.json", json.dumps(record, indent=2, default=str))
            with log_path.open("w", newline="") as f:
                w = csv.DictWriter(f, LOG_FIELDS, lineterminator="\n")
                w.writeheader()
                w.writerows(rows)
        if a.log_with:
            a.init_trackers(self.out.name or "mmdlm", config={
                k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))})
        self.model.train()
        t0, tok0, start = time.perf_counter(), self.tokens, time.perf_counter()
        # closed on the way out of an exception too, before the CLI's last word (Ctrl-C: 'interrupted')
        with tqdm(total=args.max_steps, initial=self.step, disable=not a.is_local_main_process,
                  desc="train", dynamic_ncols=True) as bar:
            while self.step < args.max_steps:
                loss = self.train_step()
                bar.update(1)
                last = self.step == args.max_steps
                val = self.evaluate() if self.should_evaluate(self.step) else None
                if self.step % args.log_every == 0 or last or val is not None:
                    # The loss is read only here: between log steps, steps are queued without waiting for the last.
                    self._log(log_path, float(loss), val, tokens_per_s=(self.tokens - tok0) / max(
                        time.perf_counter() - t0, 1e-9), elapsed_s=time.perf_counter() - start, bar=bar)
                if args.save_every and self.step % args.save_every == 0 and not last:
                    self.save_checkpoint()
        if latest_checkpoint(self.out) != self.out / "checkpoints" / f"step-{self.step:07d}":
            self.save_checkpoint()
        final = self.out / "model"
        # Gathered from every process when an engine shards or recasts the weights (collectives).
        with self.final_weights(), full_weights(a, self.model, self.dtypes) as model:
            if a.is_main_process:
                record["held_out"] = last_validation(log_path)
                atomic_write_text(self.out / "run.json", json.dumps(record, indent=2, default=str))
                with atomic_dir(final) as tmp:
                    self.save_model(model, tmp)
                    add_training(tmp, json.loads(json.dumps(record, default=str)))  # the model card: recipe, figures
                plot_loss_curve(log_path, self.out / "loss.png")
        if a.log_with:
            a.end_training()
        a.wait_for_everyone()
        return final

    def _log(self, log_path: Path, loss: float, val: float | None, *, tokens_per_s: float, elapsed_s: float,
             bar) -> None:
        """A row of log.csv (and of the tracker) after this step, and the progress bar's figures."""
        a = self.accelerator
        lr = self.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
        if a.is_main_process:
            row = {"step": self.step, "tokens": self.tokens, "loss": f"{loss:.5f}", "lr": f"{lr:.3e}",
                   "tokens_per_s": f"{tokens_per_s:.1f}", "elapsed_s": f"{elapsed_s:.1f}",
                   "val_loss": "" if val is None else f"{val:.5f}"}
            with log_path.open("a", newline="") as f:
                csv.DictWriter(f, LOG_FIELDS, lineterminator="\n").writerow(row)
        if a.log_with:
            values = {"train/loss": loss, "train/lr": lr, "train/tokens": self.tokens,
                      "train/tokens_per_s": tokens_per_s}
            a.log({**values, **({} if val is None else {"eval/loss": val})}, step=self.step)

    def announce(self, what: str, final: Path) -> None:
        """Say (once, on the main process) where `train` saved `what`, its log and its loss curve."""
        self.accelerator.print(f"{what} saved to {final}; log {self.out / 'log.csv'}, curve {self.out / 'loss.png'}")


def last_validation(log_path: Path) -> dict | None:
    """The run's latest held-out figure in its log.csv: {validation_loss, step, tokens}, or None."""
    with Path(log_path).open() as f:
        rows = [r for r in csv.DictReader(f) if r["val_loss"]]
    return {"validation_loss": float(rows[-1]["val_loss"]), "step": int(rows[-1]["step"]),
            "tokens": int(rows[-1]["tokens"])} if rows else None


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass, through the model's own switch: transformers'
    (`activation_checkpointing_enable`, formerly `gradient_checkpointing_enable`, which a DiffusionLM passes on)
    or diffusers' `enable_gradient_checkpointing` (a peft model passes either to its base)."""
    reentrant = {"use_reentrant": False}  # no need for inputs that require grad (frozen embeddings, LoRA)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=reentrant)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=reentrant)
    elif getattr(model, "_supports_gradient_checkpointing", False):
        model.enable_gradient_checkpointing()
    else:
        raise ValueError(f"{type(model).__name__} has no gradient checkpointing; train without it")


def compile_blocks(model) -> None:
    """torch.compile the model in place, region by region (accelerate's regional compilation: each repeated
    block, whose copies share one compiled graph, and each other part): compiling takes as long as for one
    block, and parameter names, checkpoints and saved models stay as they are."""
    from accelerate.utils import compile_regions_deepspeed  # the in-place variant (module.compile())

    compile_regions_deepspeed(model)


def plot_loss_curve(log_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Path(log_path).open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([int(r["tokens"]) for r in rows], [float(r["loss"]) for r in rows], label="train")
    val = [(int(r["tokens"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png_path, dpi=120)
