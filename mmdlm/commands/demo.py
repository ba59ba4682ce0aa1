"""`mmdlm demo`: the Gradio demo (mmdlm/demo/app.py) with the shipped checkpoints, or yours."""
from __future__ import annotations

from ..demo.config import DemoConfig


def run(c: DemoConfig) -> None:
    from ..demo.app import serve

    c.validate()
    serve(c)
