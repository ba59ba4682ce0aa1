"""Bad input to the multimodal pipelines and to `mmdlm t2i` / `mmdlm caption`: each case ends in one
clear line. CLI cases (argv lists) run `mmdlm.cli.main` in-process: exit 2, one stderr line matching,
no traceback. Python cases (callables of the context) raise a ValueError or FileNotFoundError whose
message matches, on one line. Paths in argv are written as {placeholders} of the context."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from bad_inputs import check
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
)
from discrete_fixtures import tiny_pipeline
from PIL import Image
from test_dual_pipeline import PROMPT, make_pipe

from mmdlm import cli
from mmdlm.data import shapes as S
from mmdlm.data.tokenizer import train_word_tokenizer
from mmdlm.pipelines import DualDiffusionPipeline, UnifiedDiscretePipeline

NAN, INF = float("nan"), float("inf")


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels (what PIL reads on opening) and holds none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def build_context(tmp: Path) -> SimpleNamespace:
    """Tiny saved pipelines of both backbones, an image, a PNG declaring 20000x20000 pixels, and
    output locations that cannot be written."""
    tok = train_word_tokenizer([S.caption(s) for s in S.all_scenes()[:400]] + [PROMPT])
    dual, disc = make_pipe(tok), tiny_pipeline()
    dual.save_pretrained(tmp / "mmdit")
    disc.save_pretrained(tmp / "discrete")
    S.render(S.parse_caption(PROMPT), 16, 0).save(tmp / "image.png")
    (tmp / "huge.png").write_bytes(png_header(20000, 20000))
    (tmp / "file").write_text("not a folder\n")
    (tmp / "t2i-gif-blocked").mkdir()
    (tmp / "t2i-gif-blocked" / "t2i-denoising.gif").mkdir()
    paths = {name: str(tmp / name) for name in ("mmdit", "discrete", "file", "t2i-gif-blocked")}
    paths.update(image=str(tmp / "image.png"), huge=str(tmp / "huge.png"))
    return SimpleNamespace(**paths, tmp=tmp, dual=dual, disc=disc, paths={**paths, "tmp": str(tmp)})


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return build_context(tmp_path_factory.mktemp("bad_mm"))


def _with_scheduler(folder: Path, scheduler, ctx) -> str:
    """A copy of the saved pipeline `folder` whose scheduler folder holds `scheduler`."""
    copy = ctx.tmp / f"{folder.name}-{type(scheduler).__name__}"
    if not copy.exists():
        shutil.copytree(folder, copy)
        shutil.rmtree(copy / "scheduler")
        scheduler.save_pretrained(copy / "scheduler")
        index = json.loads((copy / "model_index.json").read_text())
        index["scheduler"] = [type(scheduler).__module__, type(scheduler).__name__]
        (copy / "model_index.json").write_text(json.dumps(index))
    return str(copy)


def nan_image(n=1):
    return torch.full((n, 3, 16, 16), NAN)


def dual_scheduler_copy(scheduler):
    return lambda c: DualDiffusionPipeline.from_pretrained(_with_scheduler(c.tmp / "mmdit", scheduler, c))


def assign(pipe_name, attr, value):
    return lambda c: setattr(getattr(c, pipe_name), attr, value)


CASES = [
    # 1. non-finite images and sampling options
    pytest.param(lambda c: c.dual(image=nan_image(), num_inference_steps=2), r"image tensor .*(NaN|finite)",
                 id="dual-caption-nan-image"),
    pytest.param(lambda c: c.disc(image=nan_image(), num_inference_steps=2), r"image tensor .*(NaN|finite)",
                 id="discrete-caption-nan-image"),
    pytest.param(lambda c: c.disc(image=torch.zeros(1, 3, 16, 16), mask_image=nan_image(), num_inference_steps=2),
                 r"image tensor .*(NaN|finite)", id="discrete-inpaint-nan-mask"),
    pytest.param(lambda c: c.dual(image=np.full((16, 16, 3), NAN, np.float32), num_inference_steps=2),
                 r"(NaN|finite)", id="dual-caption-nan-array"),
    pytest.param(lambda c: c.dual(PROMPT, guidance_scale=NAN, num_inference_steps=2),
                 r"guidance_scale must be a finite number >= 0, got nan", id="dual-guidance-nan"),
    pytest.param(lambda c: c.dual(PROMPT, guidance_scale=INF, num_inference_steps=2),
                 r"guidance_scale must be a finite number >= 0, got inf", id="dual-guidance-inf"),
    pytest.param(lambda c: c.dual(image=torch.zeros(1, 3, 16, 16), text_guidance_scale=NAN, num_inference_steps=2),
                 r"text_guidance_scale must be a finite number >= 0, got nan", id="dual-text-guidance-nan"),
    pytest.param(lambda c: c.dual(image=torch.zeros(1, 3, 16, 16), temperature=NAN, num_inference_steps=2),
                 r"temperature must be a finite number >= 0, got nan", id="dual-temperature-nan"),
    pytest.param(lambda c: c.dual(image=torch.zeros(1, 3, 16, 16), temperature=-1.0, num_inference_steps=2),
                 r"temperature must be a finite number >= 0, got -1", id="dual-temperature-negative"),
    pytest.param(lambda c: c.dual(PROMPT, guidance_scale="2", num_inference_steps=2),
                 r"guidance_scale must be a finite number >= 0, got '2'", id="dual-guidance-string"),
    pytest.param(lambda c: c.disc(PROMPT, guidance_scale=NAN, num_inference_steps=2),
                 r"guidance_scale must be a finite number >= 0, got nan", id="discrete-guidance-nan"),
    pytest.param(lambda c: c.disc(image=torch.zeros(1, 3, 16, 16), text_guidance_scale=INF, num_inference_steps=2),
                 r"text_guidance_scale must be a finite number >= 0, got inf", id="discrete-text-guidance-inf"),
    pytest.param(lambda c: c.disc(PROMPT, image_temperature=NAN, num_inference_steps=2),
                 r"image_temperature must be a finite number >= 0, got nan", id="discrete-image-temperature-nan"),
    pytest.param(lambda c: c.disc(PROMPT, image_temperature=-0.5, num_inference_steps=2),
                 r"image_temperature must be a finite number >= 0, got -0.5", id="discrete-image-temperature-neg"),
    pytest.param(lambda c: c.disc(image=torch.zeros(1, 3, 16, 16), temperature=INF, num_inference_steps=2),
                 r"temperature must be a finite number >= 0, got inf", id="discrete-temperature-inf"),
    pytest.param(lambda c: c.disc(PROMPT, alg_temp=NAN, num_inference_steps=2),
                 r"alg_temp must be a finite number >= 0, got nan", id="discrete-alg-temp-nan"),
    pytest.param(["t2i", PROMPT, "--model", "{mmdit}", "--guidance-scale", "nan", "--n", "1", "--steps", "2",
                  "--output-dir", "{tmp}/t2i-nan"], r"guidance_scale must be a finite number >= 0, got nan",
                 id="cli-t2i-mmdit-guidance-nan"),
    pytest.param(["t2i", PROMPT, "--model", "{discrete}", "--guidance-scale", "nan", "--n", "1", "--steps", "2",
                  "--output-dir", "{tmp}/t2i-nan"], r"guidance_scale must be a finite number >= 0, got nan",
                 id="cli-t2i-discrete-guidance-nan"),
    pytest.param(["t2i", PROMPT, "--model", "{mmdit}", "--guidance-scale", "-1", "--n", "1", "--steps", "2",
                  "--output-dir", "{tmp}/t2i-nan"], r"guidance_scale must be a finite number >= 0, got -1",
                 id="cli-t2i-guidance-negative"),
    pytest.param(["caption", "{image}", "--model", "{mmdit}", "--temperature", "nan", "--steps", "2"],
                 r"temperature must be a finite number >= 0, got nan", id="cli-caption-temperature-nan"),
    pytest.param(["caption", "{image}", "--model", "{discrete}", "--text-guidance-scale", "inf", "--steps", "2"],
                 r"text_guidance_scale must be a finite number >= 0, got inf", id="cli-caption-text-guidance-inf"),
    # 2. schedulers the loops cannot drive
    pytest.param(lambda c: DualDiffusionPipeline(c.dual.transformer, c.dual.tokenizer, DDIMScheduler(),
                                                 c.dual.text_scheduler),
                 r"scheduler must be a FlowMatchEulerDiscreteScheduler .*got DDIMScheduler", id="dual-init-ddim"),
    pytest.param(assign("dual", "scheduler", EulerDiscreteScheduler()),
                 r"scheduler must be a FlowMatchEulerDiscreteScheduler .*got EulerDiscreteScheduler",
                 id="dual-assign-euler"),
    pytest.param(dual_scheduler_copy(FlowMatchHeunDiscreteScheduler()),
                 r"scheduler must be a FlowMatchEulerDiscreteScheduler .*got FlowMatchHeunDiscreteScheduler",
                 id="dual-from-pretrained-heun"),
    pytest.param(lambda c: DualDiffusionPipeline.from_pretrained(c.paths["mmdit"], scheduler=DDIMScheduler()),
                 r"scheduler must be a FlowMatchEulerDiscreteScheduler .*got DDIMScheduler",
                 id="dual-from-pretrained-kwarg-ddim"),
    pytest.param(assign("dual", "scheduler", FlowMatchEulerDiscreteScheduler(invert_sigmas=True)),
                 r"invert_sigmas", id="dual-assign-inverted-sigmas"),
    pytest.param(assign("dual", "text_scheduler", FlowMatchEulerDiscreteScheduler()),
                 r"text_scheduler must be a MaskedDiffusionScheduler, got FlowMatchEulerDiscreteScheduler",
                 id="dual-assign-text-scheduler"),
    pytest.param(assign("disc", "scheduler", FlowMatchEulerDiscreteScheduler()),
                 r"scheduler must be a MaskedDiffusionScheduler, got FlowMatchEulerDiscreteScheduler",
                 id="discrete-assign-flow"),
    pytest.param(lambda c: UnifiedDiscretePipeline.from_pretrained(
        _with_scheduler(c.tmp / "discrete", FlowMatchEulerDiscreteScheduler(), c)),
        r"scheduler must be a MaskedDiffusionScheduler, got FlowMatchEulerDiscreteScheduler",
        id="discrete-from-pretrained-flow"),
    # 3. images too large or in shapes the pipelines do not take
    pytest.param(["caption", "{huge}", "--model", "{mmdit}", "--steps", "2"],
                 r"huge.png is too large to decode safely", id="cli-caption-decompression-bomb"),
    pytest.param(lambda c: c.dual(image=_lazy_huge(c), num_inference_steps=2),
                 r"image 0 is too large to decode safely: 20000x20000", id="dual-caption-huge-image"),
    pytest.param(lambda c: c.dual(image=np.full((16, 16, 3), 1.5, np.float32), num_inference_steps=2),
                 r"float .*\[0, 1\]", id="dual-caption-float-array-out-of-range"),
    pytest.param(lambda c: c.disc(image=np.zeros((2, 3, 16, 16), np.uint8), num_inference_steps=2),
                 r"channels last.*got shape \(2, 3, 16, 16\)", id="discrete-caption-channels-first-array"),
    pytest.param(lambda c: c.disc(image=np.zeros((16, 16, 3), np.int64), num_inference_steps=2),
                 r"uint8 .*or float", id="discrete-caption-int64-array"),
    # 4. output locations that cannot take the result: refused before generating
    pytest.param(["t2i", PROMPT, "--model", "{mmdit}", "--n", "1", "--steps", "2", "--output-dir", "{file}"],
                 r"--output-dir .*is a file", id="cli-t2i-output-dir-is-a-file"),
    pytest.param(["t2i", PROMPT, "--model", "{mmdit}", "--n", "1", "--steps", "2", "--output-dir", "{file}/sub"],
                 r"--output-dir .*is a file", id="cli-t2i-output-dir-inside-a-file"),
    pytest.param(["t2i", PROMPT, "--model", "{mmdit}", "--n", "1", "--steps", "2", "--output-dir",
                  "{t2i-gif-blocked}"], r"t2i-denoising.gif is a folder", id="cli-t2i-gif-path-blocked"),
    pytest.param(["caption", "{image}", "--model", "{mmdit}", "--steps", "2", "--output", "{tmp}"],
                 r"--output .*is a folder", id="cli-caption-output-is-a-folder"),
    pytest.param(["caption", "{image}", "--model", "{mmdit}", "--steps", "2", "--output", "{file}/c.json"],
                 r"--output .*is a file", id="cli-caption-output-inside-a-file"),
    # 5. devices and precision (issue 25)
    pytest.param(["t2i", PROMPT, "--model", "{mmdit}", "--n", "1", "--steps", "2", "--output-dir", "{tmp}/t2i-dev",
                  "--device", "gpu0"], r"unknown device 'gpu0'", id="cli-t2i-device-unknown"),
    pytest.param(["caption", "{image}", "--model", "{mmdit}", "--steps", "2", "--dtype", "float8"],
                 r"unknown dtype 'float8'", id="cli-caption-dtype-unknown"),
    pytest.param(["eval-mm", "--model", "{mmdit}", "--n", "1", "--dtype", "float8"], r"unknown dtype 'float8'",
                 id="cli-eval-mm-dtype-unknown"),
]


def _lazy_huge(c):
    """The 20000x20000 PNG opened with PIL's guard lifted (as a user may have done)."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        return Image.open(c.paths["huge"])
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `mmdlm.cli.main(argv)` run in-process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("case, message", CASES)
def test_bad_input_mm(ctx, case, message, capsys):
    check(case, message, ctx, capsys)


