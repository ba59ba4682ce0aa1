"""The adaptation study end to end on tiny models, its analysis, and `init: random`."""
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mmdlm import cli
from mmdlm.commands.adapt import build_dlm
from mmdlm.config import build

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from study import StudyConfig, analyse, curve_steps, run_study, tokens_to_reach  # noqa: E402
from study import main as study_main  # noqa: E402


def _config(tmp_path, teacher_dir, **kw):
    base = dict(
        teacher=str(teacher_dir), output_dir=str(tmp_path / "study"), results=str(tmp_path / "study.json"),
        max_files=70, adapt_steps=2, adapt={"batch_size": 2, "seq_len": 16, "lr": 1e-2, "warmup_steps": 0},
        recipes={"dream": {"attention": "bidirectional"}, "dream_noshift": {"shift": False},
                 "nbdiff": {"attention": "block", "block_size": 4, "block_warmup_steps": 2, "ar_loss_weight": 0.5}},
        scratch={"shift": False}, curve_points=3, curve_rows=4, curve_grid=2, eval_rows=6, grid=2, replicates=2,
        eval_batch_size=4, infill_spans=3, span=2, left=4, right=2, prompts=2, prompt_len=3, gen_length=4,
        threads=1)
    return build(StudyConfig, {**base, **kw})


def test_study_end_to_end_and_reuse(tmp_path, teacher_dir, capsys):
    c = _config(tmp_path, teacher_dir)
    result = run_study(c, command="mmdlm study (test)")
    saved = json.loads((tmp_path / "study.json").read_text())  # valid JSON, no NaN/inf
    assert (tmp_path / "study.png").stat().st_size > 0
    assert [r["name"] for r in saved["records"]] == ["dream", "dream_noshift", "nbdiff", "scratch"]
    assert saved["teacher_tokens"] == 64 and saved["adapt_tokens"] == 2 * 2 * 16
    scratch = saved["records"][-1]
    assert scratch["steps"] == math.ceil((64 + 64) / 32) and scratch["tokens"] == 128
    for key in ("token_efficiency_ratio", "dlm_elbo_ppl", "ar_ppl", "versions", "seeds", "command", "best_recipe"):
        assert key in saved
    assert saved["best_recipe"] in ("dream", "dream_noshift")  # like-for-like with the bidirectional scratch run
    for r in saved["records"]:
        assert r["curve"][0]["step"] == 0 and r["curve"][-1]["step"] == r["steps"]
        assert r["elbo"]["se"] > 0 and r["elbo"]["tokens"] == 6 * 15
        assert 0 <= r["infill_exact_match"] <= 1 and r["gen_ppl"] > 1
        assert Path(r["command"].split()[-1]).exists()  # the run's mmdlm adapt recipe
    assert saved["records"][0]["elbo"]["tokens"] == saved["teacher"]["ar"]["tokens"]  # the same tokens
    assert result["ar_ppl"] == saved["ar_ppl"]

    sys.path.insert(0, str(ROOT / "bench"))
    import report

    table = report.adaptation_study(saved)
    assert "| dream |" in table and "AR teacher" in table

    capsys.readouterr()
    run_study(c)  # everything finished: reused
    assert capsys.readouterr().out.count("reusing the finished run") == 4
    run_study(replace(c, grid=3, recipes={"dream": {"attention": "bidirectional"}}))
    assert "dream: training" in capsys.readouterr().out  # new settings: not reused


def test_quick_overrides_and_validation(tmp_path, teacher_dir):
    from study import apply_quick, validate

    c = StudyConfig(quick=True)
    q = apply_quick(c)
    assert q.adapt_steps == c.quick_overrides["adapt_steps"] and q.adapt["lr"] == c.adapt["lr"]
    assert not q.results.startswith("bench/")  # the smoke test never overwrites the committed results
    for bad, match in [({"replicates": 1}, "replicates"), ({"curve_rows": 10, "eval_rows": 5}, "curve_rows"),
                       ({"checkpoint_every": -1}, "checkpoint_every must be >= 0"),
                       ({"recipes": {"x": {"max_step": 3}}}, "unknown mmdlm adapt keys"),
                       ({"recipes": {"x": {"output_dir": "y"}}}, "study sets"),
                       ({"recipes": {}}, "recipes is empty")]:
        with pytest.raises(ValueError, match=match):
            validate(_config(tmp_path, teacher_dir, **bad))
    with pytest.raises(ValueError, match="unknown key"):
        apply_quick(replace(c, quick_overrides={"nope": 1}))


def test_study_command_line_errors(tmp_path, capsys):
    assert study_main(["--teacher", str(tmp_path / "missing"), "--output-dir", str(tmp_path),
                     "--scratch-steps", "1", "--results", str(tmp_path / "r.json"), "--max-files", "5"]) == 2
    assert "could not load" in capsys.readouterr().err


