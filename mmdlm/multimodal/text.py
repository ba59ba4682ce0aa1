"""The text side of a multimodal model: captions on a fixed-length canvas of token ids.

A caption occupies the first tokens of a canvas of `text_length` positions and EOS fills the
rest (LLaDA style): the model learns where a caption ends, and the built-in data needs no
padding. `<|mask:N|>` placeholders (the text path's syntax, `mmdlm.text.generate`) put N
mask tokens on the canvas, for caption infilling and question answering.

A tokenizer whose pad token differs from EOS can fill with padding instead
(`fill="pad"`: one EOS, then pads); `attention_mask` then tells real tokens from pads for
backbones whose attention honours it.
"""
from __future__ import annotations

import torch

from ..placeholders import PLACEHOLDER, parse_infill

FILLS = ("eos", "pad")


def ensure_caption_tokens(tokenizer, *, mask_token: str = "<|mask|>", eos_token: str = "<|endoftext|>"):
    """Give any transformers tokenizer what the caption canvas needs: a mask and an EOS token
    (added as special tokens when missing; build the model after this, from len(tokenizer))."""
    added = {}
    if getattr(tokenizer, "mask_token_id", None) is None:
        added["mask_token"] = mask_token
    if tokenizer.eos_token_id is None:
        added["eos_token"] = eos_token
    if added:
        tokenizer.add_special_tokens(added)
    return tokenizer


def _token_ids(tokenizer, text: str, mask_token_id: int | None) -> list[int]:
    if PLACEHOLDER.search(text):
        return parse_infill(tokenizer, text, mask_token_id)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_captions(tokenizer, texts, text_length: int, *, fill: str = "eos",
                    mask_token_id: int | None = None, refuse_unknown: bool = False) -> torch.LongTensor:
    """Token ids (B, text_length): each text's tokens, then EOS to the end of the canvas
    (`fill="pad"`: one EOS, then the tokenizer's pad token).

    A text with `<|mask:N|>` placeholders gets N mask tokens for each (`mask_token_id`,
    by default the tokenizer's). A text longer than the canvas is an error, and so, with
    `refuse_unknown` (what the pipelines ask for), is a word the tokenizer can only map to its
    unknown token (a word-level caption tokenizer knows only the words it was trained on).
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if text_length < 1:
        raise ValueError(f"text_length must be >= 1, got {text_length}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; the caption canvas ends every caption with EOS "
                         "(set tokenizer.eos_token)")
    pad = eos
    if fill == "pad":
        pad = tokenizer.pad_token_id
        if pad is None or pad == eos:
            raise ValueError("fill='pad' needs a pad token distinct from EOS; use fill='eos'")
    if mask_token_id is None:
        mask_token_id = getattr(tokenizer, "mask_token_id", None)
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {i} is a {type(text).__name__}, not a string")
        ids = _token_ids(tokenizer, text, mask_token_id)
        if len(ids) > text_length:
            raise ValueError(f"text {i} has {len(ids)} tokens but the text length is {text_length}; "
                             f"shorten it or raise text_length ({text[:60]!r})")
        if refuse_unknown:
            _check_known(tokenizer, text, ids, i)
        tail = text_length - len(ids)
        rows.append(ids + ([eos] + [pad] * (tail - 1) if tail else []))
    return torch.tensor(rows, dtype=torch.long).view(len(rows), text_length)


def _check_known(tokenizer, text: str, ids: list[int], i: int) -> None:
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or unk not in ids:
        return
    words = [w for w in PLACEHOLDER.sub(" ", text).split()
             if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]
    raise ValueError(f"text {i} has words this model's tokenizer does not know: {', '.join(map(repr, words))} "
                     f"({text[:60]!r}); use the words of its training captions")


def decode_captions(tokenizer, ids: torch.Tensor, *, stop_at_eos: bool = True) -> list[str]:
    """Texts of canvases (B, L) or (L,): cut at the first EOS (`stop_at_eos=False`: drop
    every EOS instead, e.g. after infilling), special tokens (mask, pad) dropped."""
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise ValueError(f"caption ids must be (B, L) or (L,), got shape {tuple(ids.shape)}")
    eos = tokenizer.eos_token_id
    out = []
    for row in ids.tolist():
        if eos is not None:
            row = row[: row.index(eos)] if stop_at_eos and eos in row else [t for t in row if t != eos]
        out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


def attention_mask(ids: torch.Tensor, pad_token_id: int | None) -> torch.BoolTensor:
    """True at real tokens, False at padding (canvases encoded with `fill="pad"`).

    An EOS-filled canvas has no padding (the EOS tokens are part of what the model
    predicts): pass pad_token_id=None, or any id other than EOS, to get all True.
    """
    if pad_token_id is None:
        return torch.ones_like(ids, dtype=torch.bool)
    return ids != pad_token_id
