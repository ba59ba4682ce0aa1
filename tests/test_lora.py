"""LoRA through peft: on a DLM (adapt, SFT), saved as an adapter, reloaded, merged; and on a
diffusers transformer, so the multimodal trainers can use the same helper."""
import json

import pytest
import torch
from conftest import TEXT, tiny_causal_lm

from mmdlm import cli
from mmdlm.data import pack_texts
from mmdlm.text.adapt import DiffusionLM, load_dlm
from mmdlm.training import TrainArgs
from mmdlm.training.diffusion import DiffusionTrainer
from mmdlm.training.lora import LoraArgs, apply_lora, lora_dlm, merge_lora, trainable_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(vocab, seed=0):
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # untied and tied output head
def test_lora_trains_adapters_and_the_mask_row_only(tmp_path, tokenizer, family):
    causal = tiny_causal_lm(family, tokenizer)
    causal.save_pretrained(tmp_path / "causal")
    dlm = DiffusionLM.from_causal_lm(causal, tokenizer)
    mask = dlm.mask_token_id
    before = {k: v.clone() for k, v in dlm.state_dict().items()}
    lora_dlm(dlm, LoraArgs(lora_r=4, lora_alpha=8), base=str(tmp_path / "causal"))
    names = [n for n, p in dlm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "trainable_tokens" in n for n in names), names
    n, total = trainable_parameters(dlm)
    assert 0 < n < total / 5

    data = pack_texts(TEXT, tokenizer, 16)
    args = TrainArgs(output_dir=str(tmp_path / "run"), max_steps=3, batch_size=4, lr=1e-2, warmup_steps=0,
                     log_every=1, eval_batches=1)
    trainer = DiffusionTrainer(dlm, data, args, tokenizer=tokenizer)
    trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.model).eval()
    # The saved adapter reloads (base + resized vocabulary + adapter) to the trained model's logits.
    trainer.save_model(trained, tmp_path / "adapter")
    reloaded, _ = load_dlm(tmp_path / "adapter")
    ids = _ids(len(tokenizer))
    with torch.no_grad():
        assert torch.allclose(reloaded.eval()(ids).logits, trained(ids).logits, atol=1e-6)
    merged = merge_lora(trained.model)
    emb = merged.get_input_embeddings().weight
    old = before["model." + next(k for k in causal.state_dict() if "embed" in k or "wte" in k)]
    assert not torch.equal(emb[mask], old[mask])  # the [MASK] row was trained
    assert torch.equal(emb[:mask], old[:mask])  # no other row moved


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_adapt_with_lora_saves_reloads_and_merges(tmp_path, tokenizer, family, text_files, capsys):
    causal = tiny_causal_lm(family, tokenizer)
    causal.save_pretrained(tmp_path / "causal")
    tokenizer.save_pretrained(tmp_path / "causal")
    out = tmp_path / "run"
    code = cli.main(["adapt", "--model", str(tmp_path / "causal"), "--dataset", "local", "--data-files", *text_files,
                     "--seq-len", "16", "--batch-size", "4", "--max-steps", "3", "--warmup-steps", "0", "--lr", "1e-2",
                     "--lora-r", "4", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    folder = out / "model"
    assert (folder / "adapter_config.json").exists() and (folder / "mmdlm.json").exists()
    assert not (folder / "model.safetensors").exists()  # only the adapter
    adapted, tok = load_dlm(folder)
    assert adapted.is_lora and tok.mask_token_id == adapted.mask_token_id
    base = DiffusionLM.from_causal_lm(tiny_causal_lm(family, tokenizer), tokenizer)  # untrained adaptation

    code = cli.main(["merge-lora", "--adapter", str(folder), "--output", str(tmp_path / "merged")])
    assert code == 0, capsys.readouterr().err
    merged, _ = load_dlm(tmp_path / "merged")
    assert not merged.is_lora and (tmp_path / "merged" / "model.safetensors").exists()
    ids = _ids(len(tok))
    with torch.no_grad():
        a, m, b = adapted.eval()(ids).logits, merged.eval()(ids).logits, base.eval()(ids).logits
    assert torch.allclose(a, m, atol=1e-5), (a - m).abs().max()
    assert not torch.allclose(a, b, atol=1e-3)  # the adapter changed the model


def test_sft_with_lora_on_a_dlm_and_errors(tmp_path, tokenizer, capsys):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    dlm.save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"def f{i}(x):\n", "response": f"    return x + {i}\n"}) + "\n"
                            for i in range(12)))
    out = tmp_path / "sft"
    code = cli.main(["sft", "--model", str(tmp_path / "dlm"), "--dataset", "json", "--data-files", str(data),
                     "--seq-len", "24", "--batch-size", "4", "--max-steps", "2", "--warmup-steps", "0",
                     "--lora-r", "2", "--lora-target-modules", "q_proj", "v_proj", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    sft, _ = load_dlm(out / "model")
    assert sft.is_lora
    assert cli.main(["generate", "--model", str(out / "model"), "--prompt", "def f1(x):\\n", "--gen-length", "4",
                     "--steps", "4", "--output", str(tmp_path / "gen.json")]) == 0  # an adapter folder generates
    assert "continuation" in json.loads((tmp_path / "gen.json").read_text())
    assert set(sft.model.peft_config["default"].target_modules) == {"q_proj", "v_proj"}
    # An adapter whose base moved: a clear error, and base_model fixes it.
    (tmp_path / "dlm").rename(tmp_path / "moved")
    with pytest.raises(ValueError, match="base_model"):
        load_dlm(out / "model")
    again, _ = load_dlm(out / "model", base_model=str(tmp_path / "moved"))
    assert again.is_lora

    code = cli.main(["sft", "--model", str(tmp_path / "moved"), "--dataset", "json", "--data-files", str(data),
                     "--seq-len", "24", "--max-steps", "1", "--lora-r", "2", "--lora-target-modules", "qkv",
                     "--output-dir", str(tmp_path / "bad")])
    assert code == 2 and "not found" in capsys.readouterr().err
    assert cli.main(["merge-lora", "--adapter", str(tmp_path / "moved"), "--output", str(tmp_path / "x")]) == 2
    assert "no LoRA adapter" in capsys.readouterr().err
    with pytest.raises(ValueError, match="lora_r"):
        LoraArgs(lora_r=-1).validate_lora()


def test_apply_lora_on_a_diffusers_transformer(tmp_path):
    from diffusers import SD3Transformer2DModel
    from peft import PeftModel

    def build():
        torch.manual_seed(0)
        return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                     num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                     pooled_projection_dim=8, out_channels=4).eval()

    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g),
                  encoder_hidden_states=torch.randn(2, 5, 16, generator=g),
                  pooled_projections=torch.randn(2, 8, generator=g), timestep=torch.tensor([10, 500]))
    model = apply_lora(build(), r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        start = model(**inputs).sample
    assert torch.allclose(start, build()(**inputs).sample)  # LoRA starts as the identity (B = 0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(**inputs).sample.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        trained = model(**inputs).sample
    assert not torch.allclose(trained, start, atol=1e-4)

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(build(), tmp_path / "adapter").eval()
    merged = merge_lora(PeftModel.from_pretrained(build(), tmp_path / "adapter")).eval()
    assert isinstance(merged, SD3Transformer2DModel)
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).sample, trained, atol=1e-6)
        assert torch.allclose(merged(**inputs).sample, trained, atol=1e-5)
    with pytest.raises(ValueError, match="to_x"):
        apply_lora(build(), r=2, target_modules=["to_x"])


