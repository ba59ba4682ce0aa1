"""The multimodal backbones `mmdlm train-mm` knows: name -> a function of its `TrainMMConfig` that
builds, trains and saves the model. Register your own with `BACKBONES["name"] = train_fn`."""
from __future__ import annotations

from typing import Callable

from .discrete import train_discrete
from .mmdit import train_mmdit

BACKBONES: dict[str, Callable] = {"mmdit": train_mmdit, "discrete": train_discrete}
