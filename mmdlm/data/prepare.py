"""Data prepared once, on disk, and shared: tokenised by the main process into a cache folder that
every process of a run, every resume and every later run with the same inputs reads.

The way nanoGPT's `prepare.py` writes a token file: a flat file of token ids (uint16 when the
vocabulary fits, else uint32), read through a memory map, so that a row is read only when a
batch needs it and the page cache is shared by the processes of a machine. Rows are addressed
by index, which keeps the trainer's data order a pure function of (seed, step, position).

A cache folder is named by a hash of everything its content depends on (the source: file
paths, sizes and modification times, or a `datasets` fingerprint; the tokenizer's full
definition; the settings), so a changed input is prepared again and an unchanged one is
reused. It is written as `.NAME.*.tmp` and renamed into place once complete (`atomic_dir`): an
interrupted preparation leaves no folder that could be read as prepared. `meta.json` records
what it holds; a folder that disagrees with it (truncated or replaced files, another tokenizer)
is refused in one line.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ..io import atomic_dir, check_output_dir
from .packing import document_tokens

FORMAT = "mmdlm-prepared"
VERSION = 1
META = "meta.json"


def cache_root(data_cache: str | None = None) -> Path:
    """`data_cache`, else $MMDLM_CACHE, else ~/.cache/mmdlm (the XDG cache)."""
    if data_cache:
        return Path(data_cache)
    if os.environ.get("MMDLM_CACHE"):
        return Path(os.environ["MMDLM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmdlm"


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the ids a tokenizer gives: its full definition (a fast
    tokenizer's JSON) and its added and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = {"class": type(tokenizer).__name__, "special": tokenizer.special_tokens_map,
             "added": sorted(tokenizer.get_added_vocab().items()),
             "chat_template": getattr(tokenizer, "chat_template", None)}
    return hashlib.sha256((definition + json.dumps(extra, sort_keys=True, default=str)).encode()).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_tokens(path: Path, texts: Iterable[str], tokenizer, dtype: np.dtype) -> int:
    """Write the tokens of `texts` (each followed by EOS) to the file `path`; the token count."""
    n = 0
    with open(path, "wb") as f:
        for ids in document_tokens(texts, tokenizer):
            np.asarray(ids, dtype=dtype).tofile(f)
            n += len(ids)
            release_freed_memory()
    return n


def release_freed_memory() -> None:
    """Hand the memory freed by a batch back to the system (glibc's malloc_trim, pyarrow's pool):
    the batches' short-lived buffers would otherwise leave the heap at a high-water mark that
    creeps up with the number of batches, that is with the size of the corpus."""
    global _trim
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    if _trim is None:
        import ctypes
        import ctypes.util

        try:
            _trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _trim = False
    if _trim:
        _trim(0)


_trim = None


class TokenRows:
    """Rows of `seq_len` tokens of a token file, read through a memory map when indexed: the
    (N, seq_len) LongTensor that `pack_texts` would give, without holding it in memory.

    `rows[index]` (a LongTensor or a list of row numbers) gives those rows as a LongTensor;
    `rows[:n]` the first n rows."""

    def __init__(self, path: Path, dtype: np.dtype, seq_len: int, n_rows: int | None = None):
        self.path, self.dtype, self.seq_len = Path(path), np.dtype(dtype), seq_len
        tokens = self.path.stat().st_size // self.dtype.itemsize
        self.n_rows = tokens // seq_len if n_rows is None else n_rows
        self._map = None

    def _rows(self) -> np.ndarray:
        if self._map is None:  # opened on first use (a map is not inherited across processes)
            self._map = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_rows * self.seq_len,))
        return self._map.reshape(self.n_rows, self.seq_len)

    def __len__(self) -> int:
        return self.n_rows

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.seq_len)

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self.n_rows)
            if start != 0 or step != 1:
                raise IndexError("TokenRows slices must be [:n]")
            return TokenRows(self.path, self.dtype, self.seq_len, stop)
        index = np.asarray(index.tolist() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
        if index.size and (index.min() < -self.n_rows or index.max() >= self.n_rows):
            raise IndexError(f"row index out of range for {self.n_rows} rows")
        return torch.from_numpy(self._rows()[index].astype(np.int64))

    def __getstate__(self):
        return {**self.__dict__, "_map": None}


def check_meta(folder: Path, expected: dict) -> dict:
    """The folder's meta.json, once it says it holds what `expected` describes."""
    path = folder / META
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"the prepared data in {folder} is damaged ({META}: {err}); delete the folder to "
                         "prepare it again") from err
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{folder} holds no data prepared by this mmdlm (format {meta.get('format')!r}, version "
                         f"{meta.get('version')!r}); delete the folder to prepare it again")
    for key, value in expected.items():
        if meta.get(key) != value:
            what = "another tokenizer" if key == "tokenizer" else f"another {key}"
            raise ValueError(f"the prepared data in {folder} was made with {what}; delete the folder to prepare "
                             "it again")
    for name, size in meta.get("files", {}).items():
        actual = (folder / name).stat().st_size if (folder / name).exists() else None
        if actual != size:
            raise ValueError(f"the prepared file {folder / name} is truncated or damaged ({actual} bytes, "
                             f"{size} expected); delete {folder} to prepare it again")
    return meta


def prepared(name: str, identity: dict, build: Callable[[Path], dict], state, *, data_cache: str | None = None,
             what: str = "data") -> tuple[Path, dict]:
    """(folder, meta) of the data `identity` describes, prepared by `build(tmp_folder) -> meta`
    (which writes the files into tmp_folder and returns what meta.json should record, "files":
    {name: size} included) when the cache does not hold it yet.

    The main process prepares; the others wait for the folder to appear (no collective, so a long
    preparation meets no timeout; if the main process fails, the launcher stops the others).
    """
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]
    folder = cache_root(data_cache) / f"{name}-{key}"
    expected = {"key": key, **({"tokenizer": identity["tokenizer"]} if "tokenizer" in identity else {})}
    if not (folder / META).exists():
        if state.is_main_process:
            check_output_dir(folder.parent, "data_cache")
            state.print(f"preparing {what} into {folder} (once: later runs and resumes reuse it)")
            for stale in folder.parent.glob(f".{folder.name}.*.tmp"):  # left by an interrupted preparation
                shutil.rmtree(stale, ignore_errors=True)
            start = time.perf_counter()
            with atomic_dir(folder) as tmp:
                meta = build(tmp)
                meta = {"format": FORMAT, "version": VERSION, **expected, "identity": identity,
                        "prepare_seconds": round(time.perf_counter() - start, 3), **meta}
                (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
        else:
            while not (folder / META).exists():
                time.sleep(0.5)
    return folder, check_meta(folder, expected)
