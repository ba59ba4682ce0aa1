"""Take the README's screenshot of the demo: the Text tab part-way through an unmasking.

    python demos/screenshot.py                       # writes docs/demo.png
    python demos/screenshot.py --output shot.png --step 12

Serves the app over the shipped checkpoints on a free local port, opens it in Debian's
headless Chromium (demos/browser.py), starts a generation and captures the page when the
status line reaches the given step (masked tokens grey, the latest ones green).
"""
from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import browser  # noqa: E402

from mmdlm.demo import app as demo_app  # noqa: E402
from mmdlm.demo.config import DemoConfig  # noqa: E402

PROMPT = "def main():\n    path = os.path.join(<|mask:6|>)\n    return path\n\n\ndef "


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def take(output: Path, step: int, *, width: int = 1280, height: int = 1000) -> None:
    reason = browser.missing()
    if reason:
        raise SystemExit(f"screenshot: {reason}")
    from playwright.sync_api import sync_playwright

    config = DemoConfig(port=_free_port(), frame_delay=0.3)
    app = demo_app.build_app(config)
    _, url, _ = demo_app.launch(app, config, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            context = browser.open_browser(pw, profile, width=width, height=height)
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(url, wait_until="networkidle")
            page.locator("#text-prompt textarea").fill(PROMPT)
            for elem_id, value in (("text-gen-length", 32), ("text-steps", 38)):
                box = page.locator(f"#{elem_id} input[type=number]")
                box.fill(str(value))
                box.press("Enter")
            page.locator("#text-run").click()
            page.wait_for_function(f"document.querySelector('#text-status').innerText.startsWith('step {step} ')")
            output.parent.mkdir(parents=True, exist_ok=True)
            partial = output.with_name(f".{output.name}.tmp.png")  # renamed into place: never half-written
            page.screenshot(path=str(partial), full_page=True)
            partial.replace(output)
            context.close()
    finally:
        app.close()
    print(f"screenshot written to {output}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=HERE.parent / "docs" / "demo.png")
    p.add_argument("--step", type=int, default=14, help="capture when the status line shows this step")
    args = p.parse_args(argv)
    take(args.output, args.step)


if __name__ == "__main__":
    main()
