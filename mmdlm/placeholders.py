"""`<|mask:N|>` placeholders: the text convention for "N tokens to generate here", shared by the
text pipeline (infilling), the caption canvas (caption infilling, questions) and the demo.

Write a placeholder right after the character before it: byte-level BPEs attach a leading space
to the next word, so "join(<|mask:6|>)" rather than "join( <|mask:6|> )".
"""
from __future__ import annotations

import re

PLACEHOLDER = re.compile(r"<\|mask:(\d+)\|>")


def has_placeholders(text: str) -> bool:
    return PLACEHOLDER.search(text) is not None


def parse_infill(tokenizer, text: str, mask_id: int | None, max_length: int | None = None) -> list[int]:
    """Token ids of `text` with each `<|mask:N|>` replaced by N mask ids. With `max_length` (the
    model's context), placeholders asking for more tokens are refused before any is made."""
    pieces = PLACEHOLDER.split(text)
    if len(pieces) == 1:
        raise ValueError("infill text has no <|mask:N|> placeholder (e.g. 'def f(x):<|mask:8|>')")
    if mask_id is None:
        raise ValueError("this model has no mask token, so it cannot fill <|mask:N|> placeholders")
    counts = [int(n) for n in pieces[1::2]]
    if min(counts) < 1:
        raise ValueError("a <|mask:N|> placeholder needs N >= 1")
    if max_length is not None and sum(counts) > max_length:
        raise ValueError(f"the <|mask:N|> placeholders ask for {sum(counts)} tokens but the model's context is "
                         f"{max_length}")
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i % 2:
            ids += [mask_id] * int(piece)
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


def mask_spans(text: str, spans, tokenizer=None) -> str:
    """Replace character spans of `text` by `<|mask:N|>` placeholders.

    `spans` holds (start, end) or (start, end, n_tokens) tuples; without n_tokens, N is the
    number of tokens the span has now (needs `tokenizer`). Spans must not overlap.
    """
    out, last = [], 0
    for span in sorted(spans):
        start, end, *n = span
        if not 0 <= start < end <= len(text):
            raise ValueError(f"span {span} is outside the text (length {len(text)}) or empty")
        if start < last:
            raise ValueError(f"span {span} overlaps the previous one")
        if not n:
            if tokenizer is None:
                raise ValueError("give n_tokens for each span, or a tokenizer to count them")
            n = [len(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])]
        out += [text[last:start], f"<|mask:{int(n[0])}|>"]
        last = end
    return "".join(out + [text[last:]])
