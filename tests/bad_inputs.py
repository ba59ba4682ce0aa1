"""The bad-input catalogue's machinery, shared by tests/test_bad_inputs.py (text, training, CLI)
and tests/test_bad_inputs_mm.py (multimodal).

A case is `case(target, pattern, id)` (a `pytest.param`). `target` is either an argv list for
`mmdlm.cli.main`, whose strings may name the session's files as `{dlm}`, `{causal}`, ... (the
attributes of a namespace such as `build_paths` returns, filled in with `str.format`), or a
callable of that namespace that calls the Python API. `check` asserts the one-line error: for
argv, exit code 2, stderr a single line matching `pattern` (progress bars aside; library log
lines count) and no traceback; for a callable, a ValueError or FileNotFoundError whose message
is one line matching `pattern`.
"""
from __future__ import annotations

import contextlib
import logging
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mmdlm import cli

ERRORS = (ValueError, FileNotFoundError)


def case(target, pattern: str, id: str, **kwargs):
    """`pytest.param(target, pattern, id=id)`: one line of a catalogue."""
    return pytest.param(target, pattern, id=id, **kwargs)


def check(target, pattern: str, paths, capsys) -> None:
    if callable(target):
        with pytest.raises(ERRORS) as info:
            target(paths)
        message = str(info.value)
        assert "\n" not in message.strip(), f"a multi-line message: {message!r}"
        assert re.search(pattern, message), f"{message!r} does not match {pattern!r}"
        return
    argv = [a.format(**vars(paths)) for a in target]
    capsys.readouterr()
    with _library_logs_to(sys.stderr):
        code = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    lines = [line for line in err.split("\n") if line.strip() and not line.startswith("\r")]  # progress bars aside
    assert code == 2 and len(lines) == 1, f"exit {code}, stderr {err!r}"
    assert re.search(pattern, lines[0]), f"{lines[0]!r} does not match {pattern!r}"


@contextlib.contextmanager
def _library_logs_to(stream):
    """transformers' and datasets' log handlers hold the stderr of their import: point them at
    `stream` (the captured one), so that their warnings count as lines the user sees."""
    handlers = [h for name in ("transformers", "datasets") for h in logging.getLogger(name).handlers
                if isinstance(h, logging.StreamHandler)]
    old = [h.setStream(stream) for h in handlers]
    try:
        yield
    finally:
        for h, s in zip(handlers, old):
            if s is not None:  # None: the handler already wrote to `stream`
                h.setStream(s)


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def truncate(path: Path) -> None:
    """Cut a file in half, as an interrupted download or copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def build_paths(root: Path, tokenizer_factory) -> SimpleNamespace:
    """Tiny checkpoints and files the text cases name (built once per session, in `root`)."""
    import json

    from conftest import TEXT, tiny_causal_lm

    from mmdlm.pipelines import TextDiffusionPipeline
    from mmdlm.text.adapt import DiffusionLM
    from mmdlm.training.lora import LoraArgs, lora_dlm

    p = SimpleNamespace(root=str(root))
    tok = tokenizer_factory()
    causal = root / "causal"
    tiny_causal_lm("gpt2", tok).save_pretrained(causal)
    tok.save_pretrained(causal)
    dlm = root / "dlm"
    DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tok), tok).save_pretrained(dlm, tokenizer=tok)
    # the right kind of files, wrong contents: another architecture's config.json over the weights
    wrong_causal = copy_dir(causal, root / "wrong_causal")
    wrong_dlm = copy_dir(dlm, root / "wrong_dlm")
    gpt2 = json.loads((causal / "config.json").read_text())
    (wrong_dlm / "config.json").write_text(json.dumps({**gpt2, "vocab_size": len(tok) + 1}))
    llama = json.loads((dlm / "config.json").read_text())
    (wrong_causal / "config.json").write_text(json.dumps({**llama, "vocab_size": len(tok)}))
    lora = root / "lora_dlm"  # a LoRA adapter on the DLM
    lora_model = DiffusionLM.from_pretrained(dlm)
    lora_dlm(lora_model, LoraArgs(lora_r=2), base=str(dlm))
    lora_model.save_pretrained(lora, tokenizer=tok)
    resized_dlm = copy_dir(dlm, root / "resized_dlm")  # the vocabulary of config.json is not the weights'
    (resized_dlm / "config.json").write_text(json.dumps({**llama, "vocab_size": llama["vocab_size"] + 5}))
    settings = json.loads((dlm / "mmdlm.json").read_text())
    odd_settings = {}
    for key, value in (("block_size", "4"), ("shift", "yes"), ("eps", float("nan"))):
        folder = odd_settings[key] = copy_dir(dlm, root / f"dlm_{key}")
        (folder / "mmdlm.json").write_text(json.dumps({**settings, key: value}))
    truncated_dlm = copy_dir(dlm, root / "truncated_dlm")
    truncate(truncated_dlm / "model.safetensors")
    truncated_causal = copy_dir(causal, root / "truncated_causal")
    truncate(truncated_causal / "model.safetensors")
    corpus = root / "corpus.txt"
    corpus.write_text("".join(TEXT))
    (root / "binary.txt").write_bytes(bytes(range(256)) * 64)
    (root / "empty.txt").write_text("")
    (root / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    (root / "a_file").write_text("not a folder\n")
    (root / "a_dir").mkdir()
    readonly = root / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    (root / "typo.yaml").write_text("max_step: 3\n")
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": t[:10], "response": t[10:]}) + "\n" for t in TEXT))
    pipe = TextDiffusionPipeline.from_dlm(dlm)
    pipe.set_progress_bar_config(disable=True)
    p.__dict__.update(causal=str(causal), dlm=str(dlm), wrong_causal=str(wrong_causal), wrong_dlm=str(wrong_dlm),
                      resized_dlm=str(resized_dlm), lora_dlm=str(lora),
                      **{f"dlm_{key}": str(folder) for key, folder in odd_settings.items()},
                      truncated_dlm=str(truncated_dlm), truncated_causal=str(truncated_causal), corpus=str(corpus),
                      binary_txt=str(root / "binary.txt"), empty_txt=str(root / "empty.txt"),
                      broken_jsonl=str(root / "broken.jsonl"),
                      a_file=str(root / "a_file"), a_dir=str(root / "a_dir"), readonly=str(readonly),
                      typo_yaml=str(root / "typo.yaml"), sft_data=str(sft), pipe=pipe)
    return p


class _Payload:
    """Unpickling this creates `marker`: code run from a file that should hold data."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant_pickle(path: Path, marker: Path) -> None:
    """Write at `path` what torch.save writes (the format of every pickle in a checkpoint), holding
    an object whose unpickling creates `marker`."""
    import torch

    torch.save(_Payload(marker), path)


def tiny_run(paths, out: Path) -> Path:
    """A finished one-step `mmdlm adapt` run with its checkpoint, in `out`."""
    code = cli.main(["adapt", "--model", paths.causal, "--dataset", "local", "--data-files", paths.corpus,
                     "--output-dir", str(out), "--max-steps", "1", "--batch-size", "2", "--seq-len", "16",
                     "--warmup-steps", "0"])
    assert code == 0
    return out
