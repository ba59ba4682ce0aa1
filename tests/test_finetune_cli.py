"""Training commands under `accelerate launch -m mmdlm` (2 CPU processes), tracking, configs."""
import json

import pytest
import torch
import yaml
from conftest import tiny_causal_lm
from test_distributed import ROOT, launch

from mmdlm import cli
from mmdlm.text.adapt import DiffusionLM, load_dlm


@pytest.fixture
def files(tmp_path, tokenizer, text_files):
    causal = tiny_causal_lm("llama", tokenizer)
    causal.save_pretrained(tmp_path / "causal")
    tokenizer.save_pretrained(tmp_path / "causal")
    DiffusionLM.from_causal_lm(causal, tokenizer).save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"def f{i}(x):\n", "response": f"    return x + {i}\n"}) + "\n"
                             for i in range(16)))
    return {"causal": tmp_path / "causal", "dlm": tmp_path / "dlm", "text": text_files[0], "pairs": pairs}


COMMON = ["--max-steps", "2", "--batch-size", "2", "--warmup-steps", "0", "--save-every", "1", "--eval-batches", "1",
          "--log-every", "1"]


def _argv(command, files, out):
    if command == "pretrain":
        return ["pretrain", "--dataset", "local", "--data-files", files["text"], "--seq-len", "16",
                "--vocab-size", "300",
                "--model-config", json.dumps({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                              "num_hidden_layers": 1, "num_attention_heads": 2,
                                              "num_key_value_heads": 2, "max_position_embeddings": 64}),
                "--output-dir", str(out), *COMMON]
    if command == "adapt":
        return ["adapt", "--model", str(files["causal"]), "--dataset", "local", "--data-files", files["text"],
                "--seq-len", "16", "--lora-r", "2", "--output-dir", str(out), *COMMON]
    return ["sft", "--model", str(files["dlm"]), "--dataset", "json", "--data-files", str(files["pairs"]),
            "--seq-len", "32", "--output-dir", str(out), *COMMON]


@pytest.mark.parametrize("command", ["pretrain", "adapt", "sft"])
def test_accelerate_launch_runs_every_training_command(tmp_path, files, command):
    out = tmp_path / "out"
    launch("-m", "mmdlm", *_argv(command, files, out))
    run = json.loads((out / "run.json").read_text())
    assert run["num_processes"] == 2
    assert (out / "model" / "config.json").exists() or (out / "model" / "adapter_config.json").exists()
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000001", "step-0000002"]
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and int(rows[-1].split(",")[1]) == 2 * 2 * 2 * (16 if command != "sft" else 32)


def test_pretrain_resume_reuses_the_run_tokenizer(tmp_path, files, monkeypatch, capsys):
    out = tmp_path / "teacher"
    assert cli.main(_argv("pretrain", files, out)) == 0, capsys.readouterr().err
    saved = (out / "tokenizer" / "tokenizer.json").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a resumed run must not train its tokenizer again")

    monkeypatch.setattr("mmdlm.data.tokenizer.train_bpe", no_training)
    argv = _argv("pretrain", files, out)
    argv[argv.index("--max-steps") + 1] = "3"
    assert cli.main([*argv, "--resume"]) == 0, capsys.readouterr().err
    assert "resumed from" in capsys.readouterr().out
    assert (out / "tokenizer" / "tokenizer.json").read_text() == saved
    assert (out / "model" / "tokenizer.json").read_text() == saved


def test_tensorboard_tracking(tmp_path, files, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "sft"
    argv = _argv("sft", files, out)
    assert cli.main([*argv, "--report-to", "tensorboard", "--log-every", "1"]) == 0, capsys.readouterr().err
    events = list(out.rglob("events.out.tfevents.*"))
    assert events, list(out.rglob("*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert {"train/loss", "train/lr", "eval/loss"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert (out / "log.csv").exists() and (out / "loss.png").exists()  # always, tracker or not
    assert cli.main([*argv, "--report-to", "tensorbored"]) == 2
    assert "unknown report_to" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["cpu", "ddp", "fsdp", "deepspeed_zero2"])
def test_accelerate_configs_are_valid(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = ROOT / "configs" / "accelerate" / f"{name}.yaml"
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes == 2 and config.num_machines == 1
    raw = yaml.safe_load(path.read_text())
    expected = {"cpu": "MULTI_GPU", "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED"}[name]
    assert raw["distributed_type"] == expected
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
    if name == "deepspeed_zero2":
        assert config.deepspeed_config["zero_stage"] == 2


def test_sft_on_a_merged_lora_dlm(tmp_path, files, capsys):
    """SFT of a LoRA adapter folder merges it first; a new adapter then names it as its base."""
    first = tmp_path / "first"
    assert cli.main(_argv("sft", files, first) + ["--lora-r", "2"]) == 0, capsys.readouterr().err
    second = tmp_path / "second"
    argv = _argv("sft", files, second)
    argv[argv.index("--model") + 1] = str(first / "model")
    assert cli.main(argv + ["--lora-r", "2"]) == 0, capsys.readouterr().err
    dlm, tok = load_dlm(second / "model")
    assert dlm.is_lora
    with torch.no_grad():
        assert torch.isfinite(dlm(torch.tensor([[tok.bos_token_id, 5, 6]])).logits).all()
