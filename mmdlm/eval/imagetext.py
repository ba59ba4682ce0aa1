"""Image-text evaluation of any multimodal pipeline, through the shared call convention only.

On `shapes` (held-out scenes, never seen in training):
- text-to-image: held-out captions -> images, read back by `parse_image`; correct when every
  attribute matches, with per-attribute accuracies (colour: both colours present; shape,
  size: of the object with each colour; axis: the relation's axis, horizontal or vertical,
  whichever object comes first; relation: axis and direction between the two colours);
- captioning: held-out images -> captions, parsed by `parse_caption`; correct when the
  caption describes the image's scene (either phrasing: "A left of B" = "B right of A"),
  plus exact string match with the dataset's caption and per-attribute accuracies;
- joint: images and captions from nothing; consistent when the parser's reading of the
  image equals the parsed caption; `joint_distinct` counts the different valid captions (a
  model that draws one scene every time is consistent and useless).
On `digits` (the test split): text-to-image judged by `DigitClassifier`, captions by
`parse_digit_caption`, joint consistency as the classifier's label equal to the caption's.

Results are one record per (backbone, dataset) in `bench/results/imagetext.json`.
"""
from __future__ import annotations

import inspect
import json
import time
from pathlib import Path

import torch

from ..data import shapes as S
from ..images import image_grid
from ..io import atomic_write_text

DATASETS = ("shapes", "digits")
EVAL_TASKS = ("t2i", "caption", "joint")
ATTRIBUTES = ("colour", "shape", "size", "axis", "relation")
RESULTS = Path("bench/results/imagetext.json")


def scene_attributes(predicted: S.Scene | None, truth: S.Scene) -> dict[str, bool]:
    """Which attributes of `truth` the `predicted` scene gets right (objects matched by colour)."""
    if predicted is None:
        return {**{a: False for a in ATTRIBUTES}, "all": False}
    p, t = predicted.canonical(), truth.canonical()
    by_colour = {o.colour: o for o in (p.first, p.second)}
    objects = [(o, by_colour.get(o.colour)) for o in (t.first, t.second)]
    out = {
        "colour": set(by_colour) == {t.first.colour, t.second.colour},
        "shape": all(q is not None and q.shape == o.shape for o, q in objects),
        "size": all(q is not None and q.size == o.size for o, q in objects),
        "axis": p.relation == t.relation,  # canonical: "left of" (horizontal) or "above" (vertical)
        "relation": p.first.colour == t.first.colour and p.second.colour == t.second.colour
        and p.relation == t.relation,
    }
    out["all"] = p == t
    return out


def _default_steps(pipe) -> int | None:
    param = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield i // size, items[i:i + size]


def _check(out, n: int, field: str, task: str):
    value = getattr(out, field, None)
    if value is None or len(value) != n:
        got = "none" if value is None else len(value)
        raise ValueError(f"the pipeline returned {got} {field} for a {task} batch of {n}")
    return list(value)


def _mean(values) -> float | None:
    values = list(values)
    return round(sum(map(float, values)) / len(values), 4) if values else None


