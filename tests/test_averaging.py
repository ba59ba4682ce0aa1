"""`mmdlm average`: the transformer weights of saved pipelines averaged, everything else checked equal."""
import json

import torch
from discrete_fixtures import tiny_pipeline, tiny_transformer

from mmdlm import cli
from mmdlm.pipelines import load_pipeline


def _saved(tmp_path, name, seed, **overrides):
    pipe = tiny_pipeline(seed=0)
    if seed or overrides:  # same tokenizer and VQ model, another transformer
        pipe.transformer = tiny_transformer(pipe.tokenizer, seed, **overrides)
    pipe.save_pretrained(tmp_path / name)
    return str(tmp_path / name)


def _average(capsys, *args) -> tuple[int, str]:
    code = cli.main(["average", *args])
    return code, capsys.readouterr().err


def test_average_of_two_pipelines(tmp_path, capsys):
    a, b = _saved(tmp_path, "a", 0), _saved(tmp_path, "b", 1)
    assert _average(capsys, "--models", a, b, "--output", str(tmp_path / "avg"))[0] == 0
    states = [load_pipeline(p).transformer.state_dict() for p in (a, b, tmp_path / "avg")]
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])
    for key, value in states[2].items():
        torch.testing.assert_close(value, (states[0][key] + states[1][key]) / 2)
    record = json.loads((tmp_path / "avg" / "average.json").read_text())
    assert record["models"] == [a, b] and record["weights"] == [0.5, 0.5]
    assert _average(capsys, "--models", a, b, "--weights", "1", "3", "--output",
                    str(tmp_path / "w"))[0] == 0
    weighted = load_pipeline(tmp_path / "w").transformer.state_dict()
    for key, value in weighted.items():
        torch.testing.assert_close(value, 0.25 * states[0][key] + 0.75 * states[1][key])
    out = load_pipeline(tmp_path / "avg")(task="joint", num_inference_steps=2, generator=torch.Generator())
    assert len(out.images) == 1 and len(out.texts) == 1  # a working pipeline


def test_average_refuses_what_cannot_be_averaged(tmp_path, capsys):
    a, b = _saved(tmp_path, "a", 0), _saved(tmp_path, "b", 1)
    deeper = _saved(tmp_path, "deeper", 2, num_single_layers=2)
    other_vq = tiny_pipeline(seed=3)
    other_vq.save_pretrained(tmp_path / "vq")
    for args, message in [(["--models", a, "--output", str(tmp_path / "x")], "two or more pipelines"),
                          (["--models", a, b], "give --models"),
                          (["--models", a, b, "--output", a], "must differ"),
                          (["--models", a, b, "--weights", "1", "--output", str(tmp_path / "x")],
                           "one positive weight per pipeline"),
                          (["--models", a, b, "--weights", "1", "nan", "--output", str(tmp_path / "x")],
                           "one positive weight per pipeline"),
                          (["--models", a, b, "--weights", "1", "inf", "--output", str(tmp_path / "x")],
                           "one positive weight per pipeline"),
                          (["--models", a, deeper, "--output", str(tmp_path / "x")],
                           "different transformers (num_single_layers)"),
                          (["--models", a, str(tmp_path / "vq"), "--output", str(tmp_path / "x")],
                           "different vqvae weights"),
                          (["--models", a, str(tmp_path), "--output", str(tmp_path / "x")], "not a saved pipeline")]:
        code, err = _average(capsys, *args)
        assert code == 2 and message in err, (args, err)
    assert not (tmp_path / "x").exists()
    # An output that would replace a file, or a folder of other files, is refused and left as it was.
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "draft.txt").write_text("mine\n")
    for output, message in ((tmp_path / "notes.txt", "is a file, not a folder"),
                            (tmp_path / "work", "not an earlier mmdlm average output")):
        code, err = _average(capsys, "--models", a, b, "--output", str(output))
        assert code == 2 and message in err, err
    assert (tmp_path / "notes.txt").read_text() == (tmp_path / "work" / "draft.txt").read_text() == "mine\n"
    assert _average(capsys, "--models", a, b, "--output", str(tmp_path / "avg"))[0] == 0
    assert _average(capsys, "--models", b, a, "--output", str(tmp_path / "avg"))[0] == 0  # an earlier average
