"""A model-free pipeline that follows the multimodal call convention, for testing evaluation.

The oracle draws a prompt with the shapes renderer (or picks a real digit of the named
class) and captions an image with the parser (or the digit classifier); `wrong=True` shifts
every attribute (colours, shapes, sizes, relation; digits +1), so it must score about 0.
"""
from __future__ import annotations

import random

from diffusers import DiffusionPipeline

from mmdlm.data import digits as D
from mmdlm.data import shapes as S
from mmdlm.pipelines.multimodal import MultimodalPipelineOutput, format_images, register_pipeline, resolve_task


def _shift(scene: S.Scene) -> S.Scene:
    colours, shapes = list(S.COLOURS), list(S.SHAPES)
    flip = {"small": "large", "large": "small"}

    def obj(o):
        return S.ShapeObject(colours[(colours.index(o.colour) + 2) % 6], shapes[(shapes.index(o.shape) + 1) % 3],
                             flip[o.size])

    inverse = {"left of": "above", "above": "left of", "right of": "below", "below": "right of"}
    return S.Scene(obj(scene.first), inverse[scene.relation], obj(scene.second))


@register_pipeline
class OraclePipeline(DiffusionPipeline):
    def __init__(self, dataset: str = "shapes", image_size: int = 32, wrong: bool = False):
        super().__init__()
        self.register_to_config(dataset=dataset, image_size=image_size, wrong=wrong)
        self.calls = []

    @property
    def backbone(self) -> str:
        return "wrong" if self.config.wrong else "oracle"

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def _digit(self, label: int, rng: random.Random):
        images, labels, _ = D.split_arrays("train")
        pick = rng.choice([i for i, y in enumerate(labels) if y == label])
        return D.render_digit(images[pick], self.image_size)

    def __call__(self, prompt=None, image=None, task=None, num_inference_steps=4, guidance_scale=0.0,
                 text_guidance_scale=0.0, generator=None, output_type="pil", return_dict=True,
                 callback_on_step_end=None, num_images_per_prompt=1):
        task = resolve_task(prompt, image, task)
        self.calls.append(task)
        rng = random.Random(generator.initial_seed() if generator is not None else 0)
        wrong, size = self.config.wrong, self.image_size
        images = texts = None
        if self.config.dataset == "shapes":
            if task == "t2i":
                prompts = [prompt] if isinstance(prompt, str) else prompt
                scenes = [S.parse_caption(p) for p in prompts for _ in range(num_images_per_prompt)]
                images = [S.render(_shift(s) if wrong else s, size, rng) for s in scenes]
            elif task == "caption":
                scenes = [S.parse_image(im) for im in ([image] if not isinstance(image, list) else image)]
                texts = [S.caption(_shift(s) if wrong else s) if s else "" for s in scenes]
            elif task == "joint":
                scenes = [rng.choice(S.all_scenes()) for _ in range(num_images_per_prompt)]
                images = [S.render(s, size, rng) for s in scenes]
                texts = [S.caption(_shift(s) if wrong else s) for s in scenes]
        else:
            judge = D.digit_classifier(size)
            if task == "t2i":
                prompts = [prompt] if isinstance(prompt, str) else prompt
                labels = [D.parse_digit_caption(p) for p in prompts for _ in range(num_images_per_prompt)]
                images = [self._digit((y + wrong) % 10, rng) for y in labels]
            elif task == "caption":
                labels = judge.predict(image if isinstance(image, list) else [image]).tolist()
                texts = [D.digit_caption((y + wrong) % 10) for y in labels]
            elif task == "joint":
                labels = [rng.randrange(10) for _ in range(num_images_per_prompt)]
                images = [self._digit(y, rng) for y in labels]
                texts = [D.digit_caption((y + wrong) % 10, rng.randrange(3)) for y in labels]
        if images is not None and output_type != "pil":
            from mmdlm.images import to_tensor

            images = format_images(to_tensor(images, size), output_type)
        if not return_dict:
            return images, texts
        return MultimodalPipelineOutput(images=images, texts=texts)

