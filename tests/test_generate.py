import pytest
import torch

from conftest import tiny_causal_lm
from mmdlm.text.adapt import DiffusionLM
from mmdlm.text.generate import block_ranges, continue_text, denoise, infill_text, parse_infill


def test_block_ranges():
    assert block_ranges(3, 11, 4) == [(3, 7), (7, 11)]
    assert block_ranges(3, 11, 4, align=True) == [(3, 4), (4, 8), (8, 11)]
    assert block_ranges(0, 5, 8) == [(0, 5)]
    with pytest.raises(ValueError):
        block_ranges(0, 4, 0)


@pytest.mark.parametrize("mode", ["bidirectional", "block"])
def test_denoise_fills_only_masks(tokenizer, mode):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer, attention=mode,
                                     block_size=4 if mode == "block" else None)
    m = dlm.mask_token_id
    x = torch.tensor([[5, 6, m, m, 7, m, m, m, m, 8]])
    out = denoise(dlm, x, steps=3, blocks=[(0, 5), (5, 10)])
    assert not (out == m).any()
    keep = x != m
    assert torch.equal(out[keep], x[keep])


def test_commits_follow_the_schedule(tokenizer):
    """One step per token: each step reveals exactly one position."""
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    m = dlm.mask_token_id
    calls = []
    real = dlm.predict

    def spy(x, *a, **k):
        calls.append(int((x == m).sum()))
        return real(x, *a, **k)

    dlm.predict = spy
    denoise(dlm, torch.tensor([[1] + [m] * 6]), steps=6)
    assert calls == [6, 5, 4, 3, 2, 1]


def test_text_helpers(tokenizer):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("gpt2", tokenizer), tokenizer)
    g = torch.Generator().manual_seed(0)
    text = infill_text(dlm, tokenizer, "def f(x):\n    return <|mask:4|>\n", steps=4, generator=g)
    assert text.startswith("def f(x):\n    return ") and text.endswith("\n") and "<|mask" not in text
    assert isinstance(continue_text(dlm, tokenizer, "import", gen_length=6, steps=3), str)
    ids = parse_infill(tokenizer, "a<|mask:2|>b", dlm.mask_token_id)
    assert ids.count(dlm.mask_token_id) == 2
    with pytest.raises(ValueError, match="N >= 1"):
        parse_infill(tokenizer, "a<|mask:0|>", dlm.mask_token_id)
