import warnings

import pytest
import torch
from conftest import tiny_causal_lm

from mmdlm.placeholders import mask_spans, parse_infill
from mmdlm.schedulers import MaskedDiffusionScheduler
from mmdlm.text.adapt import DiffusionLM
from mmdlm.text.generate import block_ranges, generate


def _dlm(tokenizer, family="llama", **kw):
    return DiffusionLM.from_causal_lm(tiny_causal_lm(family, tokenizer), tokenizer, **kw).eval()


def test_block_ranges():
    assert block_ranges(3, 11, 4) == [(3, 7), (7, 11)]
    assert block_ranges(3, 11, 4, align=True) == [(3, 4), (4, 8), (8, 11)]
    assert block_ranges(0, 5, 8) == [(0, 5)]
    with pytest.raises(ValueError):
        block_ranges(0, 4, 0)


@pytest.mark.parametrize("mode,remasking", [("bidirectional", False), ("block", False), ("block", True)])
def test_generate_fills_only_masks(tokenizer, mode, remasking):
    dlm = _dlm(tokenizer, attention=mode, block_size=4 if mode == "block" else None)
    m = dlm.mask_token_id
    x = torch.tensor([[5, 6, m, m, 7, m, m, m, m, 8]])
    scheduler = MaskedDiffusionScheduler(remasking=remasking, alg_temp=2.0)  # remasking: confidences carried
    out = generate(dlm, x, scheduler, steps=6, blocks=[(2, 5), (5, 9)],
                   generator=torch.Generator().manual_seed(0)).sequences
    assert not (out == m).any()
    keep = x != m
    assert torch.equal(out[keep], x[keep])


def test_commits_follow_the_schedule(tokenizer):
    """Six steps for six masks: each step reveals exactly one position."""
    dlm = _dlm(tokenizer)
    m = dlm.mask_token_id
    seen = []
    out = generate(dlm, torch.tensor([[1] + [m] * 6]), MaskedDiffusionScheduler(), steps=6,
                   callback=lambda i, t, x: seen.append(int((x == m).sum())))
    assert seen == [5, 4, 3, 2, 1, 0] and out.nfe == 6


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_block_cache_is_exact(tokenizer, family):
    """Block-attention models: cached and uncached decoding give the same tokens."""
    dlm = _dlm(tokenizer, family, attention="block", block_size=4)
    m = dlm.mask_token_id
    x = torch.tensor([[1, 20, 30, 40, 50] + [m] * 11])
    blocks = block_ranges(5, 16, 4, align=True)
    for threshold in (None, 0.001):
        plain = generate(dlm, x, MaskedDiffusionScheduler(threshold=threshold), steps=11, blocks=blocks)
        cached = generate(dlm, x, MaskedDiffusionScheduler(threshold=threshold), steps=11, blocks=blocks,
                          cache="prefix")
        assert torch.equal(plain.sequences, cached.sequences)


def test_cached_logits_match_full_pass(tokenizer):
    """For a block model the window run on the cache reproduces the full pass's logits."""
    from mmdlm.text.generate import _Runner

    dlm = _dlm(tokenizer, attention="block", block_size=4)
    m = dlm.mask_token_id
    x = torch.tensor([[1, 20, 30, 40, 50, 60, m, m, m, m, m, m]])
    runner = _Runner(dlm, None, x.shape[1], x.device)
    full = runner.full(x, 8, 12, "prefix")
    x2 = x.clone()
    x2[0, 9] = 77  # a committed token inside the block
    window = runner.window(x2, 8, 12, "prefix")
    assert torch.allclose(runner.full(x2, 8, 12, "none"), window, atol=1e-5)
    with torch.no_grad():  # and both equal a plain pass over the whole sequence
        assert torch.allclose(dlm.predict(x2)[0, 8:12], window, atol=1e-5)
    assert full.shape == window.shape


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_approximate_caches_run(tokenizer, cache):
    dlm = _dlm(tokenizer)
    m = dlm.mask_token_id
    x = torch.tensor([[1, 20, 30] + [m] * 8])
    out = generate(dlm, x, MaskedDiffusionScheduler(), steps=8, blocks=block_ranges(3, 11, 4), cache=cache)
    assert not (out.sequences == m).any() and out.nfe == 8


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["bidirectional", "block"])
def test_caches_use_the_installed_transformers_names(tokenizer, family, mode):
    """The cache goes to the model under the name the installed transformers takes: no deprecation warnings
    (a deprecated name is removed in a later version)."""
    dlm = _dlm(tokenizer, family, attention=mode, block_size=4 if mode == "block" else None)
    m = dlm.mask_token_id
    x = torch.tensor([[1, 20, 30] + [m] * 8])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        for cache in ("prefix", "dual"):  # full passes, windows, appends (exact or to a stale cache)
            out = generate(dlm, x, MaskedDiffusionScheduler(), steps=8, blocks=block_ranges(3, 11, 4), cache=cache,
                           refresh_every=2)
            assert not (out.sequences == m).any()


