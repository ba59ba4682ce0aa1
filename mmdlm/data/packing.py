"""Tokenise documents and pack them into fixed-length training sequences."""
from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import torch


def document_tokens(texts: Iterable[str], tokenizer, *, batch_size: int = 256,
                    batch_chars: int = 1 << 18) -> Iterator[list[int]]:
    """The token ids of each batch of documents, each document followed by EOS: the stream every
    text corpus is packed from (`pack_texts` in memory, `prepare.write_tokens` on disk). A batch
    holds up to `batch_size` documents and about `batch_chars` characters (memory stays bounded
    by the batch, whatever the corpus)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; packing needs one between documents")
    batch: list[str] = []
    chars = 0
    for text in itertools.chain(texts, [None]):
        if text is not None:
            batch.append(text)
            chars += len(text)
        if batch and (text is None or len(batch) == batch_size or chars >= batch_chars):
            ids: list[int] = []
            for row in tokenizer(batch, add_special_tokens=False, return_attention_mask=False)["input_ids"]:
                ids.extend(row)
                ids.append(eos)
            yield ids
            batch, chars = [], 0


def pack_texts(texts, tokenizer, seq_len: int, *, batch_size: int = 256) -> torch.Tensor:
    """Concatenate tokenised documents, each followed by EOS, and cut into rows of seq_len.

    The tail that does not fill a whole row is dropped. Returns a LongTensor (N, seq_len).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    ids = [i for chunk in document_tokens(texts, tokenizer, batch_size=batch_size) for i in chunk]
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"the dataset has {len(ids)} tokens, fewer than one sequence of {seq_len}; "
                         "add data or lower seq_len")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
