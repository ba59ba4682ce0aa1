"""Recipes as data: one dataclass per command gives both its YAML keys and its CLI flags.

Every field is a key in the YAML recipe (`--config configs/x.yaml`) and a flag
(`--field-name`), or a positional argument when its metadata says `positional`; what is
given on the command line overrides the file. A recipe may start from another (`base:
other.yaml`) and change only some keys. Unknown keys are an error, with the nearest valid key
suggested.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path

import yaml


def _base_type(tp):
    """(python type, optional?) for a field annotation such as `int | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])[0], True
    return tp, False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one flag per dataclass field (defaults are left to the dataclass)."""
    parser.add_argument("--config", help="YAML recipe; flags override its keys")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _base_type(hints[f.name])
        help_ = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_ = f"{help_} (default: {default!r})" if help_ else f"default: {default!r}"
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help_)
        origin = typing.get_origin(tp)
        if f.metadata.get("positional"):  # also a key of the recipe, like every other field
            parser.add_argument(f.name, nargs="?", type=tp, default=argparse.SUPPRESS, help=help_,
                                metavar=f.name.upper())
            continue
        if tp is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif origin is list:
            parser.add_argument(_flag(f.name), nargs="+", type=typing.get_args(tp)[0], **kw)
        elif origin is dict or tp is dict:
            parser.add_argument(_flag(f.name), type=json.loads, metavar="JSON", **kw)
        else:
            parser.add_argument(_flag(f.name), type=tp, **kw)


def load_yaml(path: str | Path, _including: tuple[Path, ...] = ()) -> dict:
    """The recipe at `path`. A `base: other.yaml` key (relative to this file) starts from that
    recipe: this file's keys replace the base's, whole (a `model_config` given here replaces the
    base's `model_config`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of keys to values, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ValueError(f"base in {path} must be the path of another YAML recipe, got {base!r}")
    chain = (*_including, path.resolve())
    base_path = (path.parent / base).resolve()
    if base_path in chain:
        raise ValueError(f"{path}: recipes name each other as base ({' -> '.join(p.name for p in chain)} -> "
                         f"{base_path.name})")
    return {**load_yaml(base_path, chain), **data}


def build(cls, values: dict, source: str = "config"):
    """Instantiate `cls` from a dict, rejecting unknown keys with a suggestion."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"unknown key {key!r} in {source}{hint} (valid keys: {', '.join(names)})")
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        tp, optional = _base_type(hints[key])
        if value is None:
            if not optional:
                raise ValueError(f"{key} in {source} cannot be null")
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif tp in (int, float, str, bool) and not isinstance(value, tp):
            raise ValueError(f"{key} in {source} must be {tp.__name__}, got {value!r}")
        out[key] = value
    return cls(**out)


def resolve(cls, namespace: argparse.Namespace):
    """Merge the YAML recipe named by `--config` (if any) with the flags given."""
    values: dict = {}
    config = getattr(namespace, "config", None)
    if config:
        values.update(load_yaml(config))
    values.update({k: v for k, v in vars(namespace).items() if k not in ("config", "command", "func")})
    return build(cls, values, source=config or "flags")