def test_forward_takes_either_cache_name(tokenizer):
    """`cache` or the older `past_key_values`: the same logits, passed on under the installed name (no warning)."""
    dlm = _dlm(tokenizer)
    x = torch.tensor([[1, 20, 30, 40, 50, 60]])
    logits = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for name in ("cache", "past_key_values"):
            past = dlm.cache_of(dlm(x[:, :4], use_cache=True))
            logits.append(dlm(x[:, 4:], pattern=dlm.pattern(6)[4:], position_ids=torch.tensor([[4, 5]]),
                              use_cache=True, **{name: past}).logits)
    assert torch.allclose(logits[0], logits[1])
    assert torch.allclose(logits[0], dlm(x).logits[:, 4:], atol=1e-5)  # the cached keys were used


def test_threshold_commits_many_per_step(tokenizer):
    dlm = _dlm(tokenizer)
    m = dlm.mask_token_id
    x = torch.tensor([[1] + [m] * 8])
    loose = generate(dlm, x, MaskedDiffusionScheduler(threshold=1e-6), steps=8)
    strict = generate(dlm, x, MaskedDiffusionScheduler(threshold=1.0), steps=8)
    assert loose.nfe == 1 and strict.nfe == 8  # everything at once vs. the one-per-step floor


def test_guidance_and_eos_stop(tokenizer):
    dlm = _dlm(tokenizer)
    m = dlm.mask_token_id
    x = torch.tensor([[1, 20, 30] + [m] * 8])
    prompt = torch.tensor([[False, True, True] + [False] * 8])
    out = generate(dlm, x, MaskedDiffusionScheduler(), steps=4, guidance_scale=1.0, prompt_mask=prompt)
    assert out.nfe == 8 and not (out.sequences == m).any()
    with pytest.raises(ValueError, match="without a cache"):
        generate(dlm, x, MaskedDiffusionScheduler(), steps=4, guidance_scale=1.0, prompt_mask=prompt, cache="prefix")
    # force EOS everywhere: the loop stops after the first block and pads the rest with EOS
    eos = tokenizer.eos_token_id

    def favour_eos(module, inputs, logits):
        logits[..., eos] += 100.0
        return logits

    dlm.model.lm_head.register_forward_hook(favour_eos)
    out = generate(dlm, x, MaskedDiffusionScheduler(), steps=8, blocks=block_ranges(3, 11, 4),
                   eos_token_id=eos, stop_at_eos=True)
    assert out.nfe == 4 and (out.sequences[0, 3:] == eos).all()


def test_placeholders(tokenizer):
    dlm = _dlm(tokenizer, "gpt2")
    ids = parse_infill(tokenizer, "a<|mask:2|>b", dlm.mask_token_id)
    assert ids.count(dlm.mask_token_id) == 2
    with pytest.raises(ValueError, match="N >= 1"):
        parse_infill(tokenizer, "a<|mask:0|>", dlm.mask_token_id)
    with pytest.raises(ValueError, match="no mask token"):
        parse_infill(tokenizer, "a<|mask:2|>", None)


