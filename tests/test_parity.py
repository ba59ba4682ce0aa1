"""The adaptation curve to parity (bench/parity.py) on tiny models, and its interpolation / extrapolation."""
import json
import sys
from pathlib import Path

import pytest
import yaml

from mmdlm.config import build

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from parity import ParityConfig, analyse, fit_power_law, run_parity, tokens_to_gap  # noqa: E402
from parity import main as parity_main  # noqa: E402
from study import StudyConfig, run_study  # noqa: E402


@pytest.fixture
def study_yaml(tmp_path, teacher_dir):
    study = dict(
        teacher=str(teacher_dir), output_dir=str(tmp_path / "study"), results=str(tmp_path / "study.json"),
        max_files=70, adapt_steps=2, adapt={"batch_size": 2, "seq_len": 16, "lr": 1e-2, "warmup_steps": 0},
        recipes={"dream": {"attention": "bidirectional"}}, scratch={"shift": False}, curve_points=2, curve_rows=4,
        curve_grid=2, eval_rows=6, grid=2, replicates=2, eval_batch_size=4, infill_spans=3, span=2, left=4,
        right=2, prompts=2, prompt_len=3, gen_length=4, threads=1)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _parity(tmp_path, study_yaml, **kw):
    values = dict(study=str(study_yaml), study_results=str(tmp_path / "study.json"), recipe="dream", steps=[2, 3],
                  output_dir=str(tmp_path / "parity"), results=str(tmp_path / "parity.json"))
    return build(ParityConfig, {**values, **kw})


def test_parity_reuses_the_study_trains_the_rest_and_measures_finished_runs(tmp_path, study_yaml, capsys):
    run_study(build(StudyConfig, yaml.safe_load(study_yaml.read_text())))
    capsys.readouterr()
    result = run_parity(_parity(tmp_path, study_yaml))
    out = capsys.readouterr().out
    assert "dream-2: the study's finished run" in out and "dream-3: training 3 steps" in out
    saved = json.loads((tmp_path / "parity.json").read_text())  # valid JSON, no NaN/inf
    assert (tmp_path / "parity.png").stat().st_size > 0
    assert saved["complete"] and [p["steps"] for p in saved["points"]] == [2, 3]
    assert [p["tokens"] for p in saved["points"]] == [2 * 32, 3 * 32]
    study = json.loads((tmp_path / "study.json").read_text())
    assert saved["points"][0]["elbo"] == study["records"][0]["elbo"]  # the same estimator, rows and seed
    assert saved["ar_ppl"] == pytest.approx(study["ar_ppl"])
    for p in saved["points"]:
        assert p["gap"] == pytest.approx(p["dlm_elbo_ppl"] / saved["ar_ppl"] - 1)
    assert [t["gap"] for t in saved["analysis"]["targets"]] == [0.30, 0.15]
    assert result["points"][1]["source"] == "trained here"

    sys.path.insert(0, str(ROOT / "bench"))
    import report

    table = report.adaptation_parity(saved)
    assert "| dream |" in table or "dream" in table

    # The run trained here is reused on a rerun; a finished adapt folder of the same recipe is a point too.
    run_parity(_parity(tmp_path, study_yaml))
    assert "dream-3: reusing the finished run" in capsys.readouterr().out
    folder = tmp_path / "parity" / "dream-3"
    result = run_parity(_parity(tmp_path, study_yaml, steps=[2], trained={3: {"path": str(folder)}}))
    assert "dream-3: measuring the finished run" in capsys.readouterr().out
    assert result["points"][1]["elbo"]["nll"] == pytest.approx(saved["points"][1]["elbo"]["nll"], abs=1e-5)

    # A folder trained with other settings is refused unless the difference is declared.
    with pytest.raises(ValueError, match=r"trained with \{'max_steps': 3\}"):
        run_parity(_parity(tmp_path, study_yaml, steps=[2], trained={4: {"path": str(folder)}}))
    declared = run_parity(_parity(tmp_path, study_yaml, steps=[2], trained={4: {"path": str(folder),
                                                                                "differs": {"max_steps": 3}}}))
    assert declared["points"][1]["differs"] == {"max_steps": 3}


def test_bad_parity_configs(tmp_path, study_yaml, capsys):
    for bad, match in [({"recipe": "nope"}, "recipe 'nope' is not in"), ({"steps": [0]}, "positive integers"),
                       ({"steps": [2], "trained": {2: {"path": "x"}}}, "given twice"),
                       ({"gaps": [0]}, "gaps must be"), ({"trained": {5: "folder"}}, r"trained\[5\] must be"),
                       ({"steps": [], "trained": {5: {"path": str(tmp_path)}}}, "no run.json")]:
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            run_parity(_parity(tmp_path, study_yaml, **bad))
    assert parity_main(["--study", str(tmp_path / "missing.yaml")]) == 2
    assert "no study config" in capsys.readouterr().err


def test_tokens_to_gap_interpolates_and_extrapolates():
    # gap = 8 * M^-0.5: 0.8 at 100, 0.4 at 400, 0.2 at 1600
    points = [(100.0, 0.8), (400.0, 0.4), (1600.0, 0.2)]
    a, b = fit_power_law(points)
    assert a == pytest.approx(8) and b == pytest.approx(-0.5)
    assert tokens_to_gap(points, 0.4, (a, b)) == {"tokens": pytest.approx(400), "how": "interpolated"}
    mid = tokens_to_gap(points, 0.3, (a, b))
    assert mid["how"] == "interpolated" and mid["tokens"] == pytest.approx(8 ** 2 / 0.3 ** 2)
    far = tokens_to_gap(points, 0.1, (a, b))
    assert far["how"] == "extrapolated by the power law" and far["tokens"] == pytest.approx(6400)
    assert tokens_to_gap(points, 0.9, (a, b))["how"] == "reached by the shortest run"
    flat = [(100.0, 0.5), (400.0, 0.6)]
    assert tokens_to_gap(flat, 0.1, fit_power_law(flat))["tokens"] is None
    out = analyse([{"tokens": 100, "dlm_elbo_ppl": 18.0}, {"tokens": 400, "dlm_elbo_ppl": 14.0}], 10.0, [0.3])
    assert out["targets"][0]["how"] == "extrapolated by the power law"
    assert out["targets"][0]["tokens"] == pytest.approx((8 / 0.3) ** 2)  # gap = 8 * M^-0.5 again