def test_curve_steps_and_crossing():
    assert curve_steps(300, 14)[0] == 5 and curve_steps(300, 14)[-1] == 300
    assert curve_steps(3, 5) == [1, 2, 3] and curve_steps(1, 5) == [1]
    curve = [{"tokens": 0, "elbo": 5.0}, {"tokens": 100, "elbo": 4.0}, {"tokens": 300, "elbo": 3.0}]
    assert tokens_to_reach(curve, 3.5) == 200
    assert tokens_to_reach(curve, 5.5) == 0
    assert tokens_to_reach(curve, 2.0) is None


def _record(name, kind, attention, curve, nll, tokens=300):
    return {"name": name, "kind": kind, "attention": attention, "curve": curve, "tokens": tokens,
            "elbo": {"nll": nll, "ppl_se": 0.1}}


def test_analyse_ratios_goals_and_best():
    curve = [{"tokens": 0, "elbo": 6.0}, {"tokens": 50, "elbo": 4.0}, {"tokens": 300, "elbo": 3.5}]
    records = [
        _record("fast", "adapted", "bidirectional", curve, 3.5),
        _record("slow", "adapted", "bidirectional", [{"tokens": 0, "elbo": 6.0}, {"tokens": 300, "elbo": 4.5}], 4.5),
        _record("block", "adapted", "block", [{"tokens": 0, "elbo": 3.0}, {"tokens": 300, "elbo": 2.0}], 2.0),
        _record("scratch", "scratch", "bidirectional", [{"tokens": 1000, "elbo": 4.0}], 4.0, tokens=1000),
    ]
    out = analyse(records, {"ppl": math.exp(3.4)}, scratch_tokens=1000)
    fast, slow, block, _ = records
    assert fast["tokens_to_scratch_final"] == 50 and fast["token_efficiency_ratio"] == 20
    assert fast["goal_ratio_met"] and fast["goal_gap_met"]  # exp(0.1) - 1 = 10.5% <= 15%
    assert not slow["goal_gap_met"]
    assert slow["token_efficiency_ratio"] is None and slow["token_efficiency_ratio_at_most"] == 1000 / 300
    assert not slow["goal_ratio_met"]
    assert block["reached_before_training"] and not block["same_factorisation_as_scratch"]
    assert out["best"]["name"] == "fast"  # the block model's bound is not like-for-like with the scratch run
    assert math.isclose(fast["ppl_gap_vs_ar"], math.exp(0.1) - 1)


def test_init_random_keeps_the_architecture(tmp_path, teacher_dir):
    c = build(cli.AdaptConfig, {"model": str(teacher_dir), "init": "random", "seq_len": 16, "seed": 3})
    dlm, _ = build_dlm(c)
    pretrained, _ = build_dlm(replace(c, init="pretrained"))
    a, b = dlm.model.state_dict(), pretrained.model.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], b["model.layers.0.self_attn.q_proj.weight"])
    with pytest.raises(ValueError, match="unknown init"):
        build_dlm(replace(c, init="zeros"))


def test_interrupted_run_resumes_exactly(tmp_path, teacher_dir, monkeypatch):
    from mmdlm.training.trainer import Trainer

    recipes = {"dream": {"attention": "bidirectional"}}
    whole = run_study(_config(tmp_path / "a", teacher_dir, recipes=recipes, checkpoint_every=1))

    train_step = Trainer.train_step

    def interrupted(self):
        if self.out.name == "scratch" and self.step == 2:
            raise KeyboardInterrupt  # as if the machine went away mid-run
        return train_step(self)

    c = _config(tmp_path / "b", teacher_dir, recipes=recipes, checkpoint_every=1)
    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(c)
    assert (tmp_path / "b" / "study" / "scratch" / "checkpoints" / "step-0000002").exists()
    monkeypatch.setattr(Trainer, "train_step", train_step)
    resumed = run_study(c)

    a, b = whole["records"][-1], resumed["records"][-1]
    assert b["resumed_at_tokens"] == 2 * 32 and a["resumed_at_tokens"] == 0
    assert [p["step"] for p in b["curve"]] == [p["step"] for p in a["curve"]]
    assert [p["elbo"] for p in b["curve"]] == pytest.approx([p["elbo"] for p in a["curve"]], abs=1e-5)
    assert b["elbo"]["nll"] == pytest.approx(a["elbo"]["nll"], abs=1e-5)
    assert not (tmp_path / "b" / "study" / "scratch" / "checkpoints").exists()


def test_runs_recorded_before_a_new_adapt_key_still_match():
    from study import same_settings

    key = {"adapt": {"lr": 1e-3, "lora_r": 0}, "seed": 0}
    assert same_settings({"adapt": {"lr": 1e-3}, "seed": 0}, key)  # lora_r added later, at its default
    assert not same_settings({"adapt": {"lr": 1e-3}, "seed": 0}, {"adapt": {"lr": 1e-3, "lora_r": 8}, "seed": 0})
    assert not same_settings({"adapt": {"lr": 2e-3}, "seed": 0}, key)
    assert not same_settings(None, key)