class _Stop(Exception):
    pass


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_run_resumes_exactly(tmp_path, tokenizer_factory, family):
    """Checkpoints of a LoRA run (tied trainable [MASK] rows included) resume to the same weights."""
    def make(name, **kw):
        tok = tokenizer_factory()
        dlm = DiffusionLM.from_causal_lm(tiny_causal_lm(family, tok), tok)
        torch.manual_seed(0)
        lora_dlm(dlm, LoraArgs(lora_r=4), base="unused")
        args = TrainArgs(output_dir=str(tmp_path / name), max_steps=4, batch_size=4, lr=1e-2, warmup_steps=0,
                         save_every=2, eval_batches=1, **kw)
        return DiffusionTrainer(dlm, pack_texts(TEXT, tok, 16), args)

    full = make("a")
    full.train()
    crashed = make("b")
    original = crashed.compute_loss

    def compute_loss(model, batch, step, generator):
        if step == 3:
            raise _Stop
        return original(model, batch, step, generator)

    crashed.compute_loss = compute_loss
    with pytest.raises(_Stop):
        crashed.train()
    resumed = make("b", resume=True)
    seen, resumed_loss = [], resumed.compute_loss
    resumed.compute_loss = lambda model, batch, step, g: seen.append(step) or resumed_loss(model, batch, step, g)
    resumed.train()
    assert seen == [2, 3]  # it continued from the step-2 checkpoint, not from scratch
    a = full.accelerator.unwrap_model(full.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
