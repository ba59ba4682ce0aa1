"""The Gradio demo (mmdlm/demo/app.py): step-by-step runs, the app through its API, and the page in a
real headless Chromium.

The app runs in this process on a free local port, over the shipped `assets/dlm` for text and
the model-free `StepwiseOraclePipeline` (tests/demo_pipeline.py) for the image tabs.
"""
from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from conftest import tiny_causal_lm
from demo_pipeline import StepwiseOraclePipeline
from PIL import Image

from mmdlm.data import shapes as S
from mmdlm.pipelines import TextDiffusionPipeline
from mmdlm.pipelines.streaming import Done, Step, Waiting, iterate_steps, split_supported
from mmdlm.schedulers import MaskedDiffusionScheduler
from mmdlm.text import history as view
from mmdlm.text.adapt import DiffusionLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "demos"))
import browser  # noqa: E402

from mmdlm.demo import app as demo_app  # noqa: E402
from mmdlm.demo.config import DemoConfig  # noqa: E402

SCENE = "a small red circle left of a large blue square"


# ---------------------------------------------------------------- the package pieces the demo uses
def _join_pipeline_workers():
    for worker in [t for t in threading.enumerate() if t.name == "mmdlm-pipeline"]:
        worker.join(timeout=30)
        assert not worker.is_alive()


