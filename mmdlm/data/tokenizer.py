"""A byte-level BPE tokenizer trained with `tokenizers`, for models trained here from scratch."""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def train_bpe(texts, vocab_size: int = 4096, *, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (an iterable of strings).

    One special token, `<|endoftext|>`, serves as BOS, EOS and padding. A [MASK] token is
    deliberately absent: adapting the model to diffusion adds one (see `mmdlm.text.adapt`).
    """
    if vocab_size < 300:
        raise ValueError(f"vocab_size must be at least 300 for a byte-level BPE, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS,
                                   pad_token=EOS, clean_up_tokenization_spaces=False)
