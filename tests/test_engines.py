"""Every engine runs every training command: DDP, FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3, launched the
way users launch them (`accelerate launch --config_file configs/accelerate/X.yaml`) on 2 CPU
processes over gloo, for pretrain, adapt, sft and train-mm (both backbones), with and without LoRA.

Per engine, two launches run all the commands (one start-up each, `scripts/run_commands.py`):
the first trains each for 3 steps (checkpoint at step 2) and then SIGKILLs one more run after
step 3; the second resumes, from their step-2 checkpoints, copies of the finished runs (their
later files removed: what a kill after step 2 leaves) and the killed run. Checked for every cell:
- the final weights equal a one-process run with grad_accum 2 (the same global batch) to 1e-5;
- the saved model reloads (the public loaders) to the logits of that one-process model;
- a resumed run ends with exactly the weights of the uninterrupted run (bit for bit).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_causal_lm
from discrete_fixtures import IMAGE_SIZE, TEXT_LENGTH, tiny_vq
from test_distributed import SCRIPTS, launch
from test_interrupt import _in_process

from mmdlm.text.adapt import DiffusionLM

ENGINES = {"ddp": "cpu.yaml", "fsdp": "fsdp.yaml", "zero2": "deepspeed_zero2.yaml", "zero3": "deepspeed_zero3.yaml"}
COMMON = ["--max-steps", "3", "--batch-size", "2", "--warmup-steps", "0", "--save-every", "2", "--eval-batches", "1",
          "--log-every", "1", "--lr", "2e-3", "--keep-checkpoints", "3"]
MMDIT = {"backbone": "mmdit", "image_size": 16, "text_length": 12, "dataset": "shapes", "n_train": 8, "n_eval": 4,
         "model_config": {"num_layers": 1, "attention_head_dim": 8, "num_attention_heads": 2,
                          "joint_attention_dim": 16, "caption_projection_dim": 16, "pooled_projection_dim": 16}}
DISCRETE = {"backbone": "discrete", "image_size": IMAGE_SIZE, "text_length": TEXT_LENGTH, "dataset": "shapes",
            "n_train": 8, "n_eval": 4,
            "model_config": {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2,
                             "attention_head_dim": 16, "axes_dims_rope": [4, 6, 6], "timestep_channels": 32}}
LORA = ["--lora-r", "2"]
MM_LORA = ["--lora-r", "2", "--lora-target-modules", "to_q", "to_v"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer_factory):
    root = tmp_path_factory.mktemp("engines")
    tokenizer = tokenizer_factory()
    causal = tiny_causal_lm("llama", tokenizer)
    causal.save_pretrained(root / "causal")
    tokenizer.save_pretrained(root / "causal")
    DiffusionLM.from_causal_lm(causal, tokenizer).save_pretrained(root / "dlm", tokenizer=tokenizer)
    from conftest import TEXT

    (root / "corpus.txt").write_text("".join(TEXT))
    for i in range(2):  # a corpus of two files, for a stream split between two processes
        (root / f"part-{i}.txt").write_text("".join(f"{t.strip()} # {i}.{k}\n" for k in range(4) for t in TEXT))
    (root / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": f"def f{i}(x):\n", "response": f"    return x + {i}\n"}) + "\n" for i in range(16)))
    tiny_vq().save_pretrained(root / "vq")
    recipes = {"mmdit": MMDIT, "discrete": {**DISCRETE, "image_tokenizer": str(root / "vq")}}
    for name, recipe in recipes.items():
        (root / f"{name}.yaml").write_text(json.dumps(recipe))
        # the pretrained transformers LoRA adapts
        _in_process(["train-mm", "--config", str(root / f"{name}.yaml"), "--output-dir", str(root / f"{name}-base"),
                     "--max-steps", "1", "--batch-size", "2", "--warmup-steps", "0"])
    return root


def commands(root, out) -> dict[str, list[str]]:
    """name -> argv of every training command, writing into out/NAME."""
    text = ["--dataset", "local", "--data-files", str(root / "corpus.txt"), "--seq-len", "16"]
    # a tied head; no dropout (it draws from each process's global RNG, not from the trainer's generators)
    gpt2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    runs = {
        "pretrain": ["pretrain", *text, "--vocab-size", "300", "--model-config", json.dumps(gpt2)],
        "adapt": ["adapt", "--model", str(root / "causal"), *text],
        "adapt-lora": ["adapt", "--model", str(root / "causal"), *text, *LORA],
        "adapt-stream": ["adapt", "--model", str(root / "causal"), "--dataset", "local", "--data-files",
                         str(root / "part-0.txt"), str(root / "part-1.txt"), "--seq-len", "16", "--streaming",
                         "--validation-fraction", "0.3"],
        "sft": ["sft", "--model", str(root / "dlm"), "--dataset", "json", "--data-files", str(root / "pairs.jsonl"),
                "--seq-len", "32"],
        "mmdit": ["train-mm", "--config", str(root / "mmdit.yaml")],
        "discrete": ["train-mm", "--config", str(root / "discrete.yaml")],
    }
    runs["sft-lora"] = [*runs["sft"], *LORA]
    runs["mmdit-lora"] = [*runs["mmdit"], "--pretrained", str(root / "mmdit-base" / "model"), *MM_LORA]
    runs["discrete-lora"] = [*runs["discrete"], "--pretrained", str(root / "discrete-base" / "model"), *MM_LORA]
    return {name: [*argv, *COMMON, "--output-dir", str(out / name)] for name, argv in runs.items()}


KILLED = "sft-lora"  # the run each engine's first launch SIGKILLs after step 3
STREAMED = {"adapt-stream"}  # each process reads its own part: not the one-process run (mmdlm.data.streaming)
DISTRIBUTED_TYPE = {"ddp": "MULTI_CPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}


@pytest.fixture(scope="module")
def references(inputs):
    """Every command in one process with grad_accum 2: the global batch of 2 processes x 1."""
    out = inputs / "single"
    for name, argv in commands(inputs, out).items():
        if name not in STREAMED:
            _in_process([*argv, "--grad-accum", "2"])
    return out


def weights(folder) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in a saved model or pipeline, keyed by file and name."""
    from safetensors.torch import load_file

    return {f"{path.relative_to(folder)}:{key}": value for path in sorted(folder.rglob("*.safetensors"))
            for key, value in load_file(str(path)).items()}


