"""`mmdlm caption`: caption an image, or answer about it, with any multimodal pipeline."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .common import MM_MODEL, DeviceArgs, call_options, multimodal_pipeline


@dataclass
class CaptionConfig(DeviceArgs):
    """Caption an image, or answer about it, with any mmdlm multimodal pipeline."""

    image: str | None = field(default=None, metadata={"positional": True, "help": "path of the image"})
    model: str = field(default=MM_MODEL, metadata={"help": "a saved multimodal pipeline folder"})
    question: str | None = field(default=None, metadata={
        "help": "question answering / caption infilling: a text with <|mask:N|> placeholders where the answer "
                "goes, e.g. 'a small <|mask:1|> circle left of a large blue square'"})
    n: int = field(default=1, metadata={"help": "texts per image (vary with --temperature)"})
    steps: int | None = field(default=None, metadata={"help": "denoising steps (default: the pipeline's)"})
    text_guidance_scale: float | None = field(default=None, metadata={
        "help": "classifier-free guidance of the text by the image (default: the pipeline's)"})
    temperature: float | None = field(default=None, metadata={"help": "sampling temperature of the text tokens"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    output: str | None = field(default=None, metadata={"help": "also write the result as JSON here"})


def run(c) -> list[str]:
    """`mmdlm caption IMAGE [--question ...]`: print (and optionally save) the text(s)."""
    from ..devices import generator
    from ..images import open_image
    from ..io import atomic_write_text, check_output_file

    if not c.image:
        raise ValueError("give the image to caption: mmdlm caption path/to/image.png")
    path = Path(c.image)
    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    image = open_image(path)
    if c.n < 1:
        raise ValueError(f"n must be >= 1, got {c.n}")
    options = call_options(c, "text_guidance_scale", "temperature")
    if c.output:
        check_output_file(c.output, "--output")
    task = "caption" if c.question is None else "vqa"
    device, dtype = c.resolve()
    pipe = multimodal_pipeline(c.model, device, dtype)
    out = pipe(prompt=c.question, image=image, task=task, num_images_per_prompt=c.n,
               generator=generator(device, c.seed), **options)
    for text in out.texts:
        print(text)
    if c.output:
        atomic_write_text(c.output, json.dumps({"model": c.model, "image": str(path), "question": c.question,
                                                "task": task, "texts": out.texts}, indent=2))
    return out.texts
