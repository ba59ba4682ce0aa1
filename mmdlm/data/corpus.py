"""Text sources.

The built-in corpus is the Python standard library of the running interpreter: real text,
present on every machine, written by none of us. Files are split into train/validation by a
hash of their path relative to the stdlib root, so the split never depends on file order or
on the machine. Any other source goes through `datasets`: a hub name, or local files.
"""
from __future__ import annotations

import contextlib
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
        if is_validation(rel, validation_fraction) != (split == "validation"):
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


@contextlib.contextmanager
def _quiet_datasets():
    """A builder's failure is logged by `datasets`, then raised: the one-line error says it."""
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)


def _file_error(err: BaseException, builder: str, data_files: list[str]) -> ValueError:
    """The one line that says why `builder` could not read `data_files`."""
    cause = err.__cause__ if isinstance(err, DatasetGenerationError) and err.__cause__ else err
    if isinstance(cause, SchemaInferenceError):
        return ValueError(f"the data files hold no examples: {', '.join(data_files)}")
    if isinstance(cause, UnicodeDecodeError):
        bad = [f for f in data_files if not _is_utf8(f)] or data_files
        return ValueError(f"{', '.join(bad)}: not UTF-8 text ({cause})")
    detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return ValueError(f"could not read the data files {', '.join(data_files)} as {builder}: {detail}")


def _load_files(builder: str, data_files: list[str], streaming: bool = False):
    with _quiet_datasets():
        try:
            return datasets.load_dataset(builder, data_files=data_files, streaming=streaming)
        except ValueError as err:
            if "corresponds to no data" in str(err):
                raise ValueError(f"the data files hold no examples: {', '.join(data_files)}") from err
            raise
        except DatasetGenerationError as err:  # the builder failed on the files' contents
            raise _file_error(err, builder, data_files) from err


