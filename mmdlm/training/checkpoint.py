"""A training checkpoint is data, never code.

The trainer's own state (the LR scheduler's, a recipe's moving averages) is kept as JSON plus
safetensors, never pickled. What accelerate writes beside the weights (the optimizer state, the
RNG states: `torch.save` pickles) it reads back with `torch.load(weights_only=True)`, which
builds tensors and plain containers only; `check_data_only` refuses, before anything is read, a
checkpoint holding a pickle mmdlm never writes (accelerate's `custom_checkpoint_N.pkl`, which it
unpickles in full) or any pickle that is not plain data.

Covered: the files of a model on one device or under DDP, the checkpoint folder's own files.
FSDP and DeepSpeed keep their shards in sub-folders, read by torch.distributed.checkpoint and
DeepSpeed themselves.
"""
from __future__ import annotations

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


def save_states(objects: dict, folder: Path) -> dict:
    """The `state_dict()` of each object as JSON data; their tensors go to `folder`/TENSORS_FILE."""
    tensors: dict = {}
    data = {name: _to_data(obj.state_dict(), name, tensors) for name, obj in objects.items()}
    if tensors:
        save_file(tensors, str(Path(folder) / TENSORS_FILE))
    return data


def load_states(objects: dict, data: dict, folder: Path, device) -> None:
    """Give each object its state from `save_states`' `data` (tensors on `device`)."""
    path = Path(folder) / TENSORS_FILE
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
    from accelerate.utils import load  # torch.load(weights_only=True), allowing numpy's RNG state

    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith("custom_checkpoint_"):
            raise ValueError(f"{path} holds pickled objects, which mmdlm does not load (a pickle can run code); "
                             "the checkpoint was written by an older mmdlm or altered: train again without --resume")
        if path.suffix in PICKLE_SUFFIXES:
            try:
                load(path, map_location="cpu", mmap=True)
            except Exception as err:  # noqa: BLE001 - whatever the reason, it is not data to resume from
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ValueError(f"{path} is not plain data (a pickle that could run code, or a damaged file); "
                                 f"refusing to resume from it: {reason}") from err