@pytest.fixture
def text_pipe(tokenizer):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    pipe = TextDiffusionPipeline(dlm.model, tokenizer, MaskedDiffusionScheduler(), diffusion_config=dlm.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_iterate_steps_shows_every_step_and_ends_with_the_same_output(text_pipe):
    items = list(iterate_steps(text_pipe, "def", gen_length=6, num_inference_steps=6,
                               generator=torch.Generator().manual_seed(3), stop_at_eos=False))
    steps, done = items[:-1], items[-1]
    assert [s.index for s in steps] == [1, 2, 3, 4, 5, 6] and isinstance(done, Done)
    mask_id = text_pipe.mask_token_id
    masked = [int((s.tensors["sequences"] == mask_id).sum()) for s in steps]
    assert masked == [5, 4, 3, 2, 1, 0]  # one token committed per step, seen live
    direct = text_pipe("def", gen_length=6, num_inference_steps=6, generator=torch.Generator().manual_seed(3),
                       stop_at_eos=False)
    assert torch.equal(done.output.sequences, direct.sequences)
    with pytest.raises(ValueError, match="context is 64"):  # the pipeline's own error reaches the consumer
        list(iterate_steps(text_pipe, "x " * 70, gen_length=8))


def test_closing_early_stops_the_pipeline(text_pipe):
    seen = []
    original = text_pipe.dlm.model.forward

    def counting(*args, **kwargs):
        seen.append(1)
        return original(*args, **kwargs)

    text_pipe.dlm.model.forward = counting
    stream = iterate_steps(text_pipe, "def", gen_length=32, num_inference_steps=32)
    assert isinstance(next(stream), Step)
    stream.close()  # the consumer leaves (a closed page): the worker ends at its next step
    _join_pipeline_workers()
    assert len(seen) <= 3  # not the 32 passes of a full run


def test_a_stopped_call_lets_go_of_the_shared_lock(text_pipe):
    lock = threading.Lock()
    first = iterate_steps(text_pipe, "def", gen_length=4, num_inference_steps=4, lock=lock)
    assert isinstance(next(first), Step) and lock.locked()  # held by the running call
    second = iterate_steps(text_pipe, "class", gen_length=4, num_inference_steps=4, lock=lock)
    first.close()
    items = list(second)  # runs once the stopped call has let go
    assert [type(i) for i in items] == [Step] * 4 + [Done] and not lock.locked()


def test_heartbeats_while_the_pipeline_waits_for_its_lock(text_pipe):
    lock = threading.Lock()
    passes = []
    original = text_pipe.dlm.model.forward
    text_pipe.dlm.model.forward = lambda *a, **k: passes.append(1) or original(*a, **k)
    with lock:  # another call has the pipeline
        stream = iterate_steps(text_pipe, "def", gen_length=4, num_inference_steps=4, lock=lock, heartbeat=0.05)
        assert isinstance(next(stream), Waiting) and isinstance(next(stream), Waiting)
        stream.close()  # the consumer leaves while waiting
    _join_pipeline_workers()
    assert not passes and not lock.locked()  # the stopped call never ran, and holds nothing


def test_images_stream_and_unsupported_options_are_named():
    pipe = StepwiseOraclePipeline()
    items = list(iterate_steps(pipe, SCENE, task="t2i", num_inference_steps=3))
    previews = [s.images for s in items[:-1]]
    assert len(previews) == 3 and all(p.shape == (1, 3, 32, 32) for p in previews)
    assert not torch.equal(previews[0], previews[-1])  # the picture changes while it is denoised
    final = torch.as_tensor(np.asarray(items[-1].output.images[0]), dtype=torch.float32)
    assert torch.allclose((previews[-1][0].permute(1, 2, 0) + 1) * 127.5, final, atol=0.6)
    kept, dropped = split_supported(pipe, dict(num_inference_steps=2, rule="margin", temperature=1.0))
    assert kept == {"num_inference_steps": 2} and dropped == ["rule", "temperature"]


def test_frames_keep_the_spaces_of_word_tokenizers(tokenizer):
    word = StepwiseOraclePipeline().tokenizer
    ids = word("a small red circle", add_special_tokens=False)["input_ids"]
    mask = word.mask_token_id
    frame = view.frame(word, ids[:2] + [mask, word.eos_token_id], ids[:2] + [mask, mask], mask,
                       eos_token_id=word.eos_token_id)
    assert frame == [("a", "done"), (" small", "done"), (" " + view.MASK_GLYPH, "masked"),
                     (" " + view.EOS_GLYPH, "eos")]
    for text in ("def add(a, b):\n    return a + b", "print('héllo 日本語 🎉')"):  # multi-byte characters too
        bpe = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert "".join(t for t, _ in view.frame(tokenizer, bpe, None, -1)) == tokenizer.decode(bpe) == text
    html = view.frame_html([("<b>", "new"), (view.MASK_GLYPH, "masked")])
    assert html == f'<span class="new">&lt;b&gt;</span><span class="masked">{view.MASK_GLYPH}</span>'


# ---------------------------------------------------------------- the app without a server
def _drain(gen):
    return list(gen)


def test_image_tabs_say_when_no_checkpoint_is_configured_and_paths_are_locked_when_public():
    demo = demo_app.Demo(DemoConfig(mm_model=None))
    app = demo.build()
    notes = [b for b in app.blocks.values() if getattr(b, "elem_id", None) in ("t2i-note", "caption-note")]
    assert len(notes) == 2 and all("No multimodal checkpoint is configured" in n.value for n in notes)
    with pytest.raises(gr.Error, match="no multimodal checkpoint"):
        _drain(demo.run_t2i("", SCENE, 4, 0, "confidence", 0, 0))
    public = demo_app.Demo(DemoConfig(host="0.0.0.0"))
    assert not public.allow_paths and demo.allow_paths
    with pytest.raises(gr.Error, match="serves only its configured checkpoints"):
        _drain(public.run_text("/etc", "x", 4, 4, "confidence", 0, 0, False, 0, 0, 0))
    with pytest.raises(ValueError, match="max_file_size"):
        demo_app.Demo(DemoConfig(max_file_size="huge"))



def test_text_limits_follow_the_model_context(tokenizer, tmp_path):
    demo = demo_app.Demo(DemoConfig(frame_delay=0))
    prompt, gen_length, block = demo.text_settings("")  # the default, assets/dlm: 256 tokens, BOS + 1 for a prompt
    assert gen_length["maximum"] == block["maximum"] == 254 and "at most 256 tokens" in prompt["info"]
    DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer).save_pretrained(tmp_path / "dlm",
                                                                                                tokenizer)
    prompt, gen_length, _ = demo.text_settings(str(tmp_path / "dlm"))  # re-derived for another checkpoint
    assert gen_length["maximum"] == 62 and "at most 64 tokens" in prompt["info"]
    with pytest.raises(gr.Error, match=r"the prompt is (\d+) tokens and the generation length 8: (\d+) tokens, over "
                                       r"the model's context of 64; shorten the prompt to 56 tokens") as refused:
        _drain(demo.run_text(str(tmp_path / "dlm"), "x " * 150, 8, 8, "confidence", 0, 0, False, 0, 0, 0))
    n_prompt, total = map(int, re.findall(r"(\d+) tokens", refused.value.message)[:2])
    assert n_prompt > 64 and total == n_prompt + 8


