import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TEXT, tiny_causal_lm

from mmdlm.data import pack_texts
from mmdlm.diffusion import corrupt, get_schedule
from mmdlm.text import attention as attn
from mmdlm.text.adapt import DiffusionLM, load_dlm
from mmdlm.training import TrainArgs, latest_checkpoint
from mmdlm.training.diffusion import DiffusionTrainer, block_size_at


def _dlm(tokenizer, **kw):
    return DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer, **kw)


def _data(tokenizer, seq_len=16):
    return pack_texts(TEXT, tokenizer, seq_len)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), max_steps=3, batch_size=4, lr=3e-3, warmup_steps=0,
                log_every=1, eval_batches=1, seed=0)
    return TrainArgs(**{**base, **kw})


def test_trainer_loss_equals_hand_computation(tmp_path, tokenizer):
    """Bidirectional + shift: the trainer's loss, recomputed by hand from the same noise."""
    dlm = _dlm(tokenizer).eval()
    x0 = _data(tokenizer)[:3]
    trainer = DiffusionTrainer(dlm, _data(tokenizer), _args(tmp_path))
    got = trainer.diffusion_loss(trainer.model, x0, 0, torch.Generator().manual_seed(5))

    g = torch.Generator().manual_seed(5)
    sched = get_schedule("linear")
    t = sched.sample_t(3, generator=g, method="stratified")
    protect = torch.zeros_like(x0, dtype=torch.bool)
    protect[:, 0] = True
    x_t, masked = corrupt(x0, t, dlm.mask_token_id, sched, protect=protect, generator=g)
    raw = dlm.model(input_ids=x_t, attention_mask=attn.to_additive(attn.bidirectional(16))).logits
    total = 0.0
    for b in range(3):
        for j in range(1, 16):
            if masked[b, j]:
                total += F.cross_entropy(raw[b, j - 1], x0[b, j]) / t[b]
    assert masked.any()
    assert torch.allclose(got, total / (3 * 15), rtol=1e-5)


