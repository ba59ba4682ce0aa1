"""A model-free multimodal pipeline that runs step by step, for the demo's tests.

Like the oracle (tests/mm_oracle.py) it knows the answers from the shapes renderer and parser;
like a real pipeline it follows the call convention of `mmdlm.pipelines.multimodal` and reports
every step through `callback_on_step_end`: "latents" (the picture moving from noise to the
rendered scene, shown by `decode_latents`) and "text_ids" (the caption canvas, unmasked left to
right). It has no `rule` or `temperature` option, which the demo must report as ignored.
"""
from __future__ import annotations

import random

import torch
from diffusers import DiffusionPipeline

from mmdlm.data import shapes as S
from mmdlm.data.tokenizer import train_word_tokenizer
from mmdlm.images import to_tensor
from mmdlm.multimodal.text import decode_captions, encode_captions
from mmdlm.pipelines.multimodal import MultimodalPipelineOutput, format_images, register_pipeline, resolve_task

QUESTION_WORDS = "what colour shape size is the object ?"


@register_pipeline
class StepwiseOraclePipeline(DiffusionPipeline):
    _callback_tensor_inputs = ["latents", "text_ids"]

    def __init__(self, image_size: int = 32, text_length: int = 16):
        super().__init__()
        self.register_to_config(image_size=image_size, text_length=text_length)
        self.tokenizer = train_word_tokenizer([S.caption(s) for s in S.all_scenes()[:400]] + [QUESTION_WORDS]
                                              + list(S.COLOURS) + list(S.SHAPES) + list(S.SIZES))

    @property
    def backbone(self) -> str:
        return "stepwise-oracle"

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def text_length(self) -> int:
        return self.config.text_length

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1, 1)

    @staticmethod
    def _answer(question: str, scene: S.Scene) -> str:
        named = [o for o in (scene.first, scene.second) if o.shape in question or o.colour in question]
        obj = (named or [scene.first])[0]
        return obj.shape if "shape" in question else obj.size if "size" in question else obj.colour

    def __call__(self, prompt=None, image=None, task=None, *, mask_image=None, num_inference_steps=4,
                 guidance_scale=0.0, text_guidance_scale=0.0, generator=None, output_type="pil", return_dict=True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=None, num_images_per_prompt=1,
                 return_history=False):
        task = resolve_task(prompt, image, task, mask_image=mask_image)
        if task not in ("t2i", "caption", "vqa"):
            raise ValueError(f"the stepwise oracle runs t2i, caption and vqa, not {task}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        names = callback_on_step_end_tensor_inputs or []
        seed = generator.initial_seed() if generator is not None else 0
        size, tok, mask_id = self.image_size, self.tokenizer, self.tokenizer.mask_token_id
        history = [] if return_history else None
        latents = target = ids = final = None
        if task == "t2i":
            scene = S.parse_caption(prompt)
            if scene is None:
                raise ValueError(f"the stepwise oracle draws only shapes captions such as "
                                 f"'a small red circle left of a large blue square', not {prompt!r}")
            target = to_tensor(S.render(scene, size, random.Random(seed)), size)
            latents = torch.randn(target.shape, generator=torch.Generator().manual_seed(seed))
        else:
            scene = S.parse_image(image)
            if scene is None:
                raise ValueError("the stepwise oracle sees no shapes scene in this image")
            if task == "caption":
                ids = torch.full((1, self.config.text_length), mask_id)
                final = encode_captions(tok, [S.caption(scene)], self.config.text_length)
            else:
                ids = encode_captions(tok, [prompt], self.config.text_length, mask_token_id=mask_id)
                answer = tok(self._answer(prompt, scene), add_special_tokens=False)["input_ids"]
                holes = (ids[0] == mask_id).nonzero().flatten().tolist()
                final = ids.clone()
                final[0, holes] = torch.tensor((answer * len(holes))[: len(holes)])
        n = num_inference_steps
        for i in range(n):
            if latents is not None:
                a = (i + 1) / n
                latents = (1 - a) * latents + a * target if i + 1 < n else target.clone()
            if ids is not None:
                holes = (ids[0] == mask_id).nonzero().flatten()
                take = holes[: -(-len(holes) // (n - i))]
                ids = ids.clone()
                ids[0, take] = final[0, take]
            if history is not None:
                history.append({"images": None if latents is None else latents.clamp(-1, 1),
                                "text_ids": None if ids is None else ids.clone()})
            if callback_on_step_end is not None:
                state = {"latents": latents, "text_ids": ids}
                changed = callback_on_step_end(self, i, 1 - i / n, {k: state[k] for k in names}) or {}
                latents, ids = changed.get("latents", latents), changed.get("text_ids", ids)
        images = format_images(latents.clamp(-1, 1), output_type) if latents is not None else None
        texts = None if ids is None else decode_captions(tok, ids, stop_at_eos=task == "caption")
        if not return_dict:
            return images, texts
        return MultimodalPipelineOutput(images=images, texts=texts, history=history)