def test_stop_ends_a_run_waiting_for_its_turn_and_a_new_run_forgets_an_old_stop():
    demo = demo_app.Demo(DemoConfig(frame_delay=0))
    visitor = SimpleNamespace(session_hash="visitor")  # what Gradio's request tells the app
    args = ("", "def ", 8, 8, "confidence", 0, 0, False, 0, 0, 0, visitor)
    demo.request_stop("text", visitor)  # pressed while the run waits in the line
    assert _drain(demo.run_text(*args))[-1][1] == "stopped before the first step"
    demo.request_stop("text", visitor)  # pressed after a run; then Run again
    demo.arm("text", visitor)
    assert _drain(demo.run_text(*args))[-1][1].startswith("done")


@pytest.mark.parametrize("checkpoint", [None, "assets/discrete-shapes"])  # None: the default, the shipped MM-DiT
def test_shipped_multimodal_checkpoints_draw_caption_and_fill_blanks(checkpoint, tmp_path):
    demo = demo_app.Demo(DemoConfig(frame_delay=0))
    assert demo.config.mm_model == "assets/mmdit-shapes"
    steps = _drain(demo.run_t2i(checkpoint, SCENE, 4, 1.0, "confidence", demo_app.T2I_TEMPERATURE, 0))
    image = steps[-1][0]
    assert len(steps) >= 4 and np.asarray(image).ndim == 3  # a view per step, then the final image
    image.save(tmp_path / "drawn.png")  # the caption tab gets the upload's path
    *_, (_, status, text) = _drain(demo.run_caption(checkpoint, str(tmp_path / "drawn.png"), "", 1, 4, 0.0,
                                                    "confidence", 0, 0))
    assert text.strip() and "<|mask|>" not in text
    S.render(S.parse_caption(SCENE), 32).save(tmp_path / "scene.png")
    *_, (_, status, text) = _drain(demo.run_caption(checkpoint, str(tmp_path / "scene.png"),
                                                    demo_app.QUESTION_EXAMPLE, 1, 4, 0.0, "confidence", 0, 0))
    # the question box's own example works with the shipped models
    assert text == SCENE and status.startswith("done (vqa)")


