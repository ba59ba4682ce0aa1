"""The MM-DiT model: config round-trip, padding, SD3 loading, attention processor."""
import json

import pytest
import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from diffusers.models.attention_processor import JointAttnProcessor2_0

from mmdlm.multimodal.mmdit import DualDiffusionTransformer2DModel, MaskedJointAttnProcessor

TINY = dict(sample_size=8, patch_size=2, in_channels=3, out_channels=3, num_layers=2, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16,
            pos_embed_max_size=8, vocab_size=20, text_length=6, mask_token_id=3)
SD3_TINY = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
                num_attention_heads=2, joint_attention_dim=24, caption_projection_dim=16, pooled_projection_dim=12,
                pos_embed_max_size=8)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return DualDiffusionTransformer2DModel(**{**TINY, **kw}).eval()


def inputs(b=2, length=6, seed=0, channels=3, size=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, channels, size, size, generator=g), torch.randint(0, 20, (b, length), generator=g),
            torch.tensor([700.0, 0.0])[:b], torch.tensor([0.0, 0.5])[:b])


def test_forward_shapes_and_config_round_trip(tmp_path):
    model = tiny()
    x, ids, t, r = inputs()
    out = model(x, ids, t, r)
    assert out.sample.shape == x.shape and out.text_logits.shape == (2, 6, 20)
    assert model.transformer_blocks[-1].context_pre_only is False  # a text stream leaves the last block
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value in TINY.items():
        assert config[key] == value
    again = DualDiffusionTransformer2DModel.from_pretrained(tmp_path)
    out2 = again(x, ids, t, r)
    assert torch.equal(out.sample, out2.sample) and torch.equal(out.text_logits, out2.text_logits)
    assert isinstance(again.attn_processors["transformer_blocks.0.attn.processor"], MaskedJointAttnProcessor)


def test_both_noise_levels_reach_the_outputs():
    model = tiny()
    with torch.no_grad():  # SD3 initialises its final layers to zero-ish: give them weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, ids, t, r = inputs()
    base = model(x, ids, t, r)
    other_image_t = model(x, ids, t + 100, r)
    other_text_t = model(x, ids, t, r + 0.25)
    for out in (other_image_t, other_text_t):
        assert not torch.allclose(base.sample, out.sample) and not torch.allclose(base.text_logits, out.text_logits)


def test_x_prediction_returns_the_velocity_it_implies():
    velocity = tiny()
    sample = tiny(prediction_type="sample")
    sample.load_state_dict(velocity.state_dict())
    x, ids, t, r = inputs()
    t = torch.tensor([700.0, 10.0])  # sigma 0.7, and 0.01 (below min_sigma 0.05)
    raw = velocity(x, ids, t, r)  # the same network: its output is the x_0 estimate of the other
    out = sample(x, ids, t, r)
    sigma = torch.tensor([0.7, 0.05]).view(2, 1, 1, 1)
    assert torch.allclose(out.sample, (x - raw.sample) / sigma, atol=1e-5)
    assert torch.equal(out.text_logits, raw.text_logits)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        tiny(prediction_type="epsilon")


def test_adaln_zero_start_makes_every_block_the_identity():
    model = tiny(prediction_type="sample").zero_init_modulation_()
    x, ids, t, r = inputs()
    out = model(x, ids, t, r)
    text_in = model.context_embedder(model.embed_text(ids))  # what enters the text stream
    assert torch.allclose(out.text_logits, model.text_proj_out(model.text_norm_out(text_in)), atol=1e-6)
    sigma = (t / 1000).clamp_min(0.05).view(2, 1, 1, 1)
    assert torch.allclose(out.sample, x / sigma)  # the image head predicts x_0 = 0


def test_processor_without_mask_is_sd3s():
    model = tiny()
    x, ids, t, r = inputs()
    mine = model(x, ids, t, r)
    model.set_attn_processor(JointAttnProcessor2_0())
    theirs = model(x, ids, t, r)
    assert torch.allclose(mine.sample, theirs.sample, atol=1e-6)
    assert torch.allclose(mine.text_logits, theirs.text_logits, atol=1e-6)


def test_padded_text_changes_nothing_for_the_real_tokens():
    model = tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, ids, t, r = inputs(length=4)
    short = model(x, ids, t, r)
    for pad in (0, 7, 13):
        padded_ids = torch.cat([ids, torch.full((2, 2), pad)], 1)
        mask = torch.tensor([[True] * 4 + [False] * 2] * 2)
        padded = model(x, padded_ids, t, r, text_attention_mask=mask)
        assert torch.allclose(short.sample, padded.sample, atol=1e-5)
        assert torch.allclose(short.text_logits, padded.text_logits[:, :4], atol=1e-5)
    unmasked = model(x, padded_ids, t, r)  # without the mask the padding is attended to
    assert not torch.allclose(short.sample, unmasked.sample, atol=1e-4)
    with pytest.raises(ValueError, match="attention_mask must be"):
        model(x, padded_ids, t, r, text_attention_mask=mask[:, :5])
    with pytest.raises(ValueError, match="attention_mask must be"):  # the processor checks its own input too
        model.transformer_blocks[0].attn(x.new_zeros(2, 16, 16), x.new_zeros(2, 6, 16), attention_mask=mask[:, :5])


