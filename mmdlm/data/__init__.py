"""Datasets: the built-in standard-library corpus, any `datasets` text source, packing, and the
built-in image-caption sets (shapes, digits) with a loader for any image-text source."""
from .corpus import CorpusInfo, load_text_splits, stdlib_corpus
from .digits import DigitClassifier, digits_dataset, parse_digit_caption
from .imagetext import load_image_text, load_image_texts
from .packing import pack_texts
from .shapes import parse_caption, parse_image, shapes_dataset

__all__ = ["CorpusInfo", "DigitClassifier", "digits_dataset", "load_image_text", "load_image_texts",
           "load_text_splits", "pack_texts", "parse_caption", "parse_digit_caption", "parse_image", "shapes_dataset",
           "stdlib_corpus"]
