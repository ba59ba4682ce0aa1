"""The mmdlm demo: text continuation and infilling, text-to-image, captioning and question
answering, each shown step by step while the diffusion runs.

    mmdlm demo                                  # the shipped checkpoints, on http://127.0.0.1:7860
    mmdlm demo --mm-model outputs/mmdit/model   # a saved multimodal pipeline for the image tabs
    python demos/app.py --help                  # the same flags

The app only orchestrates: pipelines come from `mmdlm.pipelines` (`TextDiffusionPipeline`,
`load_pipeline`), the step-by-step run from `mmdlm.pipelines.streaming.iterate_steps`, the
unmasking view from `mmdlm.text.history`. Settings are `mmdlm.cli.DemoConfig` (every flag a
config key); the default multimodal checkpoint is its `mm_model` field.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no usage reports, no version checks

import logging
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and str(REPO) not in sys.path:  # `python demos/app.py` from a checkout
    sys.path.insert(0, str(REPO))

import gradio as gr
import torch
from PIL import Image

from mmdlm.cli import DemoConfig
from mmdlm.pipelines import TextDiffusionPipeline, load_pipeline
from mmdlm.pipelines.streaming import Done, call_parameters, can_preview, iterate_steps, split_supported
from mmdlm.text import history as view
from mmdlm.placeholders import PLACEHOLDER

log = logging.getLogger("mmdlm.demo")

RULES = ("confidence", "margin", "entropy", "random", "origin")
MAX_SEED = 2**31 - 1
SHOWN_IMAGE_SIDE = 256  # small model images are enlarged (nearest neighbour) to at least this side
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
CSS = """
.unmasking { font-family: ui-monospace, monospace; white-space: pre-wrap; font-size: 14px; line-height: 1.5;
             min-height: 4em; padding: 8px; border: 1px solid #ddd; border-radius: 6px; }
.unmasking .masked, .unmasking .eos { color: #9a9a9a; }
.unmasking .new { background: #c8f7c5; font-weight: bold; }
"""


def _refuse(message: str) -> gr.Error:
    """A message for the page (bad input, missing checkpoint): no traceback in the server log."""
    return gr.Error(message, print_exception=False)


# ---------------------------------------------------------------- checkpoints
class Pipelines:
    """Loaded pipelines by (folder, kind), the most recent few kept; one lock per pipeline, so
    a pipeline never runs two generations at once (schedulers keep per-call state)."""

    def __init__(self, device: str, keep: int = 2):
        self.device, self.keep = device, keep
        self._loaded: OrderedDict = OrderedDict()
        self._guard = threading.Lock()

    def get(self, path: Path, kind: str):
        key = (str(path), kind)
        with self._guard:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            pipe = _load(path, kind).to(self.device)
            pipe.set_progress_bar_config(disable=True)
            self._loaded[key] = (pipe, threading.Lock())
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
            return self._loaded[key]


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


def _find(path: str) -> Path:
    """A checkpoint folder: as given, else relative to the repository (the shipped assets)."""
    p = Path(path).expanduser()
    if not p.exists() and not p.is_absolute() and (REPO / p).exists():
        p = REPO / p
    if not p.is_dir():
        raise _refuse(f"no checkpoint folder at {path!r}")
    return p.resolve()


# ---------------------------------------------------------------- the app
class Demo:
    def __init__(self, config: DemoConfig):
        config.validate()
        self.config = config
        self.allow_paths = config.paths_allowed()
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.pipelines = Pipelines(device)

    # ------------------------------------------------------------ input checks
    def _checkpoint(self, given: str | None, default: str | None, kind: str):
        given = (given or "").strip()
        if given and given != (default or "") and not self.allow_paths:
            raise _refuse("this demo serves only its configured checkpoints; start it with --allow-paths to load "
                          "other folders")
        path = given or default
        if not path:
            raise _refuse("no multimodal checkpoint is configured; give the folder of a saved multimodal "
                          "pipeline in the checkpoint box" if kind == "mm" else "no checkpoint given")
        return self.pipelines.get(_find(path), kind)

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

    def _image(self, image) -> Image.Image:
        if image is None:
            raise _refuse("upload an image first")
        if not isinstance(image, Image.Image):
            raise _refuse("the upload is not an image")
        if image.width * image.height > self.config.max_image_pixels:
            raise _refuse(f"the image is {image.width}x{image.height} pixels; the limit is "
                          f"{self.config.max_image_pixels:,} pixels")
        return image

    # ------------------------------------------------------------ running a pipeline
    def _steps(self, pipe, lock, *args, preview: bool = True, **kwargs):
        """`iterate_steps` under the pipeline's lock, with the pipeline's own errors (bad
        input, in its words) turned into messages in the page."""
        kwargs, ignored = split_supported(pipe, kwargs)
        if ignored:
            gr.Warning(f"{type(pipe).__name__} has no setting {', '.join(ignored)}; ignored")
        try:
            for item in iterate_steps(pipe, *args, preview=preview, lock=lock, **kwargs):
                yield item
                if not isinstance(item, Done) and self.config.frame_delay:
                    time.sleep(self.config.frame_delay)
        except ValueError as err:
            raise _refuse(str(err)) from err
        except Exception as err:
            log.exception("generation failed")
            raise _refuse(f"generation failed ({type(err).__name__}); the server log has the details") from err

    def run_text(self, checkpoint, prompt, gen_length, steps, rule, block_length, threshold, remasking,
                 temperature, guidance, seed):
        """Continue and/or infill `prompt`; yields (live view, status, text) after every step."""
        prompt = self._text("prompt", prompt)
        gen_length = self._int("generation length", gen_length, 0, self.config.max_gen_length)
        if gen_length == 0 and not PLACEHOLDER.search(prompt):
            raise _refuse("nothing to generate: raise the generation length, or put <|mask:N|> placeholders "
                          "(N tokens each) in the prompt")
        block_length = self._int("block length", block_length, 0, self.config.max_gen_length)
        threshold = self._float("threshold", threshold, 0.0, 1.0)
        guidance = self._float("guidance", guidance, 0.0, 10.0)
        pipe, lock = self._checkpoint(checkpoint, self.config.text_model, "text")
        options = self._sampling(steps, rule, temperature, seed, pipe.device)
        tok, mask_id = pipe.tokenizer, pipe.mask_token_id
        start = int(tok.bos_token_id is not None)
        prev, began = None, time.perf_counter()
        for item in self._steps(pipe, lock, prompt, gen_length=gen_length, block_length=block_length or None,
                                threshold=threshold or None, remasking=bool(remasking), guidance_scale=guidance,
                                preview=False, **options):
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

    def run_t2i(self, checkpoint, prompt, steps, guidance, rule, temperature, seed):
        """Draw `prompt`; yields (image, status) after every step."""
        prompt = self._text("prompt", prompt)
        guidance = self._float("guidance", guidance, 0.0, 20.0)
        pipe, lock = self._checkpoint(checkpoint, self.config.mm_model, "mm")
        options = self._sampling(steps, rule, temperature, seed, pipe.device)
        if "image_temperature" in (call_parameters(pipe) or ()):  # a discrete image side samples its codes
            options["image_temperature"] = options.pop("temperature")
        began, shown = time.perf_counter(), False
        live = can_preview(pipe)  # else the pipeline's history is replayed after the run
        for item in self._steps(pipe, lock, prompt, task="t2i", guidance_scale=guidance, return_history=not live,
                                **options):
            if isinstance(item, Done):
                out = item.output
                if not shown:  # no live preview from this pipeline: replay its history, if it kept one
                    frames = [h["images"] for h in (out.history or []) if h.get("images") is not None]
                    for k, images in enumerate(frames, 1):
                        yield _enlarge(_first_image(images)), f"replay: step {k} of {len(frames)}"
                yield (_enlarge(_first_image(out.images)),
                       f"done: {options['num_inference_steps']} steps, {time.perf_counter() - began:.1f} s")
                return
            if item.images is not None:
                shown = True
                yield _enlarge(_first_image(item.images)), f"step {item.index} of {options['num_inference_steps']}"

    def run_caption(self, checkpoint, image, question, answer_tokens, steps, guidance, rule, temperature, seed):
        """Caption `image`, or answer `question` about it; yields (live view, status, text)."""
        image = self._image(image)
        question = self._text("question", question, required=False).strip()
        if question and not PLACEHOLDER.search(question):
            question += f"<|mask:{self._int('answer length', answer_tokens, 1, 64)}|>"
        guidance = self._float("guidance", guidance, 0.0, 20.0)
        pipe, lock = self._checkpoint(checkpoint, self.config.mm_model, "mm")
        options = self._sampling(steps, rule, temperature, seed, pipe.device)
        task = "vqa" if question else "caption"
        tok = getattr(pipe, "tokenizer", None)
        mask_id = getattr(tok, "mask_token_id", None)
        prev, began = None, time.perf_counter()
        for item in self._steps(pipe, lock, question or None, image, task=task, text_guidance_scale=guidance,
                                preview=False, **options):
            if isinstance(item, Done):
                text = (item.output.texts or [""])[0]
                live = _unmasking([(text, "done")]) if prev is None else _unmasking(
                    view.frame(tok, prev, prev, mask_id, eos_token_id=tok.eos_token_id))
                yield live, f"done ({task}): {time.perf_counter() - began:.1f} s", text
                return
            ids = item.tensors.get("text_ids")
            if ids is None or tok is None:
                continue
            ids = ids[0].tolist()
            if prev is None and task == "caption":  # a caption starts from a fully masked canvas
                prev = [mask_id] * len(ids)
            frame = view.frame(tok, ids, prev, mask_id, eos_token_id=tok.eos_token_id)
            prev = ids
            yield _unmasking(frame), f"step {item.index} of {options['num_inference_steps']}", ""

    # ------------------------------------------------------------ layout
    def _mm_checkpoint(self, elem_id: str) -> gr.Textbox:
        return gr.Textbox(self.config.mm_model or "", label="checkpoint (a saved multimodal pipeline)",
                          placeholder="path to a saved multimodal pipeline", interactive=self.allow_paths,
                          elem_id=elem_id)

    def build(self) -> gr.Blocks:
        c = self.config
        with gr.Blocks(title="mmdlm demo", analytics_enabled=False) as app:
            gr.Markdown("# mmdlm: masked diffusion for text and images\nEvery output below is shown while it is "
                        "being denoised: grey blocks are still masked, green tokens were committed in the latest "
                        "step.")
            with gr.Tab("Text", id="text"):
                with gr.Row():
                    with gr.Column():
                        ckpt = gr.Textbox(c.text_model, label="checkpoint (a diffusion LM or saved text pipeline)",
                                          interactive=self.allow_paths, elem_id="text-checkpoint")
                        prompt = gr.Textbox(TEXT_EXAMPLES[0], lines=6, max_length=c.max_prompt_chars,
                                            label="prompt: continued, and its <|mask:N|> placeholders filled",
                                            elem_id="text-prompt")
                        gr.Examples([[e] for e in TEXT_EXAMPLES], [prompt], label="examples")
                        with gr.Accordion("settings", open=True):
                            with gr.Row():
                                gen_length = gr.Slider(0, c.max_gen_length, 48, step=1,
                                                       label="generation length (tokens; 0: only fill placeholders)",
                                                       elem_id="text-gen-length")
                                steps = gr.Slider(1, c.max_steps, 48, step=1, label="steps", elem_id="text-steps")
                            with gr.Row():
                                rule = gr.Dropdown(list(RULES), value="confidence", label="commit rule")
                                block = gr.Slider(0, c.max_gen_length, 16, step=1,
                                                  label="block length (0: one block)")
                                threshold = gr.Slider(0, 1, 0, step=0.05,
                                                      label="parallel threshold (0: off)")
                            remasking = gr.Checkbox(False, label="remasking", info="committed tokens can be taken "
                                                    "back (commit rule confidence, no threshold)")
                            with gr.Row():
                                temperature = gr.Slider(0, 2, 0, step=0.05, label="temperature (0: greedy)")
                                guidance = gr.Slider(0, 5, 0, step=0.1, label="guidance")
                                seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
                        with gr.Row():
                            run = gr.Button("Generate", variant="primary", elem_id="text-run")
                            stop = gr.Button("Stop", elem_id="text-stop")
                    with gr.Column():
                        live = gr.HTML(_unmasking([]), label="unmasking", elem_id="text-live")
                        status = gr.Markdown(label="status", elem_id="text-status")
                        result = gr.Textbox(label="result", lines=8, buttons=["copy"], elem_id="text-output")
                event = run.click(self.run_text, [ckpt, prompt, gen_length, steps, rule, block, threshold,
                                                  remasking, temperature, guidance, seed], [live, status, result],
                                  api_name="text")
                stop.click(None, cancels=[event])

            mm_note = None if c.mm_model else NO_MM_CHECKPOINT
            with gr.Tab("Text to image", id="t2i"):
                if mm_note:
                    gr.Markdown(mm_note, elem_id="t2i-note")
                with gr.Row():
                    with gr.Column():
                        ckpt = self._mm_checkpoint("t2i-checkpoint")
                        prompt = gr.Textbox(T2I_EXAMPLES[0], lines=2, max_length=c.max_prompt_chars,
                                            label="prompt", elem_id="t2i-prompt")
                        gr.Examples([[e] for e in T2I_EXAMPLES], [prompt], label="examples")
                        with gr.Accordion("settings", open=True):
                            with gr.Row():
                                steps = gr.Slider(1, c.max_steps, 16, step=1, label="steps")
                                # UnifiedDiscretePipeline's defaults; the MM-DiT draws as well at guidance 1
                                # as at its 2 (README), and temperature is its text's, unused here
                                guidance = gr.Slider(0, 10, 1, step=0.1, label="guidance (image by text)")
                            rule, temperature, seed = _rule_temperature_seed(temperature=0.3)
                        run, stop = _run_and_stop("Draw", "t2i-run")
                    with gr.Column():
                        picture = gr.Image(label="image", type="pil", format="png", interactive=False,
                                           height=SHOWN_IMAGE_SIDE + 64, elem_id="t2i-image")
                        status = gr.Markdown(label="status", elem_id="t2i-status")
                event = run.click(self.run_t2i, [ckpt, prompt, steps, guidance, rule, temperature, seed],
                                  [picture, status], api_name="t2i")
                stop.click(None, cancels=[event])

            with gr.Tab("Caption and questions", id="caption"):
                if mm_note:
                    gr.Markdown(mm_note, elem_id="caption-note")
                with gr.Row():
                    with gr.Column():
                        ckpt = self._mm_checkpoint("caption-checkpoint")
                        picture = gr.Image(label="image", type="pil", sources=["upload", "clipboard"],
                                           image_mode="RGB", height=SHOWN_IMAGE_SIDE, elem_id="caption-image")
                        question = gr.Textbox("", lines=1, max_length=c.max_prompt_chars,
                                              label="question (empty: caption the image); the answer goes at the "
                                                    "end, or where you put <|mask:N|>",
                                              placeholder="what colour is the circle ?", elem_id="caption-question")
                        with gr.Accordion("settings", open=True):
                            with gr.Row():
                                answer = gr.Slider(1, 16, 1, step=1, label="answer length (tokens)")
                                steps = gr.Slider(1, c.max_steps, 16, step=1, label="steps")
                                guidance = gr.Slider(0, 10, 0, step=0.1, label="guidance (text by image)")
                            rule, temperature, seed = _rule_temperature_seed(temperature=0)
                        run, stop = _run_and_stop("Caption / answer", "caption-run")
                    with gr.Column():
                        live = gr.HTML(_unmasking([]), label="unmasking", elem_id="caption-live")
                        status = gr.Markdown(label="status", elem_id="caption-status")
                        result = gr.Textbox(label="caption / answer", lines=2, elem_id="caption-output")
                event = run.click(self.run_caption, [ckpt, picture, question, answer, steps, guidance, rule,
                                                     temperature, seed], [live, status, result], api_name="caption")
                stop.click(None, cancels=[event])
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
        from mmdlm.data.imagetext import to_pil

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


def _rule_temperature_seed(temperature: float):
    """The image tabs' second row of settings."""
    with gr.Row():
        rule = gr.Dropdown(list(RULES), value="confidence", label="commit rule")
        temperature = gr.Slider(0, 2, temperature, step=0.05, label="temperature")
        seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
    return rule, temperature, seed


def _run_and_stop(label: str, elem_id: str):
    with gr.Row():
        return gr.Button(label, variant="primary", elem_id=elem_id), gr.Button("Stop")


def build_app(config: DemoConfig) -> gr.Blocks:
    return Demo(config).build()


def launch(app: gr.Blocks, config: DemoConfig, **kwargs):
    """Queue and serve `app` with the safe settings of `config` (kwargs go to `launch`)."""
    Image.MAX_IMAGE_PIXELS = config.max_image_pixels  # PIL refuses (2x) larger images while decoding them
    app.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size, api_open=True)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts fetched from outside
    return app.launch(server_name=config.host, server_port=config.port, max_file_size=config.max_file_size,
                      show_error=False, share=False, ssr_mode=False, mcp_server=False, theme=theme, css=CSS,
                      **kwargs)


def serve(config: DemoConfig) -> None:
    """Build the app, load the default text checkpoint, and serve until interrupted."""
    demo = Demo(config)
    app = demo.build()
    if config.text_model:
        demo.pipelines.get(_find(config.text_model), "text")
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mmdlm demo: serving on {config.host}, reachable from other machines"
              + ("; visitors can load checkpoint folders by path (--no-allow-paths to stop it)"
                 if demo.allow_paths else ""))
    launch(app, config)


def main(argv: list[str] | None = None) -> int:
    from mmdlm import cli

    return cli.main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
