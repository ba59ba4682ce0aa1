"""A training checkpoint is data, never code.

The trainer's own state (the LR scheduler's, a recipe's moving averages) is kept as JSON plus
safetensors, never pickled. What accelerate writes beside the weights (the optimizer state, the
RNG states: `torch.save` pickles) it reads back with `torch.load(weights_only=True)`, which
builds tensors and plain containers only; `check_data_only` refuses, before anything is read, a
checkpoint holding a pickle mmdlm never writes (accelerate's `custom_checkpoint_N.pkl`, which it
unpickles in full) or any pickle that is not plain data.

The engines' own formats are checked the same way before they read them. FSDP's shards
(torch.distributed.checkpoint, a sub-folder per model and optimizer) come with a `.metadata`
index that torch unpickles in full: it is first read with an unpickler that knows only the
index's own classes, and every non-tensor item it points to (torch.save'd bytes, which torch
also unpickles in full) is read with `weights_only=True`. DeepSpeed's files (`torch.save` of
its engine and optimizer state, which it loads with `weights_only=False`) are read with
`weights_only=True`, allowing three plain DeepSpeed classes (its loss-scaler record, its ZeRO
stage enum, its fragment addresses). The helper scripts DeepSpeed writes beside its
checkpoint (`zero_to_fp32.py`) are removed when the checkpoint is saved: no code in a checkpoint.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

TENSORS_FILE = "trainer_state.safetensors"
PICKLE_SUFFIXES = (".pkl", ".bin", ".pt", ".pth")
_TENSOR = "__tensor__"  # {"__tensor__": key}: the tensor stored under `key` in TENSORS_FILE


def _to_data(value, key: str, tensors: dict):
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().clone()
        return {_TENSOR: key}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _to_data(v, f"{key}.{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_data(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{key}: a {type(value).__name__} cannot be stored as checkpoint data")


def _from_data(value, tensors: dict):
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        return {k: _from_data(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_data(v, tensors) for v in value]
    return value


def save_states(objects: dict, folder: Path, tensors_file: str = TENSORS_FILE) -> dict:
    """The `state_dict()` of each object as JSON data; their tensors go to `folder`/`tensors_file`."""
    tensors: dict = {}
    data = {name: _to_data(obj.state_dict(), name, tensors) for name, obj in objects.items()}
    if tensors:
        save_file(tensors, str(Path(folder) / tensors_file))
    return data


def load_states(objects: dict, data: dict, folder: Path, device, tensors_file: str = TENSORS_FILE) -> None:
    """Give each object its state from `save_states`' `data` (tensors on `device`)."""
    path = Path(folder) / tensors_file
    try:
        tensors = load_file(str(path), device=str(device)) if path.exists() else {}
    except SafetensorError as err:
        raise ValueError(f"{path} is damaged or truncated (safetensors: {err})") from err
    missing = set(objects) - set(data)
    if missing:
        raise ValueError(f"the checkpoint in {folder} has no state for {', '.join(sorted(missing))}")
    for name, obj in objects.items():
        obj.load_state_dict(_from_data(data[name], tensors))


def check_data_only(folder: Path) -> None:
    """Refuse a checkpoint whose pickles are not plain data (they could run code when loaded)."""
    for path in sorted(Path(folder).rglob("*")):
        if path.name.startswith("custom_checkpoint_"):
            raise ValueError(f"{path} holds pickled objects, which mmdlm does not load (a pickle can run code); "
                             "the checkpoint was written by an older mmdlm or altered: train again without --resume")
        if path.suffix in (".py", ".pyc", ".so"):
            raise ValueError(f"{path} is code, which a mmdlm checkpoint never holds; refusing to resume from it")
        try:
            if path.suffix in PICKLE_SUFFIXES:
                _load_data(path)
            elif path.name == DCP_METADATA:
                _check_distributed_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - whatever the reason, it is not data to resume from
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"{path} is not plain data (a pickle that could run code, or a damaged file); "
                             f"refusing to resume from it: {reason}") from err


def remove_code(folder: Path) -> None:
    """Delete the scripts an engine writes beside its checkpoint (DeepSpeed's zero_to_fp32.py)."""
    for path in Path(folder).rglob("*.py"):
        path.unlink()


def _deepspeed_records() -> list:
    """The plain classes DeepSpeed pickles into its checkpoints (none when it is not installed)."""
    import sys

    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
    except ImportError:
        return []
    import deepspeed.utils.tensor_fragment  # noqa: F401 (the package's name is shadowed by a class)

    return [LossScaler, ZeroStageEnum, sys.modules["deepspeed.utils.tensor_fragment"].fragment_address]


def _load_data(source: Path | bytes) -> None:
    """torch.load(weights_only=True) of a file or bytes: tensors, plain containers, numpy's RNG
    state (accelerate's), DeepSpeed's records."""
    from accelerate.utils import load  # torch.load(weights_only=True), allowing numpy's RNG state

    with torch.serialization.safe_globals(_deepspeed_records()):
        if isinstance(source, Path):
            load(source, map_location="cpu", mmap=True)
        else:
            load(io.BytesIO(source), map_location="cpu")


DCP_METADATA = ".metadata"


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles torch.distributed.checkpoint's index (`.metadata`) and nothing else."""

    @staticmethod
    def allowed() -> dict[tuple[str, str], object]:
        from torch.distributed.checkpoint import filesystem, metadata
        from torch.serialization import _get_layout  # a layout by its name (torch.strided)

        objects = [metadata.Metadata, metadata.MetadataIndex, metadata.TensorStorageMetadata,
                   metadata.BytesStorageMetadata, metadata.ChunkStorageMetadata, metadata.TensorProperties,
                   metadata.StorageMeta, metadata._MEM_FORMAT_ENCODING, filesystem._StorageInfo, torch.Size,
                   _get_layout, Path(".").__class__]
        allowed = {(o.__module__, o.__qualname__): o for o in objects}
        dtypes = {name: d for name in dir(torch) if isinstance(d := getattr(torch, name), torch.dtype)}
        allowed.update({("torch", name): d for name, d in dtypes.items()})
        return allowed

    def find_class(self, module: str, name: str):
        allowed = self.allowed()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a torch.distributed.checkpoint index")
        return allowed[(module, name)]


def _check_distributed_checkpoint(path: Path) -> None:
    """Read a `.metadata` index safely, then every non-tensor item it points to (weights_only)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

    index = _IndexUnpickler(io.BytesIO(path.read_bytes())).load()
    if not isinstance(index, Metadata):
        raise ValueError(f"not a torch.distributed.checkpoint index but a {type(index).__name__}")
    for where, info in index.storage_data.items():
        if isinstance(index.state_dict_metadata.get(where.fqn), BytesStorageMetadata):
            with (path.parent / info.relative_path).open("rb") as f:
                f.seek(info.offset)
                _load_data(f.read(info.length))
