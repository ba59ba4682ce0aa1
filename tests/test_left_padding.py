"""A row of a left-padded batch is decoded exactly as it is alone (batch of one, no padding).

Block-attention models count their block grid from each row's first real token, not from the
padding: the attention pattern is per row and the rows are decoded on their own block grids.
"""
import pytest
import torch
from conftest import tiny_causal_lm

from mmdlm.pipelines import TextDiffusionPipeline
from mmdlm.schedulers import MaskedDiffusionScheduler
from mmdlm.text.adapt import DiffusionLM
from mmdlm.text.generate import CACHES, _Runner

FAMILIES = ["llama", "gpt2", "qwen2", "mistral", "gpt_neox", "stablelm"]
# 2, 4, 5, 9 and 19 tokens with BOS: every padding residue modulo the block size 4
PROMPTS = ["x", "import os", "print(x)", "def add(a, b):", "for i in range(10):\n    print(i)"]


def _block_dlm(family, tokenizer, **kw):
    return DiffusionLM.from_causal_lm(tiny_causal_lm(family, tokenizer), tokenizer, attention="block",
                                      block_size=4, **kw).eval()


def _left_pad(rows, width=None, pad=0):
    width = width or max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_rows_give_the_logits_of_the_row_alone(family, tokenizer):
    dlm = _block_dlm(family, tokenizer)
    rows = [[1, 20, 30, 40, 50, 60, 70, 80, 90], [1, 21, 31], [1, 22, 32, 42, 52], [1, 23, 33, 43, 53, 63, 73]]
    ids, mask = _left_pad(rows)
    with torch.no_grad():
        batch = dlm.predict(ids, mask)
        for i, row in enumerate(rows):
            alone = dlm.predict(torch.tensor([row]))[0]
            # (with shift the first token has no prediction: alone it keeps its own logits)
            assert torch.allclose(batch[i, 1 - len(row):], alone[1:], atol=1e-5), (family, i)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_windows_of_padded_rows_match_the_row_alone(tokenizer, cache):
    """The runner's full pass and its cached window, for rows padded by 1 and 5 (one block grid)."""
    dlm = _block_dlm("llama", tokenizer)
    m = dlm.mask_token_id
    rows = [[1, 20, 30, 40, 50, 60, 70] + [m] * 8, [1, 21, 31] + [m] * 8]
    ids, mask = _left_pad(rows, width=16)
    batch = _Runner(dlm, mask, ids.shape[1], ids.device)
    lo, hi = 9, 13  # row 0 (1 pad): its block [8, 12); row 1 (5 pads): its block [4, 8)
    full_b = batch.full(ids, lo, hi, cache)
    ids2 = ids.clone()
    ids2[:, 10] = 77  # a token committed inside the block
    window_b = batch.window(ids2, lo, hi, cache)
    for i, row in enumerate(rows):
        p = ids.shape[1] - len(row)
        alone = _Runner(dlm, None, len(row), ids.device)
        assert torch.allclose(full_b[i], alone.full(ids[i:i + 1, p:], lo - p, hi - p, cache)[0], atol=1e-5)
        assert torch.allclose(window_b[i], alone.window(ids2[i:i + 1, p:], lo - p, hi - p, cache)[0], atol=1e-5)


def _pipe(dlm, tokenizer):
    pipe = TextDiffusionPipeline(dlm.model, tokenizer, MaskedDiffusionScheduler(), diffusion_config=dlm.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _assert_rows_as_alone(pipe, prompts, **kw):
    batch = pipe(prompts, **kw)
    assert batch.sequences.shape[0] == len(prompts)
    for i, prompt in enumerate(prompts):
        alone = pipe(prompt, **kw)
        n = alone.sequences.shape[1]
        assert batch.sequences[i, -n:].tolist() == alone.sequences[0].tolist(), (prompt, kw)
        assert batch.texts[i] == alone.texts[0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cache", CACHES)
def test_batch_generates_what_each_row_generates_alone(family, cache, tokenizer):
    pipe = _pipe(_block_dlm(family, tokenizer), tokenizer)
    _assert_rows_as_alone(pipe, PROMPTS, gen_length=10, num_inference_steps=10, cache=cache)


@pytest.mark.parametrize("attention", ["block", "bidirectional"])
def test_padded_infill_and_block_length(attention, tokenizer):
    """Placeholders in some prompts, a decoding block length of 3, an infill-only batch."""
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("qwen2", tokenizer), tokenizer, attention=attention,
                                     block_size=4 if attention == "block" else None).eval()
    pipe = _pipe(dlm, tokenizer)
    mixed = PROMPTS[:3] + ["y = <|mask:3|> + 1", "def f(<|mask:2|>):"]
    for cache in CACHES:
        _assert_rows_as_alone(pipe, mixed, gen_length=7, num_inference_steps=9, cache=cache)
        _assert_rows_as_alone(pipe, mixed, gen_length=7, block_length=3, num_inference_steps=9, cache=cache)
        _assert_rows_as_alone(pipe, ["y = <|mask:3|> + 1", "a <|mask:5|>", "import <|mask:1|>, sys"], gen_length=0,
                              num_inference_steps=6, cache=cache)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_padded_batches_decode_alike_with_the_cache_append(family, tokenizer, monkeypatch):
    """Left-padded batches of a block model: the cache append gives the tokens of a full refresh per block
    (on the block grid, and with a decoding block length off it, where it falls back to full passes)."""
    from mmdlm.text.generate import _Runner

    pipe = _pipe(_block_dlm(family, tokenizer), tokenizer)
    for cache in ("prefix", "dual"):
        for block_length in (None, 3):
            kw = dict(gen_length=13, block_length=block_length, num_inference_steps=13, cache=cache)
            appended = pipe(PROMPTS, **kw)
            with monkeypatch.context() as patch:
                patch.setattr(_Runner, "_appendable", lambda self, q0: False)
                refreshed = pipe(PROMPTS, **kw)
            assert appended.sequences.tolist() == refreshed.sequences.tolist(), (cache, block_length)
            assert appended.nfe == refreshed.nfe
