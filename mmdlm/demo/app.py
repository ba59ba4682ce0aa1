"""The mmdlm demo: text continuation and infilling, text-to-image, captioning and question
answering, each shown step by step while the diffusion runs.

    mmdlm demo                                  # the shipped checkpoints, on http://127.0.0.1:7860
    mmdlm demo --mm-model outputs/mmdit/model   # a saved multimodal pipeline for the image tabs
    mmdlm demo --help                           # every flag (each one a key of a --config YAML)

The app only orchestrates: pipelines come from `mmdlm.pipelines` (`TextDiffusionPipeline`,
`load_pipeline`), the step-by-step run from `mmdlm.pipelines.streaming.iterate_steps`, the
unmasking view from `mmdlm.text.history`. Settings are `mmdlm.demo.config.DemoConfig` (every flag a
config key); the default multimodal checkpoint is its `mm_model` field. What the page offers
follows the loaded checkpoint: the length limits come from the text model's context, the image
tabs show only the sampling controls the pipeline reads for their task.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no usage reports, no version checks

import logging
import threading
import time
import warnings
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]  # a source checkout: relative checkpoint paths also resolve here

import gradio as gr
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data import shapes as S
from ..devices import resolve_device, resolve_dtype
from ..pipelines import TextDiffusionPipeline, load_pipeline
from ..pipelines.streaming import Done, Step, Waiting, call_parameters, can_preview, iterate_steps, split_supported
from ..placeholders import PLACEHOLDER, parse_infill
from ..schedulers import MaskedDiffusionScheduler
from ..text import history as view
from .config import DemoConfig

log = logging.getLogger("mmdlm.demo")

RULES = ("confidence", "margin", "entropy", "random", "origin")
MAX_SEED = 2**31 - 1
SHOWN_IMAGE_SIDE = 256  # small model images are enlarged (nearest neighbour) to at least this side
# Concurrency groups: text and image work each run `concurrency` generations at once and keep a
# waiting line of `queue_size` of their own, so a busy Text tab never turns image requests away.
GROUPS = ("text", "image")
# Gradio cancels a run (a closed page, an API client's cancel) by closing its generator, which it can
# do only between two items, after the first: once its inputs are checked, a run says WAITING before
# it waits for the pipeline, then hands out an empty update every HEARTBEAT seconds without a step.
WAITING = "waiting for the model"
HEARTBEAT = 0.5
T2I_TEMPERATURE = 0.3  # UnifiedDiscretePipeline's image codes (the MM-DiT's images take none)
CAPTION_TEMPERATURE = 0.0  # the most likely words
NO_MM_CHECKPOINT = (
    "**No multimodal checkpoint is configured.** The image tabs run any saved mmdlm multimodal pipeline "
    "(`DualDiffusionPipeline`, `UnifiedDiscretePipeline`, e.g. the shipped `assets/mmdit-shapes` and "
    "`assets/discrete-shapes`, or the output of `mmdlm train-mm`): give its folder in the checkpoint box, or start "
    "the demo with `--mm-model PATH`."
)
TEXT_EXAMPLES = [
    "import os\n\n\ndef ",
    "def main():\n    path = os.path.join(<|mask:6|>)\n    return path\n",
    "for i in range(<|mask:4|>):\n    print(<|mask:4|>)\n",
]
T2I_EXAMPLES = ["a small red circle left of a large blue square", "a large green triangle above a small yellow circle"]
# The caption tab's example images: shapes scenes drawn at start-up; the question fills a blank
# of the first one's caption (the shipped models answer in the words of their captions).
CAPTION_SCENES = T2I_EXAMPLES + ["a small purple square right of a large cyan circle"]
QUESTION_EXAMPLE = "a small <|mask:1|> circle left of a large blue square"
QUESTION_HELP = ("question: the caption with <|mask:N|> blanks for N words each, filled from the image "
                 "(empty: caption the image)")
CSS = """
.unmasking { font-family: ui-monospace, monospace; white-space: pre-wrap; font-size: 14px; line-height: 1.5;
             min-height: 4em; padding: 8px; border: 1px solid #ddd; border-radius: 6px; }
.unmasking .masked, .unmasking .eos { color: #9a9a9a; }
.unmasking .new { background: #c8f7c5; font-weight: bold; }
#caption-image img, #t2i-image img { image-rendering: pixelated; }
"""


def _refuse(message: str) -> gr.Error:
    """A message for the page (bad input, missing checkpoint): no traceback in the server log."""
    return gr.Error(message, print_exception=False)


# ---------------------------------------------------------------- checkpoints
class Pipelines:
    """Loaded pipelines by (folder, kind), the most recent few kept; one lock per pipeline, so
    a pipeline never runs two generations at once (schedulers keep per-call state)."""

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32, keep: int = 2):
        self.device, self.dtype, self.keep = device, dtype, keep
        self._loaded: OrderedDict = OrderedDict()  # (folder, kind) -> [pipeline, lock, its variant without remasking]
        self._guard = threading.Lock()

    def get(self, path: Path, kind: str, *, remasking: bool = True):
        """(pipeline, lock). `remasking=False`: the pipeline with schedulers that never remask
        (made on first use, sharing the models, under the same lock)."""
        key = (str(path), kind)
        with self._guard:
            if key not in self._loaded:
                pipe = _load(path, kind).to(self.device, self.dtype)
                pipe.set_progress_bar_config(disable=True)
                self._loaded[key] = [pipe, threading.Lock(), None]
                while len(self._loaded) > self.keep:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            entry = self._loaded[key]
            if remasking:
                return entry[0], entry[1]
            if entry[2] is None:
                entry[2] = _without_remasking(entry[0])
            return entry[2], entry[1]


def _load(path: Path, kind: str):
    index, dlm = (path / "model_index.json").is_file(), (path / "mmdlm.json").is_file()
    if not index and not dlm:
        raise _refuse(f"{path} is not a mmdlm checkpoint (no model_index.json or mmdlm.json in it)")
    try:
        pipe = load_pipeline(path) if index else TextDiffusionPipeline.from_dlm(path)
    except Exception as err:  # a broken or foreign checkpoint: say what the loader said
        log.warning("could not load %s: %s: %s", path, type(err).__name__, err)
        raise _refuse(f"could not load {path}: {err}") from err
    is_text = isinstance(pipe, TextDiffusionPipeline)
    if kind == "text" and not is_text:
        raise _refuse(f"{path} holds a {type(pipe).__name__}, an image-text pipeline: use it in the image tabs")
    if kind == "mm" and is_text:
        raise _refuse(f"{path} holds a text diffusion model: use it in the Text tab")
    return pipe


def _without_remasking(pipe):
    """`pipe` rebuilt around its own models with plain copies of its remasking schedulers: commits
    ranked by the rule alone (alg_temp 0; with remasking it scales the ranking noise)."""
    plain = {name: MaskedDiffusionScheduler.from_config(module.config, remasking=False, alg_temp=0.0)
             for name, module in pipe.components.items()
             if isinstance(module, MaskedDiffusionScheduler) and module.config.remasking}
    settings = {k: v for k, v in pipe.config.items() if not k.startswith("_") and k not in pipe.components}
    variant = type(pipe)(**{**pipe.components, **plain}, **settings)
    variant.set_progress_bar_config(disable=True)
    return variant


def _find(path: str) -> Path:
    """A checkpoint folder: as given, else relative to the repository (the shipped assets)."""
    p = Path(path).expanduser()
    if not p.exists() and not p.is_absolute() and (REPO / p).exists():
        p = REPO / p
    if not p.is_dir():
        raise _refuse(f"no checkpoint folder at {path!r}")
    return p.resolve()


# ---------------------------------------------------------------- what a checkpoint allows
def _prompt_tokens(pipe: TextDiffusionPipeline, prompt: str) -> int:
    """The tokens `prompt` takes in `pipe`'s sequence (BOS, its <|mask:N|> placeholders as N)."""
    tok = pipe.tokenizer
    body = (parse_infill(tok, prompt, pipe.mask_token_id) if PLACEHOLDER.search(prompt)
            else tok(prompt, add_special_tokens=False)["input_ids"])
    return int(tok.bos_token_id is not None) + len(body)


def _shortest_prompt(pipe: TextDiffusionPipeline) -> int:
    """Tokens of a one-token prompt (with BOS)."""
    return int(pipe.tokenizer.bos_token_id is not None) + 1


def _text_limits(pipe: TextDiffusionPipeline, max_gen_length: int) -> dict:
    """The Text tab's length settings for `pipe` (keyword arguments of its components): the prompt
    and the generated tokens share the model's context."""
    context = pipe.dlm.max_length
    if context is None:
        return {"prompt": {}, "gen_length": {"maximum": max_gen_length}, "block": {"maximum": max_gen_length}}
    longest = max(0, min(max_gen_length, context - _shortest_prompt(pipe)))
    return {"prompt": {"info": f"prompt + generation length: at most {context} tokens, the model's context"},
            "gen_length": {"maximum": longest}, "block": {"maximum": longest}}


class Controls(NamedTuple):
    """The image tabs' sampling controls that a pipeline reads for a task: `rule`; `temperature`
    (the call parameter the temperature slider sets, or None); `remasking` (its scheduler takes
    committed tokens back, ranked by confidence: another rule runs without it); `note` (what the page
    says about the controls it hides)."""

    rule: bool
    temperature: str | None
    remasking: bool
    note: str


def image_controls(pipe, task: str) -> Controls:
    """The sampling controls `pipe` reads for `task`. An image has a commit rule and a code temperature
    only where it is unmasked by a masked-diffusion scheduler (the discrete backbone; the MM-DiT's flow
    matching has neither); text has those its call takes."""
    accepted = call_parameters(pipe)

    def takes(name: str) -> bool:
        return accepted is None or name in accepted

    why = ""
    if task == "t2i":
        scheduler = getattr(pipe, "scheduler", None)
        masked = isinstance(scheduler, MaskedDiffusionScheduler)
        rule = masked and takes("rule")
        temperature = "image_temperature" if masked and takes("image_temperature") else None
        if scheduler is not None and not masked:
            why = f" (they are denoised by its {type(scheduler).__name__}, not unmasked)"
    else:  # the text: the pipeline's text scheduler, or its one scheduler
        scheduler = getattr(pipe, "text_scheduler", None) or getattr(pipe, "scheduler", None)
        rule, temperature = takes("rule"), ("temperature" if takes("temperature") else None)
    what = "images" if task == "t2i" else "captions and answers"
    remasking = rule and isinstance(scheduler, MaskedDiffusionScheduler) and bool(scheduler.config.remasking)
    hidden = [name for name, shown in (("commit rule", rule), ("temperature", temperature)) if not shown]
    note = f"{type(pipe).__name__} takes no {' or '.join(hidden)} for its {what}{why}." if hidden else ""
    if remasking:
        note += (" This checkpoint remasks (takes committed tokens back), which ranks by confidence: with another "
                 "commit rule a run goes without remasking.")
    return Controls(rule, temperature, remasking, note.strip())


def _image_settings(pipe, task: str) -> dict:
    """An image tab's settings for `pipe` (keyword arguments of its components)."""
    controls, text_length = image_controls(pipe, task), getattr(pipe, "text_length", None)
    settings = {"rule": {"visible": controls.rule}, "temperature": {"visible": controls.temperature is not None},
                "note": {"value": controls.note, "visible": bool(controls.note)}}
    if controls.temperature:
        what = "image codes" if controls.temperature == "image_temperature" else "words"
        settings["temperature"]["label"] = f"temperature ({what}; 0: the most likely)"
    if text_length:
        what = "prompt" if task == "t2i" else "question"
        settings["text"] = {"info": f"the {what} holds at most {text_length} tokens, the model's text length"}
        settings["answer"] = {"maximum": max(1, text_length - 1)}
    return settings


class Stopped(NamedTuple):
    """Stop was pressed: the run ends after step `index` (0: before its first)."""

    index: int

    @property
    def status(self) -> str:
        return f"stopped at step {self.index}" if self.index else "stopped before the first step"


def _stop_key(request: gr.Request | None, tab: str) -> tuple[str, str] | None:
    return None if request is None else (request.session_hash, tab)


def _waiting(app: gr.Blocks, group: str) -> int | None:
    """Requests waiting in `group` of the app's queue; None where this Gradio keeps no count per group.
    Gradio bounds only the whole queue (`max_size`); its per-group lines are `Queue.event_queue_per_concurrency_id`.
    Requests in the line for which a slot is free start as soon as Gradio's loop gets to them: they do not wait
    (counting them turned a burst away early when the loop lagged)."""
    lines = getattr(getattr(app, "_queue", None), "event_queue_per_concurrency_id", None)
    if not isinstance(lines, dict):
        return None
    line = lines.get(group)
    if line is None or line.concurrency_limit is None:  # (no limit: nothing waits)
        return 0
    return max(0, len(line.queue) - max(0, line.concurrency_limit - line.current_concurrency))


# ---------------------------------------------------------------- the app
class Demo:
    def __init__(self, config: DemoConfig):
        config.validate()
        self.config = config
        self.allow_paths = config.paths_allowed()
        self.pipelines = Pipelines(resolve_device(config.device), resolve_dtype(config.dtype) or torch.float32)
        self.app: gr.Blocks | None = None
        self._stops: set[tuple[str, str]] = set()  # (visitor's session, tab) where Stop was pressed

    # ------------------------------------------------------------ input checks
    def _checkpoint(self, given: str | None, default: str | None, kind: str) -> Path:
        given = (given or "").strip()
        if given and given != (default or "") and not self.allow_paths:
            raise _refuse("this demo serves only its configured checkpoints; start it with --allow-paths to load "
                          "other folders")
        path = given or default
        if not path:
            raise _refuse("no multimodal checkpoint is configured; give the folder of a saved multimodal "
                          "pipeline in the checkpoint box" if kind == "mm" else "no checkpoint given")
        return _find(path)

    def _text(self, name: str, value, *, required: bool = True) -> str:
        value = value if isinstance(value, str) else ""
        if required and not value.strip():
            raise _refuse(f"the {name} is empty; write some text")
        if len(value) > self.config.max_prompt_chars:
            raise _refuse(f"the {name} has {len(value):,} characters; the limit is {self.config.max_prompt_chars:,}")
        return value

    @staticmethod
    def _float(name: str, value, lo: float, hi: float) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _refuse(f"{name} must be a number, got {value!r}") from None
        if not lo <= number <= hi:  # NaN fails this too
            raise _refuse(f"{name} must be between {lo} and {hi}, got {value!r}")
        return number

    @classmethod
    def _int(cls, name: str, value, lo: int, hi: int) -> int:
        number = cls._float(name, value, lo, hi)
        if number != int(number):
            raise _refuse(f"{name} must be a whole number from {lo} to {hi}, got {value!r}")
        return int(number)

    def _sampling(self, steps, rule, temperature, seed, device) -> dict:
        if rule not in RULES:
            raise _refuse(f"unknown commit rule {rule!r}; choose one of {', '.join(RULES)}")
        return dict(num_inference_steps=self._int("steps", steps, 1, self.config.max_steps), rule=rule,
                    temperature=self._float("temperature", temperature, 0.0, 5.0),
                    generator=torch.Generator(device=device).manual_seed(self._int("seed", seed, 0, MAX_SEED)))

    def _image_sampling(self, pipe, task, steps, rule, temperature, seed, default_temperature):
        """The call's sampling options for what `pipe` reads in `task`, and whether the run must go
        without remasking (a rule other than confidence on a remasking scheduler)."""
        options = self._sampling(steps, rule, temperature, seed, pipe.device)
        used = image_controls(pipe, task)
        rule, temperature = options.pop("rule"), options.pop("temperature")
        if used.rule:
            options["rule"] = rule
        if used.temperature:
            options[used.temperature] = temperature
        if (not used.rule and rule != "confidence") or (not used.temperature and temperature != default_temperature):
            gr.Warning(f"{used.note} The values given are ignored.")
        return options, used.remasking and rule != "confidence"

    def _image(self, upload) -> Image.Image:
        """The upload (Gradio's file data, or a path), decoded here within the pixel limit."""
        path = upload.get("path") if isinstance(upload, dict) else upload
        if not path:
            raise _refuse("upload an image first")
        limit = self.config.max_image_pixels
        try:
            with Image.open(path) as image:  # reads the header only: the size is known before decoding
                size = image.size
                if size[0] * size[1] <= limit:
                    return ImageOps.exif_transpose(image).convert("RGB")
        except Image.DecompressionBombError:  # PIL's own limit (twice the pixel limit, see `launch`)
            raise _refuse(f"the image has over {2 * Image.MAX_IMAGE_PIXELS:,} pixels; the limit is {limit:,} "
                          "pixels") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):  # not an image, or a broken one
            raise _refuse("the upload is not an image this demo can read (PNG, JPEG, WebP, GIF, BMP, ...)") from None
        raise _refuse(f"the image is {size[0]}x{size[1]} pixels; the limit is {limit:,} pixels")

    def check_upload(self, upload) -> None:
        """Says at once when an upload is no image or too large."""
        if upload:
            self._image(upload)

    def admit(self, group: str) -> str | None:
        """Why a request cannot join its group's line (`queue_size` wait there already), or None."""
        waiting = _waiting(self.app, group)
        if waiting is not None and waiting >= self.config.queue_size:
            return f"the {group} queue is full ({waiting} requests waiting); try again in a minute"
        return None

    # ------------------------------------------------------------ what the page offers for a checkpoint
    def text_settings(self, checkpoint) -> tuple:
        """The Text tab's prompt and length sliders for the checkpoint in its box."""
        pipe, _ = self.pipelines.get(self._checkpoint(checkpoint, self.config.text_model, "text"), "text")
        limits = _text_limits(pipe, self.config.max_gen_length)
        return tuple(gr.update(**limits[name]) for name in ("prompt", "gen_length", "block"))

    def image_settings(self, task: str, checkpoint) -> tuple:
        """An image tab's controls for the checkpoint in its box."""
        pipe, _ = self.pipelines.get(self._checkpoint(checkpoint, self.config.mm_model, "mm"), "mm")
        settings = _image_settings(pipe, task)
        names = ("rule", "temperature", "note", "text") + (("answer",) if task != "t2i" else ())
        return tuple(gr.update(**settings.get(name, {})) for name in names)

    def _default_pipeline(self, kind: str):
        """The default checkpoint of `kind`, loaded now for the settings the page offers; None when
        there is none or it does not load (the page says why when it is used)."""
        default = self.config.text_model if kind == "text" else self.config.mm_model
        if not default:
            return None
        try:
            return self.pipelines.get(_find(default), kind)[0]
        except gr.Error as err:
            log.warning("default %s checkpoint: %s", kind, err.message)
            return None

    # ------------------------------------------------------------ running a pipeline
    def arm(self, tab: str, request: gr.Request | None) -> None:
        """The tab's Run button, before its run joins the line: a Stop pressed earlier is forgotten."""
        self._stops.discard(_stop_key(request, tab))

    def request_stop(self, tab: str, request: gr.Request | None) -> None:
        """The tab's Stop button: its run (running, or waiting in the line) ends after its current step
        and says so itself; the page's last word is the run's (Gradio's cancel would race its updates)."""
        if request is not None:
            self._stops.add(_stop_key(request, tab))

    def _steps(self, pipe, lock, *args, stop=None, preview: bool = True, **kwargs):
        """`iterate_steps` under the pipeline's lock, with the pipeline's own errors (bad
        input, in its words) turned into messages in the page, ended by `Stopped` when Stop was
        pressed (`stop`: the key `request_stop` files it under)."""
        kwargs, ignored = split_supported(pipe, kwargs)
        if ignored:
            gr.Warning(f"{type(pipe).__name__} has no setting {', '.join(ignored)}; ignored")
        steps = iterate_steps(pipe, *args, preview=preview, lock=lock, heartbeat=HEARTBEAT, **kwargs)
        shown = 0
        try:
            for item in steps:
                if stop in self._stops and not isinstance(item, Done):
                    self._stops.discard(stop)
                    yield Stopped(shown)
                    return
                yield item
                if isinstance(item, Step):
                    shown = item.index
                    if self.config.frame_delay:
                        time.sleep(self.config.frame_delay)
        except ValueError as err:
            raise _refuse(str(err)) from err
        except Exception as err:
            log.exception("generation failed")
            raise _refuse(f"generation failed ({type(err).__name__}); the server log has the details") from err
        finally:
            steps.close()  # a stopped or cancelled run ends the pipeline at its next step

    def run_text(self, checkpoint, prompt, gen_length, steps, rule, block_length, threshold, remasking,
                 temperature, guidance, seed, request: gr.Request = None):
        """Continue and/or infill `prompt`; yields (live view, status, text) after every step."""
        prompt = self._text("prompt", prompt)
        gen_length = self._int("generation length", gen_length, 0, self.config.max_gen_length)
        if gen_length == 0 and not PLACEHOLDER.search(prompt):
            raise _refuse("nothing to generate: raise the generation length, or put <|mask:N|> placeholders "
                          "(N tokens each) in the prompt")
        block_length = self._int("block length", block_length, 0, self.config.max_gen_length)
        threshold = self._float("threshold", threshold, 0.0, 1.0)
        guidance = self._float("guidance", guidance, 0.0, 10.0)
        pipe, lock = self.pipelines.get(self._checkpoint(checkpoint, self.config.text_model, "text"), "text")
        try:
            n_prompt = _prompt_tokens(pipe, prompt)
        except ValueError as err:  # a malformed placeholder
            raise _refuse(str(err)) from err
        context = pipe.dlm.max_length
        if context is not None and n_prompt + gen_length > context:
            fixes = [f"lower the generation length to {context - n_prompt}"] if n_prompt < context else []
            if context - gen_length >= _shortest_prompt(pipe):
                fixes.append(f"shorten the prompt to {context - gen_length} tokens")
            raise _refuse(f"the prompt is {n_prompt} tokens and the generation length {gen_length}: "
                          f"{n_prompt + gen_length} tokens, over the model's context of {context}; "
                          + " or ".join(fixes))
        options = self._sampling(steps, rule, temperature, seed, pipe.device)
        tok, mask_id = pipe.tokenizer, pipe.mask_token_id
        start = int(tok.bos_token_id is not None)
        yield gr.skip(), WAITING, gr.skip()
        prev, began = None, time.perf_counter()
        for item in self._steps(pipe, lock, prompt, gen_length=gen_length, block_length=block_length or None,
                                threshold=threshold or None, remasking=bool(remasking), guidance_scale=guidance,
                                preview=False, stop=_stop_key(request, "text"), **options):
            if isinstance(item, Waiting):  # nothing new: the page keeps what it shows
                yield gr.skip(), gr.skip(), gr.skip()
                continue
            if isinstance(item, Stopped):
                yield gr.skip(), item.status, gr.skip()
                return
            if isinstance(item, Done):
                out = item.output
                ids = out.sequences[0, start:].tolist()
                frame = view.frame(tok, ids, prev, mask_id, eos_token_id=tok.eos_token_id)
                text = out.texts[0] if PLACEHOLDER.search(prompt) else prompt + out.texts[0]
                status = f"done: {out.nfe} forward passes, {time.perf_counter() - began:.1f} s"
                yield _unmasking(frame), status, text
                return
            ids = item.tensors["sequences"][0, start:].tolist()
            if prev is None:  # before the first step the appended tokens were all masked
                prev = ids[: len(ids) - gen_length] + [mask_id] * gen_length
            frame = view.frame(tok, ids, prev, mask_id, eos_token_id=tok.eos_token_id)
            prev = ids
            yield _unmasking(frame), f"step {item.index} of at most {options['num_inference_steps']}: " \
                                     f"{ids.count(mask_id)} tokens still masked", ""

    def _mm_pipeline(self, checkpoint, task, steps, rule, temperature, seed, default_temperature):
        """(pipeline, lock, call options, status note) for an image tab's run."""
        path = self._checkpoint(checkpoint, self.config.mm_model, "mm")
        pipe, lock = self.pipelines.get(path, "mm")
        options, plain = self._image_sampling(pipe, task, steps, rule, temperature, seed, default_temperature)
        if not plain:
            return pipe, lock, options, ""
        pipe, lock = self.pipelines.get(path, "mm", remasking=False)
        return pipe, lock, options, f"; without remasking (it ranks by confidence, not {rule})"

    def run_t2i(self, checkpoint, prompt, steps, guidance, rule, temperature, seed, request: gr.Request = None):
        """Draw `prompt`; yields (image, status) after every step."""
        prompt = self._text("prompt", prompt)
        guidance = self._float("guidance", guidance, 0.0, 20.0)
        pipe, lock, options, note = self._mm_pipeline(checkpoint, "t2i", steps, rule, temperature, seed,
                                                      T2I_TEMPERATURE)
        steps = options["num_inference_steps"]
        yield gr.skip(), WAITING
        began, shown = time.perf_counter(), False
        live = can_preview(pipe)  # else the pipeline's history is replayed after the run
        for item in self._steps(pipe, lock, prompt, task="t2i", guidance_scale=guidance, return_history=not live,
                                stop=_stop_key(request, "t2i"), **options):
            if isinstance(item, Waiting):
                yield gr.skip(), gr.skip()
                continue
            if isinstance(item, Stopped):
                yield gr.skip(), item.status
                return
            if isinstance(item, Done):
                out = item.output
                if not shown:  # no live preview from this pipeline: replay its history, if it kept one
                    frames = [h["images"] for h in (out.history or []) if h.get("images") is not None]
                    for k, images in enumerate(frames, 1):
                        yield _enlarge(_first_image(images)), f"replay: step {k} of {len(frames)}"
                yield (_enlarge(_first_image(out.images)),
                       f"done: {steps} steps, {time.perf_counter() - began:.1f} s{note}")
                return
            if item.images is not None:
                shown = True
                yield _enlarge(_first_image(item.images)), f"step {item.index} of {steps}{note}"

    def run_caption(self, checkpoint, image, question, answer_tokens, steps, guidance, rule, temperature, seed,
                    request: gr.Request = None):
        """Caption `image`, or answer `question` about it; yields (live view, status, text)."""
        image = self._image(image)
        question = self._text("question", question, required=False).strip()
        if question and not PLACEHOLDER.search(question):
            question += f"<|mask:{self._int('answer length', answer_tokens, 1, 64)}|>"
        guidance = self._float("guidance", guidance, 0.0, 20.0)
        task = "vqa" if question else "caption"
        pipe, lock, options, note = self._mm_pipeline(checkpoint, task, steps, rule, temperature, seed,
                                                      CAPTION_TEMPERATURE)
        steps = options["num_inference_steps"]
        yield gr.skip(), WAITING, gr.skip()
        tok = getattr(pipe, "tokenizer", None)
        mask_id = getattr(tok, "mask_token_id", None)
        prev, began = None, time.perf_counter()
        for item in self._steps(pipe, lock, question or None, image, task=task, text_guidance_scale=guidance,
                                preview=False, stop=_stop_key(request, "caption"), **options):
            if isinstance(item, Waiting):
                yield gr.skip(), gr.skip(), gr.skip()
                continue
            if isinstance(item, Stopped):
                yield gr.skip(), item.status, gr.skip()
                return
            if isinstance(item, Done):
                text = (item.output.texts or [""])[0]
                live = _unmasking([(text, "done")]) if prev is None else _unmasking(
                    view.frame(tok, prev, prev, mask_id, eos_token_id=tok.eos_token_id))
                yield live, f"done ({task}): {time.perf_counter() - began:.1f} s{note}", text
                return
            ids = item.tensors.get("text_ids")
            if ids is None or tok is None:
                continue
            ids = ids[0].tolist()
            if prev is None and task == "caption":  # a caption starts from a fully masked canvas
                prev = [mask_id] * len(ids)
            frame = view.frame(tok, ids, prev, mask_id, eos_token_id=tok.eos_token_id)
            prev = ids
            yield _unmasking(frame), f"step {item.index} of {steps}{note}", ""

    # ------------------------------------------------------------ layout
    def _mm_checkpoint(self, elem_id: str) -> gr.Textbox:
        return gr.Textbox(self.config.mm_model or "", label="checkpoint (a saved multimodal pipeline)",
                          placeholder="path to a saved multimodal pipeline", interactive=self.allow_paths,
                          elem_id=elem_id)

    def _on_checkpoint(self, box: gr.Textbox, fn, outputs: list) -> None:
        """Re-derive the settings a tab offers when its checkpoint box is edited."""
        if self.allow_paths:
            for event in (box.submit, box.blur):
                _page_event(event, fn, [box], outputs)

    def _run(self, button, stop, tab: str, fn, inputs: list, outputs: list) -> None:
        """The tab's button runs `fn` in its group's line, which a request joins only while it has room
        (a `validator`: Gradio runs it as the request arrives, for the page and the API alike; its
        message shows at the tab's second input). `fn` takes its inputs as sent (`preprocess=False`):
        it checks every one itself, and Gradio's own image decoding or range checks would fail with a
        bare "Error" before it could (under a validator, with an HTTP 400). Stop ends the run."""
        group = "text" if tab == "text" else "image"

        def admit(*values):
            refusal = self.admit(group)
            return [gr.validate(refusal is None or k != 1, refusal or "") for k in range(len(values))]

        def arm(request: gr.Request = None) -> None:  # (gr.Request reaches functions by their annotation)
            self.arm(tab, request)

        def stop_run(request: gr.Request = None) -> None:
            self.request_stop(tab, request)

        button.click(arm, None, None, queue=False, api_visibility="private").success(
            fn, inputs, outputs, api_name=tab, concurrency_id=group, concurrency_limit=self.config.concurrency,
            validator=admit, preprocess=False)
        stop.click(stop_run, None, None, queue=False, api_visibility="private")

    def build(self) -> gr.Blocks:
        c = self.config
        text_pipe, mm_pipe = self._default_pipeline("text"), self._default_pipeline("mm")
        text_limits = _text_limits(text_pipe, c.max_gen_length) if text_pipe else {}
        t2i, caption = ({}, {}) if mm_pipe is None else (_image_settings(mm_pipe, "t2i"),
                                                         _image_settings(mm_pipe, "caption"))
        scene_side = getattr(mm_pipe, "image_size", 32)  # the example scenes, drawn at the model's size
        with gr.Blocks(title="mmdlm demo", analytics_enabled=False) as app:
            gr.Markdown("# mmdlm: masked diffusion for text and images\nEvery output below is shown while it is "
                        "being denoised: grey blocks are still masked, green tokens were committed in the latest "
                        "step.")
            with gr.Tab("Text", id="text"):
                with gr.Row():
                    with gr.Column():
                        ckpt = gr.Textbox(c.text_model, label="checkpoint (a diffusion LM or saved text pipeline)",
                                          interactive=self.allow_paths, elem_id="text-checkpoint")
                        prompt = gr.Textbox(TEXT_EXAMPLES[0], lines=5, max_length=c.max_prompt_chars,
                                            label="prompt: continued, and its <|mask:N|> placeholders filled",
                                            elem_id="text-prompt", **text_limits.get("prompt", {}))
                        run, stop = _run_and_stop("Generate", "text")
                        gr.Examples([[e] for e in TEXT_EXAMPLES], [prompt], label="examples")
                        with gr.Accordion("settings", open=True):
                            with gr.Row():
                                gen_length = gr.Slider(**{"maximum": c.max_gen_length, **text_limits.get(
                                    "gen_length", {})}, minimum=0, value=48, step=1,
                                    label="generation length (tokens; 0: only fill placeholders)",
                                    elem_id="text-gen-length")
                                steps = gr.Slider(1, c.max_steps, 48, step=1, label="steps", elem_id="text-steps")
                            with gr.Row():
                                rule = gr.Dropdown(list(RULES), value="confidence", label="commit rule")
                                block = gr.Slider(**{"maximum": c.max_gen_length, **text_limits.get("block", {})},
                                                  minimum=0, value=16, step=1, label="block length (0: one block)",
                                                  elem_id="text-block")
                                threshold = gr.Slider(0, 1, 0, step=0.05,
                                                      label="parallel threshold (0: off)")
                            remasking = gr.Checkbox(False, label="remasking", info="committed tokens can be taken "
                                                    "back (commit rule confidence, no threshold)")
                            with gr.Row():
                                temperature = gr.Slider(0, 2, 0, step=0.05, label="temperature (0: greedy)")
                                guidance = gr.Slider(0, 5, 0, step=0.1, label="guidance")
                                seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
                    with gr.Column():
                        live = gr.HTML(_unmasking([]), label="unmasking", elem_id="text-live")
                        status = gr.Markdown(label="status", elem_id="text-status")
                        result = gr.Textbox(label="result", lines=8, buttons=["copy"], elem_id="text-output")
                self._run(run, stop, "text", self.run_text, [ckpt, prompt, gen_length, steps, rule, block, threshold,
                                                            remasking, temperature, guidance, seed],
                          [live, status, result])
                self._on_checkpoint(ckpt, self.text_settings, [prompt, gen_length, block])

            mm_note = None if c.mm_model else NO_MM_CHECKPOINT
            with gr.Tab("Text to image", id="t2i"):
                if mm_note:
                    gr.Markdown(mm_note, elem_id="t2i-note")
                with gr.Row():
                    with gr.Column():
                        ckpt = self._mm_checkpoint("t2i-checkpoint")
                        prompt = gr.Textbox(T2I_EXAMPLES[0], lines=2, max_length=c.max_prompt_chars,
                                            label="prompt", elem_id="t2i-prompt", **t2i.get("text", {}))
                        run, stop = _run_and_stop("Draw", "t2i")
                        gr.Examples([[e] for e in T2I_EXAMPLES], [prompt], label="examples")
                        with gr.Accordion("settings", open=True):
                            with gr.Row():
                                steps = gr.Slider(1, c.max_steps, 16, step=1, label="steps")
                                # UnifiedDiscretePipeline's defaults; the MM-DiT draws as well at guidance 1
                                # as at its 2 (README)
                                guidance = gr.Slider(0, 10, 1, step=0.1, label="guidance (image by text)")
                            rule, temperature, seed, note = _rule_temperature_seed("t2i", T2I_TEMPERATURE, t2i)
                    with gr.Column():
                        picture = gr.Image(label="image", type="pil", format="png", interactive=False,
                                           height=SHOWN_IMAGE_SIDE + 64, elem_id="t2i-image")
                        status = gr.Markdown(label="status", elem_id="t2i-status")
                self._run(run, stop, "t2i", self.run_t2i, [ckpt, prompt, steps, guidance, rule, temperature, seed],
                          [picture, status])
                self._on_checkpoint(ckpt, partial(self.image_settings, "t2i"), [rule, temperature, note, prompt])

            with gr.Tab("Caption and questions", id="caption"):
                if mm_note:
                    gr.Markdown(mm_note, elem_id="caption-note")
                with gr.Row():
                    with gr.Column():
                        ckpt = self._mm_checkpoint("caption-checkpoint")
                        picture = gr.Image(label="image", type="filepath", format="png",
                                           sources=["upload", "clipboard"], height=SHOWN_IMAGE_SIDE,
                                           elem_id="caption-image")  # decoded by the app (`Demo._image`)
                        question = gr.Textbox("", lines=1, max_length=c.max_prompt_chars, label=QUESTION_HELP,
                                              placeholder=QUESTION_EXAMPLE, elem_id="caption-question",
                                              **caption.get("text", {}))
                        run, stop = _run_and_stop("Caption / answer", "caption")
                        scenes = [S.render(S.parse_caption(text), scene_side) for text in CAPTION_SCENES]
                        gr.Examples([[scene, ""] for scene in scenes] + [[scenes[0], QUESTION_EXAMPLE]],
                                    [picture, question], label="examples (shapes scenes; the last asks a question)",
                                    elem_id="caption-examples")
                        with gr.Accordion("settings", open=True):
                            with gr.Row():
                                answer = gr.Slider(**{"maximum": 16, **caption.get("answer", {})}, minimum=1,
                                                   value=1, step=1, label="answer length (tokens filled at the "
                                                                          "end when the question has no blank)")
                                steps = gr.Slider(1, c.max_steps, 16, step=1, label="steps")
                                guidance = gr.Slider(0, 10, 0, step=0.1, label="guidance (text by image)")
                            rule, temperature, seed, note = _rule_temperature_seed("caption", CAPTION_TEMPERATURE,
                                                                                   caption)
                    with gr.Column():
                        live = gr.HTML(_unmasking([]), label="unmasking", elem_id="caption-live")
                        status = gr.Markdown(label="status", elem_id="caption-status")
                        result = gr.Textbox(label="caption / answer", lines=2, elem_id="caption-output")
                self._run(run, stop, "caption", self.run_caption, [ckpt, picture, question, answer, steps, guidance,
                                                                   rule, temperature, seed],
                          [live, status, result])
                _page_event(picture.upload, self.check_upload, [picture], None, preprocess=False)
                self._on_checkpoint(ckpt, partial(self.image_settings, "caption"),
                                    [rule, temperature, note, question, answer])
        self.app = app
        return app


# ---------------------------------------------------------------- helpers
def _unmasking(frame) -> str:
    """A frame as HTML; a trailing run of EOS shows as one mark."""
    frame = list(frame)
    while len(frame) > 1 and frame[-1][1] == "eos" and frame[-2][1] == "eos":
        frame.pop()
    return f'<div class="unmasking">{view.frame_html(frame)}</div>'


def _first_image(images) -> Image.Image:
    if isinstance(images, torch.Tensor):
        from ..images import to_pil

        return to_pil(images[:1])[0]
    if isinstance(images, (list, tuple)):
        return _first_image(images[0])
    if isinstance(images, Image.Image):
        return images
    import numpy as np

    array = np.asarray(images)
    array = array[0] if array.ndim == 4 else array
    return Image.fromarray((array.clip(0, 1) * 255).round().astype("uint8"))


def _enlarge(image: Image.Image) -> Image.Image:
    side = min(image.size)
    if side >= SHOWN_IMAGE_SIDE:
        return image
    factor = -(-SHOWN_IMAGE_SIDE // side)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _rule_temperature_seed(tab: str, temperature: float, settings: dict):
    """An image tab's second row of settings, and the note on the controls its checkpoint does not read."""
    with gr.Row():
        rule = gr.Dropdown(list(RULES), value="confidence", label="commit rule", elem_id=f"{tab}-rule",
                           **settings.get("rule", {}))
        temperature = gr.Slider(0, 2, temperature, step=0.05, elem_id=f"{tab}-temperature",
                                **{"label": "temperature", **settings.get("temperature", {})})
        seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
    note = gr.Markdown(**{"value": "", "visible": False, **settings.get("note", {})}, elem_id=f"{tab}-controls-note")
    return rule, temperature, seed, note


def _page_event(listener, fn, inputs, outputs, **options):
    """A quick page-only step (admission, checks, settings): through the queue, which is how a
    `gr.Error` reaches the page (`show_error=False` hides those of unqueued events), in a group of its
    own that never waits."""
    return listener(fn, inputs, outputs, concurrency_id="page", concurrency_limit=None, api_visibility="private",
                    **options)


def _run_and_stop(label: str, tab: str):
    with gr.Row():
        return gr.Button(label, variant="primary", elem_id=f"{tab}-run"), gr.Button("Stop", elem_id=f"{tab}-stop")


def build_app(config: DemoConfig) -> gr.Blocks:
    return Demo(config).build()


def launch(app: gr.Blocks, config: DemoConfig, **kwargs):
    """Queue and serve `app` with the safe settings of `config` (kwargs go to `launch`)."""
    Image.MAX_IMAGE_PIXELS = config.max_image_pixels  # PIL refuses (2x) larger images while decoding them
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the app refuses those itself, with a message
    # every group keeps its own line of `queue_size` (Demo.admit); the queue holds them all
    app.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size * len(GROUPS), api_open=True)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts fetched from outside
    return app.launch(server_name=config.host, server_port=config.port, max_file_size=config.max_file_size,
                      show_error=False, share=False, ssr_mode=False, mcp_server=False, theme=theme, css=CSS,
                      **kwargs)


def serve(config: DemoConfig) -> None:
    """Load the default checkpoints, build the app and serve until interrupted."""
    demo = Demo(config)
    for kind, default in (("text", config.text_model), ("mm", config.mm_model)):
        if default:
            try:
                demo.pipelines.get(_find(default), kind)
            except gr.Error as err:  # the CLI's one-line error
                raise ValueError(err.message) from None
    app = demo.build()
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mmdlm demo: serving on {config.host}, reachable from other machines"
              + ("; visitors can load checkpoint folders by path (--no-allow-paths to stop it)"
                 if demo.allow_paths else ""))
    launch(app, config)