def test_mask_spans(tokenizer):
    text = "def add(a, b):\n    return a + b\n"
    assert mask_spans(text, [(4, 7, 2)]) == "def <|mask:2|>(a, b):\n    return a + b\n"
    counted = mask_spans(text, [(4, 7), (26, 31)], tokenizer)
    n = len(tokenizer("add", add_special_tokens=False)["input_ids"])
    assert counted.startswith(f"def <|mask:{n}|>(a, b)") and counted.endswith("|>\n")
    with pytest.raises(ValueError, match="overlaps"):
        mask_spans(text, [(0, 5, 1), (3, 6, 1)])
    with pytest.raises(ValueError, match="outside"):
        mask_spans(text, [(0, 500, 1)])
    with pytest.raises(ValueError, match="tokenizer"):
        mask_spans(text, [(0, 3)])


def _full_refresh_only(monkeypatch):
    """The sampler as it was before the append: every block starts with a full pass."""
    from mmdlm.text.generate import _Runner

    monkeypatch.setattr(_Runner, "_appendable", lambda self, q0: False)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("shift", [True, False])
def test_block_cache_append_gives_the_tokens_of_a_full_refresh(tokenizer, family, shift, monkeypatch):
    """A block model's cache grows by appending each finished block (one full pass in all) and decodes
    the same tokens, with the same forward count, as a full pass at every block start."""
    from mmdlm.text.generate import _Runner

    dlm = _dlm(tokenizer, family, attention="block", block_size=4, shift=shift)
    m = dlm.mask_token_id
    x = torch.tensor([[1, 20, 30, 40, 50] + [m] * 19])
    blocks = block_ranges(5, 24, 4, align=True)
    full_passes = []
    monkeypatch.setattr(_Runner, "full", lambda self, *a, _f=_Runner.full: full_passes.append(1) or _f(self, *a))
    for cache in ("prefix", "dual"):
        for threshold in (None, 0.001):
            kw = dict(steps=19, blocks=blocks, cache=cache)
            full_passes.clear()
            appended = generate(dlm, x, MaskedDiffusionScheduler(threshold=threshold), **kw)
            # the first block's pass; without shift the block after it too (the first block starts off the grid, so
            # the prompt's last block, held, sees it); every later block appends
            assert len(full_passes) == 1 + (not shift)
            with monkeypatch.context() as patch:
                _full_refresh_only(patch)
                refreshed = generate(dlm, x, MaskedDiffusionScheduler(threshold=threshold), **kw)
            assert len(full_passes) == 1 + (not shift) + len(blocks)
            assert torch.equal(appended.sequences, refreshed.sequences) and appended.nfe == refreshed.nfe


def test_block_cache_append_logits_match_a_full_pass(tokenizer):
    """The append run (the finished block and the new one on the old cache) gives the full pass's logits
    and leaves the cache a full pass would keep."""
    from mmdlm.text.generate import _Runner

    dlm = _dlm(tokenizer, attention="block", block_size=4)
    m = dlm.mask_token_id
    x = torch.tensor([[1, 20, 30, 40, 50, 60, m, m, m, m, m, m, m, m, m, m]])
    runner = _Runner(dlm, None, x.shape[1], x.device)
    runner.full(x, 8, 12, "prefix")
    x2 = x.clone()
    x2[0, 8:12] = torch.tensor([70, 71, 72, 73])  # the block [8, 12) finished
    appended = runner.refresh(x2, 12, 16, "prefix")
    fresh = _Runner(dlm, None, x.shape[1], x.device)
    assert torch.allclose(appended, fresh.full(x2, 12, 16, "prefix"), atol=1e-5)
    assert runner.cached.tolist() == fresh.cached.tolist() == list(range(11))
    for mine, theirs in zip(runner.cache.layers, fresh.cache.layers):
        assert torch.allclose(mine.keys, theirs.keys, atol=1e-5) and torch.allclose(mine.values, theirs.values,
                                                                                    atol=1e-5)


