"""`mmdlm train-vq`: a small VQ model (diffusers VQModel), the discrete backbone's image tokenizer."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..training.trainer import TrainArgs


@dataclass
class TrainVQConfig(TrainArgs):
    """Train a small VQ model (diffusers VQModel): the image tokenizer of the discrete backbone."""

    datasets: list[str] = field(default_factory=lambda: ["shapes", "digits"], metadata={
        "help": "image sets to train on: 'shapes', 'digits' (built in), hub names or local folders"})
    image_column: str = field(default="image", metadata={"help": "column holding the images (non-built-in sets)"})
    image_size: int = field(default=32, metadata={"help": "image side in pixels"})
    n_train: int | None = field(default=None, metadata={"help": "training images per dataset (default: all)"})
    n_eval: int = field(default=256, metadata={"help": "held-out images per built-in set for the validation loss"})
    vq_config: dict = field(default_factory=dict, metadata={
        "help": "VQModel arguments over mmdlm's small default (mmdlm.training.vq.DEFAULT_VQ)"})
    restart_every: int = field(default=50, metadata={"help": "restart unused codes every N steps (0: never)"})
    restart_until: float = field(default=0.5, metadata={"help": "share of the run during which codes are restarted"})
    ema_decay: float = field(default=0.99, metadata={"help": "decay of the codebook's moving averages (k-means)"})
    n_report: int = field(default=256, metadata={
        "help": "held-out images on which the parser / classifier judge the reconstructions"})

    def validate(self) -> None:
        super().validate()
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {self.n_train}")
        if self.n_eval < 0 or self.n_report < 1:
            raise ValueError(f"n_eval must be >= 0 and n_report >= 1, got {self.n_eval} and {self.n_report}")


def run(c: TrainVQConfig) -> None:
    from ..training.vq import train_vq

    train_vq(c)
