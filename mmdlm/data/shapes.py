"""A synthetic, deterministic image-caption set: two coloured shapes and the relation between them.

A scene is two objects and a relation, "a small red circle left of a large blue square":
each object has a colour (6), a shape (3) and a size (2); the two colours differ, so an image
can be segmented by colour; the relation is one of "left of", "right of", "above", "below".
That gives 36 x 30 ordered object pairs x 4 relations = 4,320 captions. "A left of B" and
"B right of A" describe the same picture, so they form one *canonical* scene (relations
"left of" and "above" only): 2,160 canonical scenes.

Everything is a pure function of its arguments: `render(scene, image_size, seed)` draws the
scene with PIL on a white background (positions follow the relation with jitter; the objects
never overlap); `caption` and `parse_caption` are exact inverses on the grammar; and
`parse_image` reads a scene back from pixels, tolerant of the noise a generative model
leaves, for evaluation.

Compositional hold-out: a fixed ~10% of the canonical scenes (chosen by a hash of the
canonical caption, so both phrasings of a scene fall on the same side) form the `test` split;
no caption of a held-out scene ever appears in `train`. `HELD_OUT` counts them: 223 scenes,
446 captions; `train` keeps the other 3,874 captions.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 40), "blue": (20, 40, 230),
    "yellow": (240, 210, 20), "purple": (170, 40, 210), "cyan": (20, 200, 210),
}  # pairwise RGB distances >= 151, and >= 240 from the background
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
SIDE = {"small": 0.22, "large": 0.375}  # side of the shape's bounding box, as a share of the image side
HELD_OUT_FRACTION = 0.1
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    size: str

    def words(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """`first` stands in `relation` to `second`: Scene(a, "left of", b) is "a left of b"."""

    first: ShapeObject
    relation: str
    second: ShapeObject

    def __post_init__(self):
        for obj in (self.first, self.second):
            if obj.colour not in COLOURS or obj.shape not in SHAPES or obj.size not in SIZES:
                raise ValueError(f"unknown object {obj}; colours {list(COLOURS)}, shapes {list(SHAPES)}, "
                                 f"sizes {list(SIZES)}")
        if self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}; choose one of {list(RELATIONS)}")
        if self.first.colour == self.second.colour:
            raise ValueError(f"the two objects of a scene must have different colours, both are {self.first.colour}")

    def canonical(self) -> "Scene":
        """The same picture with the relation 'left of' or 'above' (objects swapped if needed)."""
        if self.relation in ("left of", "above"):
            return self
        return Scene(self.second, _INVERSE[self.relation], self.first)

    def to_dict(self) -> dict:
        return {"colour_1": self.first.colour, "shape_1": self.first.shape, "size_1": self.first.size,
                "relation": self.relation,
                "colour_2": self.second.colour, "shape_2": self.second.shape, "size_2": self.second.size}


def all_objects() -> list[ShapeObject]:
    return [ShapeObject(c, s, z) for c in COLOURS for s in SHAPES for z in SIZES]


def all_scenes(*, canonical: bool = False) -> list[Scene]:
    """Every scene of the grammar in a fixed order: 4,320, or the 2,160 canonical ones."""
    relations = ("left of", "above") if canonical else RELATIONS
    objs = all_objects()
    return [Scene(a, r, b) for a in objs for r in relations for b in objs if a.colour != b.colour]


# ---------------------------------------------------------------- captions
_OBJ = r"(small|large) (" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")"
_CAPTION = re.compile(rf"a {_OBJ} ({'|'.join(RELATIONS)}) a {_OBJ}")


def caption(scene: Scene) -> str:
    return f"a {scene.first.words()} {scene.relation} a {scene.second.words()}"


def parse_caption(text: str) -> Scene | None:
    """The scene a caption describes, or None when the text is not a sentence of the grammar.

    Case, surrounding and repeated whitespace and a final period are ignored; a caption
    naming the same colour twice is not in the grammar.
    """
    if not isinstance(text, str):
        return None
    m = _CAPTION.fullmatch(" ".join(text.lower().split()).rstrip(". "))
    if m is None:
        return None
    z1, c1, s1, rel, z2, c2, s2 = m.groups()
    if c1 == c2:
        return None
    return Scene(ShapeObject(c1, s1, z1), rel, ShapeObject(c2, s2, z2))


def is_held_out(scene: Scene) -> bool:
    """True for the fixed ~10% of scenes reserved for evaluation (by a hash of the canonical caption)."""
    digest = hashlib.sha256(caption(scene.canonical()).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELD_OUT_FRACTION


def split_scenes(split: str) -> list[Scene]:
    """All scenes (both phrasings) of a split, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for shapes; choose one of {list(SPLITS)}")
    return [s for s in all_scenes() if is_held_out(s) == (split == "test")]


