"""Weight averaging of saved pipelines (a uniform "model soup", Wortsman et al. 2022).

Checkpoints of one training run, or of consecutive stages of it, often lie in one basin of the
loss, where the average of their weights can beat each of them. `average_pipelines` loads the
pipelines, checks that they hold the same architecture, tokenizer and every other weighted
component, and returns the first with its transformer's weights replaced by
sum_i w_i theta_i (computed in float32).
"""
from __future__ import annotations

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
    if len(weights) != n or any(w <= 0 for w in weights):
        raise ValueError(f"give one positive weight per pipeline: {n} pipelines, weights {weights}")
    return [w / sum(weights) for w in weights]


def average_pipelines(paths: list[str], weights: list[float] | None = None):
    """The pipeline at `paths[0]` with its transformer's weights averaged over all `paths`
    (`weights`: see `normalised_weights`)."""
    if len(paths) < 2:
        raise ValueError(f"averaging needs two or more pipelines, got {len(paths)}")
    weights = normalised_weights(weights, len(paths))
    pipes = [load_pipeline(p) for p in paths]
    first = pipes[0]
    if getattr(first, "transformer", None) is None:
        raise ValueError(f"{paths[0]} holds a {type(first).__name__}, which has no transformer to average")
    config = {k: v for k, v in first.transformer.config.items() if not k.startswith("_")}
    vocab = first.tokenizer.get_vocab()
    for path, pipe in zip(paths[1:], pipes[1:]):
        if type(pipe) is not type(first):
            raise ValueError(f"{path} holds a {type(pipe).__name__}, {paths[0]} a {type(first).__name__}")
        other = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
        if other != config:
            differ = sorted(k for k in config.keys() | other.keys() if config.get(k) != other.get(k))
            raise ValueError(f"{path} and {paths[0]} have different transformers ({', '.join(differ)})")
        if pipe.tokenizer.get_vocab() != vocab:
            raise ValueError(f"{path} and {paths[0]} have different tokenizers: token ids would not match")
        mine, theirs = _modules(first), _modules(pipe)
        if mine.keys() != theirs.keys():
            raise ValueError(f"{path} has the components {sorted(theirs)}, {paths[0]} {sorted(mine)}")
        for name, module in mine.items():
            if name != "transformer" and not _same_weights(module, theirs[name]):
                raise ValueError(f"{path} and {paths[0]} have different {name} weights; only the transformer is "
                                 "averaged, so the rest must be the same")
    states = [pipe.transformer.state_dict() for pipe in pipes]
    averaged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            averaged[key] = sum(w * s[key].float() for w, s in zip(weights, states)).to(value.dtype)
        elif all(torch.equal(value, s[key]) for s in states):
            averaged[key] = value
        else:
            raise ValueError(f"the transformers differ in {key}, which is not a weight that can be averaged")
    first.transformer.load_state_dict(averaged)
    return first