def test_caption_output_in_a_read_only_folder(ctx, monkeypatch):
    locked = ctx.tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: report the folder as a non-root user would see it
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and Path(p) != locked)
    try:
        code, err = run_cli(["caption", ctx.paths["image"], "--model", ctx.paths["mmdit"], "--steps", "2",
                             "--output", str(locked / "c.json")])
    finally:
        locked.chmod(0o700)
    assert code == 2 and "Traceback" not in err, err
    assert err.strip() == f"mmdlm caption: error: --output {locked / 'c.json'}: cannot write in {locked} " \
                          "(permission denied)"
    assert not list(locked.iterdir())


@pytest.mark.parametrize("backbone", ["dual", "disc"])
def test_numpy_batches_are_accepted_by_both_pipelines(ctx, backbone):
    """A (B, H, W, 3) uint8 batch, or floats in [0, 1], as diffusers' image processors take them:
    the same captions as the PIL images."""
    pipe = getattr(ctx, backbone)
    images = [S.render(S.parse_caption(PROMPT), 16, seed) for seed in (0, 1)]
    batch = np.stack([np.asarray(im) for im in images])

    def texts(image):
        return pipe(image=image, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).texts

    expected = texts(images)
    assert len(expected) == 2
    assert texts(batch) == expected and texts(batch / 255) == expected and texts(list(batch)) == expected