def test_image_controls_follow_the_checkpoint_and_every_offered_rule_runs(tmp_path):
    demo = demo_app.Demo(DemoConfig(frame_delay=0))
    mmdit, _ = demo.pipelines.get(demo_app._find("assets/mmdit-shapes"), "mm")
    drawing = demo_app.image_controls(mmdit, "t2i")  # flow matching: nothing to commit, no code temperature
    assert (drawing.rule, drawing.temperature, drawing.remasking) == (False, None, False)
    assert "takes no commit rule or temperature for its images (they are denoised by its " \
           "FlowMatchEulerDiscreteScheduler, not unmasked)" in drawing.note
    captions = demo_app.image_controls(mmdit, "caption")
    assert (captions.rule, captions.temperature, captions.remasking, captions.note) == (True, "temperature", False, "")
    discrete, _ = demo.pipelines.get(demo_app._find("assets/discrete-shapes"), "mm")
    for task, temperature in (("t2i", "image_temperature"), ("caption", "temperature")):
        used = demo_app.image_controls(discrete, task)
        assert (used.rule, used.temperature, used.remasking) == (True, temperature, True)
        assert "with another commit rule a run goes without remasking" in used.note
    images = {}
    for rule in demo_app.RULES:  # all five run on the remasking scheduler; the rule changes the picture
        *_, (image, status) = _drain(demo.run_t2i("assets/discrete-shapes", SCENE, 8, 1.0, rule, 0.3, 0))
        assert status.startswith("done") and (("without remasking" in status) == (rule != "confidence"))
        images[rule] = np.asarray(image).tobytes()
    assert len(set(images.values())) >= 3
    S.render(S.parse_caption(SCENE), 32).save(tmp_path / "scene.png")
    *_, (_, status, text) = _drain(demo.run_caption("assets/discrete-shapes", str(tmp_path / "scene.png"), "", 1, 8,
                                                    0.0, "margin", 0, 0))
    assert text == SCENE and "without remasking (it ranks by confidence, not margin)" in status
    plain, _ = demo.pipelines.get(demo_app._find("assets/discrete-shapes"), "mm", remasking=False)
    assert plain.transformer is discrete.transformer and not plain.scheduler.config.remasking
    assert discrete.scheduler.config.remasking  # the shared pipeline keeps its own scheduler


def test_mmdlm_demo_serves_the_app(monkeypatch):
    from mmdlm import cli

    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda app, **options: launched.append(options))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # (the app sets it for the process)
    assert cli.main(["demo", "--port", "7999"]) == 0  # the package's app, the default checkpoints, ...
    assert launched[0]["server_port"] == 7999 and launched[0]["show_error"] is False  # ... and serves the app