def _is_utf8(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            while f.read(1 << 20):
                pass
    except UnicodeDecodeError:
        return False
    return True


def _builder(data_files: list[str]) -> str:
    """The `datasets` builder of a list of local files (one format), checked."""
    missing = [f for f in data_files if not Path(f).exists()]
    if missing:
        raise FileNotFoundError(f"data file(s) not found: {', '.join(missing)}")
    suffixes = {Path(f).suffix.lower() for f in data_files}
    if suffixes & set(IMAGE_SUFFIXES):
        others = [f for f in data_files if Path(f).suffix.lower() not in IMAGE_SUFFIXES
                  and not Path(f).name.startswith("metadata.")]
        if others:
            raise ValueError(f"image files can come only with metadata.jsonl/metadata.csv, got {others}")
        return "imagefolder"
    builders = {_LOCAL_FORMATS.get(s) for s in suffixes}
    if None in builders or len(builders) != 1:
        raise ValueError(f"data files must share one format among {sorted(_LOCAL_FORMATS)}; "
                         f"got suffixes {sorted(suffixes)}")
    return builders.pop()


def _load_source(source: str, data_files: list[str] | None,
                 builtins: str = f"'{BUILTIN}' for the built-in corpus", streaming: bool = False):
    """The `datasets` DatasetDict of a hub name, a local folder or local files (with `streaming`,
    an IterableDatasetDict that reads them as it goes: nothing copied, nothing held)."""
    if data_files:
        return _load_files(_builder(data_files), data_files, streaming)
    if Path(source).is_dir():
        return datasets.load_dataset(source, streaming=streaming)
    try:
        return datasets.load_dataset(source, streaming=streaming)
    except Exception as err:  # offline hub, typo, private set: say what was tried
        raise ValueError(f"could not load dataset {source!r} (a hub name, a local folder, or "
                         f"{builtins}; or pass data files): {err}") from err


BATCH_RECORDS = 100  # records read at a time from a `datasets` source


def is_validation(key: str, fraction: float) -> bool:
    """Whether the record with this key (a path, a text) belongs to the validation split: a hash of
    the key, so the split of a record never depends on the order, the number of records or the
    process that reads it (a stream splits as a table does)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class RecordSplits:
    """The records of a `datasets` source's train and validation splits, read a batch at a time:
    the source's own validation split, or the records of its train split whose key (`key`, a
    function of the record) `is_validation`. Local files and folders are read as streams (nothing
    copied into `datasets`' cache, memory bounded by a batch); a hub dataset as `datasets` loads it,
    or as a stream with `streaming`."""

    def __init__(self, source: str, data_files: list[str] | None, validation_fraction: float, key,
                 streaming: bool = False, builtins: str = f"'{BUILTIN}' for the built-in corpus"):
        check_fraction(validation_fraction)
        self.source, self.data_files, self.fraction, self.key = source, data_files, validation_fraction, key
        self.local = bool(data_files) or Path(source).is_dir()
        self.builder = _builder(data_files) if data_files else source
        self.dsd = _load_source(source, data_files, builtins, streaming=streaming or self.local)
        if "train" not in self.dsd:
            raise ValueError(f"dataset {source!r} has no 'train' split (splits: {list(self.dsd)})")

    def identity(self) -> dict:
        """What the records depend on: the files' paths, sizes and modification times (local), else
        `datasets`' fingerprints of the splits (a hub dataset, as loaded)."""
        if self.local:
            files = self.data_files or sorted(str(p) for p in Path(self.source).rglob("*") if p.is_file())
            return {"files": file_stamps(files), "validation_fraction": self.fraction}
        return {"source": self.source, "fingerprints": {k: getattr(v, "_fingerprint", None)
                                                        for k, v in self.dsd.items()},
                "validation_fraction": self.fraction}

    def table(self, split: str):
        """The table (or stream) `split` is read from."""
        return self.dsd["validation" if split == "validation" and "validation" in self.dsd else "train"]

    def record_batches(self, split: str, table=None) -> Iterator[list[dict]]:
        """The records of `split` ("train" or "validation") in the source's order, a list for each
        batch read from `table` (by default `self.table(split)`; a stream split by process, for
        instance, whose `state_dict` then stands after the last batch given)."""
        batches = (self.table(split) if table is None else table).iter(batch_size=BATCH_RECORDS)
        carve = "validation" not in self.dsd
        while True:
            with _quiet_datasets():
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                except (ValueError, DatasetGenerationError) as err:  # UnicodeDecodeError, pyarrow's errors
                    raise _file_error(err, self.builder, self.data_files or [self.source]) from err
            records = [dict(zip(batch, values)) for values in zip(*batch.values())]
            yield [r for r in records
                   if not carve or is_validation(self.key(r), self.fraction) == (split == "validation")]

    def records(self, split: str, table=None) -> Iterator[dict]:
        """`record_batches`, one record at a time."""
        for batch in self.record_batches(split, table):
            yield from batch


def file_stamps(paths) -> list[tuple[str, int, int]]:
    """(absolute path, size, modification time in ns) of each file: what says a file changed."""
    return [(str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths]


def load_text_splits(source: str = BUILTIN, *, data_files: list[str] | None = None,
                     text_column: str = "text", validation_fraction: float = 0.05,
                     max_files: int | None = None):
    """(train, validation, info): `TextSplits`' documents as in-memory `datasets.Dataset`s (column
    `text`; the built-in corpus also `path`)."""
    if source == BUILTIN and not data_files:
        return stdlib_corpus(validation_fraction, max_files)
    splits = TextSplits(source, data_files=data_files, text_column=text_column,
                        validation_fraction=validation_fraction, max_files=max_files)
    train, validation = ({"text": list(splits.documents(split))} for split in ("train", "validation"))
    return datasets.Dataset.from_dict(train), datasets.Dataset.from_dict(validation), splits.info()


class TextSplits:
    """The documents of a text source's train and validation splits, read a batch at a time: the
    built-in corpus a file at a time (split by path), any other source through `RecordSplits`
    (split by text): memory bounded by a batch, whatever the size of the corpus.

    `identity` is what the documents depend on, for a cache key: known without reading them for
    the built-in corpus (its file list, Python) and for local files (paths, sizes, modification
    times); for a hub dataset, `datasets`' fingerprints of its splits.
    """

    def __init__(self, source: str = BUILTIN, *, data_files: list[str] | None = None, text_column: str = "text",
                 validation_fraction: float = 0.05, max_files: int | None = None, streaming: bool = False):
        check_fraction(validation_fraction)
        self.source, self.data_files, self.text_column = source, data_files, text_column
        self.fraction = validation_fraction
        self.counts: dict[str, int] = {}
        if source == BUILTIN and not data_files:
            self.records = None
            self.root, self.files = _stdlib_files(max_files)
            listing = _stdlib_info(self.root, self.files, 0, 0)
            self.identity = {"corpus": {"builtin": BUILTIN, "root": str(self.root),
                                        "files_sha256": listing.files_sha256, "python": listing.python},
                             "validation_fraction": validation_fraction}
            return
        self.records = RecordSplits(source, data_files, validation_fraction, key=self._text, streaming=streaming)
        self.identity = {"corpus": self.records.identity(), "text_column": text_column}

    def _text(self, record: dict) -> str:
        if self.text_column not in record:
            raise ValueError(f"text column {self.text_column!r} not in dataset {self.source!r}; "
                             f"columns are {sorted(record)} (set text_column)")
        text = record[self.text_column]
        return text if isinstance(text, str) else ""

    def document_batches(self, split: str, table=None) -> Iterator[list[str]]:
        """The texts of `split` ("train" or "validation") in the source's order, a list for each
        batch read (`RecordSplits.record_batches`; the built-in corpus: a file at a time), empty
        texts included."""
        if self.records is None:
            for _, text in _stdlib_documents(self.root, self.files, split, self.fraction):
                yield [text]
        else:
            for batch in self.records.record_batches(split, table):
                yield [self._text(r) for r in batch]

    def documents(self, split: str) -> Iterator[str]:
        """The non-empty texts of `split` ("train" or "validation"), in the source's order."""
        self.counts[split] = seen = 0
        for text in (t for batch in self.document_batches(split) for t in batch):
            seen += 1
            if text.strip():
                self.counts[split] += 1
                yield text
        if split == "train" and not self.counts[split]:
            if not seen and self.data_files:
                raise ValueError(f"the data files hold no examples: {', '.join(self.data_files)}")
            what = "" if self.records is None else f" in column {self.text_column!r}"
            raise ValueError(f"dataset {self.source!r} has no non-empty text{what}")

    def info(self) -> CorpusInfo:
        """What the corpus was made of (once both splits were read)."""
        if self.records is None:
            return _stdlib_info(self.root, self.files, self.counts["train"], self.counts["validation"])
        return CorpusInfo(source=self.source if not self.data_files else ",".join(self.data_files),
                          train_docs=self.counts["train"], validation_docs=self.counts["validation"])


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