HELD_OUT = sum(map(is_held_out, all_scenes(canonical=True)))  # canonical scenes in the test split


# ---------------------------------------------------------------- rendering
def _side(size: str, image_size: int) -> int:
    return max(3, round(SIDE[size] * image_size))


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, cx: int, cy: int, side: int) -> None:
    x0, y0 = cx - side // 2, cy - side // 2
    x1, y1 = x0 + side - 1, y0 + side - 1
    colour = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=colour)
    elif obj.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=colour)
    else:  # an upright isosceles triangle filling the box
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=colour)


def layout(scene: Scene, image_size: int, rng: random.Random) -> tuple[tuple[int, int], tuple[int, int]]:
    """Centres of the two objects: separated along the relation's axis by more than their
    half-sides plus a gap (so they never overlap), offset across it by at most half of that
    separation (so the relation's axis stays the dominant one)."""
    s1, s2 = _side(scene.first.size, image_size), _side(scene.second.size, image_size)
    margin, gap = max(1, image_size // 32), max(2, image_size // 16)
    lo1, hi1 = s1 // 2 + margin, image_size - (s1 - s1 // 2) - margin
    lo2, hi2 = s2 // 2 + margin, image_size - (s2 - s2 // 2) - margin
    need = (s1 + s2) / 2 + gap
    # along the axis: first before second (left of / above), second before first otherwise
    before = scene.relation in ("left of", "above")
    for _ in range(1000):
        a1, a2 = rng.randint(lo1, hi1), rng.randint(lo2, hi2)
        along = (a2 - a1) if before else (a1 - a2)
        if along < need:
            continue
        p1 = rng.randint(lo1, hi1)
        lo, hi = max(lo2, p1 - int(along / 2)), min(hi2, p1 + int(along / 2))
        if lo > hi:
            continue
        p2 = rng.randint(lo, hi)
        if scene.relation in ("left of", "right of"):
            return (a1, p1), (a2, p2)
        return (p1, a1), (p2, a2)
    raise ValueError(f"image_size {image_size} is too small to lay out {caption(scene)!r}")


def render(scene: Scene, image_size: int = 32, seed: int | random.Random = 0) -> Image.Image:
    """Draw `scene` as an RGB image of `image_size` pixels; `seed` picks the jittered layout."""
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels for shapes, got {image_size}")
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    (c1, c2) = layout(scene, image_size, rng)
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _draw(draw, scene.first, *c1, _side(scene.first.size, image_size))
    _draw(draw, scene.second, *c2, _side(scene.second.size, image_size))
    return image


# ---------------------------------------------------------------- reading images back
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)
_FILL = {"circle": 0.77, "square": 1.0, "triangle": 0.53}  # area / bounding box of the rendered shapes


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    return ndimage.label(mask)  # 4-connectivity: a diagonal chain of noise pixels stays apart


def _read_object(component: np.ndarray, colour: str, image_size: int) -> tuple[ShapeObject, float, float]:
    ys, xs = np.nonzero(component)
    area = len(ys)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = area / (h * w)
    top_share = (ys < ys.min() + h / 2).sum() / area  # an upright triangle keeps ~1/4 of its area on top
    if top_share < 0.4:
        shape = "triangle"
    else:  # a square fills its box; a circle (even a blurred 6-pixel one) leaves the corners empty
        shape = "square" if fill > 0.91 else "circle"
    side = (area / _FILL[shape]) ** 0.5 / image_size
    size = "large" if side > (SIDE["small"] * SIDE["large"]) ** 0.5 else "small"
    return ShapeObject(colour, shape, size), float(xs.mean()), float(ys.mean())