def logits(name: str, folder) -> torch.Tensor:
    """The saved model, reloaded with the public loaders, on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    if name == "pretrain":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        return model(torch.randint(0, 200, (2, 12), generator=g)).logits
    if not name.startswith(("mmdit", "discrete")):
        from mmdlm.text.adapt import load_dlm

        dlm, _ = load_dlm(folder)
        return dlm.eval()(torch.randint(0, 200, (2, 12), generator=g)).logits
    from mmdlm.pipelines import load_pipeline

    transformer = load_pipeline(folder).transformer.eval()
    text = torch.randint(4, 20, (2, transformer.config.text_length), generator=g)
    if name.startswith("mmdit"):
        images = torch.randn(2, 3, 16, 16, generator=g)
        out = transformer(images, text, torch.tensor([300.0, 700.0]))
        return torch.cat([out.sample.flatten(), out.text_logits.flatten()])
    side = transformer.config.sample_size
    out = transformer(torch.randint(0, transformer.config.codebook_size, (2, side, side), generator=g), text)
    return torch.cat([out.image_logits.flatten(), out.text_logits.flatten()])


def _as_killed_after_step_2(src, dst) -> None:
    """A copy of a finished run with what it wrote after step 2 removed: its later checkpoints,
    its model and loss curve (log rows past step 2 stay: the resumed run drops them)."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "model")
    (dst / "loss.png").unlink()
    for ckpt in (dst / "checkpoints").iterdir():
        if ckpt.name != "step-0000002":
            shutil.rmtree(ckpt)



