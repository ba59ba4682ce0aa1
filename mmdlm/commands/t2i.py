"""`mmdlm t2i`: draw images from a caption with any multimodal pipeline; PNGs and a GIF of the denoising."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .common import MM_MODEL, DeviceArgs, call_options, multimodal_pipeline


@dataclass
class T2IConfig(DeviceArgs):
    """Draw images from a caption with any mmdlm multimodal pipeline; write PNGs and a GIF of the denoising."""

    prompt: str | None = field(default=None, metadata={"positional": True, "help": "the caption to draw"})
    model: str = field(default=MM_MODEL, metadata={
        "help": "a saved multimodal pipeline folder (DualDiffusionPipeline, UnifiedDiscretePipeline, ...)"})
    n: int = field(default=4, metadata={"help": "images to draw"})
    steps: int | None = field(default=None, metadata={"help": "denoising steps (default: the pipeline's)"})
    guidance_scale: float | None = field(default=None, metadata={
        "help": "classifier-free guidance by the caption (default: the pipeline's)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    output_dir: str = field(default="outputs/t2i", metadata={"help": "where the PNGs and the GIF go"})
    gif: bool = field(default=True, metadata={"help": "also write a GIF of the denoising (all images side by side)"})


T2I_OUTPUT = re.compile(r"t2i-(\d+\.png|denoising\.gif)")  # what `mmdlm t2i` writes


def write_denoising_gif(history: list[dict], path, duration_ms: int = 120) -> None:
    """A GIF of the denoising: one frame per step with every image side by side (the current
    clean-image estimate; the last frame is the result, held for a second)."""
    from ..images import image_grid, to_pil
    from ..io import atomic_file

    frames = [image_grid(to_pil(h["images"]), cols=len(h["images"])) for h in history if h.get("images") is not None]
    if not frames:
        raise ValueError("the pipeline returned no image history to animate")
    scale = max(1, 128 // frames[0].height)  # small images are enlarged for viewing (nearest neighbour)
    frames = [f.resize((f.width * scale, f.height * scale), 0) for f in frames]
    with atomic_file(path) as tmp:
        frames[0].save(tmp, save_all=True, append_images=frames[1:],
                       duration=[duration_ms] * (len(frames) - 1) + [1000], loop=0)


def run(c) -> list:
    """`mmdlm t2i PROMPT`: PNGs (and a GIF of the denoising) in c.output_dir; returns their paths.

    The files form one set: the location is checked before generating, the set is written in a
    temporary folder there and then moved in, and the t2i-* files of an earlier run it does not
    replace are removed; a failure leaves the folder as it was.
    """
    import tempfile

    from ..devices import generator
    from ..io import check_output_dir

    if not c.prompt:
        raise ValueError("give the caption to draw: mmdlm t2i \"a small red circle left of a large blue square\"")
    if c.n < 1:
        raise ValueError(f"n must be >= 1, got {c.n}")
    options = call_options(c, "guidance_scale")
    folder = check_output_dir(c.output_dir, "--output-dir")
    names = [f"t2i-{i}.png" for i in range(c.n)] + (["t2i-denoising.gif"] if c.gif else [])
    for name in names:
        if (folder / name).is_dir():
            raise ValueError(f"{folder / name} is a folder; remove it or choose another --output-dir")
    device, dtype = c.resolve()
    pipe = multimodal_pipeline(c.model, device, dtype)
    out = pipe(prompt=c.prompt, task="t2i", num_images_per_prompt=c.n, generator=generator(device, c.seed),
               return_history=c.gif, **options)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".t2i-", dir=folder) as tmp:
        for name, image in zip(names, out.images):
            image.save(Path(tmp) / name)
        if c.gif:
            write_denoising_gif(out.history or [], Path(tmp) / names[-1])
        stale = [p for p in folder.iterdir() if T2I_OUTPUT.fullmatch(p.name) and p.name not in names and p.is_file()]
        for name in names:
            os.replace(Path(tmp) / name, folder / name)
        for path in stale:
            path.unlink()
    print(f"{c.n} image(s) of {c.prompt!r} written to {folder}/t2i-*.png")
    if c.gif:
        print(f"denoising written to {folder / names[-1]}")
    return [folder / name for name in names]
