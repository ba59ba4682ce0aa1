import json
import sys
from pathlib import Path

import pytest

from mmdlm.eval import write_record

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import report  # noqa: E402


def test_tables_are_the_committed_results():
    # every <!-- bench:NAME --> block of the README and docs/ is what bench/report.py renders from the JSON
    texts = {page.name: page.read_text() for page in report.pages()}
    for name, block in report.blocks():
        holders = [page for page, text in texts.items() if f"<!-- bench:{name} -->" in text]
        assert holders, f"no page shows the {name} table"
        for page in holders:
            assert f"<!-- bench:{name} -->\n{block}\n<!-- /bench:{name} -->" in texts[page], \
                f"{page}'s {name} table is stale: run python bench/report.py"


def test_stage_table(tmp_path):
    path = tmp_path / "stages.json"
    for backbone, t2i in [("discrete", [0.2, 0.5]), ("mmdit", [0.1, 0.3, 0.7])]:
        for k, value in reversed(list(enumerate(t2i, 1))):
            data = write_record(path, {"backbone": backbone, "dataset": "shapes", "n": 8, "label": f"stage {k}",
                                       "t2i_accuracy": value, "caption_accuracy": 1.0, "joint_consistency": 0.5,
                                       "command": f"mmdlm eval-mm --label 'stage {k}'",
                                       "scheduler": {"class": "MaskedDiffusionScheduler", "remasking": True,
                                                     "alg_temp": 2.0} if backbone == "discrete" else
                                       {"class": "FlowMatchEulerDiscreteScheduler", "stochastic_sampling": False,
                                        "shift": 3.0}})
    rows = report.imagetext_stages(data, tmp_path / "assets").splitlines()
    assert "(MM-DiT: Euler steps, shift 3.0; discrete: remasking, alg_temp 2.0)" in rows[-1]
    assert rows[2] == ("| MM-DiT on shapes, stage 1 / 2 / 3 | 8 | 10.0 / 30.0 / **70.0** | "
                       "100.0 / 100.0 / **100.0** | 50.0 / 50.0 / **50.0** |")
    assert rows[3].startswith("| discrete on shapes, stage 1 / 2 | 8 | 20.0 / **50.0** |")
    shipped = tmp_path / "assets" / "mmdit-shapes"  # a shipped model that averages stages 2 and 3
    for k, folder in enumerate([shipped / "stage1", shipped / "stage2", shipped], 1):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run.json").write_text(json.dumps({"config": {"output_dir": f"outputs/s{k}"}}))
    (shipped / "average.json").write_text(json.dumps({"models": ["outputs/s2/model", "outputs/s3/model"]}))
    rows = report.imagetext_stages(data, tmp_path / "assets").splitlines()
    assert rows[2].startswith("| MM-DiT on shapes, stage 1 / 2 / 3 | 8 | 10.0 / 30.0 / 70.0 |")  # none shipped
    assert "except that the MM-DiT on shapes ships the average of stages 2 and 3" in rows[-1]
    assert report.averaged_stages(shipped) == [2, 3]
    (shipped / "average.json").write_text(json.dumps({"models": ["elsewhere/model"]}))
    with pytest.raises(ValueError, match="not stages recorded"):
        report.averaged_stages(shipped)
    data["records"][0]["label"] = "final"
    with pytest.raises(ValueError, match="label 'stage N'"):
        report.imagetext_stages(data)


def test_stage_plot(tmp_path):
    records = [{"backbone": b, "dataset": "shapes", "label": f"stage {k}", "t2i_accuracy": 0.1 * k,
                "caption_accuracy": 1.0, "joint_consistency": 0.05 * k} for b in ("mmdit", "discrete") for k in (2, 1)]
    shipped = {"records": [dict(records[0], label=None), dict(records[0], label="40 steps")]}
    path = tmp_path / "stages.png"
    assert not report.plot_imagetext_stages(None, shipped, path) and not path.exists()
    assert report.plot_imagetext_stages({"records": records}, shipped, path)
    assert path.read_bytes().startswith(b"\x89PNG") and list(tmp_path.iterdir()) == [path]  # no temp file left
    without_joint = [{k: v for k, v in x.items() if k != "joint_consistency"} for x in records]  # --tasks t2i caption
    assert report.plot_imagetext_stages({"records": without_joint}, {"records": without_joint[:1]}, path)
    with pytest.raises(ValueError, match="label 'stage N'"):
        report.plot_imagetext_stages({"records": [dict(records[0], label="final")]}, None, path)
