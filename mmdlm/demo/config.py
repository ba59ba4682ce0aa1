"""The demo's settings: every field a flag of `mmdlm demo` and a key of its YAML recipe."""
from __future__ import annotations

from dataclasses import dataclass, field

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class DemoConfig:
    """Launch the Gradio demo (mmdlm/demo/app.py): text, text-to-image, captioning and questions, shown step by step."""

    text_model: str = field(default="assets/dlm", metadata={
        "help": "text checkpoint: a mmdlm diffusion LM folder or a saved TextDiffusionPipeline"})
    mm_model: str | None = field(default="assets/mmdit-shapes", metadata={
        "help": "default checkpoint of the image tabs: a saved multimodal pipeline (the shipped MM-DiT, or "
                "assets/discrete-shapes, or your own)"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to bind; 0.0.0.0 makes the demo reachable from other machines"})
    port: int | None = field(default=None, metadata={"help": "port; none: 7860, or the next free one"})
    allow_paths: bool | None = field(default=None, metadata={
        "help": "let visitors load other checkpoint folders by path; none: only when bound to localhost"})
    device: str | None = field(default=None, metadata={
        "help": "cpu | cuda | cuda:1 | mps ... (default: the machine's accelerator when it has one, else cpu)"})
    dtype: str | None = field(default=None, metadata={
        "help": "weights and activations: float32 | bfloat16 | float16 (default: float32)"})
    max_prompt_chars: int = field(default=2000, metadata={"help": "longest prompt or question accepted"})
    max_gen_length: int = field(default=256, metadata={"help": "most tokens generated per request"})
    max_steps: int = field(default=256, metadata={"help": "most denoising steps per request"})
    max_file_size: str = field(default="2mb", metadata={"help": "largest upload (e.g. 500kb, 2mb)"})
    max_image_pixels: int = field(default=4_194_304, metadata={"help": "largest uploaded image, in pixels"})
    concurrency: int = field(default=1, metadata={"help": "generations that run at once (the rest wait in a queue)"})
    queue_size: int = field(default=16, metadata={"help": "requests that may wait; more are turned away"})
    frame_delay: float = field(default=0.05, metadata={
        "help": "pause after each shown step, in seconds, so the unmasking can be followed (0: full speed)"})

    def validate(self) -> None:
        from ..devices import resolve_device, resolve_dtype

        resolve_device(self.device)
        resolve_dtype(self.dtype)
        for name in ("max_prompt_chars", "max_gen_length", "max_steps", "max_image_pixels", "concurrency",
                     "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port must be from 1 to 65535, got {self.port}")
        if self.frame_delay < 0:
            raise ValueError(f"frame_delay must be >= 0, got {self.frame_delay}")
        size = self.max_file_size.strip().lower()
        number = size.rstrip("kmgb")
        if not number.replace(".", "", 1).isdigit() or size[len(number):] not in ("", "b", "kb", "mb", "gb"):
            raise ValueError(f"max_file_size must look like 500kb or 2mb, got {self.max_file_size!r}")

    def paths_allowed(self) -> bool:
        return self.host in LOOPBACK if self.allow_paths is None else self.allow_paths
