"""Datasets: the built-in standard-library corpus, any `datasets` text source, packing."""
from .corpus import CorpusInfo, load_text_splits, stdlib_corpus
from .packing import pack_texts

__all__ = ["CorpusInfo", "load_text_splits", "pack_texts", "stdlib_corpus"]
