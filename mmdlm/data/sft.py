"""Prompt/response data for supervised fine-tuning (SFT) of a diffusion LM.

Records are dicts with a prompt and a response (field names configurable), or a chat
(`messages`: a list of {"role", "content"}, the last one the assistant's answer). Each is
encoded as the pipeline encodes a prompt at inference, [BOS] + prompt, then the response,
then EOS up to `seq_len` (LLaDA): the EOS padding belongs to the response, is masked and
learned, so the model learns where to stop. Examples that do not fit with at least one EOS
are dropped and counted.

Two built-in sets need no download: "stdlib", the functions of the standard library
(train/validation split of `corpus.stdlib_corpus`) with a docstring, prompt = signature +
docstring, response = the body after it; and "arithmetic", templated multi-step problems with
exact answers (`arithmetic.py`), whose validation split is its held-out split.
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..text.chat import check_chat, render_chat
from . import arithmetic
from .corpus import BUILTIN, RecordSplits, TextSplits


@dataclass
class SFTStats:
    """What happened to the records of one split during encoding."""

    records: int
    kept: int
    dropped_too_long: int  # prompt + response + one EOS longer than seq_len
    dropped_prompt_too_long: int  # of those, the prompt alone leaves no room for a response
    dropped_empty: int  # empty prompt or response

    def to_dict(self) -> dict:
        return asdict(self)


def function_pairs(sources) -> list[dict]:
    """{"prompt": signature + docstring, "response": body} for every documented function
    (methods and nested functions included) of each source text, dedented, in file order."""
    pairs = []
    for text in sources:
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):  # a few stdlib test files are invalid on purpose
            continue
        lines = text.splitlines(keepends=True)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(node.body) < 2:
                continue
            doc, first = node.body[0], node.body[1]
            if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str)) or first.lineno <= doc.end_lineno:
                continue
            # The body starts at the first line after the docstring (comments between them included).
            indent = len(lines[node.lineno - 1]) - len(lines[node.lineno - 1].lstrip())
            head = _dedent(lines[node.lineno - 1: doc.end_lineno], indent)
            body = _dedent(lines[doc.end_lineno: node.end_lineno], indent)
            if body.strip():
                pairs.append({"prompt": head, "response": body.rstrip("\n") + "\n"})
    return pairs


def _dedent(lines: list[str], indent: int) -> str:
    """Remove `indent` leading spaces (fewer where a line has fewer, e.g. inside a string)."""
    out = []
    for line in lines:
        n = len(line) - len(line.lstrip(" \t"))
        out.append(line[min(n, indent):] if line.strip() else "\n")
    return "".join(out)


BUILTIN_RECORDS = "stdlib functions: prompt = signature + docstring, response = body"


class SftSplits:
    """The records of an SFT source's train and validation splits, read lazily: the built-in set
    (the functions of `corpus.TextSplits`' standard-library files, a file at a time), the built-in
    arithmetic task (`arithmetic.arithmetic_splits`, generated in memory; validation = held out), or json(l)
    files, a local folder or a hub dataset (`corpus.RecordSplits`: without a validation split,
    the records whose content `is_validation`). `identity` is what the records depend on."""

    def __init__(self, source: str = BUILTIN, *, data_files: list[str] | None = None,
                 validation_fraction: float = 0.05, max_files: int | None = None):
        self.source, self.data_files, self.fixed = source, data_files, None
        if source == arithmetic.NAME and not data_files:  # generated in memory: small, deterministic
            train, held_out, info = arithmetic.arithmetic_splits()
            self.text = self.table = None
            self.fixed = {"train": train, "validation": held_out}, info
            digest = hashlib.sha256(json.dumps(self.fixed[0], sort_keys=True).encode()).hexdigest()
            self.identity = {"builtin": arithmetic.NAME, "records_sha256": digest}
        elif source == BUILTIN and not data_files:
            self.text, self.table = TextSplits(validation_fraction=validation_fraction, max_files=max_files), None
            self.identity = {"builtin": BUILTIN_RECORDS, **self.text.identity}
        else:
            self.text = None
            self.table = RecordSplits(source, data_files, validation_fraction,
                                      key=lambda record: json.dumps(record, sort_keys=True, default=str))
            self.identity = self.table.identity()

    def records(self, split: str) -> Iterator[dict]:
        """The records of `split` ("train" or "validation"), in the source's order."""
        if self.fixed is not None:
            yield from self.fixed[0][split]
            return
        if self.text is None:
            yield from self.table.records(split)
            return
        for text in self.text.documents(split):
            yield from function_pairs([text])

    def description(self) -> dict:
        if self.fixed is not None:
            return self.fixed[1]
        if self.text is not None:
            return {**self.text.info().to_dict(), "records": BUILTIN_RECORDS}
        return {"source": self.source if not self.data_files else ",".join(self.data_files)}


def load_sft_splits(source: str = BUILTIN, **options) -> tuple[list[dict], list[dict], dict]:
    """(train records, validation records, description) of `SftSplits(source, **options)` in memory, for small
    sets, tests and benchmarks (training reads them through `prepared_sft`)."""
    splits = SftSplits(source, **options)
    return list(splits.records("train")), list(splits.records("validation")), splits.description()


def _chat_texts(tokenizer, messages) -> tuple[str, str]:
    """(prompt text, response text) of a chat whose last message is the assistant's answer."""
    if not check_chat(messages) or messages[-1]["role"] != "assistant":
        raise ValueError("the last message of a chat must be the assistant's answer (the response to learn)")
    prompt = render_chat(tokenizer, messages[:-1])
    full = render_chat(tokenizer, messages, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise ValueError("the tokenizer's chat template does not render the conversation as prompt + answer "
                         "(the prompt with the generation prompt is not a prefix of the whole chat)")
    return prompt, full[len(prompt):]


def encode_records(records: Iterable[dict], tokenizer, seq_len: int, stats: SFTStats, *,
                   prompt_field: str = "prompt", response_field: str = "response", messages_field: str = "messages",
                   chat_template: bool | None = None) -> Iterator[tuple[list[int], int]]:
    """(token ids of the row, prompt length) of each record that fits, counted in `stats`.

    A row is [BOS] + prompt, then the response, then EOS up to `seq_len`. `chat_template`: None
    uses the tokenizer's chat template when it has one. With the template, a record's `messages`
    are used as they are, and a prompt/response pair becomes a user turn and an assistant turn.
    """
    if seq_len < 3:
        raise ValueError(f"seq_len must be at least 3 (prompt, response, EOS), got {seq_len}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; SFT pads every response with EOS")
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if chat_template and not has_template:
        raise ValueError("chat_template is on but the tokenizer has no chat template")
    use_template = has_template if chat_template is None else chat_template
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for i, rec in enumerate(records):
        stats.records += 1
        if use_template and rec.get(messages_field) is not None:
            prompt, response = _chat_texts(tokenizer, rec[messages_field])
        else:
            missing = [f for f in (prompt_field, response_field) if not isinstance(rec.get(f), str)]
            if missing:
                hint = f" or give '{messages_field}'" if use_template else ""
                raise ValueError(f"record {i} has no text field(s) {missing} (fields: {sorted(rec)}); set "
                                 f"prompt_field / response_field{hint}")
            prompt, response = rec[prompt_field], rec[response_field]
            if use_template:
                prompt, response = _chat_texts(tokenizer, [{"role": "user", "content": prompt},
                                                           {"role": "assistant", "content": response}])
        p = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"]
        if len(p) == len(bos) or not r:
            stats.dropped_empty += 1
            continue
        if len(p) + len(r) + 1 > seq_len:
            stats.dropped_too_long += 1
            stats.dropped_prompt_too_long += len(p) + 1 >= seq_len
            continue
        stats.kept += 1
        yield p + r + [eos] * (seq_len - len(p) - len(r)), len(p)


def empty_stats() -> SFTStats:
    return SFTStats(records=0, kept=0, dropped_too_long=0, dropped_prompt_too_long=0, dropped_empty=0)


def prompt_mask(prompt_lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(N, seq_len) bool, True over the first prompt_lengths[i] positions of row i."""
    return torch.arange(seq_len)[None] < prompt_lengths.view(-1, 1)


def encode_sft(records, tokenizer, seq_len: int, **fields):
    """Encode records as ({"input_ids": (N, seq_len), "prompt_mask": (N, seq_len) bool}, SFTStats)
    in memory (`encode_records`; `prepared_sft` writes the same rows to disk)."""
    stats = empty_stats()
    rows, prompts = [], []
    for row, n in encode_records(records, tokenizer, seq_len, stats, **fields):
        rows.append(row)
        prompts.append(n)
    ids = torch.tensor(rows, dtype=torch.long).view(-1, seq_len)
    return {"input_ids": ids, "prompt_mask": prompt_mask(torch.tensor(prompts, dtype=torch.long), seq_len)}, stats


class PromptMask:
    """The prompt mask of SFT rows prepared on disk, made on demand from their prompt lengths
    (int32, one per row): indexed like the (N, seq_len) bool tensor `encode_sft` gives."""

    def __init__(self, path: Path, seq_len: int, n_rows: int | None = None):
        self.path, self.seq_len = Path(path), seq_len
        self.n_rows = self.path.stat().st_size // 4 if n_rows is None else n_rows

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return PromptMask(self.path, self.seq_len, len(range(*index.indices(self.n_rows))))
        lengths = np.memmap(self.path, dtype=np.int32, mode="r", shape=(self.n_rows,))
        index = np.asarray(index.tolist() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
        return prompt_mask(torch.from_numpy(lengths[index].astype(np.int64)), self.seq_len)


def prepared_sft(source: str = BUILTIN, *, tokenizer, seq_len: int, data_files: list[str] | None = None,
                 validation_fraction: float = 0.05, max_files: int | None = None, data_cache: str | None = None,
                 state=None, **fields):
    """({split: {"input_ids": TokenRows, "prompt_mask": PromptMask}}, {split: SFTStats}, description):
    the encoded rows of both splits (`encode_records`), written once into the data cache
    (`prepare.prepared`, keyed by `SftSplits.identity`, the tokenizer, `seq_len` and the fields)
    and read from disk."""
    from accelerate import PartialState

    from .prepare import TokenRows, prepared, token_dtype, tokenizer_fingerprint

    splits = SftSplits(source, data_files=data_files, validation_fraction=validation_fraction, max_files=max_files)
    dtype = token_dtype(len(tokenizer))
    identity = {"kind": "sft", **splits.identity, "tokenizer": tokenizer_fingerprint(tokenizer), "dtype": dtype.name,
                "seq_len": seq_len, "fields": fields}

    def build(folder: Path) -> dict:
        stats, files = {}, {}
        for split in ("train", "validation"):
            stats[split] = empty_stats()
            rows = encode_records(splits.records(split), tokenizer, seq_len, stats[split], **fields)
            with open(folder / f"{split}.bin", "wb") as ids, open(folder / f"{split}.prompt.bin", "wb") as lengths:
                while chunk := list(itertools.islice(rows, 1024)):
                    np.asarray([r for r, _ in chunk], dtype=dtype).tofile(ids)
                    np.asarray([n for _, n in chunk], dtype=np.int32).tofile(lengths)
            files[f"{split}.bin"] = stats[split].kept * seq_len * dtype.itemsize
            files[f"{split}.prompt.bin"] = stats[split].kept * 4
        return {"stats": {k: v.to_dict() for k, v in stats.items()}, "description": splits.description(),
                "files": files}

    folder, meta = prepared("sft", identity, build, state or PartialState(), data_cache=data_cache,
                            what="the SFT set")
    data = {split: {"input_ids": TokenRows(folder / f"{split}.bin", dtype, seq_len),
                    "prompt_mask": PromptMask(folder / f"{split}.prompt.bin", seq_len)}
            for split in ("train", "validation")}
    return data, {k: SFTStats(**v) for k, v in meta["stats"].items()}, meta["description"]
