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
