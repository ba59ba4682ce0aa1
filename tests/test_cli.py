import json
import subprocess
import sys

import pytest
from conftest import tiny_causal_lm

from mmdlm import cli
from mmdlm.text.adapt import DiffusionLM


def _main(*argv):
    return cli.main(list(argv))


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        _main(command, "--help")
    assert exit_.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_every_flag_is_a_config_key_and_back(tmp_path):
    import dataclasses

    for name, (cls, _) in cli.COMMANDS.items():
        sub = cli.parser()._subparsers._group_actions[0].choices[name]
        dests = {a.dest for a in sub._actions} - {"help", "config"}
        assert dests == {f.name for f in dataclasses.fields(cls)}, name


def test_unknown_key_and_bad_type(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_step: 3\n")
    assert _main("adapt", "--config", str(bad)) == 2
    assert "did you mean 'max_steps'" in capsys.readouterr().err
    bad.write_text("max_steps: lots\n")
    assert _main("adapt", "--config", str(bad)) == 2
    assert "must be int" in capsys.readouterr().err
    assert _main("adapt", "--config", str(tmp_path / "missing.yaml")) == 2


def test_a_recipe_starts_from_its_base(tmp_path):
    from mmdlm.config import load_yaml, resolve

    (tmp_path / "stage1.yaml").write_text("backbone: mmdit\nmax_steps: 100\nlr: 1.0e-3\n"
                                          "model_config: {num_layers: 2}\n")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "stage2.yaml").write_text("base: ../stage1.yaml\nmax_steps: 30\n"
                                                   "model_config: {patch_size: 4}\n")
    assert load_yaml(tmp_path / "more" / "stage2.yaml") == {"backbone": "mmdit", "max_steps": 30, "lr": 1.0e-3,
                                                            "model_config": {"patch_size": 4}}
    c = resolve(cli.TrainMMConfig, cli.parser().parse_args(
        ["train-mm", "--config", str(tmp_path / "more" / "stage2.yaml"), "--lr", "0.5"]))
    assert (c.backbone, c.max_steps, c.lr) == ("mmdit", 30, 0.5)
    (tmp_path / "stage1.yaml").write_text("base: more/stage2.yaml\n")
    with pytest.raises(ValueError, match="name each other as base"):
        load_yaml(tmp_path / "more" / "stage2.yaml")
    (tmp_path / "stage1.yaml").write_text("base: [a, b]\n")
    with pytest.raises(ValueError, match="must be the path of another YAML recipe"):
        load_yaml(tmp_path / "stage1.yaml")
    (tmp_path / "stage1.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match="gone.yaml"):
        load_yaml(tmp_path / "stage1.yaml")


@pytest.mark.parametrize("model", ["mmdit_shapes", "discrete_shapes"])
def test_shipped_stages_chain(model):
    # `make` trains configs/NAME.yaml, NAME_stage2.yaml, ..., evaluates and ships outputs/NAME (with
    # "-" for "_"): each stage must write there and start from the stage before it
    from pathlib import Path

    from mmdlm.config import load_yaml

    configs = Path(__file__).resolve().parents[1] / "configs"
    later = sorted(configs.glob(f"{model}_stage*.yaml"), key=lambda p: int(p.stem.rsplit("stage", 1)[1]))
    stages = [configs / f"{model}.yaml"] + later
    outputs = [f"outputs/{p.stem.replace('_', '-')}" for p in stages]
    recipes = [load_yaml(p) for p in stages]
    assert [r["output_dir"] for r in recipes] == outputs
    assert [r.get("pretrained") for r in recipes] == [None] + [f"{out}/model" for out in outputs[:-1]]
    numbers = " ".join(str(k) for k in range(2, len(stages) + 1))
    target = f"$(call staged,{model.replace('_', '-')},shapes,{model} $(addprefix {model}_stage,{numbers})"
    line = next(line for line in (configs.parent / "Makefile").read_text().splitlines() if target in line)
    averaged = line.split(target, 1)[1].strip().rstrip(")").lstrip(",").split()  # stages whose weights are averaged
    assert all((configs / f"{name}.yaml") in stages for name in averaged)


@pytest.fixture
def causal_dir(tmp_path, tokenizer):
    model = tiny_causal_lm("gpt2", tokenizer)
    model.save_pretrained(tmp_path / "causal")
    tokenizer.save_pretrained(tmp_path / "causal")
    return tmp_path / "causal"


def test_adapt_then_generate_end_to_end(tmp_path, causal_dir, text_files, capsys):
    recipe = tmp_path / "adapt.yaml"
    recipe.write_text(f"model: {causal_dir}\nmax_steps: 50\nbatch_size: 2\nseq_len: 16\n")
    out = tmp_path / "dlm"
    code = _main("adapt", "--config", str(recipe), "--dataset", "local", "--data-files", *text_files,
                 "--max-steps", "2", "--output-dir", str(out), "--warmup-steps", "0")
    assert code == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["args"]["max_steps"] == 2  # the flag overrode the recipe
    res = tmp_path / "gen.json"
    for flags in ([], ["--remasking", "--alg-temp", "1"]):
        code = _main("generate", "--model", str(out / "model"), "--prompt", "def add(a, b):",
                     "--infill", "x = <|mask:3|>\n", "--gen-length", "8", "--steps", "4", "--output", str(res), *flags)
        assert code == 0, capsys.readouterr().err
        data = json.loads(res.read_text())
        assert "<|mask" not in data["infill"]["output"] and data["infill"]["output"].startswith("x = ")
        assert data["continuation"]["input"] == "def add(a, b):" and data["settings"]["remasking"] == bool(flags)


def test_adapt_bad_inputs(tmp_path, causal_dir, text_files, capsys):
    base = ["adapt", "--model", str(causal_dir), "--dataset", "local", "--data-files", *text_files,
            "--output-dir", str(tmp_path / "o"), "--max-steps", "1", "--seq-len", "16"]
    assert _main(*base, "--seq-len", "65") == 2
    assert "exceeds the model's 64 positions" in capsys.readouterr().err
    assert _main(*base, "--text-column", "body") == 2
    assert "text column 'body'" in capsys.readouterr().err
    assert _main(*base[:6], str(tmp_path / "none.txt"), *base[7:]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "o" / "model").exists()  # nothing half-written


def test_generate_bad_inputs(tmp_path, causal_dir, tokenizer, capsys):
    assert _main("generate", "--model", str(causal_dir), "--prompt", "x") == 2
    assert "not a mmdlm diffusion LM checkpoint" in capsys.readouterr().err
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    dlm.save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    assert _main("generate", "--model", str(tmp_path / "dlm"), "--prompt", "x " * 80) == 2
    assert "context is 64" in capsys.readouterr().err
    assert _main("generate", "--model", str(tmp_path / "dlm"), "--infill", "no placeholder") == 2
    assert "placeholder" in capsys.readouterr().err
    assert _main("generate", "--model", str(tmp_path / "dlm"), "--prompt", "x", "--steps", "0") == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    assert _main("generate", "--model", str(tmp_path / "dlm"), "--prompt", "x", "--rule", "vibes") == 2
    assert "unknown rule" in capsys.readouterr().err
    assert _main("generate", "--model", str(tmp_path / "dlm"), "--prompt", "x", "--threshold", "0") == 2
    assert "threshold must be in (0, 1]" in capsys.readouterr().err
    assert _main("generate", "--model", str(tmp_path / "dlm"), "--prompt", "x", "--remasking", "--rule", "margin") == 2
    assert "remasking ranks by confidence" in capsys.readouterr().err
    assert _main("generate", "--model", str(tmp_path / "dlm"), "--prompt", "x", "--history", "out.png") == 2
    assert "history" in capsys.readouterr().err


def test_generate_with_history_and_saved_pipeline(tmp_path, tokenizer, capsys):
    from mmdlm.pipelines import TextDiffusionPipeline

    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    dlm.save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    TextDiffusionPipeline.from_dlm(tmp_path / "dlm").save_pretrained(tmp_path / "pipe")
    for model in ("dlm", "pipe"):
        code = _main("generate", "--model", str(tmp_path / model), "--prompt", "a\\nb", "--gen-length", "4",
                     "--steps", "4", "--threshold", "0.5", "--cache", "prefix", "--history", str(tmp_path / "h.html"))
        assert code == 0, capsys.readouterr().err
    assert (tmp_path / "h-continuation.html").exists()
    assert "a\nb" in capsys.readouterr().out  # the escaped newline became a real one


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "mmdlm", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "adapt" in out.stdout


def test_ctrl_c_in_any_command_is_one_line(monkeypatch, capsys):
    from mmdlm.commands import COMMANDS

    def interrupted(c):
        raise KeyboardInterrupt

    monkeypatch.setitem(COMMANDS, "generate", (COMMANDS["generate"][0], interrupted))
    assert _main("generate", "--prompt", "x") == 130
    err = capsys.readouterr().err
    assert err.strip() == "mmdlm generate: interrupted" and "Traceback" not in err
