"""Tokenizers trained with `tokenizers` for models trained here from scratch: a byte-level BPE
for code and text, a word-level one for captions."""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
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


WORD_SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "eos_token": "<eos>", "mask_token": "<mask>"}


def train_word_tokenizer(texts, *, vocab_size: int = 30000, min_frequency: int = 1,
                         lowercase: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer for captions: one token per word (punctuation marks are words).

    Special tokens `<pad>`, `<unk>`, `<eos>` and `<mask>` are set as the tokenizer's
    attributes (ids 0..3); decoding joins words with single spaces. Save it with
    `save_pretrained`, load it with `AutoTokenizer.from_pretrained`.
    """
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("no non-empty text to train a word tokenizer on")
    tok = Tokenizer(models.WordLevel(unk_token=WORD_SPECIALS["unk_token"]))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(WORD_SPECIALS.values()))
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **WORD_SPECIALS)