# ---------------------------------------------------------------- the app, served
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    StepwiseOraclePipeline().save_pretrained(folder / "oracle")
    scene = S.render(S.parse_caption(SCENE), 64)
    scene.save(folder / "scene.png")
    Image.effect_noise((160, 160), 90).convert("RGB").save(folder / "big.png")  # > 20 KB of noise
    Image.new("RGB", (1100, 1000), "white").save(folder / "wide.png")  # small file, too many pixels
    Image.new("1", (6000, 6000)).save(folder / "huge.png")  # 4 KB, 36 million pixels: past PIL's own limit
    (folder / "notes.png").write_text("a text file with an image's name")
    (folder / "sd").mkdir()
    (folder / "sd" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    config = DemoConfig(text_model="assets/dlm", mm_model=str(folder / "oracle"), port=_free_port(),
                        max_file_size="20kb", max_image_pixels=1_000_000, frame_delay=0.02, concurrency=2,
                        queue_size=2)
    pixels_limit = Image.MAX_IMAGE_PIXELS
    demo = demo_app.Demo(config)
    app = demo.build()
    _, url, _ = demo_app.launch(app, config, prevent_thread_lock=True, quiet=True)
    try:
        yield url, folder, demo
    finally:
        app.close()
        Image.MAX_IMAGE_PIXELS = pixels_limit


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


TEXT_ARGS = dict(gen_length=16, steps=16, rule="confidence", block_length=8, threshold=0, remasking=False,
                 temperature=0, guidance=0, seed=0)


def _text(client, prompt, checkpoint="", **changes):
    args = {**TEXT_ARGS, **changes}
    return client.submit(checkpoint, prompt, *args.values(), api_name="/text")


def test_api_text_streams_the_unmasking_and_infills(client):
    job = _text(client, "import os\n\n\ndef ")
    outputs = list(job)
    live, status, text = outputs[-1]
    assert text.startswith("import os\n\n\ndef ") and len(text) > len("import os\n\n\ndef ")
    assert status.startswith("done")
    steps = [o for o in outputs if o[1].startswith("step")]
    assert len(steps) >= 2 and all(('class="masked"' in live) == (" 0 tokens" not in status)
                                   for live, status, _ in steps)
    assert any('class="new"' in live for live, _, _ in steps)
    assert 'class="masked"' not in live
    infill = "def main():\n    path = os.path.join(<|mask:6|>)\n    return path\n"
    filled = _text(client, infill, gen_length=0).result()[2]
    assert filled.startswith("def main():\n    path = os.path.join(") and filled.endswith(")\n    return path\n")
    assert "<|mask" not in filled
    assert _text(client, "def ", remasking=True).result()[1].startswith("done")


def test_api_bad_inputs_get_clear_messages(client, server):
    from gradio_client.exceptions import AppError

    cases = [(dict(prompt="   "), "the prompt is empty"),
             (dict(prompt="x" * 2001), "the prompt has 2,001 characters; the limit is 2,000"),
             (dict(prompt="def f():", gen_length=0), "nothing to generate"),
             (dict(prompt="x", steps=0), "steps must be between 1 and 256, got 0"),
             (dict(prompt="x", rule="loudest"), "unknown commit rule 'loudest'; choose one of confidence, "),
             (dict(prompt="x", remasking=True, threshold=0.5), "remasking ranks by confidence"),
             (dict(prompt="x " * 300), "the prompt is 302 tokens and the generation length 16: 318 tokens, over "
                                       "the model's context of 256; shorten the prompt to 240 tokens"),
             (dict(prompt="x", gen_length=255), "the prompt is 2 tokens and the generation length 255: 257 tokens, "
                                                "over the model's context of 256; lower the generation length to 254"),
             (dict(prompt="x", checkpoint=str(server[1] / "nowhere")), "no checkpoint folder at"),
             (dict(prompt="x", checkpoint=str(server[1] / "oracle")), "an image-text pipeline"),
             (dict(prompt="x", checkpoint=str(server[1] / "sd")), "holds a StableDiffusionPipeline pipeline, not a "
                                                                    "mmdlm pipeline"),
             (dict(prompt="x", checkpoint=str(server[1])), "is not a mmdlm checkpoint")]
    for case, message in cases:
        prompt, checkpoint = case.pop("prompt"), case.pop("checkpoint", "")
        with pytest.raises(AppError, match=re.escape(message)):
            _text(client, prompt, checkpoint, **case).result()


def test_api_concurrent_users_all_get_answers(client, server):
    _text_group_idle(server[2])  # four runs fill the two slots and the line of two: nothing else may be there
    with ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(lambda: _text(client, "class ", seed=1).result()) for _ in range(4)]
        texts = [j.result()[2] for j in jobs]
    assert len(set(texts)) == 1 and texts[0].startswith("class ")  # same seed, same text, nobody crashed


def test_api_cancelling_stops_the_pipeline(client):
    job = _text(client, "def ", gen_length=200, steps=200)  # >= 4 s at 0.02 s a frame
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 3 and time.monotonic() < deadline and not job.done():
        time.sleep(0.02)
    assert len(job.outputs()) >= 3 and not job.done()
    assert any(t.name == "mmdlm-pipeline" for t in threading.enumerate())
    job.cancel()  # an API client's cancel, or a closed page
    _join_pipeline_workers()
    assert not job.outputs()[-1][1].startswith("done")
    assert _text(client, "def ").result()[1].startswith("done")  # the pipeline's lock was let go


def _text_group_idle(demo) -> None:
    """Waits until no text run of an earlier test holds a slot or waits (one ending late, e.g. a closed page's,
    would free a slot mid-test and let a waiting run move up)."""
    _join_pipeline_workers()
    line = demo.app._queue.event_queue_per_concurrency_id.get("text")
    deadline = time.monotonic() + 60
    while line is not None and (line.current_concurrency or line.queue) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line is None or not (line.current_concurrency or line.queue)


