"""`mmdlm eval-mm`: score a multimodal pipeline on held-out image-caption pairs."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..provenance import command_line
from .common import DeviceArgs, multimodal_pipeline


@dataclass
class EvalMMConfig(DeviceArgs):
    """Evaluate a multimodal pipeline on shapes or digits; write one record per (backbone, dataset)."""

    model: str | None = field(default=None, metadata={"help": "a saved multimodal pipeline folder"})
    dataset: str = field(default="shapes", metadata={"help": "shapes | digits"})
    n: int = field(default=64, metadata={"help": "samples per task"})
    steps: int | None = field(default=None, metadata={"help": "denoising steps (default: the pipeline's)"})
    tasks: list[str] = field(default_factory=lambda: ["t2i", "caption", "joint"], metadata={
        "help": "which of t2i, caption, joint to evaluate"})
    batch_size: int = field(default=16, metadata={"help": "samples per pipeline call"})
    guidance_scale: float | None = field(default=None, metadata={"help": "image guidance (default: the pipeline's)"})
    text_guidance_scale: float | None = field(default=None, metadata={
        "help": "text guidance (default: the pipeline's)"})
    text_steps: int | None = field(default=None, metadata={
        "help": "steps the text is generated in, of --steps (default: the pipeline's: all, half in joint)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    output: str = field(default="bench/results/imagetext.json", metadata={"help": "results file to update"})
    label: str | None = field(default=None, metadata={
        "help": "name the record (e.g. 'stage 3'): a file keeps one record per backbone, dataset and label"})
    samples_dir: str | None = field(default=None, metadata={"help": "also write grids of generated images here"})


def run(c) -> dict:
    """Evaluate a saved multimodal pipeline and update the results file."""
    from ..eval.imagetext import evaluate, write_record

    if not c.model:
        raise ValueError("give the pipeline to evaluate: --model PATH")
    kwargs = {k: getattr(c, k) for k in ("guidance_scale", "text_guidance_scale", "text_steps")
              if getattr(c, k) is not None}
    pipe = multimodal_pipeline(c.model, *c.resolve())
    record = evaluate(pipe, c.dataset, n=c.n, num_inference_steps=c.steps, seed=c.seed, batch_size=c.batch_size,
                      tasks=c.tasks, samples_dir=c.samples_dir, **kwargs)
    record = {**record, "model": c.model, "command": command_line()}
    if c.label:
        record["label"] = c.label
    write_record(c.output, record)
    shown = {k: record[k] for k in ("backbone", "dataset", "n", "t2i_accuracy", "caption_accuracy",
                                    "joint_consistency", "s_per_image", "s_per_caption")}
    print(json.dumps(shown, indent=2))
    print(f"record written to {c.output}")
    return record
