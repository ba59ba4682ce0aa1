"""The engine a launch asks for (accelerate's DDP, FSDP2, DeepSpeed ZeRO), kept on CPUs, and the
full weights of a model, whichever engine holds them.

`accelerate launch --config_file configs/accelerate/fsdp.yaml ...` asks for an engine through
the environment (ACCELERATE_USE_FSDP, ACCELERATE_USE_DEEPSPEED). On processes without a GPU,
accelerate turns every launch into plain DDP over gloo (MULTI_CPU) without a word; `accelerator`
keeps the engine asked for instead (FSDP2's `fully_shard` and DeepSpeed's ZeRO run over gloo on
CPUs), and refuses in one line an engine it cannot run here, so a config is never silently
replaced by another engine.

`full_weights` gathers the parameters a final save needs: FSDP2 shards them (DTensors), ZeRO-3
partitions them, and with bf16 DeepSpeed keeps the fp32 weights only in its optimizer.
"""
from __future__ import annotations

import contextlib
import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType


def on_cpu() -> bool:
    """No accelerator device: accelerate must be told, so that a torchrun-style launch of several
    processes (accelerate launch, torchrun) forms a gloo process group instead of N lone runs."""
    return not torch.accelerator.is_available()


def process_state() -> PartialState:
    """The process group as the trainer will see it (for work before the trainer exists)."""
    return PartialState(cpu=on_cpu())


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def requested_engine() -> str:
    """The engine the launch asks for: "deepspeed", "fsdp" or "ddp" (DDP, or a single process)."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return "ddp"


def low_memory_loading() -> bool:
    """Whether the launch asks for FSDP's RAM-efficient loading (fsdp_cpu_ram_efficient_loading):
    the main process builds the model with its weights, the others build it empty (on the meta
    device, `init_empty_weights`) and receive the weights when the model is sharded."""
    return requested_engine() == "fsdp" and _flag("FSDP_CPU_RAM_EFFICIENT_LOADING")


def _check_engine_on_cpu(engine: str) -> None:
    """Refuse, in one line, what this machine cannot run of the engine asked for."""
    if engine == "fsdp" and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ValueError("the accelerate config asks for FSDP version 1, which does not run on CPUs; set "
                         "fsdp_version: 2 (configs/accelerate/fsdp.yaml) or train on GPUs")
    if engine == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError as err:
            raise ValueError("the accelerate config asks for DeepSpeed, which is not installed: "
                             "pip install 'mmdlm[scale]' (or use configs/accelerate/fsdp.yaml)") from err


def accelerator(*, cpu: bool = False, **kwargs) -> Accelerator:
    """An `Accelerator` that runs the engine the launch asks for, on GPUs or on CPUs (`cpu`: on the
    CPUs even where there are GPUs)."""
    cpu = cpu or on_cpu()
    engine = requested_engine()
    if cpu and engine != "ddp" and not AcceleratorState._shared_state:
        _check_engine_on_cpu(engine)
        _keep_engine_on_cpu(engine, kwargs.get("mixed_precision"))
    return Accelerator(cpu=cpu, **kwargs)


def _keep_engine_on_cpu(engine: str, mixed_precision: str | None) -> None:
    """Build accelerate's state as it would on GPUs: the plugin of `engine`, in place of the
    MULTI_CPU it falls back to (the `Accelerator` built next finds this state and keeps it)."""
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin, TorchDynamoPlugin

    state = AcceleratorState(mixed_precision=mixed_precision, cpu=True, dynamo_plugin=TorchDynamoPlugin(),
                             _from_accelerator=True)
    if state.distributed_type == DistributedType.NO:  # a single process without a launcher
        return
    mixed_precision = state._mixed_precision
    if engine == "fsdp":
        plugin = FullyShardedDataParallelPlugin()
        if mixed_precision != "no":
            plugin.set_mixed_precision(mixed_precision)
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
    else:
        import deepspeed

        deepspeed.comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
        plugin = DeepSpeedPlugin()
        plugin.set_mixed_precision(mixed_precision)
        plugin.select(_from_accelerator_state=True)
        state.deepspeed_plugins = plugin
        state.distributed_type = DistributedType.DEEPSPEED
        state._mixed_precision = "no"  # DeepSpeed's config decides, as accelerate does on GPUs
    PartialState._shared_state["distributed_type"] = state.distributed_type


# ---- full weights -----------------------------------------------------------------------------
def _unique_parameters(module: torch.nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every name it has (tied weights have several), in module order."""
    names: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def _full_tensor(accelerator: Accelerator, param: torch.nn.Parameter, dtype: torch.dtype) -> torch.Tensor:
    """The whole of `param` in `dtype` on the CPU (a collective: every process calls it)."""
    if hasattr(param, "full_tensor"):  # FSDP2: a sharded DTensor
        return param.full_tensor().detach().to("cpu", dtype)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        from deepspeed.utils import safe_get_full_fp32_param

        if param.requires_grad:  # the optimizer's fp32 weights (ZeRO-1/2/3)
            return safe_get_full_fp32_param(param).detach().to("cpu", dtype)
        if hasattr(param, "ds_id"):  # ZeRO-3 partitions frozen parameters too
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                return param.detach().to("cpu", dtype, copy=True)
    return param.detach().to("cpu", dtype)


def needs_gather(accelerator: Accelerator) -> bool:
    """Whether the model's own parameters are not the full training weights."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


@contextlib.contextmanager
def full_weights(accelerator: Accelerator, model, dtypes: dict[str, torch.dtype]):
    """Yield the unwrapped model holding its full weights, on the main process (None elsewhere).

    Under FSDP and DeepSpeed every process gathers each parameter in turn (collectives), in
    `dtypes` (name -> the dtype it had before the engine took it: DeepSpeed's bf16 copies are
    not the weights); the main process swaps them into the model for the body of the `with`,
    then puts the engine's parameters back. Tied weights stay tied (one tensor, several names).
    """
    module = accelerator.unwrap_model(model)
    if not needs_gather(accelerator):
        yield module if accelerator.is_main_process else None
        return
    swapped, classes = [], []
    for names in _unique_parameters(module).values():
        owner, leaf = _split(module, names[0])
        param = owner._parameters[leaf]
        full = _full_tensor(accelerator, param, dtypes.get(names[0], torch.float32))
        if accelerator.is_main_process:
            new = torch.nn.Parameter(full, requires_grad=param.requires_grad)
            for name in names:
                owner, leaf = _split(module, name)
                swapped.append((owner, leaf, owner._parameters[leaf]))
                owner._parameters[leaf] = new
    if accelerator.is_main_process:
        classes = [(m, type(m)) for m in module.modules() if _engine_class(m) is not None]
        for m, cls in classes:  # FSDP2's FSDP<Model> classes: a saved pipeline records the model's own
            m.__class__ = _engine_class(m)
    try:
        yield module if accelerator.is_main_process else None
    finally:
        for m, cls in classes:
            m.__class__ = cls
        for owner, leaf, param in reversed(swapped):
            owner._parameters[leaf] = param
        accelerator.wait_for_everyone()


def _engine_class(module: torch.nn.Module) -> type | None:
    """The model's own class of a module FSDP2 gave a class `FSDP<Class>(FSDPModule, Class)`, else None."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        return None
    return next(base for base in type(module).__bases__ if base is not FSDPModule)


def _split(module: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf
