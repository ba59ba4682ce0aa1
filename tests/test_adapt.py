import json

import pytest
import torch
from conftest import tiny_causal_lm

from mmdlm.diffusion import get_schedule, masked_diffusion_loss
from mmdlm.text.adapt import DiffusionConfig, DiffusionLM, add_mask_token, load_dlm


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_mask_row_is_mean_of_embeddings(family, tokenizer):
    model = tiny_causal_lm(family, tokenizer)
    before = model.get_input_embeddings().weight.detach().clone()
    mask_id = add_mask_token(model, tokenizer, "<|mask|>", "mean")
    emb = model.get_input_embeddings().weight
    assert mask_id == before.shape[0] == tokenizer.convert_tokens_to_ids("<|mask|>")
    assert emb.shape[0] == before.shape[0] + 1
    assert torch.allclose(emb[mask_id], before.mean(0), atol=1e-6)
    assert torch.equal(emb[:mask_id], before)
    assert model.get_output_embeddings().weight.shape[0] == emb.shape[0]


def test_mask_row_special_init(tokenizer):
    model = tiny_causal_lm("llama", tokenizer)
    before = model.get_input_embeddings().weight.detach().clone()
    specials = list(tokenizer.all_special_ids)
    mask_id = add_mask_token(model, tokenizer, "<|mask|>", "special")
    assert torch.allclose(model.get_input_embeddings().weight[mask_id], before[specials].mean(0), atol=1e-6)


def test_existing_mask_token_is_reused(tokenizer):
    model = tiny_causal_lm("llama", tokenizer)
    tokenizer.add_special_tokens({"mask_token": "<M>"})
    model.resize_token_embeddings(len(tokenizer))
    n = model.get_input_embeddings().weight.shape[0]
    assert add_mask_token(model, tokenizer) == tokenizer.convert_tokens_to_ids("<M>")
    assert model.get_input_embeddings().weight.shape[0] == n


def test_bad_mask_init(tokenizer):
    with pytest.raises(ValueError, match="mask_init"):
        add_mask_token(tiny_causal_lm("llama", tokenizer), tokenizer, init="zeros")


def test_shift_alignment_matches_hand_computation():
    """Toy case: x0 = [5, 1, 2], only position 2 masked at t = 0.5, vocabulary of 4.

    With shift, the raw logits at position 1 predict token 2; the per-token loss is
    (1/t) * CE(raw[1], x0[2]) divided by the two eligible positions (position 0 is protected).
    """
    raw = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [2.0, 0.0, -1.0, 0.5], [9.0, 9.0, 9.0, 9.0]]])
    x0 = torch.tensor([[3, 1, 2]])
    masked = torch.tensor([[False, False, True]])
    t = torch.tensor([0.5])
    dlm = DiffusionLM.__new__(DiffusionLM)
    torch.nn.Module.__init__(dlm)
    dlm.config = DiffusionConfig(mask_token_id=3, shift=True)
    aligned = dlm.align(raw)
    loss = masked_diffusion_loss(aligned, x0, masked, t, get_schedule("linear"),
                                 eligible=torch.tensor([[False, True, True]]))
    ce = -torch.log_softmax(raw[0, 1], -1)[2]
    assert torch.allclose(loss, ce / 0.5 / 2)


def test_save_load_identical_logits(tmp_path, tokenizer):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("qwen2", tokenizer), tokenizer, attention="block",
                                     block_size=4, shift=True, schedule="cosine")
    dlm.save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    again, tok2 = load_dlm(tmp_path / "dlm")
    assert again.config == dlm.config
    assert (tmp_path / "dlm" / "model.safetensors").exists()
    x = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    x[:, 5] = dlm.mask_token_id
    with torch.no_grad():
        assert torch.equal(dlm.eval().predict(x), again.eval().predict(x))
    assert tok2.mask_token_id == dlm.mask_token_id


def test_foreign_and_corrupt_checkpoints(tmp_path, tokenizer):
    causal = tiny_causal_lm("llama", tokenizer)
    causal.save_pretrained(tmp_path / "causal")
    with pytest.raises(ValueError, match="not a mmdlm diffusion LM checkpoint"):
        DiffusionLM.from_pretrained(tmp_path / "causal")
    with pytest.raises(ValueError, match="not a folder"):
        DiffusionLM.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "causal" / "mmdlm.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        DiffusionLM.from_pretrained(tmp_path / "causal")
    (tmp_path / "causal" / "mmdlm.json").write_text(json.dumps({"format": "something-else", "mask_token_id": 1}))
    with pytest.raises(ValueError, match="format"):
        DiffusionLM.from_pretrained(tmp_path / "causal")
    with pytest.raises(ValueError, match="unknown attention mode"):
        DiffusionConfig(mask_token_id=1, attention="sideways")


def test_sequence_longer_than_context(tokenizer):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    with pytest.raises(ValueError, match="context is 64"):
        dlm(torch.zeros(1, 65, dtype=torch.long))


def test_left_padding_does_not_change_real_tokens(tokenizer):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    x = torch.randint(0, 250, (1, 6), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.full((1, 2), tokenizer.pad_token_id), x], 1)
    pad_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        # with shift, position 0 has no prediction of its own; every real prediction must match
        assert torch.allclose(dlm.predict(x)[:, 1:], dlm.predict(padded, pad_mask)[:, 3:], atol=1e-5)
