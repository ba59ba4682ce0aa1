"""Conventions shared by the multimodal pipelines, and `load_pipeline` for every mmdlm pipeline.

`DualDiffusionPipeline` (MM-DiT: continuous image side, masked text diffusion) and
`UnifiedDiscretePipeline` (VQ image codes and text tokens in one masked diffusion) take the
same call and return the same output, so switching between them means changing one class
name::

    pipe(prompt=None, image=None, task=None, *, mask_image=None, num_inference_steps=...,
         guidance_scale=..., text_guidance_scale=..., generator=None, output_type="pil",
         return_dict=True, callback_on_step_end=None,
         callback_on_step_end_tensor_inputs=None, num_images_per_prompt=1,
         return_history=False, text_steps=None, ...) -> MultimodalPipelineOutput

- `prompt`: a string or a list; `<|mask:N|>` placeholders mark N text tokens to generate.
- `image`: PIL image(s) or numpy arrays ((H, W, C) or (B, H, W, C), uint8 in [0, 255] or float
  in [0, 1]), any mode and size: converted to RGB, resized and centre-cropped to the model's
  `image_size` (see `mmdlm.images.to_tensor`), or a (B, 3, H, W) tensor in [-1, 1] at
  the model's size. `mask_image` (inpainting): white = regenerate.
- `task`: one of `TASKS`, or None to infer it from the inputs (`resolve_task`):

  | task      | inputs                              | generates                            |
  |-----------|-------------------------------------|--------------------------------------|
  | `t2i`     | prompt                              | images                               |
  | `caption` | image                               | texts                                |
  | `vqa`     | image + prompt with placeholders    | texts (the filled prompts)           |
  | `joint`   | nothing                             | images and their captions            |
  | `infill`  | prompt with placeholders [+ image]  | texts (and images when none given)   |
  | `inpaint` | image + mask_image [+ prompt]       | images                               |

- Batch: `num_images_per_prompt` samples per prompt (per image for caption/vqa); for
  `joint` it is the number of samples.
- Sampling options (guidance scales, temperatures) are finite numbers >= 0; step and sample
  counts integers >= 1 (`check_call_options`).
- `guidance_scale`: classifier-free guidance of the image by the text (the unconditional pass
  masks the caption); `text_guidance_scale`: guidance of the text by the image (the
  unconditional pass hides the image). 0 disables either; both use u + (1 + w)(c - u) as the
  text path does.
- `text_steps`: the text is generated in the first `text_steps` of the `num_inference_steps`
  steps (default: all of them, but half in `joint`, `JOINT_TEXT_SHARE`: the image then has the
  other half to follow its finished caption; on 384 joint samples of the shapes models this
  raised consistency from 79.2% to 83.3% (MM-DiT, 20 steps) and from 44.8% to 54.7% (discrete,
  16 steps)).
- `generator`: a torch.Generator (or a list, one per sample) fixes every random draw.
- `output_type`: "pil" (a list of PIL images), "np" ((B, H, W, 3) float in [0, 1]) or "pt"
  ((B, 3, H, W) float in [0, 1]), as in diffusers (`format_images`).
- `callback_on_step_end(pipe, step, timestep, callback_kwargs) -> dict`, as in diffusers.
- `return_history=True` fills `history`: one dict per step with "images" (the current
  estimate, (B, 3, H, W) in [-1, 1], or None) and "text_ids" ((B, L) ids with masks, or None).

Each pipeline also exposes `backbone` (a short name for benchmark records, e.g. "mmdit") and
`image_size` (pixels), which `mmdlm.eval.imagetext.evaluate` reads.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image

from ..diffusion._checks import check_finite
from ..images import to_pil
from ..placeholders import PLACEHOLDER
from .sharing import class_name
from .text_diffusion import TextDiffusionPipeline

TASKS = ("t2i", "caption", "vqa", "joint", "infill", "inpaint")
JOINT_TEXT_SHARE = 0.5
OUTPUT_TYPES = ("pil", "pt", "np")
COUNT_OPTIONS = ("num_inference_steps", "num_images_per_prompt")


@dataclass
class MultimodalPipelineOutput(BaseOutput):
    """images: generated images (list of PIL, or an array/tensor by `output_type`), None when
    the task generates none. texts: generated texts, None when the task generates none.
    history: per-step frames when asked for (see the module docstring)."""

    images: Any = None
    texts: list[str] | None = None
    history: list[dict] | None = None


# ---------------------------------------------------------------- task resolution
def _prompt_list(prompt) -> list[str]:
    if prompt is None:
        return []
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("prompt is an empty list; give at least one prompt, or prompt=None")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} is a {type(p).__name__}, not a string")
        if not p.strip():
            raise ValueError(f"prompt {i} is empty; give a text, or prompt=None (an image and a caption from "
                             "nothing: task='joint')")
    return prompts


def count_images(image) -> int:
    """How many images `image` holds (0 for None): a PIL image, an array, a tensor or a list."""
    if image is None:
        return 0
    if isinstance(image, Image.Image):
        return 1
    if isinstance(image, (torch.Tensor, np.ndarray)):
        return int(image.shape[0]) if image.ndim == 4 else 1
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("image is an empty list; give at least one image, or image=None")
        return len(image)
    raise ValueError(f"image is a {type(image).__name__}; give PIL images, numpy arrays or a tensor")


def check_call_options(**options) -> None:
    """Refuse a bad option of a multimodal call with a message naming it (None: the default):
    `COUNT_OPTIONS` must be integers >= 1, `output_type` one of `OUTPUT_TYPES`, and every other
    option (guidance scales, temperatures, alg_temp) a finite number >= 0."""
    for name, value in options.items():
        if value is None:
            continue
        if name in COUNT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        elif name == "output_type":
            if value not in OUTPUT_TYPES:
                raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {value!r}")
        else:
            check_finite(value, name)


def check_component(name: str, value, cls: type) -> None:
    """Refuse a pipeline component that is not a `cls`."""
    if not isinstance(value, cls):
        raise ValueError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")


def _check_batch(n_prompts: int, n_images: int, task: str) -> None:
    if n_prompts > 1 and n_images > 1 and n_prompts != n_images:
        raise ValueError(f"{task}: {n_prompts} prompts for {n_images} images; give one prompt per image, "
                         "or one for all")


def resolve_task(prompt=None, image=None, task: str | None = None, *, mask_image=None) -> str:
    """The task to run: `task` checked against the inputs, or inferred when None.

    Inference: mask_image -> inpaint; nothing -> joint; an image alone -> caption; a prompt
    alone -> t2i (infill when it has <|mask:N|> placeholders); an image and a prompt with
    placeholders -> vqa. Combinations the inputs do not allow raise a ValueError saying
    what to give instead.
    """
    prompts = _prompt_list(prompt)
    n_images = count_images(image)
    holes = [bool(PLACEHOLDER.search(p)) for p in prompts]
    if any(holes) and not all(holes):
        raise ValueError("some prompts have <|mask:N|> placeholders and some do not; run them as separate batches")
    placeholders = bool(holes) and all(holes)
    if task is None:
        if mask_image is not None:
            task = "inpaint"
        elif not prompts:
            task = "caption" if n_images else "joint"
        elif not n_images:
            task = "infill" if placeholders else "t2i"
        elif placeholders:
            task = "vqa"
        else:
            raise ValueError("an image and a prompt without <|mask:N|> placeholders: to ask about the image put "
                             "placeholders where the answer goes (task='vqa'); to redraw part of it give "
                             "mask_image (task='inpaint'); to caption it give no prompt")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if mask_image is not None and task != "inpaint":
        raise ValueError(f"mask_image is only for task='inpaint', not {task!r}")

    if task == "t2i":
        if not prompts:
            raise ValueError("t2i needs a prompt; for an image and a caption from nothing use task='joint'")
        if n_images:
            raise ValueError("t2i draws from a prompt alone but an image was given; to redraw part of an image "
                             "use task='inpaint' with mask_image")
        if placeholders:
            raise ValueError("the prompt has <|mask:N|> placeholders; t2i needs a complete prompt "
                             "(to fill the placeholders use task='infill')")
    elif task == "caption":
        if not n_images:
            raise ValueError("captioning needs an image (image=...)")
        if prompts:
            raise ValueError("captioning takes no prompt; to ask about the image use task='vqa' with "
                             "<|mask:N|> placeholders where the answer goes")
    elif task in ("vqa", "infill"):
        if task == "vqa" and not n_images:
            raise ValueError("vqa needs an image to answer about (image=...)")
        if not prompts or not placeholders:
            raise ValueError(f"{task} needs a prompt with <|mask:N|> placeholders where the text to generate goes, "
                             "e.g. 'what shape is the red object ?<|mask:1|>'")
        _check_batch(len(prompts), n_images, task)
    elif task == "joint":
        if prompts or n_images:
            raise ValueError("joint generation starts from nothing; with a prompt use task='t2i', with an image "
                             "task='caption'")
    elif task == "inpaint":
        if not n_images or mask_image is None:
            raise ValueError("inpaint needs an image and a mask_image (white = regenerate)")
        if count_images(mask_image) not in (1, n_images):
            raise ValueError(f"inpaint: {count_images(mask_image)} masks for {n_images} images")
        if placeholders:
            raise ValueError("inpaint takes a complete prompt (or none); <|mask:N|> placeholders belong to "
                             "task='infill'/'vqa'")
        _check_batch(len(prompts), n_images, task)
    return task


def resolve_text_steps(text_steps: int | None, num_inference_steps: int, task: str) -> int:
    """How many of the steps generate the text: `text_steps`, else all of them, but the first
    `JOINT_TEXT_SHARE` of them in joint generation (see the module docstring)."""
    if text_steps is None:
        return math.ceil(JOINT_TEXT_SHARE * num_inference_steps) if task == "joint" else num_inference_steps
    if isinstance(text_steps, bool) or not isinstance(text_steps, int) or not 1 <= text_steps <= num_inference_steps:
        raise ValueError(f"text_steps must be an integer from 1 to num_inference_steps ({num_inference_steps}), "
                         f"got {text_steps!r}")
    return text_steps


def step_callback(pipe, bar, callback_on_step_end, tensor_inputs):
    """The joint loop's callback for a pipeline call: it advances the progress bar `bar` and hands
    the tensors named in `tensor_inputs` to `callback_on_step_end(pipe, step, timestep, tensors)`
    (diffusers' convention), whose returned dict replaces them."""
    names = list(tensor_inputs or [])

    def on_step(i, t, tensors):
        bar.update(1)
        if callback_on_step_end is None:
            return None
        return callback_on_step_end(pipe, i, t, {key: tensors[key] for key in names}) or {}

    return on_step


def format_images(images: torch.Tensor, output_type: str = "pil"):
    """(B, 3, H, W) in [-1, 1] -> a list of PIL images ("pil"), a (B, H, W, 3) float array in
    [0, 1] ("np") or a (B, 3, H, W) tensor in [0, 1] ("pt")."""
    check_call_options(output_type=output_type)
    if output_type == "pil":
        return to_pil(images)
    x = (images.detach().float().clamp(-1, 1) + 1) / 2
    return x if output_type == "pt" else x.permute(0, 2, 3, 1).cpu().numpy()


# The call both model cards show (`mmdlm.pipelines.sharing`).
CARD_EXAMPLE = ('image = pipe("a large green triangle above a small red square").images[0]\n'
                'print(pipe(image=image).texts[0])  # its caption')


# ---------------------------------------------------------------- loading any mmdlm pipeline
PIPELINES: dict[str, type] = {}


def register_pipeline(cls: type) -> type:
    """Make `load_pipeline` know a pipeline class (use as a class decorator)."""
    PIPELINES[cls.__name__] = cls
    return cls


register_pipeline(TextDiffusionPipeline)


def saved_pipeline_class(path: str | Path) -> str | None:
    """The `_class_name` in the `model_index.json` of the pipeline folder `path` (any diffusers
    pipeline); None when the folder has no `model_index.json`. A file that is not a valid
    index is refused."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return None
    try:
        return class_name(json.loads(index.read_text()).get("_class_name"))
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{index} is not a valid model_index.json: {err}") from err


def load_pipeline(path: str | Path, **kwargs):
    """Load a saved mmdlm pipeline of any kind: reads `_class_name` in `model_index.json` and
    calls that class's `from_pretrained(path, **kwargs)` (diffusers cannot resolve mmdlm's
    classes by name itself)."""
    from .. import pipelines  # noqa: F401  (importing the package registers every pipeline)

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no pipeline at {path}")
    if not (path / "model_index.json").is_file():
        hint = ""
        if (path / "mmdlm.json").is_file():
            hint = "; it is a mmdlm diffusion LM folder: load it with TextDiffusionPipeline.from_dlm"
        raise ValueError(f"{path} is not a saved pipeline (no model_index.json){hint}")
    name = saved_pipeline_class(path)
    if name not in PIPELINES:
        raise ValueError(f"{path} holds a {name or 'unnamed'} pipeline, not a mmdlm pipeline "
                         f"(mmdlm pipelines: {', '.join(sorted(PIPELINES))})")
    return PIPELINES[name].from_pretrained(path, **kwargs)