@pytest.mark.parametrize("engine", list(ENGINES))
def test_every_command_under_the_engine(engine, inputs, references, tmp_path):
    if engine.startswith("zero"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is the optional extra mmdlm[scale] (make test installs it)")
    out = tmp_path / "run"
    runs = commands(inputs, out)
    killed = [*runs[KILLED][:-1], str(out / "killed")]
    spec = tmp_path / "first.json"
    spec.write_text(json.dumps({"runs": [*runs.values(), killed], "kill": {"run": len(runs), "step": 3}}))
    done = launch(SCRIPTS / "run_commands.py", spec, config=ENGINES[engine], check=False, timeout=600)
    assert done.returncode != 0 and not (out / "killed" / "model").exists(), done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if ": error: " in line or "failed with exit status" in line]
    assert "SIGKILL" in done.stderr, "\n".join(errors) + done.stderr[-3000:]

    for name in runs:
        run = json.loads((out / name / "run.json").read_text())
        assert run["num_processes"] == 2 and DISTRIBUTED_TYPE[engine] in run["distributed_type"], name
        if name in STREAMED:
            assert (out / name / "model" / "model.safetensors").exists()
            continue
        trained, single = weights(out / name / "model"), weights(references / name / "model")
        assert trained.keys() == single.keys(), name
        diff = max((trained[k] - single[k]).abs().max().item() for k in trained)
        assert diff < 1e-5, f"{name}: max |{engine} - one process| = {diff:.2e}"
        assert all(v.dtype == single[k].dtype for k, v in trained.items()), name
        torch.testing.assert_close(logits(name, out / name / "model"), logits(name, references / name / "model"),
                                   rtol=0, atol=1e-4, msg=name)

    resumed = tmp_path / "resumed"
    again = []
    for name, argv in runs.items():
        _as_killed_after_step_2(out / name, resumed / name)
        again.append([*argv[:-1], str(resumed / name), "--resume"])
    again.append([*killed, "--resume"])
    spec.write_text(json.dumps({"runs": again}))
    launch(SCRIPTS / "run_commands.py", spec, config=ENGINES[engine], timeout=600)
    for name, folder in [*((n, resumed / n) for n in runs), (KILLED, out / "killed")]:
        uninterrupted, ended = weights(out / name / "model"), weights(folder / "model")
        assert ended.keys() == uninterrupted.keys(), name
        for key, value in ended.items():
            assert torch.equal(value, uninterrupted[key]), f"{name} resumed under {engine}: {key} differs"


# ---- in one process: what the engines need before any launch ----------------------------------
def test_an_engine_that_cannot_run_here_is_refused_in_one_line(monkeypatch, tmp_path):
    import sys

    from mmdlm.training import engines

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="asks for FSDP version 1, which does not run on CPUs; set fsdp_version: 2"):
        engines.accelerator()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # not installed
    with pytest.raises(ValueError, match=r"asks for DeepSpeed, which is not installed: pip install 'mmdlm\[scale\]'"):
        engines.accelerator()


def test_low_memory_building_leaves_the_weights_to_the_main_process(inputs, monkeypatch, tmp_path):
    """FSDP's RAM-efficient loading: the other processes build the DLM on the meta device (no
    weights read) and probe it once the weights are in place."""
    from mmdlm.commands.adapt import AdaptConfig, build_dlm
    from mmdlm.training.engines import low_memory_loading

    assert not low_memory_loading()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    assert low_memory_loading()
    no_weights = tmp_path / "no-weights"  # the checkpoint without its weights: the empty build never reads them
    shutil.copytree(inputs / "causal", no_weights)
    (no_weights / "model.safetensors").unlink()
    for init in ("pretrained", "random"):
        empty, _ = build_dlm(AdaptConfig(model=str(no_weights), init=init, seq_len=16), empty=True, check=False)
        full, _ = build_dlm(AdaptConfig(model=str(inputs / "causal"), init=init, seq_len=16))
        assert {p.device.type for p in empty.parameters()} == {"meta"}
        assert {b.device.type for b in empty.buffers()} == {"cpu"}  # RoPE's frequencies, computed
        assert empty.mask_token_id == full.mask_token_id
        assert {k: v.shape for k, v in empty.state_dict().items()} == {k: v.shape for k, v in full.state_dict().items()}
        empty.load_state_dict(full.state_dict(), assign=True)  # what the engine's broadcast does
        empty.check_bidirectional()
    from mmdlm.text.base import build_causal_lm, load_tokenizer

    tied = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64}
    tokenizer = load_tokenizer(str(inputs / "causal"))
    names = [[n for n, _ in build_causal_lm(tied, tokenizer, empty=e).named_parameters()] for e in (True, False)]
    assert names[0] == names[1]  # a tied head stays tied when built empty (FSDP maps parameters by name)