def test_bad_text_inputs():
    model = tiny()
    x, ids, t, r = inputs()
    with pytest.raises(ValueError, match="7 tokens but the model's text length is 6"):
        model(x, torch.zeros(2, 7, dtype=torch.long), t, r)
    with pytest.raises(ValueError, match=r"text ids must lie in \[0, 20\)"):
        model(x, ids + 20, t, r)
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        model(x, ids[:1], t, r)
    with pytest.raises(ValueError, match="caption_projection_dim"):
        DualDiffusionTransformer2DModel(**{**TINY, "caption_projection_dim": 8})
    with pytest.raises(ValueError, match="pos_embed_max_size"):
        DualDiffusionTransformer2DModel(**{**TINY, "sample_size": 32})


def test_from_sd3_loads_everything_sd3_has_and_names_the_new_parts(tmp_path, caplog):
    torch.manual_seed(1)
    sd3 = SD3Transformer2DModel(**SD3_TINY).eval()
    with torch.no_grad():
        for p in sd3.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sd3.save_pretrained(tmp_path / "sd3")
    with caplog.at_level("WARNING"):
        model, info = DualDiffusionTransformer2DModel.from_pretrained(
            tmp_path / "sd3", vocab_size=11, text_length=5, mask_token_id=3, output_loading_info=True)
    assert "initialised fresh" in caplog.text and "text_embedding.weight" in caplog.text
    assert model.config.joint_attention_dim == 24 and model.config.vocab_size == 11
    last = "transformer_blocks.1."
    assert set(info["fresh"]) == {
        "text_embedding.weight", "text_position_embedding.weight", "text_norm_out.weight", "text_norm_out.bias",
        "text_pooled_projection.weight", "text_pooled_projection.bias",
        "text_proj_out.weight", "text_proj_out.bias", last + "attn.to_add_out.weight", last + "attn.to_add_out.bias",
        *(last + f"ff_context.net.{i}.proj.{w}" for i in (0,) for w in ("weight", "bias")),
        *(last + f"ff_context.net.2.{w}" for w in ("weight", "bias"))}
    assert info["adapted"] == [last + "norm1_context.linear.weight", last + "norm1_context.linear.bias"]
    own, theirs = model.state_dict(), sd3.state_dict()
    for key, value in theirs.items():
        if key not in info["adapted"]:
            assert torch.equal(own[key], value), key
    assert info["loaded"] == len(theirs) - 2
    # SD3's continuous norm gave (scale, shift); the new adaLN-Zero norm has (shift, scale) then zero gates
    w, d = own[last + "norm1_context.linear.weight"], model.inner_dim
    scale, shift = theirs[last + "norm1_context.linear.weight"].chunk(2)
    assert torch.equal(w[:d], shift) and torch.equal(w[d:2 * d], scale) and not w[2 * d:].any()
    # so the image prediction equals SD3's on the same text features and conditioning (the
    # pooled-text projection starts at zero)
    x = torch.randn(2, 4, 8, 8)
    ids = torch.randint(0, 11, (2, 5))
    t, r = torch.tensor([300.0, 900.0]), torch.tensor([0.2, 1.0])
    ours = model(x, ids, t, r).sample
    ref = sd3(x, encoder_hidden_states=model.embed_text(ids), pooled_projections=model.embed_text_noise(r),
              timestep=t).sample
    assert torch.allclose(ours, ref, atol=1e-5)


def test_loading_refuses_other_checkpoints(tmp_path):
    torch.manual_seed(0)
    SD3Transformer2DModel(**SD3_TINY).save_pretrained(tmp_path / "sd3")
    with pytest.raises(ValueError, match="give vocab_size, text_length and mask_token_id"):
        DualDiffusionTransformer2DModel.from_pretrained(tmp_path / "sd3")
    AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4).save_pretrained(tmp_path / "vae")
    with pytest.raises(ValueError, match="holds a AutoencoderKL, not a DualDiffusionTransformer2DModel"):
        DualDiffusionTransformer2DModel.from_pretrained(tmp_path / "vae")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no diffusers model config"):
        DualDiffusionTransformer2DModel.from_pretrained(tmp_path / "empty")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="no diffusers model"):
        DualDiffusionTransformer2DModel.from_pretrained(tmp_path / "hf")