def parse_image(image, *, max_distance: float = 110.0, min_area: float = 0.01) -> Scene | None:
    """Read the canonical scene back from an image, or None when it shows no such scene.

    Each pixel snaps to the nearest palette colour if it lies within `max_distance` (RGB)
    of it and is closer to it than to the background; everything else is background. Per
    colour the largest 4-connected component counts, if it covers at least `min_area` of
    the image; exactly two colours must qualify. Shape comes from the component's geometry
    (share of the area in the top half: triangle; fill of the bounding box: square or
    circle), size from the area, the relation from the centroids along the dominant axis.
    Accepts a PIL image or an (H, W, 3) uint8 array.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] != pixels.shape[1]:
        raise ValueError(f"parse_image takes a square RGB image, got an array of shape {pixels.shape}")
    image_size = pixels.shape[0]
    bg = np.array(BACKGROUND, dtype=np.float32)
    dist = np.linalg.norm(pixels[:, :, None, :] - _PALETTE, axis=-1)  # (H, W, colours)
    nearest = dist.argmin(-1)
    d_near = dist.min(-1)
    d_bg = np.linalg.norm(pixels - bg, axis=-1)
    is_ink = (d_near <= max_distance) & (d_near < d_bg)
    found = []
    for k, name in enumerate(_NAMES):
        labels, count = _components(is_ink & (nearest == k))
        if count == 0:
            continue
        areas = np.bincount(labels.ravel())[1:]
        best = int(areas.argmax())
        if areas[best] >= min_area * image_size ** 2:
            found.append(_read_object(labels == best + 1, name, image_size))
    if len(found) != 2:
        return None
    (a, ax, ay), (b, bx, by) = found
    dx, dy = bx - ax, by - ay
    if abs(dx) >= abs(dy):
        return Scene(a, "left of", b) if dx > 0 else Scene(b, "left of", a)
    return Scene(a, "above", b) if dy > 0 else Scene(b, "above", a)


def same_scene(a: Scene | None, b: Scene | None) -> bool:
    """Whether two readings describe the same picture (phrasing ignored); None matches nothing."""
    return a is not None and b is not None and a.canonical() == b.canonical()


# ---------------------------------------------------------------- datasets
def samples(split: str = "train", n: int | None = None, image_size: int = 32, seed: int = 0):
    """Yield (image, caption, scene) for `split`, deterministic for `seed`.

    The split's captions are shuffled by `seed` and cycled, so every caption appears once
    before any appears twice; n=None gives each caption once (3,874 train, 446 test).
    """
    scenes = split_scenes(split)
    if n is None:
        n = len(scenes)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"shapes-{split}-{seed}")
    order: list[Scene] = []
    for i in range(n):
        if i % len(scenes) == 0:
            order = scenes[:]
            rng.shuffle(order)
        scene = order[i % len(scenes)]
        yield render(scene, image_size, rng), caption(scene), scene


def shapes_dataset(split: str = "train", n: int | None = None, image_size: int = 32, seed: int = 0):
    """A `datasets.Dataset` with `image` (PIL), `text` and the scene's attributes
    (`colour_1`, `shape_1`, `size_1`, `relation`, `colour_2`, `shape_2`, `size_2`).

    `split` is "train" (3,874 captions) or "test" (the 446 held-out captions of 223 scenes);
    see `samples` for `n` and `seed`.
    """
    import datasets

    columns: dict[str, list] = {"image": [], "text": []}
    for image, text, scene in samples(split, n, image_size, seed):
        columns["image"].append(image)
        columns["text"].append(text)
        for key, value in scene.to_dict().items():
            columns.setdefault(key, []).append(value)
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  **{k: datasets.Value("string") for k in columns if k not in ("image", "text")}})
    if not columns["text"]:
        features = datasets.Features({k: v for k, v in features.items() if k in ("image", "text")})
    return datasets.Dataset.from_dict(columns, features=features)