def test_block_size_one_is_autoregressive(tmp_path, tokenizer):
    """With block size 1 the context-causal pass predicts every token from the clean past."""
    dlm = _dlm(tokenizer, attention="block", block_size=1).eval()
    x0 = _data(tokenizer)[:2]
    trainer = DiffusionTrainer(dlm, _data(tokenizer), _args(tmp_path))
    got = trainer.diffusion_loss(trainer.model, x0, 0, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    sched = get_schedule("linear")
    t = sched.sample_t(2 * 16, generator=g, method="stratified").view(2, 16)
    protect = torch.zeros_like(x0, dtype=torch.bool)
    protect[:, 0] = True
    _, masked = corrupt(x0, t, dlm.mask_token_id, sched, protect=protect, generator=g)
    causal = dlm.model(input_ids=x0).logits
    ce = F.cross_entropy(causal[:, :-1].transpose(1, 2), x0[:, 1:], reduction="none")
    expected = (ce / t[:, 1:] * masked[:, 1:]).sum() / (2 * 15)
    assert torch.allclose(got, expected, rtol=1e-4)


def test_block_curriculum():
    assert [block_size_at(s, 8, 100) for s in (0, 24, 25, 50, 75, 99, 500)] == [1, 1, 2, 4, 8, 8, 8]
    assert block_size_at(0, 8, 0) == 8


@pytest.mark.parametrize("mode,extra", [
    ("bidirectional", {}),
    ("annealed", {"anneal_steps": 3}),
    ("block", {"block_size": 4}),
])
def test_three_steps_lower_the_loss(tmp_path, tokenizer, mode, extra):
    dlm = _dlm(tokenizer, attention=mode, **extra)
    data = _data(tokenizer)[:4]
    kw = {"block_warmup_steps": 2, "ar_loss_weight": 0.5} if mode == "block" else {}
    trainer = DiffusionTrainer(dlm, data, _args(tmp_path, lr=1e-2), eval_data=data, tokenizer=tokenizer, **kw)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after < before
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 4
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    again, _ = load_dlm(tmp_path / "run" / "model")
    assert again.config.attention == mode


class _Interrupt(Exception):
    pass


class _Crashing(DiffusionTrainer):
    def compute_loss(self, model, batch, step, generator):
        if step == 3:
            raise _Interrupt
        return super().compute_loss(model, batch, step, generator)


def test_resume_gives_the_same_weights(tmp_path, tokenizer_factory):
    data = _data(tokenizer_factory())
    full = DiffusionTrainer(_dlm(tokenizer_factory()), data, _args(tmp_path / "a", max_steps=5, save_every=3))
    full.train()

    crashed = _Crashing(_dlm(tokenizer_factory()), data, _args(tmp_path / "b", max_steps=5, save_every=3))
    with pytest.raises(_Interrupt):
        crashed.train()
    assert latest_checkpoint(tmp_path / "b" / "run").name == "step-0000003"
    resumed = DiffusionTrainer(_dlm(tokenizer_factory()), data,
                               _args(tmp_path / "b", max_steps=5, save_every=3, resume=True))
    resumed.train()
    assert resumed.step == 5
    a = full.accelerator.unwrap_model(full.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = (tmp_path / "b" / "run" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]


def test_a_checkpoint_is_data_never_code(tmp_path, tokenizer_factory):
    """A pickle planted in any pickle-named file of a checkpoint never runs: resume refuses it
    with a one-line error (or works, if the file is one it never reads)."""
    import shutil

    from bad_inputs import plant_pickle

    data = _data(tokenizer_factory())
    crashed = _Crashing(_dlm(tokenizer_factory()), data, _args(tmp_path / "run", max_steps=5, save_every=3))
    with pytest.raises(_Interrupt):
        crashed.train()
    step = latest_checkpoint(tmp_path / "run" / "run")
    written = {p.name for p in step.iterdir()}
    assert not any(name.startswith("custom_checkpoint") for name in written)  # the trainer's state is JSON
    names = {n for n in written if n.endswith((".pkl", ".bin", ".pt", ".pth"))}
    assert names  # accelerate's optimizer and RNG states
    names |= {"custom_checkpoint_0.pkl", "scheduler.bin", "sampler.bin", "scaler.pt", "pytorch_model.bin"}
    for name in sorted(names):
        out = tmp_path / name
        shutil.copytree(tmp_path / "run", out)
        marker = tmp_path / f"{name}.ran"
        plant_pickle(out / "run" / "checkpoints" / step.name / name, marker)
        resumed = DiffusionTrainer(_dlm(tokenizer_factory()), data,
                                   _args(out, max_steps=5, save_every=3, resume=True))
        try:
            resumed.train()
        except ValueError as err:
            assert name in str(err) and "\n" not in str(err), str(err)
        else:
            assert name not in written, f"a tampered {name} was loaded"
        assert not marker.exists(), f"unpickling {name} ran code"


def test_trainer_argument_errors(tmp_path, tokenizer):
    dlm = _dlm(tokenizer)
    with pytest.raises(ValueError, match="batch_size"):
        DiffusionTrainer(dlm, _data(tokenizer), _args(tmp_path, batch_size=0))
    with pytest.raises(ValueError, match="t_sampling"):
        DiffusionTrainer(dlm, _data(tokenizer), _args(tmp_path), t_sampling="sobol")
    with pytest.raises(ValueError, match="empty"):
        DiffusionTrainer(dlm, torch.zeros(0, 16, dtype=torch.long), _args(tmp_path))
    with pytest.raises(ValueError, match="one length"):
        DiffusionTrainer(dlm, {"a": torch.zeros(3, 4), "b": torch.zeros(2, 4)}, _args(tmp_path))
    with pytest.raises(ValueError, match="anneal_steps"):
        DiffusionTrainer(_dlm(tokenizer, attention="annealed"), _data(tokenizer), _args(tmp_path))
    with pytest.raises(ValueError, match="power of 2"):
        DiffusionTrainer(_dlm(tokenizer, attention="block", block_size=6), _data(tokenizer), _args(tmp_path),
                         block_warmup_steps=4)


def test_bf16_mixed_precision_step(tmp_path, tokenizer):
    trainer = DiffusionTrainer(_dlm(tokenizer), _data(tokenizer), _args(tmp_path, mixed_precision="bf16"))
    assert math.isfinite(trainer.train_step())


def test_head_on_masked_positions_only_changes_nothing(tmp_path, tokenizer):
    trainer = DiffusionTrainer(_dlm(tokenizer).eval(), _data(tokenizer), _args(tmp_path))
    assert trainer.head_on_kept_only  # llama takes logits_to_keep
    x0 = _data(tokenizer)[:3]
    fast = trainer.diffusion_loss(trainer.model, x0, 0, torch.Generator().manual_seed(2))
    trainer.head_on_kept_only = False
    full = trainer.diffusion_loss(trainer.model, x0, 0, torch.Generator().manual_seed(2))
    assert torch.allclose(fast, full, rtol=1e-5)


def test_annealing_opens_the_mask_over_steps(tmp_path, tokenizer):
    trainer = DiffusionTrainer(_dlm(tokenizer, attention="annealed", anneal_steps=10), _data(tokenizer),
                               _args(tmp_path))
    assert torch.equal(trainer._pattern(16, 0, "cpu"), attn.causal(16))
    assert trainer._pattern(16, 10, "cpu") is None  # open: the inference pattern, which the model builds itself
    half = trainer._pattern(64, 5, "cpu")
    upper = torch.ones(64, 64, dtype=torch.bool).triu(1)
    assert 0.4 < half[upper].float().mean() < 0.6