def _fill_the_text_line(client, demo):
    """Four text runs while the test holds the model (the text group idle before): two take the group's two
    slots (they wait for the model inside their first step), two wait in its line. Returns once exactly that
    holds."""
    jobs = [_text(client, "def ", gen_length=2, steps=2, block_length=2) for _ in range(4)]
    deadline = time.monotonic() + 90
    while (demo_app._waiting(demo.app, "text") != 2 or sum(bool(j.outputs()) for j in jobs) != 2) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert demo_app._waiting(demo.app, "text") == 2
    assert [j.outputs()[0][1] for j in jobs if j.outputs()] == [demo_app.WAITING] * 2
    return jobs


def test_api_runs_cancelled_while_they_wait_for_the_model_let_go_of_it(client, server):
    demo = server[2]
    _text_group_idle(demo)
    _, lock = demo.pipelines.get(demo_app._find("assets/dlm"), "text")
    with lock:  # another run has the text model: two runs wait for it inside their first step, two in the line
        jobs = _fill_the_text_line(client, demo)
        time.sleep(1)  # the two runs settle into their wait (no assertion on time: it only sets the scene)
        cancelling = [threading.Thread(target=job.cancel) for job in jobs]
        for thread in cancelling:  # Gradio closes a run's generator only between two of its updates: the
            thread.start()         # heartbeats while it waits; without them two runs stayed stuck for good
        time.sleep(1)  # the cancels reach the server while the model is still busy
    for thread in cancelling:
        thread.join(timeout=60)
    _join_pipeline_workers()  # the cancelled runs let go of the model ...
    assert _text(client, "def ").result()[1].startswith("done")  # ... which serves the next one


def test_api_image_tabs(client, server, capfd):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    outputs = list(client.submit("", SCENE, 4, 2, "confidence", demo_app.T2I_TEMPERATURE, 0, api_name="/t2i"))
    assert outputs[0][1] == demo_app.WAITING
    assert [o[1].split(" of ")[0] for o in outputs[1:-1]] == ["step 1", "step 2", "step 3", "step 4"]
    with Image.open(outputs[-1][0]) as image:
        assert image.size == (256, 256)  # 32 px, enlarged for the page
        assert S.parse_image(image.resize((32, 32), Image.NEAREST)) == S.parse_caption(SCENE)
    scene = handle_file(str(server[1] / "scene.png"))
    live, status, caption = client.predict("", scene, "", 1, 4, 0, "confidence", 0, 0, api_name="/caption")
    assert caption == SCENE and status.startswith("done (caption)")
    answer = client.predict("", scene, "what colour is the circle ?", 1, 4, 0, "confidence", 0, 0,
                            api_name="/caption")[2]
    assert answer == "what colour is the circle ? red"
    with pytest.raises(AppError, match="draws only shapes captions"):
        client.predict("", "a blue dog", 4, 2, "confidence", 1, 0, api_name="/t2i")
    with pytest.raises(AppError, match="upload an image first"):
        client.predict("", None, "", 1, 4, 0, "confidence", 0, 0, api_name="/caption")
    capfd.readouterr()
    for name, message in (("wide.png", "the image is 1100x1000 pixels; the limit is 1,000,000 pixels"),
                          ("huge.png", "the image has over 2,000,000 pixels; the limit is 1,000,000 pixels"),
                          ("notes.png", "the upload is not an image this demo can read")):
        with pytest.raises(AppError, match=re.escape(message)):  # decoded by the app, not by Gradio
            client.predict("", handle_file(str(server[1] / name)), "", 1, 4, 0, "confidence", 0, 0,
                           api_name="/caption")
    assert "Traceback" not in capfd.readouterr().err  # a message for the visitor, no traceback in the server log
    with open(server[1] / "big.png", "rb") as big:  # the server refuses uploads over max_file_size (20 KB)
        refused = httpx.post(server[0] + "gradio_api/upload", files={"files": big})
    assert refused.status_code == 413 and "maximum allowed size of 20480 bytes" in refused.text


