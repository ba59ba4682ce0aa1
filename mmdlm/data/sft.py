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
from dataclasses import asdict, dataclass

import torch

from ..text.chat import check_chat, render_chat
from . import arithmetic
from .corpus import BUILTIN, _load_source, check_fraction, stdlib_corpus, train_validation


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


def builtin_sft_splits(validation_fraction: float = 0.05, max_files: int | None = None):
    """(train records, validation records, corpus info) from the standard library."""
    train, validation, info = stdlib_corpus(validation_fraction, max_files)
    return function_pairs(train["text"]), function_pairs(validation["text"]), info


def load_sft_splits(source: str = BUILTIN, *, data_files: list[str] | None = None,
                    validation_fraction: float = 0.05, max_files: int | None = None):
    """(train records, validation records, description) from the built-in set or json(l) files,
    a local folder or a hub dataset. Without a validation split one is carved off (seed 0)."""
    check_fraction(validation_fraction)
    if source == arithmetic.NAME and not data_files:
        return arithmetic.arithmetic_splits()
    if source == BUILTIN and not data_files:
        train, validation, info = builtin_sft_splits(validation_fraction, max_files)
        return train, validation, {**info.to_dict(),
                                   "records": "stdlib functions: prompt = signature + docstring, response = body"}
    dsd = _load_source(source, data_files)
    if "train" not in dsd:
        raise ValueError(f"dataset {source!r} has no 'train' split (splits: {list(dsd)})")
    train, validation = train_validation(dsd, dsd["train"], validation_fraction)
    validation = train.select([]) if validation is None else validation
    return list(train), list(validation), {"source": source if not data_files else ",".join(data_files)}


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


def encode_sft(records, tokenizer, seq_len: int, *, prompt_field: str = "prompt", response_field: str = "response",
               messages_field: str = "messages", chat_template: bool | None = None):
    """Encode records as ({"input_ids": (N, seq_len), "prompt_mask": (N, seq_len) bool}, SFTStats).

    `chat_template`: None uses the tokenizer's chat template when it has one. With the
    template, a record's `messages` are used as they are, and a prompt/response pair becomes
    a user turn and an assistant turn.
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
    rows, prompts = [], []
    stats = SFTStats(records=0, kept=0, dropped_too_long=0, dropped_prompt_too_long=0, dropped_empty=0)
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
        rows.append(p + r + [eos] * (seq_len - len(p) - len(r)))
        prompts.append(len(p))
        stats.kept += 1
    ids = torch.tensor(rows, dtype=torch.long).view(-1, seq_len)
    prompt_mask = torch.arange(seq_len)[None] < torch.tensor(prompts, dtype=torch.long).view(-1, 1)
    return {"input_ids": ids, "prompt_mask": prompt_mask}, stats
