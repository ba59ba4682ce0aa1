"""Tokenise documents and pack them into fixed-length training sequences."""
from __future__ import annotations

import torch


def pack_texts(texts, tokenizer, seq_len: int, *, batch_size: int = 256) -> torch.Tensor:
    """Concatenate tokenised documents, each followed by EOS, and cut into rows of seq_len.

    The tail that does not fill a whole row is dropped. Returns a LongTensor (N, seq_len).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; packing needs one between documents")
    texts = list(texts)
    ids: list[int] = []
    for i in range(0, len(texts), batch_size):
        for row in tokenizer(texts[i:i + batch_size], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            ids.append(eos)
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"the dataset has {len(ids)} tokens, fewer than one sequence of {seq_len}; "
                         "add data or lower seq_len")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