def test_no_append_where_the_cache_would_go_stale(tokenizer):
    """Bidirectional models, and block models decoded off their block grid, refresh by a full pass."""
    from mmdlm.text.generate import _Runner

    m = _dlm(tokenizer).mask_token_id
    x = torch.tensor([[1, 20, 30, 40, 50, 60] + [m] * 10])
    for attention, lo, hi in (("bidirectional", 8, 12), ("block", 7, 10)):
        dlm = _dlm(tokenizer, attention=attention, block_size=4 if attention == "block" else None)
        runner = _Runner(dlm, None, x.shape[1], x.device)
        runner.full(x, lo, hi, "prefix")  # block: holds [0, 6); 4 and 5 see 7 (block [4, 8)), decoded
        assert not runner._appendable(hi + 3)
    dlm = _dlm(tokenizer, attention="block", block_size=4)
    runner = _Runner(dlm, None, x.shape[1], x.device)
    runner.full(x, 9, 13, "prefix")  # holds [0, 8): two whole blocks
    assert runner._appendable(11) and not runner._appendable(7)
    runner = _Runner(_dlm(tokenizer, attention="block", block_size=4, shift=False), None, x.shape[1], x.device)
    runner.full(x, 7, 10, "prefix")  # without shift: holds [0, 7), and 4..6 see 7
    assert not runner._appendable(10)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("padded", [False, True])
def test_stale_append_on_an_unchanged_sequence_matches_a_full_pass(tokenizer, cache, padded):
    """A bidirectional cache appended without a full pass: when the tokens did not change since the last
    full pass (nothing is stale), its logits, the cache it keeps and the window steps after it equal a full
    pass's; so the bookkeeping (which positions, in which order, at which positions ids) is right."""
    from mmdlm.text.generate import _Runner

    dlm = _dlm(tokenizer)
    m = dlm.mask_token_id
    x = torch.tensor([[0, 0, 1, 20, 30, 40, 50, 60] + [m] * 12, [1, 21, 31, 41, 51, 61, 71, 81] + [m] * 12])
    mask = (x != 0).long() if padded else None
    x = x if padded else x[1:]
    runner = _Runner(dlm, mask, x.shape[1], x.device, refresh_every=3)
    runner.full(x, 8, 12, cache)
    appended = runner.refresh(x, 12, 16, cache)  # second block of three: appended, not refreshed
    assert runner.stale_blocks == 1
    fresh = _Runner(dlm, mask, x.shape[1], x.device)
    assert torch.allclose(appended, fresh.full(x, 12, 16, cache), atol=1e-5)
    assert runner.cached.tolist() == fresh.cached.tolist()
    for mine, theirs in zip(runner.cache.layers, fresh.cache.layers):
        assert torch.allclose(mine.keys, theirs.keys, atol=1e-5) and torch.allclose(mine.values, theirs.values,
                                                                                    atol=1e-5)
    x2 = x.clone()
    x2[:, 13] = 77
    assert torch.allclose(runner.window(x2, 12, 16, cache), fresh.window(x2, 12, 16, cache), atol=1e-5)
    appended = runner.refresh(x, 16, 20, cache)  # the third block: appended again
    assert torch.allclose(appended, _Runner(dlm, mask, x.shape[1], x.device).full(x, 16, 20, cache), atol=1e-5)
    runner.refresh(x, 16, 20, cache)
    assert runner.stale_blocks == 0  # the fourth start: a full pass


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_refresh_every_counts_full_passes(tokenizer, cache, monkeypatch):
    """A full pass every `refresh_every` blocks; 1 is Fast-dLLM's (every block), the default."""
    from mmdlm.text.generate import _Runner

    dlm = _dlm(tokenizer)
    m = dlm.mask_token_id
    x = torch.tensor([[1, 20, 30] + [m] * 16])
    blocks = block_ranges(3, 19, 4)
    full_passes = []
    monkeypatch.setattr(_Runner, "full", lambda self, *a, _f=_Runner.full: full_passes.append(1) or _f(self, *a))
    outs = {}
    for every, passes in ((1, 4), (2, 2), (3, 2), (4, 1), (100, 1)):
        full_passes.clear()
        outs[every] = generate(dlm, x, MaskedDiffusionScheduler(), steps=16, blocks=blocks, cache=cache,
                               refresh_every=every)
        assert len(full_passes) == passes and outs[every].nfe == 16
        assert not (outs[every].sequences == m).any()
    assert torch.equal(outs[1].sequences, generate(dlm, x, MaskedDiffusionScheduler(), steps=16, blocks=blocks,
                                                   cache=cache).sequences)
    with pytest.raises(ValueError, match="refresh_every must be >= 1"):
        generate(dlm, x, MaskedDiffusionScheduler(), steps=16, blocks=blocks, cache=cache, refresh_every=0)
