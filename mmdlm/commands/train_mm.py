"""`mmdlm train-mm`: train a multimodal backbone on image-caption pairs (text-to-image, captioning, joint)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..training.lora import LoraArgs
from ..training.trainer import TrainArgs


@dataclass
class TrainMMConfig(LoraArgs, TrainArgs):
    """Train a multimodal backbone on image-caption pairs (text-to-image, captioning, joint)."""

    backbone: str | None = field(default=None, metadata={
        "help": "which backbone to train (a name registered in mmdlm.training.backbones.BACKBONES)"})
    dataset: str = field(default="shapes", metadata={
        "help": "'shapes' or 'digits' (built in), a hub dataset name or a local folder (e.g. an imagefolder)"})
    data_files: list[str] | None = field(default=None, metadata={
        "help": "local files: images with a metadata.jsonl/.csv, or .json(l)/.csv/.parquet"})
    image_column: str = field(default="image", metadata={"help": "column holding the images"})
    text_column: str = field(default="text", metadata={"help": "column holding the captions"})
    caption_column: str | None = field(default=None, metadata={
        "help": "column the captioning and joint tasks learn to write (default: text_column, which t2i always "
                "reads); built-in shapes: 'canonical' writes every relation as 'left of' / 'above'"})
    image_size: int = field(default=32, metadata={"help": "image side in pixels (resized and centre-cropped)"})
    text_length: int = field(default=16, metadata={"help": "tokens on the caption canvas (caption, then EOS)"})
    n_train: int | None = field(default=None, metadata={
        "help": "training examples (shapes: rendered, default one per training caption; others: the first N)"})
    n_eval: int = field(default=256, metadata={"help": "evaluation examples for the validation loss (0: none)"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "caption tokenizer (folder or hub id); default: a word-level tokenizer trained on the captions"})
    model_config: dict = field(default_factory=dict, metadata={
        "help": "arguments of the backbone's model (with pretrained, the checkpoint's: any key given must agree)"})
    pretrained: str | None = field(default=None, metadata={"help": "pretrained backbone weights to start from"})
    text_loss_weight: float = field(default=1.0, metadata={"help": "loss = image loss + w x text loss"})
    task_weights: dict = field(default_factory=lambda: {"t2i": 0.4, "caption": 0.4, "joint": 0.2}, metadata={
        "help": "share of each training task (t2i: text clean, caption: image clean, joint: both noisy)"})
    caption_dropout: float = field(default=0.1, metadata={
        "help": "probability of hiding the caption of a t2i sample (classifier-free guidance)"})
    image_tokenizer: str | None = field(default=None, metadata={
        "help": "image autoencoder: a VAE (continuous) or VQ model (discrete) folder; default: per backbone"})
    image_dropout: float = field(default=0.1, metadata={
        "help": "probability of hiding the image of a captioning sample behind pure noise (text guidance; mmdit)"})
    text_schedule: str = field(default="linear", metadata={
        "help": "masking schedule of the text: linear | cosine | loglinear (mmdit; the discrete backbone masks "
                "its captions on the cosine schedule)"})
    image_schedule: str = field(default="cosine", metadata={
        "help": "training mask ratios of the image codes, m(t) at t ~ U(0, 1): cosine (MaskGIT; most of them "
                "high) | linear (uniform: more nearly clean images) | loglinear (discrete)"})
    logit_mean: float = field(default=0.0, metadata={
        "help": "image noise levels sigma = sigmoid(N(logit_mean, logit_std)) (SD3's logit-normal; mmdit)"})
    logit_std: float = field(default=1.0, metadata={"help": "see logit_mean"})
    ema_decay: float = field(default=0.0, metadata={
        "help": "save an exponential moving average of the weights with this decay (0: the last weights; mmdit)"})
    flow_shift: float = field(default=1.0, metadata={
        "help": "shift of the saved FlowMatchEulerDiscreteScheduler (SD3: 3.0): > 1 spends more sampling steps at "
                "high noise (mmdit)"})
    sampler: dict = field(default_factory=dict, metadata={
        "help": "settings of the saved sampling scheduler: FlowMatchEulerDiscreteScheduler's (mmdit; e.g. "
                "{stochastic_sampling: true}) or MaskedDiffusionScheduler's (discrete; e.g. {remasking: true, "
                "alg_temp: 2.0})"})

    # options only one of the built-in backbones reads: the other refuses them when they are set
    BACKBONE_ONLY = {"image_dropout": "mmdit", "text_schedule": "mmdit", "logit_mean": "mmdit",
                     "logit_std": "mmdit", "ema_decay": "mmdit", "flow_shift": "mmdit", "image_schedule": "discrete"}

    def validate(self) -> None:
        from ..training.multimodal import check_task_weights

        super().validate()
        if self.backbone in self.BACKBONE_ONLY.values():
            defaults = {f.name: f.default for f in fields(self)}
            for name, owner in self.BACKBONE_ONLY.items():
                if owner != self.backbone and getattr(self, name) != defaults[name]:
                    raise ValueError(f"{name} is an option of the {owner} backbone; the {self.backbone} "
                                     "backbone does not read it")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.text_length < 1:
            raise ValueError(f"text_length must be >= 1, got {self.text_length}")
        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {self.n_train}")
        if self.n_eval < 0:
            raise ValueError(f"n_eval must be >= 0, got {self.n_eval}")
        for name in ("text_loss_weight", "logit_mean", "logit_std", "flow_shift"):  # NaN passes every comparison
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.text_loss_weight < 0:
            raise ValueError(f"text_loss_weight must be >= 0, got {self.text_loss_weight}")
        for name in ("caption_dropout", "image_dropout", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.logit_std <= 0 or self.flow_shift <= 0:
            raise ValueError(f"logit_std and flow_shift must be positive, got logit_std={self.logit_std}, "
                             f"flow_shift={self.flow_shift}")
        from ..diffusion import get_schedule

        get_schedule(self.text_schedule)
        get_schedule(self.image_schedule)
        check_task_weights(self.task_weights)


def run(c: TrainMMConfig) -> None:
    from ..training.backbones import BACKBONES

    c.validate()
    if c.backbone not in BACKBONES:
        known = ", ".join(sorted(BACKBONES)) or "none is registered in this installation"
        what = "no backbone given (--backbone)" if c.backbone is None else f"unknown backbone {c.backbone!r}"
        raise ValueError(f"{what}; choose one of: {known}")
    BACKBONES[c.backbone](c)
