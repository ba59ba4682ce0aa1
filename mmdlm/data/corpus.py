"""Text sources.

The built-in corpus is the Python standard library of the running interpreter: real text,
present on every machine, written by none of us. Files are split into train/validation by a
hash of their path relative to the stdlib root, so the split never depends on file order or
on the machine. Any other source goes through `datasets`: a hub name, or local files.
"""
from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
from datasets.arrow_writer import SchemaInferenceError
from datasets.exceptions import DatasetGenerationError

from ..diffusion._checks import is_real

BUILTIN = "stdlib"
_LOCAL_FORMATS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json",
                  ".csv": "csv", ".parquet": "parquet"}
# image files load as an `imagefolder`, with captions from metadata.jsonl / metadata.csv among the files
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class CorpusInfo:
    """What a corpus was made of, for logs and benchmark records."""

    source: str
    train_docs: int
    validation_docs: int
    files: int | None = None  # files listed (built-in corpus only; empty files are skipped)
    files_sha256: str | None = None  # hash of the sorted file list (built-in corpus only)
    python: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_fraction(fraction: float, name: str = "validation_fraction") -> None:
    if not (is_real(fraction) and 0 <= fraction < 1):  # NaN fails too
        raise ValueError(f"{name} must be in [0, 1), got {fraction!r}")


def _is_validation(relpath: str, fraction: float) -> bool:
    digest = hashlib.sha256(relpath.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def stdlib_corpus(validation_fraction: float = 0.05, max_files: int | None = None):
    """The interpreter's standard-library `.py` files (site-packages excluded).

    Returns (train, validation, info) with `datasets.Dataset`s holding `text` and `path`.
    """
    import platform

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                   if "site-packages" not in p.parts)
    if max_files is not None:
        files = files[:max_files]
    if not files:
        raise ValueError(f"no .py files found under the standard library at {root}")
    splits: dict[str, dict[str, list]] = {"train": {"text": [], "path": []},
                                          "validation": {"text": [], "path": []}}
    for rel in files:
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            continue
        split = splits["validation" if _is_validation(rel, validation_fraction) else "train"]
        split["text"].append(text)
        split["path"].append(rel)
    info = CorpusInfo(
        source=f"{BUILTIN}:{root}",
        train_docs=len(splits["train"]["text"]),
        validation_docs=len(splits["validation"]["text"]),
        files=len(files),
        files_sha256=hashlib.sha256("\n".join(files).encode()).hexdigest(),
        python=platform.python_version(),
    )
    return (datasets.Dataset.from_dict(splits["train"]),
            datasets.Dataset.from_dict(splits["validation"]), info)


def _load_files(builder: str, data_files: list[str]) -> datasets.DatasetDict:
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a builder's failure is logged, then raised: said below
    try:
        return datasets.load_dataset(builder, data_files=data_files)
    except ValueError as err:
        if "corresponds to no data" in str(err):
            raise ValueError(f"the data files hold no examples: {', '.join(data_files)}") from err
        raise
    except DatasetGenerationError as err:  # the builder failed on the files' contents
        cause = err.__cause__ or err
        if isinstance(cause, SchemaInferenceError):
            raise ValueError(f"the data files hold no examples: {', '.join(data_files)}") from err
        if isinstance(cause, UnicodeDecodeError):
            bad = [f for f in data_files if not _is_utf8(f)] or data_files
            raise ValueError(f"{', '.join(bad)}: not UTF-8 text ({cause})") from err
        detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ValueError(f"could not read the data files {', '.join(data_files)} as {builder}: {detail}") from err
    finally:
        datasets.logging.set_verbosity(verbosity)


def _is_utf8(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            while f.read(1 << 20):
                pass
    except UnicodeDecodeError:
        return False
    return True


def _load_source(source: str, data_files: list[str] | None,
                 builtins: str = f"'{BUILTIN}' for the built-in corpus") -> datasets.DatasetDict:
    if data_files:
        missing = [f for f in data_files if not Path(f).exists()]
        if missing:
            raise FileNotFoundError(f"data file(s) not found: {', '.join(missing)}")
        suffixes = {Path(f).suffix.lower() for f in data_files}
        if suffixes & set(IMAGE_SUFFIXES):
            others = [f for f in data_files if Path(f).suffix.lower() not in IMAGE_SUFFIXES
                      and not Path(f).name.startswith("metadata.")]
            if others:
                raise ValueError(f"image files can come only with metadata.jsonl/metadata.csv, got {others}")
            return _load_files("imagefolder", data_files)
        builders = {_LOCAL_FORMATS.get(s) for s in suffixes}
        if None in builders or len(builders) != 1:
            raise ValueError(f"data files must share one format among {sorted(_LOCAL_FORMATS)}; "
                             f"got suffixes {sorted(suffixes)}")
        return _load_files(builders.pop(), data_files)
    if Path(source).is_dir():
        return datasets.load_dataset(source)
    try:
        return datasets.load_dataset(source)
    except Exception as err:  # offline hub, typo, private set: say what was tried
        raise ValueError(f"could not load dataset {source!r} (a hub name, a local folder, or "
                         f"{builtins}; or pass data files): {err}") from err


def train_validation(dsd, train, validation_fraction: float):
    """(train, validation): the source's validation split, or `validation_fraction` of `train` carved
    off deterministically (seed 0); None when `train` has a single record to give."""
    if "validation" in dsd:
        return train, dsd["validation"]
    if len(train) < 2:
        return train, None
    parts = train.train_test_split(test_size=validation_fraction, seed=0)
    return parts["train"], parts["test"]


def load_text_splits(source: str = BUILTIN, *, data_files: list[str] | None = None,
                     text_column: str = "text", validation_fraction: float = 0.05,
                     max_files: int | None = None):
    """Load (train, validation, info) from the built-in corpus, the hub, or local files.

    Without a validation split in the source, one is carved off deterministically
    (`validation_fraction` of the documents, seed 0).
    """
    check_fraction(validation_fraction)
    if source == BUILTIN and not data_files:
        return stdlib_corpus(validation_fraction, max_files)
    dsd = _load_source(source, data_files)
    if "train" not in dsd:
        raise ValueError(f"dataset {source!r} has no 'train' split (splits: {list(dsd)})")
    train = dsd["train"]
    if text_column not in train.column_names:
        raise ValueError(f"text column {text_column!r} not in dataset {source!r}; "
                         f"columns are {train.column_names} (set text_column)")
    train = train.filter(lambda ex: isinstance(ex[text_column], str) and ex[text_column].strip() != "")
    if len(train) == 0:
        raise ValueError(f"dataset {source!r} has no non-empty text in column {text_column!r}")
    train, validation = train_validation(dsd, train, validation_fraction)
    validation = train if validation is None else validation
    if text_column != "text":
        train = train.rename_column(text_column, "text")
        validation = validation.rename_column(text_column, "text")
    info = CorpusInfo(source=source if not data_files else ",".join(data_files),
                      train_docs=len(train), validation_docs=len(validation))
    return train, validation, info
