"""Atomic file and folder writes: a crash or a kill never leaves a half-written output."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, path)


def replace_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `path` by renames (an existing `path` is set aside first)."""
    tmp, path = Path(tmp), Path(path)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary file path beside `path` (same extension, so writers that go by the
    extension, like PIL, pick the right format); on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig, path: str | os.PathLike, dpi: int = 130) -> None:
    """Write a matplotlib figure to `path` atomically (`atomic_file`), then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)


def _check_folder(folder: Path, option: str, given: Path) -> None:
    """Refuse, creating nothing, a `folder` that cannot be made or written in (its nearest existing
    ancestor is a file, or not writable); the error names the command-line `option` and the path
    it was `given`."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == given else f": {existing}"
        raise ValueError(f"{option} {given}{where} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {given}: cannot write in {existing} (permission denied)")


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """The output folder `path`, once it is a folder (or can be made one) that files can be written
    in: checked before any work is done, so that a bad location costs nothing. `option` (e.g.
    "--output-dir") names it in the error."""
    path = Path(path)
    _check_folder(path, option, path)
    return path


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """The output file `path`, once it is not a folder and its folder passes `check_output_dir`."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file path")
    _check_folder(path.parent, option, path)
    return path
