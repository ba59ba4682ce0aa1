"""Text-to-image accuracy on shapes for several sampler settings, one model load.

The probe where sampler settings and stages are chosen before the held-out split is looked at:
`--split train` draws training captions in layouts of its own seed. Each setting is a JSON object
of pipeline call arguments, with "scheduler" for overrides of the pipeline's scheduler config:

    python bench/shapes_probe.py assets/mmdit-shapes '{}' '{"scheduler": {"stochastic_sampling": false}}' \
        '{"num_inference_steps": 40}'

Prints one line per setting: the setting, a tab, then the share of images whose attributes the parser
reads back right (each attribute, and all of them).
"""
from __future__ import annotations

import argparse
import json

import torch

from mmdlm.data import shapes as S
from mmdlm.eval.imagetext import ATTRIBUTES, scene_attributes
from mmdlm.pipelines.multimodal import load_pipeline


def swap_scheduler(pipe, base, overrides: dict) -> None:
    """`pipe.scheduler` becomes `base`'s class and config with `overrides` on top. They go in as
    keywords: a loaded config lists the settings its file lacked under `_use_default_values`, and
    from_config resets those to their defaults when they come inside the config dict."""
    pipe.scheduler = type(base).from_config(base.config, **overrides)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("settings", nargs="+", help="JSON objects: pipeline call arguments, 'scheduler' overrides")
    p.add_argument("--split", default="train", choices=S.SPLITS)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--seed", type=int, default=7, help="layouts and caption order")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    settings = [json.loads(s) for s in args.settings]
    if not all(isinstance(s, dict) for s in settings):
        p.error("each setting must be a JSON object")
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    scheduler = pipe.scheduler
    data = list(S.samples(args.split, args.n, pipe.image_size, args.seed))
    for setting in settings:
        call = dict(setting)
        swap_scheduler(pipe, scheduler, call.pop("scheduler", {}))
        images = []
        for i in range(0, len(data), args.batch_size):
            prompts = [d[1] for d in data[i:i + args.batch_size]]
            images += pipe(prompt=prompts, task="t2i", generator=torch.Generator().manual_seed(i),
                           output_type="pil", **call).images
        scores = [scene_attributes(S.parse_image(image), d[2]) for image, d in zip(images, data)]
        shares = {a: round(sum(s[a] for s in scores) / len(scores), 3) for a in ATTRIBUTES + ("all",)}
        print(json.dumps(setting), json.dumps(shares), sep="\t", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