# ---------------------------------------------------------------- the page, in a real browser
@pytest.fixture(scope="module")
def chromium():
    """Fails, loudly, where Chromium or playwright is missing; skips only when told to."""
    if os.environ.get("MMDLM_SKIP_BROWSER") == "1":
        pytest.skip("MMDLM_SKIP_BROWSER=1")
    reason = browser.missing()
    if reason:
        pytest.fail(f"the browser test cannot run: {reason} (set MMDLM_SKIP_BROWSER=1 to skip it knowingly)")


@pytest.fixture(scope="module")
def page(chromium, server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = browser.open_browser(pw, profile)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(server[0], wait_until="networkidle")
        yield page
        context.close()


WATCH = """sel => { window.__seen = new Set(); new MutationObserver(() => {
    const el = document.querySelector(sel); if (el) window.__seen.add(el.innerHTML); })
  .observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true}); }"""


def _set_number(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _above_the_fold(page, elem_id) -> bool:
    """Whether the element is in view at the top of the page (1280x900) without scrolling."""
    page.evaluate("window.scrollTo(0, 0)")
    box = page.locator(f"#{elem_id}").bounding_box()
    return box is not None and box["y"] + box["height"] <= page.viewport_size["height"]


def test_browser_text_tab(page):
    page.get_by_role("tab", name="Text", exact=True).click()
    assert _above_the_fold(page, "text-run")
    assert page.locator("#text-gen-length input[type=number]").get_attribute("max") == "254"  # 256-token context
    page.get_by_text("prompt + generation length: at most 256 tokens").first.wait_for()
    page.locator("#text-prompt textarea").fill("import sys\n\n\ndef ")
    _set_number(page, "text-gen-length", 24)
    _set_number(page, "text-steps", 24)
    page.evaluate(WATCH, "#text-live")
    page.locator("#text-run").click()
    page.wait_for_function("document.querySelector('#text-status').innerText.startsWith('done')")
    result = page.locator("#text-output textarea").input_value()
    assert result.startswith("import sys\n\n\ndef ") and len(result) > len("import sys\n\n\ndef ")
    seen = page.evaluate("[...window.__seen]")
    live_steps = [h for h in seen if 'class="masked"' in h and 'class="new"' in h]
    assert len(live_steps) >= 2  # the page showed the unmasking step by step, masks and new tokens marked
    assert page.locator("#text-live .masked").count() == 0

    _set_number(page, "text-gen-length", 200)  # >= 4 s at 0.02 s a frame: stopped long before the end
    _set_number(page, "text-steps", 200)
    page.locator("#text-run").click()
    step = "+(/^step (\\d+) /.exec(document.querySelector('#text-status').innerText) || [0, 0])[1]"
    page.wait_for_function(f"{step} >= 3")
    page.locator("#text-stop").click()
    page.wait_for_function("document.querySelector('#text-status').innerText.startsWith('stopped at step ')")
    _join_pipeline_workers()  # the run ended: nothing more comes
    stopped = page.locator("#text-status").inner_text()
    assert re.fullmatch(r"stopped at step \d+", stopped) and int(stopped.split()[-1]) >= 3, stopped
    assert page.locator("#text-live .masked").count() > 0  # the view stays at the step where it stopped

    page.locator("#text-prompt textarea").fill("")
    page.locator("#text-run").click()
    page.get_by_text("the prompt is empty; write some text").first.wait_for()


def test_browser_image_tabs(page, server):
    page.get_by_role("tab", name="Text to image").click()
    assert _above_the_fold(page, "t2i-run")
    note = page.locator("#t2i-controls-note")  # the oracle reads no commit rule or temperature: not offered
    assert note.inner_text().strip() == "StepwiseOraclePipeline takes no commit rule or temperature for its images."
    assert not page.locator("#t2i-rule").is_visible() and not page.locator("#t2i-temperature").is_visible()
    page.locator("#t2i-prompt textarea").fill(SCENE)
    page.evaluate(WATCH, "#t2i-image")
    page.locator("#t2i-run").click()
    page.wait_for_function("document.querySelector('#t2i-status').innerText.startsWith('done')")
    assert page.locator("#t2i-image img").count() == 1
    sources = {s for s in page.evaluate("[...window.__seen]") if "<img" in s}
    assert len(sources) >= 3  # intermediate images appeared before the final one
    page.locator("#t2i-prompt textarea").fill("a blue dog")
    page.locator("#t2i-run").click()
    page.get_by_text("draws only shapes captions").first.wait_for()

    box = page.locator("#t2i-checkpoint textarea, #t2i-checkpoint input").first
    box.fill("assets/discrete-shapes")  # the discrete backbone: the rule and the codes' temperature are offered
    box.press("Enter")
    page.locator("#t2i-rule").wait_for(state="visible")
    assert page.locator("#t2i-temperature").is_visible() and "with another commit rule a run goes without " \
                                                             "remasking" in note.inner_text()
    box.fill(str(server[1] / "oracle"))
    box.press("Enter")
    page.locator("#t2i-rule").wait_for(state="hidden")

    page.get_by_role("tab", name="Caption and questions").click()
    assert _above_the_fold(page, "caption-run")
    assert page.locator("#caption-question textarea, #caption-question input").first.get_attribute(
        "placeholder") == demo_app.QUESTION_EXAMPLE
    upload = page.locator("#caption-image input[type=file]")
    upload.set_input_files(str(server[1] / "big.png"))
    page.get_by_text("exceed the maximum allowed size").first.wait_for()  # over max_file_size (20 KB)
    upload.set_input_files(str(server[1] / "notes.png"))  # decoded by the app: a message, not a bare "Error"
    page.get_by_text("the upload is not an image this demo can read").first.wait_for()
    page.locator("#caption-image button[aria-label='Remove Image']").first.click()
    upload.set_input_files(str(server[1] / "huge.png"))
    page.get_by_text("the image has over 2,000,000 pixels; the limit is 1,000,000 pixels").first.wait_for()
    page.locator("#caption-image button[aria-label='Remove Image']").first.click()
    upload.set_input_files(str(server[1] / "scene.png"))
    page.locator("#caption-image img").first.wait_for()
    page.locator("#caption-run").click()
    page.wait_for_function(f"document.querySelector('#caption-output textarea').value === {SCENE!r}")
    examples = page.locator("#caption-examples [data-testid^='dataset-cell-'][data-testid$='-0']")
    assert examples.count() == len(demo_app.CAPTION_SCENES) + 1  # a scene each, then the question
    examples.nth(len(demo_app.CAPTION_SCENES)).click()  # one click: the first scene and a question on it
    page.locator("#caption-run").click()
    page.wait_for_function("document.querySelector('#caption-status').innerText.includes('done (vqa)')")
    assert page.locator("#caption-output textarea").input_value() == SCENE  # the blank filled: "red"


def test_browser_text_and_image_work_wait_in_lines_of_their_own(page, server, client):
    from gradio_client.exceptions import ValidationError

    demo = server[2]
    _text_group_idle(demo)
    _, lock = demo.pipelines.get(demo_app._find("assets/dlm"), "text")
    with lock:  # the text model is busy: two runs take the text group's two slots, two more wait in its line
        jobs = _fill_the_text_line(client, demo)
        page.get_by_role("tab", name="Text", exact=True).click()
        page.locator("#text-prompt textarea").fill("def ")
        page.locator("#text-run").click()  # the page's request is turned away, with the reason
        full = "the text queue is full (2 requests waiting); try again in a minute"
        page.get_by_text(full).first.wait_for()
        with pytest.raises(ValidationError, match=re.escape(full)):  # the API alike
            _text(client, "def ").result()
        page.get_by_role("tab", name="Text to image").click()
        page.locator("#t2i-prompt textarea").fill(SCENE)
        page.locator("#t2i-run").click()  # image work has its own line and slots: it runs
        page.wait_for_function("document.querySelector('#t2i-status').innerText.startsWith('done')")
    assert all(job.result()[1].startswith("done") for job in jobs)  # and the text line is served in turn
