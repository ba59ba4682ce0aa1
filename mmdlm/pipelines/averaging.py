"""Weight averaging of saved pipelines (a uniform "model soup", Wortsman et al. 2022).

Checkpoints of one training run, or of consecutive stages of it, often lie in one basin of the
loss, where the average of their weights can beat each of them. `average_pipelines` loads the
pipelines, checks that they hold the same architecture, tokenizer and every other weighted
component, and returns the first with its transformer's weights replaced by
sum_i w_i theta_i (computed in float32).
"""
from __future__ import annotations

import math

import torch

from .multimodal import load_pipeline


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def normalised_weights(weights: list[float] | None, n: int) -> list[float]:
    """`weights` (one positive number per pipeline; None: equal) scaled to sum 1."""
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(weights) != n or not all(0 < w < math.inf for w in weights):  # also refuses nan
        raise ValueError(f"give one positive weight per pipeline: {n} pipelines, weights {weights}")
    return [w / sum(weights) for w in weights]


def _check_same(pipe, first, path: str, first_path: str) -> None:
    """Refuse `pipe` unless only its transformer's weights can differ from `first`'s."""
    if type(pipe) is not type(first):
        raise ValueError(f"{path} holds a {type(pipe).__name__}, {first_path} a {type(first).__name__}")
    mine, theirs = ({k: v for k, v in p.transformer.config.items() if not k.startswith("_")} for p in (first, pipe))
    if theirs != mine:
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        raise ValueError(f"{path} and {first_path} have different transformers ({', '.join(differ)})")
    if pipe.tokenizer.get_vocab() != first.tokenizer.get_vocab():
        raise ValueError(f"{path} and {first_path} have different tokenizers: token ids would not match")
    mine, theirs = _modules(first), _modules(pipe)
    if mine.keys() != theirs.keys():
        raise ValueError(f"{path} has the components {sorted(theirs)}, {first_path} {sorted(mine)}")
    for name, module in mine.items():
        if name != "transformer" and not _same_weights(module, theirs[name]):
            raise ValueError(f"{path} and {first_path} have different {name} weights; only the transformer is "
                             "averaged, so the rest must be the same")


def average_pipelines(paths: list[str], weights: list[float] | None = None):
    """The pipeline at `paths[0]` with its transformer's weights averaged over all `paths`
    (`weights`: see `normalised_weights`). The others are loaded one at a time and added to a
    running float32 sum, so memory holds two pipelines whatever their number."""
    if len(paths) < 2:
        raise ValueError(f"averaging needs two or more pipelines, got {len(paths)}")
    weights = normalised_weights(weights, len(paths))
    first = load_pipeline(paths[0])
    if getattr(first, "transformer", None) is None:
        raise ValueError(f"{paths[0]} holds a {type(first).__name__}, which has no transformer to average")
    base = first.transformer.state_dict()
    total = {key: weights[0] * value.float() for key, value in base.items() if value.is_floating_point()}
    for path, weight in zip(paths[1:], weights[1:]):
        pipe = load_pipeline(path)
        _check_same(pipe, first, path, paths[0])
        for key, value in pipe.transformer.state_dict().items():
            if key in total:
                total[key] += weight * value.float()
            elif not torch.equal(value, base[key]):
                raise ValueError(f"the transformers differ in {key}, which is not a weight that can be averaged")
        del pipe
    first.transformer.load_state_dict({key: total[key].to(value.dtype) if key in total else value
                                       for key, value in base.items()})
    return first
