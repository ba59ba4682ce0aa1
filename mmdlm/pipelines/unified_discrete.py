"""`UnifiedDiscretePipeline`: VQ image codes and caption tokens in one masked-diffusion loop.

Components: the `UnifiedDiscreteTransformer`, a diffusers `VQModel` (the image tokenizer), the
caption tokenizer and one `MaskedDiffusionScheduler`, the same class for image codes and text
(a copy of it when `text_steps` gives the text a schedule of its own). Every step runs the
transformer once on [text ; image] (with the classifier-free-guidance passes in the same batch)
and advances whichever stream is being generated through `scheduler.step`; known tokens are
never touched. The call and the output
follow `mmdlm.pipelines.multimodal`, so this class and `DualDiffusionPipeline` are
interchangeable.

| task      | image stream                  | text stream                                    |
|-----------|-------------------------------|------------------------------------------------|
| `t2i`     | all [MASK], generated         | the prompt, fixed                              |
| `caption` | the image's codes, fixed      | all [MASK], generated                          |
| `vqa`     | the image's codes, fixed      | the prompt; its placeholders generated         |
| `joint`   | all [MASK], generated         | all [MASK], generated                          |
| `infill`  | the image's codes, or generated when none is given | the prompt; placeholders generated |
| `inpaint` | known codes kept, the masked cells generated | the prompt (fixed), or all [MASK] without one |

Guidance: `guidance_scale` w guides the image by the text, logits = u + (1 + w)(c - u), with u
from a pass whose caption is all [MASK] (what caption dropout trained); `text_guidance_scale`
guides the text by the image, u from a pass whose image is all [MASK]. A guidance applies
while its condition holds a known token, so in joint generation the image is guided by the
words committed so far.

Joint generation samples: greedy words and a commit order by confidence (the captioning
defaults) start every sample from the same most likely caption (the digits model drew "six"
62 times in 64), so in `joint` the words are drawn at JOINT_TEMPERATURE and the commit order
from softmax(confidence / JOINT_ALG_TEMP) unless the call says otherwise.

The call's defaults (guidance 1, image codes at temperature 0.3) were chosen on training captions
of the shapes set (`bench/shapes_probe.py`): 82.8% of images drawn right against 65.6% at guidance 2
and temperature 1 with a remasking scheduler, 73.0% against 58.6% without one (README).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, VQModel

from ..images import to_tensor
from ..multimodal.discrete import UnifiedDiscreteTransformer
from ..multimodal.text import decode_captions, encode_captions
from ..multimodal.tokenizers import VQImageTokenizer
from ..schedulers import MaskedDiffusionScheduler
from .joint_loop import Guidance, MaskedTokens, joint_loop
from .multimodal import (
    CARD_EXAMPLE,
    MultimodalPipelineOutput,
    check_call_options,
    check_component,
    format_images,
    register_pipeline,
    resolve_task,
    resolve_text_steps,
    step_callback,
)
from .sharing import SharedPipeline, class_name

JOINT_TEMPERATURE = JOINT_ALG_TEMP = 1.0


@register_pipeline
class UnifiedDiscretePipeline(SharedPipeline, DiffusionPipeline):
    model_cpu_offload_seq = "transformer->vqvae"
    _callback_tensor_inputs = ["image_ids", "text_ids", "image_pred_ids"]
    backbone = "discrete"
    card_title = "Discrete image-text pipeline (mmdlm UnifiedDiscretePipeline)"
    card_about = ("VQ image codes and caption tokens in one masked diffusion: text-to-image, captioning, question "
                  "answering, joint generation, caption infilling and inpainting with one transformer.")
    card_example = CARD_EXAMPLE
    card_tags = ("text-to-image", "image-to-text", "masked-diffusion", "discrete-diffusion", "vq")
    card_pipeline_tag = "text-to-image"

    def __init__(self, transformer: UnifiedDiscreteTransformer, vqvae: VQModel, tokenizer,
                 scheduler: MaskedDiffusionScheduler, image_size: int | None = None, vq_normalize: bool = True):
        super().__init__()
        check_component("transformer", transformer, UnifiedDiscreteTransformer)
        check_component("vqvae", vqvae, VQModel)
        c = transformer.config
        image_tok = VQImageTokenizer(vqvae, normalize=vq_normalize)
        if image_tok.codebook_size != c.codebook_size:
            raise ValueError(f"the VQ model's codebook has {image_tok.codebook_size} entries but the transformer "
                             f"was built for {c.codebook_size} codes; use the VQ model it was trained with")
        if len(tokenizer) != c.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the transformer's text vocabulary is "
                             f"{c.vocab_size}; use the tokenizer it was trained with")
        if getattr(tokenizer, "mask_token_id", None) != c.mask_token_id:
            raise ValueError(f"the tokenizer's mask token id is {getattr(tokenizer, 'mask_token_id', None)} but the "
                             f"transformer's is {c.mask_token_id}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; the caption canvas needs one")
        if image_size is None:
            image_size = c.sample_size * image_tok.downsample
        if image_tok.grid(image_size) != c.sample_size:
            raise ValueError(f"image_size {image_size} gives a {image_tok.grid(image_size)}x"
                             f"{image_tok.grid(image_size)} code grid but the transformer works on "
                             f"{c.sample_size}x{c.sample_size}")
        self.register_modules(transformer=transformer, vqvae=vqvae, tokenizer=tokenizer, scheduler=scheduler)
        self.register_to_config(image_size=image_size, vq_normalize=vq_normalize)

    def __setattr__(self, name, value):
        # the scheduler is checked whenever it is set: by __init__ (register_modules), from_pretrained or
        # `pipe.scheduler = ...`
        if name == "scheduler":
            check_component(name, value, MaskedDiffusionScheduler)
        super().__setattr__(name, value)

    def to(self, *args, **kwargs):
        """diffusers' move to a device and dtype, except that the VQ model stays in float32: its nearest-code
        search has no half-precision kernel, and would pick other codes. It is small next to the transformer."""
        super().to(*args, **kwargs)
        self.vqvae.to(torch.float32)
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        index = Path(pretrained_model_name_or_path) / "model_index.json"
        if index.is_file():
            try:
                name = class_name(json.loads(index.read_text()).get("_class_name"))
            except (json.JSONDecodeError, AttributeError) as err:
                raise ValueError(f"{index} is not a valid model_index.json: {err}") from err
            if name != cls.__name__:
                raise ValueError(f"{pretrained_model_name_or_path} holds a {name or 'unnamed'} pipeline, not a "
                                 f"{cls.__name__}; load it with mmdlm.pipelines.load_pipeline")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ---------------------------------------------------------------- properties
    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def text_length(self) -> int:
        return self.transformer.config.text_length

    @property
    def image_tokenizer(self) -> VQImageTokenizer:
        return VQImageTokenizer(self.vqvae, normalize=self.config.vq_normalize)

    @property
    def grid(self) -> int:
        return self.transformer.config.sample_size

    # ---------------------------------------------------------------- inputs
    def _prompts(self, prompt) -> list[str]:
        return [] if prompt is None else ([prompt] if isinstance(prompt, str) else list(prompt))

    def _image_codes(self, image) -> torch.LongTensor:
        pixels = to_tensor(image, self.image_size)
        return self.image_tokenizer.encode(pixels.to(self.device)).view(len(pixels), -1)

    def _cells(self, mask_image, n: int) -> torch.BoolTensor:
        """(n, h*w): True where a code cell has any white (> mid-grey) pixel of the mask."""
        m = to_tensor(mask_image, self.image_size).mean(1, keepdim=True) > 0
        f = self.image_size // self.grid
        cells = torch.nn.functional.max_pool2d(m.float(), f).bool().view(len(m), -1)
        return cells.expand(n, -1) if len(cells) == 1 else cells

    def _pair(self, a: list, b: list) -> tuple[list, list]:
        """Broadcast one-to-many; equal lengths zip (resolve_task checked the counts)."""
        n = max(len(a), len(b))
        return (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)

    def _inputs(self, task, prompts, image, mask_image, per):
        """Initial (image ids (B, h*w), text ids (B, L)) and which streams are generated."""
        k, mask_id = self.transformer.mask_token_ids["image"], self.transformer.mask_token_ids["text"]
        size, length = self.grid ** 2, self.text_length
        dev = self.device

        def text(ps):
            return encode_captions(self.tokenizer, ps, length, refuse_unknown=True).to(dev)

        def blank_image(n):
            return torch.full((n, size), k, dtype=torch.long, device=dev)

        def blank_text(n):
            return torch.full((n, length), mask_id, dtype=torch.long, device=dev)

        if task == "t2i":
            txt = text(prompts)
            img = blank_image(len(txt))
        elif task == "caption":
            img = self._image_codes(image)
            txt = blank_text(len(img))
        elif task == "joint":
            img, txt = blank_image(1), blank_text(1)
        elif task in ("vqa", "infill") and image is not None:
            codes = self._image_codes(image)
            ps, idx = self._pair(prompts, list(range(len(codes))))
            txt, img = text(ps), codes[torch.tensor(idx, device=dev)]
        elif task == "infill":
            txt = text(prompts)
            img = blank_image(len(txt))
        else:  # inpaint
            codes = self._image_codes(image)
            cells = self._cells(mask_image, len(codes)).to(dev)
            img = codes.masked_fill(cells, k)
            if prompts:
                ps, idx = self._pair(prompts, list(range(len(img))))
                txt, img = text(ps), img[torch.tensor(idx, device=dev)]
            else:
                txt = blank_text(len(img))
        gen_image = task in ("t2i", "joint", "inpaint") or (task == "infill" and image is None)
        gen_text = task in ("caption", "vqa", "joint", "infill")
        img, txt = img.repeat_interleave(per, 0), txt.repeat_interleave(per, 0)
        return img, txt, gen_image, gen_text

    # ---------------------------------------------------------------- images
    def _decode_images(self, codes: torch.LongTensor, check: bool = True) -> torch.Tensor:
        return self.image_tokenizer.decode(codes.view(-1, self.grid, self.grid), check=check)

    def _decode_predictions(self, codes: torch.LongTensor) -> torch.Tensor:
        """Images of a step's predicted codes (valid by construction: [MASK] is never predicted), for the history."""
        return self._decode_images(codes, check=False)

    @torch.no_grad()
    def preview_images(self, tensors: dict) -> torch.Tensor | None:
        """The current image estimate from callback tensors, (B, 3, H, W) in [-1, 1] (for live
        views, `mmdlm.pipelines.streaming`): `image_pred_ids` (every code filled with its
        prediction) when given, else `image_ids` with the still-masked cells grey."""
        if tensors.get("image_pred_ids") is not None:
            return self._decode_images(tensors["image_pred_ids"])
        ids = tensors.get("image_ids")
        if ids is None:
            return None
        masked = ids == self.transformer.mask_token_ids["image"]
        images = self._decode_images(ids.masked_fill(masked, 0))
        f = self.image_size // self.grid
        cells = masked.view(-1, 1, self.grid, self.grid).repeat_interleave(f, 2).repeat_interleave(f, 3)
        return images.masked_fill(cells.to(images.device), 0.0)

    # ---------------------------------------------------------------- the call
    @torch.no_grad()
    def __call__(self, prompt=None, image=None, task: str | None = None, *, mask_image=None,
                 num_inference_steps: int = 16, guidance_scale: float = 1.0, text_guidance_scale: float = 0.0,
                 image_temperature: float = 0.3, temperature: float | None = None, rule: str | None = None,
                 alg_temp: float | None = None, text_steps: int | None = None, generator=None,
                 output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] | None = None,
                 num_images_per_prompt: int = 1, return_history: bool = False):
        """Run `task` (see the module docstring; None: inferred from the inputs).

        `image_temperature` / `temperature`: sampling temperature of image codes / text tokens
        (0: the most likely; `temperature` means the text's, as in `DualDiffusionPipeline`, and
        defaults to the scheduler's config); `rule` and `alg_temp` (which masked positions each
        step commits, both streams) default to the scheduler's config. In `joint` generation the
        text temperature defaults to `JOINT_TEMPERATURE` and `alg_temp` to `JOINT_ALG_TEMP`.
        `text_steps`: the text is generated in the first `text_steps` steps on a schedule of its own
        (default: all, half in `joint`).
        `generator`: one torch.Generator, or a list with one per sample. Returns a
        `MultimodalPipelineOutput` (images, texts, history).
        """
        task = resolve_task(prompt, image, task, mask_image=mask_image)
        check_call_options(num_inference_steps=num_inference_steps, num_images_per_prompt=num_images_per_prompt,
                           output_type=output_type, guidance_scale=guidance_scale,
                           text_guidance_scale=text_guidance_scale, image_temperature=image_temperature,
                           temperature=temperature, alg_temp=alg_temp)
        tensor_inputs = list(callback_on_step_end_tensor_inputs or [])
        bad = set(tensor_inputs) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"callback tensor inputs must be among {self._callback_tensor_inputs}, got {sorted(bad)}")

        img, txt, gen_image, gen_text = self._inputs(task, self._prompts(prompt), image, mask_image,
                                                     num_images_per_prompt)
        mask_ids = self.transformer.mask_token_ids
        if task == "joint":  # sampling from nothing: draw the words and the commit order too (see above)
            temperature = JOINT_TEMPERATURE if temperature is None else temperature
            alg_temp = JOINT_ALG_TEMP if alg_temp is None else alg_temp
        options = {key: v for key, v in dict(rule=rule, alg_temp=alg_temp).items() if v is not None}
        text_steps = resolve_text_steps(text_steps, num_inference_steps, task)
        text_scheduler = self.scheduler
        if text_steps != num_inference_steps:  # the text on a schedule of its own
            text_scheduler = type(self.scheduler).from_config(self.scheduler.config)
        text_options = options if temperature is None else {**options, "temperature": temperature}
        streams = [
            MaskedTokens("image", img, mask_token_id=mask_ids["image"], scheduler=self.scheduler, generated=gen_image,
                         num_steps=num_inference_steps, options={"temperature": image_temperature, **options},
                         names=("image_ids", "image_pred_ids"), history_key="images",
                         to_history=self._decode_predictions),
            MaskedTokens("text", txt, mask_token_id=mask_ids["text"], scheduler=text_scheduler, generated=gen_text,
                         num_steps=text_steps, options=text_options)]

        def denoise(x):  # the ids come from the tokenizers and the scheduler: no range check needed
            out = self.transformer(x["image"].view(-1, self.grid, self.grid), x["text"], check_ids=False)
            return {"image": out.image_logits, "text": out.text_logits}

        with self.progress_bar(total=num_inference_steps if gen_image else text_steps) as bar:
            out = joint_loop(streams, denoise, guidance=(Guidance("image", "text", guidance_scale),
                                                         Guidance("text", "image", text_guidance_scale)),
                             generator=generator, callback=step_callback(self, bar, callback_on_step_end,
                                                                         tensor_inputs),
                             record_history=return_history)
        img, txt = out.streams["image"].ids, out.streams["text"].ids
        history = out.history

        images = texts = None
        if gen_image:
            images = format_images(self._decode_images(img), output_type)
        if gen_text:
            texts = decode_captions(self.tokenizer, txt, stop_at_eos=task in ("caption", "joint"))
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, texts
        return MultimodalPipelineOutput(images=images, texts=texts, history=history)
