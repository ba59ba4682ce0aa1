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
from typing import Iterator

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


def _stdlib_files(max_files: int | None) -> tuple[Path, list[str]]:
    """(root, sorted .py paths relative to it) of the standard library (site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if "site-packages" not in p.parts)
    if max_files is not None:
        files = files[:max_files]
    if not files:
        raise ValueError(f"no .py files found under the standard library at {root}")
    return root, files


def _stdlib_info(root: Path, files: list[str], train_docs: int, validation_docs: int) -> CorpusInfo:
    import platform

    return CorpusInfo(source=f"{BUILTIN}:{root}", train_docs=train_docs, validation_docs=validation_docs,
                      files=len(files), files_sha256=hashlib.sha256("\n".join(files).encode()).hexdigest(),
                      python=platform.python_version())


def _stdlib_documents(root: Path, files: list[str], split: str, validation_fraction: float):
    """(relative path, text) of the non-empty files of `split`, read one at a time."""
    for rel in files:
        if _is_validation(rel, validation_fraction) != (split == "validation"):
            continue
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield rel, text


def stdlib_corpus(validation_fraction: float = 0.05, max_files: int | None = None):
    """The interpreter's standard-library `.py` files (site-packages excluded).

    Returns (train, validation, info) with `datasets.Dataset`s holding `text` and `path`.
    """
    root, files = _stdlib_files(max_files)
    splits = {}
    for split in ("train", "validation"):
        docs = list(_stdlib_documents(root, files, split, validation_fraction))
        splits[split] = datasets.Dataset.from_dict({"text": [t for _, t in docs], "path": [r for r, _ in docs]})
    info = _stdlib_info(root, files, len(splits["train"]), len(splits["validation"]))
    return splits["train"], splits["validation"], info


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


class TextSplits:
    """The documents of a text source's train and validation splits, read one batch at a time (the
    built-in corpus: a file at a time; other sources: from `datasets`' Arrow tables on disk).

    `identity` is what the documents depend on, for a cache key: known without reading them for
    the built-in corpus (its file list, Python) and for data files (paths, sizes, modification
    times); for a hub or folder dataset, `datasets`' fingerprints of its splits (loaded first).
    """

    def __init__(self, source: str = BUILTIN, *, data_files: list[str] | None = None, text_column: str = "text",
                 validation_fraction: float = 0.05, max_files: int | None = None):
        check_fraction(validation_fraction)
        self.options = dict(source=source, data_files=data_files, text_column=text_column,
                            validation_fraction=validation_fraction, max_files=max_files)
        self._splits = None  # (train, validation, info) of `load_text_splits`, once loaded
        self._counts: dict[str, int] = {}
        if source == BUILTIN and not data_files:
            self.root, self.files = _stdlib_files(max_files)
            listing = _stdlib_info(self.root, self.files, 0, 0)
            corpus = {"builtin": BUILTIN, "root": str(self.root), "files_sha256": listing.files_sha256,
                      "python": listing.python}
        elif data_files:
            missing = [f for f in data_files if not Path(f).exists()]
            if missing:
                raise FileNotFoundError(f"data file(s) not found: {', '.join(missing)}")
            corpus = {"files": _file_stamps(data_files), "text_column": text_column}
        else:
            train, validation, _ = self._loaded()
            corpus = {"source": source, "fingerprints": [train._fingerprint, validation._fingerprint]}
        self.identity = {"corpus": corpus, "validation_fraction": validation_fraction}

    @property
    def builtin(self) -> bool:
        return self.options["source"] == BUILTIN and not self.options["data_files"]

    def _loaded(self):
        if self._splits is None:
            self._splits = load_text_splits(**self.options)
        return self._splits

    def documents(self, split: str) -> Iterator[str]:
        """The texts of `split` ("train" or "validation"), in the source's order."""
        self._counts[split] = 0
        if self.builtin:
            texts = (text for _, text in _stdlib_documents(self.root, self.files, split,
                                                           self.options["validation_fraction"]))
        else:
            table = self._loaded()[0 if split == "train" else 1]
            texts = (text for batch in table.iter(batch_size=1000) for text in batch["text"])
        for text in texts:
            self._counts[split] += 1
            yield text

    def info(self) -> CorpusInfo:
        """What the corpus was made of (the built-in corpus: once both splits were read)."""
        if self.builtin:
            return _stdlib_info(self.root, self.files, self._counts["train"], self._counts["validation"])
        return self._loaded()[2]


def _file_stamps(paths) -> list[tuple[str, int, int]]:
    """(absolute path, size, modification time in ns) of each file: what says a file changed."""
    return [(str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths]


def prepared_text(source: str = BUILTIN, *, tokenizer, seq_len: int, data_files: list[str] | None = None,
                  text_column: str = "text", validation_fraction: float = 0.05, max_files: int | None = None,
                  data_cache: str | None = None, state=None):
    """(train rows, validation rows or None, CorpusInfo) of a text source, tokenised once into the
    data cache (`prepare.prepared`, keyed by `TextSplits.identity` and the tokenizer) and read from
    disk in rows of `seq_len` tokens (`prepare.TokenRows`): the rows `pack_texts` gives, without
    holding them in memory.
    """
    from accelerate import PartialState

    from .prepare import TokenRows, prepared, token_dtype, tokenizer_fingerprint, write_tokens

    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    splits = TextSplits(source, data_files=data_files, text_column=text_column,
                        validation_fraction=validation_fraction, max_files=max_files)
    dtype = token_dtype(len(tokenizer))
    identity = {"kind": "text", **splits.identity, "tokenizer": tokenizer_fingerprint(tokenizer), "dtype": dtype.name}

    def build(folder: Path) -> dict:
        tokens = {split: write_tokens(folder / f"{split}.bin", splits.documents(split), tokenizer, dtype)
                  for split in ("train", "validation")}
        return {"tokens": tokens, "info": splits.info().to_dict(),
                "files": {f"{split}.bin": n * dtype.itemsize for split, n in tokens.items()}}

    folder, meta = prepared("text", identity, build, state or PartialState(), data_cache=data_cache,
                            what="the text corpus")
    train = TokenRows(folder / "train.bin", dtype, seq_len)
    if len(train) == 0:
        raise ValueError(f"the dataset has {meta['tokens']['train']} tokens, fewer than one sequence of {seq_len}; "
                         "add data or lower seq_len")
    validation = TokenRows(folder / "validation.bin", dtype, seq_len)
    return train, (validation if len(validation) else None), CorpusInfo(**meta["info"])
