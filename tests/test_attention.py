import pytest
import torch
from conftest import FAMILIES, tiny_causal_lm

from mmdlm.text import attention as attn
from mmdlm.text.adapt import DiffusionLM


def test_block_causal_visibility():
    m = attn.block_causal(8, 3)  # blocks [0,1,2] [3,4,5] [6,7]
    block = torch.arange(8) // 3
    for q in range(8):
        for k in range(8):
            assert m[q, k] == (block[k] <= block[q])
    assert m[1, 2] and not m[2, 3]  # inside a block both ways, never into a later block


def test_context_causal_sees_only_clean_past():
    L, bs = 6, 2
    m = attn.context_causal(L, bs)
    assert m.shape == (2 * L, 2 * L)
    xt_xt, xt_x0 = m[:L, :L], m[:L, L:]
    x0_xt, x0_x0 = m[L:, :L], m[L:, L:]
    block = torch.arange(L) // bs
    assert torch.equal(xt_xt, block[:, None] == block[None, :])
    assert torch.equal(xt_x0, block[:, None] > block[None, :])
    assert not x0_xt.any()
    assert torch.equal(x0_x0, attn.block_causal(L, bs))


def test_annealed_ratio_statistics():
    L = 200
    g = torch.Generator().manual_seed(0)
    upper = torch.ones(L, L, dtype=torch.bool).triu(1)
    for ratio in (0.0, 0.3, 0.8, 1.0):
        m = attn.annealed(L, ratio, generator=g)
        assert m[~upper].all()  # the causal part is always open
        assert abs(m[upper].float().mean().item() - ratio) < 0.02
    with pytest.raises(ValueError):
        attn.annealed(4, 1.5)


def test_additive_mask_and_padding():
    mask = attn.to_additive(attn.causal(3), torch.tensor([[0, 1, 1]]))
    assert mask.shape == (1, 1, 3, 3) and mask.dtype == torch.float32
    assert mask[0, 0, 2, 0] == torch.finfo(torch.float32).min  # padded key
    assert mask[0, 0, 2, 1] == 0 and mask[0, 0, 1, 2] != 0
    with pytest.raises(ValueError, match="attention_mask"):
        attn.to_additive(attn.causal(3), torch.ones(1, 4))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_modes_change_what_earlier_positions_see(family, impl, tokenizer):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm(family, tokenizer, impl), tokenizer, shift=False)
    ids = torch.randint(0, 250, (1, 8), generator=torch.Generator().manual_seed(1))
    later = ids.clone()
    later[0, -1] = (ids[0, -1] + 1) % 250
    with torch.no_grad():
        def first_logits(x, pattern):
            return dlm(x, pattern=pattern).logits[0, 0]
        assert not torch.allclose(first_logits(ids, attn.bidirectional(8)), first_logits(later, attn.bidirectional(8)))
        assert torch.allclose(first_logits(ids, attn.causal(8)), first_logits(later, attn.causal(8)))
        # block-causal: position 5 (block 1 of size 4) sees 7 (same block), position 3 (block 0) does not
        bc = attn.block_causal(8, 4)
        out, out2 = dlm(ids, pattern=bc).logits[0], dlm(later, pattern=bc).logits[0]
        assert torch.allclose(out[:4], out2[:4]) and not torch.allclose(out[4], out2[4])
        # causal mask through our 4D path equals the model's own causal attention
        own = dlm.model(input_ids=ids).logits
        assert torch.allclose(dlm(ids, pattern=attn.causal(8)).logits, own, atol=1e-5)


def test_model_that_ignores_masks_is_named(tokenizer):
    from transformers import LlamaForCausalLM

    class MaskBlindLM(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            return super().forward(input_ids=input_ids, **kwargs)

    base = tiny_causal_lm("llama", tokenizer)
    blind = MaskBlindLM(base.config).eval()
    with pytest.raises(ValueError, match="MaskBlindLM cannot be made bidirectional"):
        DiffusionLM.from_causal_lm(blind, tokenizer)


def test_probe_is_not_fooled_by_dropout(tokenizer):
    """In train mode dropout alone changes the logits: the probe runs in eval mode, then restores the mode."""
    from transformers import GPT2LMHeadModel

    class MaskBlindLM(GPT2LMHeadModel):
        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            return super().forward(input_ids=input_ids, **kwargs)

    config = tiny_causal_lm("gpt2", tokenizer).config
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.5
    blind = MaskBlindLM(config).train()
    with pytest.raises(ValueError, match="MaskBlindLM cannot be made bidirectional"):
        DiffusionLM.from_causal_lm(blind, tokenizer)
    assert blind.training
    seeing = GPT2LMHeadModel(config).train()
    DiffusionLM.from_causal_lm(seeing, tokenizer)
    assert seeing.training


def test_unsupported_attention_implementation(tokenizer):
    model = tiny_causal_lm("llama", tokenizer)
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="sdpa"):
        DiffusionLM.from_causal_lm(model, tokenizer)


def test_flash_attention_takes_only_mask_free_modes(tokenizer):
    """flash_attention_2 takes no 4D mask: a block model is refused before anything runs."""
    model = tiny_causal_lm("llama", tokenizer)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="4D attention mask.*sdpa"):
        DiffusionLM.from_causal_lm(model, tokenizer, attention="block", block_size=4)