def evaluate(pipe, dataset: str = "shapes", *, n: int = 64, num_inference_steps: int | None = None, seed: int = 0,
             batch_size: int = 16, tasks=EVAL_TASKS, image_size: int | None = None,
             samples_dir: str | Path | None = None, warmup: bool = True, **call_kwargs) -> dict:
    """Score `pipe` on `dataset` ("shapes" or "digits") with `n` samples per task.

    The pipeline is called only through the shared convention (`prompt=..., task="t2i"`,
    `image=..., task="caption"`, `task="joint", num_images_per_prompt=...`), `batch_size`
    samples at a time, the batch b with a generator on the pipeline's device seeded `seed + b`. Extra
    keyword arguments (e.g. `guidance_scale`) go to every call and into the record.
    `num_inference_steps=None` uses the pipeline's default. With `warmup`, each task first
    runs once on one sample, untimed (one-time costs stay out of the seconds per sample).
    With `samples_dir`, grids of the first generated images are written there as PNG.
    """
    if dataset not in DATASETS:
        raise ValueError(f"evaluation knows the built-in sets {', '.join(DATASETS)}, not {dataset!r}")
    tasks = tuple(tasks)
    unknown = set(tasks) - set(EVAL_TASKS)
    if unknown or not tasks:
        raise ValueError(f"tasks must be among {', '.join(EVAL_TASKS)}, got {list(tasks)}")
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    image_size = image_size or getattr(pipe, "image_size", None) or 32
    steps = num_inference_steps if num_inference_steps is not None else _default_steps(pipe)
    step_kw = {} if num_inference_steps is None else {"num_inference_steps": num_inference_steps}

    def call(b: int, **kw):
        return pipe(**kw, generator=torch.Generator(getattr(pipe, "device", "cpu")).manual_seed(seed + b),
                    output_type="pil",
                    **step_kw, **call_kwargs)

    if dataset == "shapes":
        data = list(S.samples("test", n, image_size, seed))
        truth_images = [d[0] for d in data]
        texts, truths = [d[1] for d in data], [d[2] for d in data]
    else:
        from ..data.digits import samples as digit_samples

        data = list(digit_samples("test", image_size))[:n]
        truth_images, texts, truths = [d[0] for d in data], [d[1] for d in data], [d[2] for d in data]
    n = len(data)
    record: dict = {"backbone": getattr(pipe, "backbone", type(pipe).__name__), "pipeline": type(pipe).__name__,
                    "dataset": dataset, "n": n, "num_inference_steps": steps, "seed": seed,
                    "image_size": image_size, "batch_size": batch_size, "device": str(getattr(pipe, "device", "cpu")),
                    "dtype": str(getattr(pipe, "dtype", torch.float32)).removeprefix("torch."),
                    **{k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))}}
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is not None:  # the sampler the images come from (its config decides e.g. stochastic steps)
        record["scheduler"] = {"class": type(scheduler).__name__,
                               **{k: v for k, v in scheduler.config.items() if not k.startswith("_")}}
    for key in ("t2i_accuracy", "caption_accuracy", "joint_consistency", "s_per_image", "s_per_caption"):
        record[key] = None
    judge = parse_digit_caption = None
    if dataset == "digits":
        from ..data.digits import digit_classifier, parse_digit_caption

        judge = digit_classifier(image_size)
    examples: dict = {}
    grids: dict = {}

    def run(task: str, arg: str, items: list, field: str) -> tuple[list, float]:
        """Every item through the pipeline in batches, after an untimed warm-up: (outputs, s per item)."""
        if warmup:
            call(0, **{arg: items[:1]}, task=task)
        outputs, start = [], time.perf_counter()
        for b, batch in _batches(items, batch_size):
            outputs += _check(call(b, **{arg: batch}, task=task), len(batch), field, task)
        return outputs, round((time.perf_counter() - start) / n, 4)

    if "t2i" in tasks:
        images, record["s_per_image"] = run("t2i", "prompt", texts, "images")
        grids["t2i"] = images
        examples["t2i_prompts"] = texts[:8]
        if dataset == "shapes":
            seen = [S.parse_image(im) for im in images]
            scores = [scene_attributes(s, t) for s, t in zip(seen, truths)]
            record["t2i_accuracy"] = _mean(s["all"] for s in scores)
            record.update({f"t2i_{a}": _mean(s[a] for s in scores) for a in ATTRIBUTES})
            record["t2i_readable"] = _mean(s is not None for s in seen)
        else:
            record["t2i_accuracy"] = _mean(p == t for p, t in zip(judge.predict(images).tolist(), truths))

    if "caption" in tasks:
        captions, record["s_per_caption"] = run("caption", "image", truth_images, "texts")
        examples["captions"] = [[t, c] for t, c in zip(texts[:8], captions)]
        record["caption_exact_match"] = _mean(c.strip() == t for c, t in zip(captions, texts))
        if dataset == "shapes":
            parsed = [S.parse_caption(c) for c in captions]
            scores = [scene_attributes(p, t) for p, t in zip(parsed, truths)]
            record["caption_accuracy"] = _mean(s["all"] for s in scores)
            record.update({f"caption_{a}": _mean(s[a] for s in scores) for a in ATTRIBUTES})
            record["caption_valid"] = _mean(p is not None for p in parsed)
        else:
            parsed = [parse_digit_caption(c) for c in captions]
            record["caption_accuracy"] = _mean(p == t for p, t in zip(parsed, truths))
            record["caption_valid"] = _mean(p is not None for p in parsed)

    if "joint" in tasks:
        if warmup:
            call(0, task="joint", num_images_per_prompt=1)
        images, captions, start = [], [], time.perf_counter()
        for b, batch in _batches(list(range(n)), batch_size):
            out = call(b, task="joint", num_images_per_prompt=len(batch))
            images += _check(out, len(batch), "images", "joint")
            captions += _check(out, len(batch), "texts", "joint")
        record["s_per_joint"] = round((time.perf_counter() - start) / n, 4)
        grids["joint"] = images
        examples["joint_captions"] = captions[:8]
        if dataset == "shapes":
            seen = [S.parse_image(im) for im in images]
            said = [S.parse_caption(c) for c in captions]
            record["joint_consistency"] = _mean(S.same_scene(a, b) for a, b in zip(seen, said))
            record["joint_image_readable"] = _mean(a is not None for a in seen)
            pictures = {s.canonical() for s in said if s is not None}  # both phrasings: one picture
        else:
            said = [parse_digit_caption(c) for c in captions]
            seen = judge.predict(images).tolist()
            record["joint_consistency"] = _mean(s is not None and s == a for a, s in zip(seen, said))
            pictures = {s for s in said if s is not None}
        record["joint_caption_valid"] = _mean(s is not None for s in said)
        record["joint_distinct"] = len(pictures)

    record["examples"] = examples
    if samples_dir is not None:
        folder = Path(samples_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for task, images in grids.items():
            image_grid(images[:32]).save(folder / f"{record['backbone']}-{dataset}-{task}.png")
    return record


def write_record(path: str | Path, record: dict, *, benchmark: str = "imagetext",
                 slot: tuple[str, ...] = ("dataset", "backbone", "label")) -> dict:
    """Insert `record` into the `benchmark` results file at `path`, replacing the one in the same
    `slot` (by default (dataset, backbone, label), the label being optional, e.g. "stage 3"; every
    other key of the slot required); atomic. The file holds the records plus the versions and
    machine of the last writer; each record also keeps its own. Returns the file's content."""
    from importlib.metadata import version

    from ..provenance import machine, versions

    for key in slot[:-1]:
        if not record.get(key):
            raise ValueError(f"a record needs a {key!r}")
    path = Path(path)
    data = {"benchmark": benchmark, "records": []}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); move it away rather than have it overwritten") from err
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise ValueError(f"{path} is not a {benchmark} results file (no list of records)")
    env = {"versions": {**versions(), "diffusers": version("diffusers")}, "machine": machine()}
    record = {**record, **{k: record.get(k) or v for k, v in env.items()}}

    def key(r: dict) -> tuple[str, ...]:
        return tuple(r.get(k) or "" for k in slot)

    records = [r for r in data["records"] if key(r) != key(record)] + [record]
    data.update(env, records=sorted(records, key=key))
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return data
