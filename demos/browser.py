"""Debian's headless Chromium driven by playwright, for the demo's browser test and screenshot.

Never a downloaded browser: the system's /usr/bin/chromium (`make browser` installs it with
apt-get), a fresh profile each time, no background networking.
"""
from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("MMDLM_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM}; install it with `make browser` (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed; pip install -e '.[test]'"
    return None


def open_browser(playwright, profile_dir: str | Path, *, width: int = 1280, height: int = 900):
    """A persistent browser context on a fresh profile folder (close it when done)."""
    return playwright.chromium.launch_persistent_context(
        str(profile_dir), executable_path=str(CHROMIUM), args=ARGS, headless=True,
        viewport={"width": width, "height": height})
