"""scikit-learn's bundled handwritten digits as an image-caption set (real images, no download).

`sklearn.datasets.load_digits()` holds 1,797 8x8 scans (ink 0..16) of digits written by 43
people (UCI "Optical Recognition of Handwritten Digits"). Each becomes a white-on-black RGB
image upscaled to `image_size` with a caption from a small grammar ("a handwritten seven",
"the digit seven", "the number seven written by hand"). The train/test split is fixed by a
seed (stratified, 20% test: 1,437 / 360 images).

`DigitClassifier` judges generated images: an SVM trained on the real training images after
the same round trip a generated image takes (upscale, then area-average back to 8x8).
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
from PIL import Image

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten {}", "the digit {}", "the number {} written by hand")
TEST_FRACTION = 0.2
SPLITS = ("train", "test")
_CAPTION = re.compile("|".join("(?:" + t.format("(" + "|".join(WORDS) + ")") + ")" for t in TEMPLATES))


def digit_caption(label: int, template: int = 0) -> str:
    if not 0 <= label <= 9:
        raise ValueError(f"a digit label is 0..9, got {label}")
    return TEMPLATES[template % len(TEMPLATES)].format(WORDS[label])


def parse_digit_caption(text: str) -> int | None:
    """The digit a caption names, or None when the text is not a sentence of the grammar
    (case, extra whitespace and a final period are ignored)."""
    if not isinstance(text, str):
        return None
    m = _CAPTION.fullmatch(" ".join(text.lower().split()).rstrip(". "))
    if m is None:
        return None
    return WORDS.index(next(g for g in m.groups() if g is not None))


@lru_cache(maxsize=4)
def _split(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    index = np.arange(len(data.target))
    train, test = train_test_split(index, test_size=TEST_FRACTION, random_state=seed, stratify=data.target)
    return data.images, data.target, {"train": np.sort(train), "test": np.sort(test)}


def split_arrays(split: str = "train", seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, 8, 8) ink 0..16, labels (N,), indices into load_digits()) of a split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for digits; choose one of {list(SPLITS)}")
    images, labels, index = _split(seed)
    idx = index[split]
    return images[idx], labels[idx], idx


def render_digit(pixels: np.ndarray, image_size: int = 32) -> Image.Image:
    """An 8x8 scan (ink 0..16) as a white-on-black RGB image of `image_size` pixels (bilinear)."""
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 for digits, got {image_size}")
    grey = Image.fromarray(np.clip(np.asarray(pixels) * (255 / 16), 0, 255).round().astype(np.uint8), "L")
    return grey.resize((image_size, image_size), Image.BILINEAR).convert("RGB")


def samples(split: str = "train", image_size: int = 32, seed: int = 0):
    """Yield (image, caption, label); the caption's template cycles with the scan's index."""
    images, labels, idx = split_arrays(split, seed)
    for pixels, label, i in zip(images, labels, idx):
        yield render_digit(pixels, image_size), digit_caption(int(label), int(i)), int(label)


def digits_dataset(split: str = "train", image_size: int = 32, seed: int = 0):
    """A `datasets.Dataset` with `image` (PIL), `text` and `label` (0..9) for a split."""
    import datasets

    rows = list(samples(split, image_size, seed))
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(WORDS))})
    return datasets.Dataset.from_dict({"image": [r[0] for r in rows], "text": [r[1] for r in rows],
                                       "label": [r[2] for r in rows]}, features=features)


def to_digit_features(images) -> np.ndarray:
    """(N, 64) features: each image to grey, area-averaged to 8x8, scaled to ink 0..16.

    Takes PIL images (any mode and size) or a (N, 3, H, W) tensor/array in [-1, 1].
    """
    if hasattr(images, "ndim") and not isinstance(images, Image.Image):
        from ..images import to_pil

        images = to_pil(images)
    if isinstance(images, Image.Image):
        images = [images]
    rows = [np.asarray(im.convert("L").resize((8, 8), Image.BOX), dtype=np.float64).ravel() * (16 / 255)
            for im in images]
    if not rows:
        return np.zeros((0, 64))
    return np.stack(rows)


class DigitClassifier:
    """An SVM (RBF kernel) on the real training digits, to judge generated images.

    Training images go through the same round trip as generated ones (rendered at
    `image_size`, area-averaged back to 8x8), so the classifier sees what it will judge.
    """

    def __init__(self, image_size: int = 32, seed: int = 0):
        from sklearn.svm import SVC

        self.image_size, self.seed = image_size, seed
        images, labels, _ = split_arrays("train", seed)
        x = to_digit_features([render_digit(p, image_size) for p in images])
        self.model = SVC(gamma="scale", C=10.0).fit(x, labels)

    def predict(self, images) -> np.ndarray:
        """Digit labels (N,) of PIL images or a (N, 3, H, W) tensor in [-1, 1]."""
        x = to_digit_features(images)
        if len(x) == 0:
            return np.zeros(0, dtype=np.int64)
        return self.model.predict(x).astype(np.int64)

    def accuracy(self, split: str = "test") -> float:
        """Accuracy on the real images of `split` (rendered at this classifier's size)."""
        images, labels, _ = split_arrays(split, self.seed)
        predicted = self.predict([render_digit(p, self.image_size) for p in images])
        return float((predicted == labels).mean())


@lru_cache(maxsize=4)
def digit_classifier(image_size: int = 32, seed: int = 0) -> DigitClassifier:
    """A shared, trained `DigitClassifier` (trained once per image size and split seed)."""
    return DigitClassifier(image_size, seed)
