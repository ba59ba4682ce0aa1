"""The arithmetic task: problems and their split, AR SFT on the response, exact-answer evaluation,
the race's core and `mmdlm eval-task`, on tiny models."""
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_causal_lm
from transformers import AutoConfig, AutoModelForCausalLM

from mmdlm import cli
from mmdlm.data import arithmetic
from mmdlm.data.arithmetic import (
    HELD_OUT_WORDS,
    TEMPLATES,
    TRAIN_WORDS,
    exact_match,
    is_held_out,
    parse_answer,
    problems,
)
from mmdlm.data.sft import encode_sft, load_sft_splits
from mmdlm.eval.task import _score, evaluate_ar
from mmdlm.pipelines import TextDiffusionPipeline
from mmdlm.schedulers import MaskedDiffusionScheduler
from mmdlm.text.adapt import DiffusionLM
from mmdlm.training import TrainArgs
from mmdlm.training.causal import IGNORE, CausalLMTrainer, response_labels
from mmdlm.training.diffusion import DiffusionTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import report  # noqa: E402
from sampling_task import race, time_split  # noqa: E402

STEP = re.compile(r"^(?:(\w+)=)?(\w*)([-+*/])(\d+)=(\d+)$")  # [var=]left op y=result


pytestmark = pytest.mark.usefixtures("one_thread")


def test_problems_are_deterministic_correct_and_in_range():
    train = problems("train", 700)
    assert train == problems("train", 700) and train != problems("train", 700, seed=1)
    assert len({r["prompt"] for r in train}) == 700
    assert {r["template"] for r in train} == {t.name for t in TEMPLATES}
    for r in train:
        values, previous = {}, None  # the program's variables; the last result
        for line in r["response"].split("\n"):
            if m := re.fullmatch(r"(\d+)>(\d+)=(True|False)", line):  # the branch's test
                assert m[3] == str(int(m[1]) > int(m[2]))
                continue
            m = STEP.match(line)
            assert m, line
            var, left, op, y, result = m[1], m[2], m[3], int(m[4]), int(m[5])
            # the left operand: a number from the prompt, a variable computed before, or (a word
            # problem's later lines) nothing, going on from the result before
            x = int(left) if left.isdigit() else values[left] if left else previous
            assert left.isdigit() == (previous is None)  # a result is never written a second time
            assert result == {"+": x + y, "-": x - y, "*": x * y, "/": x / y}[op] and 0 <= result <= 40
            if var:
                values[var] = result
            previous = result
        assert previous == r["answer"] == parse_answer(r["response"])
        assert all(2 <= x <= 18 for x in r["numbers"]) and all(f" {x}" in r["prompt"] or f"({x})" in r["prompt"]
                                                                for x in r["numbers"])


def test_held_out_split_shares_no_number_tuple_and_no_word_with_training():
    train, held = problems("train", 3000), problems("held_out", 300)
    assert all(is_held_out(tuple(r["numbers"])) for r in held)
    assert not any(is_held_out(tuple(r["numbers"])) for r in train)
    assert not {tuple(r["numbers"]) for r in train} & {tuple(r["numbers"]) for r in held}
    held_words = [n for n, _ in HELD_OUT_WORDS["names"]] + HELD_OUT_WORDS["objects"]
    train_words = [n for n, _ in TRAIN_WORDS["names"]] + TRAIN_WORDS["objects"]
    assert not any(re.search(rf"\b{w}\b", r["prompt"]) for r in train for w in held_words)
    assert not any(re.search(rf"\b{w}\b", r["prompt"]) for r in held for w in train_words)
    with pytest.raises(ValueError, match="unknown split"):
        problems("test", 1)


def test_answer_parser_and_exact_match():
    assert parse_answer("3+4=7\n-2=5") == 5 and parse_answer("x=3+4=7\nx*2=14\n") == 14
    assert parse_answer("3+4=7\n-2") is None and parse_answer("") is None
    assert exact_match(["4+3=7", "4+4=8", "7"], [7, 7, 7]) == [True, False, False]
    with pytest.raises(ValueError, match="2 texts for 1 answers"):
        exact_match(["a", "b"], [1])


def test_arithmetic_is_a_builtin_sft_set(monkeypatch, tokenizer):
    monkeypatch.setattr(arithmetic, "TRAIN_SIZE", 40)
    monkeypatch.setattr(arithmetic, "HELD_OUT_SIZE", 8)
    train, validation, info = load_sft_splits("arithmetic")
    assert (len(train), len(validation), info["source"]) == (40, 8, "arithmetic")
    assert validation == problems("held_out", 8)
    data, stats = encode_sft(train, tokenizer, 256)
    assert stats.kept == 40


def test_response_labels_keep_the_response_and_its_first_eos():
    eos = 0
    ids = torch.tensor([[5, 6, 7, 8, 9, eos, eos, eos]])
    prompt = torch.tensor([[True, True, True, False, False, False, False, False]])
    assert response_labels(ids, prompt, eos).tolist() == [[IGNORE, IGNORE, IGNORE, 8, 9, eos, IGNORE, IGNORE]]


def test_ar_sft_learns_the_responses_and_to_stop(tmp_path, tokenizer):
    """A tiny causal LM overfits three pairs with the loss on the response only: greedy decoding
    writes each response, then EOS; the prompt was not learned."""
    model = tiny_causal_lm("llama", tokenizer).train()
    records = [{"prompt": "def add(a, b):\n", "response": "    return a + b\n"},
               {"prompt": "class Point:\n", "response": "    def __init__(self, x, y):\n"},
               {"prompt": "for i in range(10):\n", "response": "    print(i * i)\n"}]
    data, _ = encode_sft(records, tokenizer, 28)
    args = TrainArgs(output_dir=str(tmp_path), max_steps=150, batch_size=3, lr=1e-2, warmup_steps=10,
                     log_every=50, eval_batches=1)
    trainer = CausalLMTrainer(model, data, args, tokenizer=tokenizer)
    trainer.train()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()  # a plain transformers checkpoint
    tally = evaluate_ar(model, tokenizer, [{**r, "answer": 0, "family": "code"} for r in records], batch_size=3)
    assert tally.outputs == [r["response"] for r in records]
    assert tally.tokens == sum(len(tokenizer(r["response"])["input_ids"]) + 1 for r in records)  # + EOS
    assert tally.summary()["tokens_per_forward"] == 1.0


def test_score_counts_the_response_to_its_first_eos(tokenizer):
    records = problems("held_out", 2)
    eos = tokenizer.eos_token_id
    right = tokenizer(records[0]["response"], add_special_tokens=False)["input_ids"]
    wrong = tokenizer("1+1=2\n*9=18", add_special_tokens=False)["input_ids"]
    tally = _score(tokenizer, records, [right + [eos, eos, 7], wrong], seconds=2.0, nfe=10, committed=15)
    assert (tally.n, tally.correct, tally.tokens) == (2, 1, len(right) + 1 + len(wrong))
    assert tally.outputs == [records[0]["response"], "1+1=2\n*9=18"]
    s = tally.summary()
    assert s["accuracy"] == 0.5 and s["accuracy_se"] == 0.3536 and s["nfe_per_token"] == round(20 / tally.tokens, 4)
    assert s["tokens_per_forward"] == 0.75 and s["accuracy_by_family"][records[0]["family"]] in (0.5, 1.0)
    both = tally + tally
    assert both.summary()["accuracy"] == 0.5 and both.n == 4 and both.seconds == 4.0


def _tiny(tokenizer):
    """A tiny causal LM with room for the task's prompts in a 300-token BPE."""
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def test_race_core_on_tiny_models(tokenizer_factory):
    ar_tokenizer, dlm_tokenizer = tokenizer_factory(), tokenizer_factory()
    ar = _tiny(ar_tokenizer)
    dlm = DiffusionLM.from_causal_lm(_tiny(dlm_tokenizer), dlm_tokenizer).eval()
    pipe = TextDiffusionPipeline(dlm.model, dlm_tokenizer, MaskedDiffusionScheduler(), diffusion_config=dlm.config)
    pipe.set_progress_bar_config(disable=True)
    configs = [{"method": "ar_greedy"}, {"method": "dlm_vanilla"},
               {"method": "dlm_dual_cache", "block_length": 8, "threshold": 0.5, "cache": "dual"},
               {"method": "dlm_dual_cache", "block_length": 4, "threshold": 0.5, "cache": "dual", "refresh_every": 4}]
    records = race(ar, ar_tokenizer, pipe, problems("held_out", 3), configs=configs, batch_sizes=(1, 2), rounds=2,
                   gen_length=16)
    assert [(r["batch_size"], r["method"]) for r in records] == [(b, c["method"]) for b in (1, 2) for c in configs]
    for r in records:
        assert r["n"] == 3 and 0 < r["tokens"] <= 3 * 16 and r["tokens_per_s"] > 0 and len(r["sample_outputs"]) == 3
        assert 0 <= r["accuracy"] <= 1 and isinstance(r["equal_quality"], bool)
    ar1, vanilla1, dual1, stale1 = records[:4]
    assert dual1["refresh_every"] == 1 and dual1["same_output_as_every_block_refresh"] == 1.0  # itself
    assert stale1["refresh_every"] == 4 and stale1["same_output_as_every_block_refresh"] is None  # no b4 r1 run
    assert vanilla1["same_output_as_every_block_refresh"] is None
    assert ar1["tokens_per_forward"] == 1.0 and ar1["nfe_per_token"] == 1.0 and ar1["x_ar"] == 1.0
    assert vanilla1["tokens_per_forward"] == 1.0  # one token per step without a threshold
    assert dual1["tokens_per_forward"] >= 1.0
    with pytest.raises(ValueError, match="ar_greedy"):
        race(ar, ar_tokenizer, pipe, problems("held_out", 1), configs=configs[1:])
    split = time_split(ar, ar_tokenizer, pipe, problems("held_out", 2), records, 2, gen_length=16)
    assert 0 < split["ar"]["prefill_share"] < 1
    shares = split["dlm"]["shares"]
    assert "full_pass" in shares and all(0 < v < 1 for v in shares.values())  # the sampler's labelled passes
    assert sum(shares.values()) + split["dlm"]["other_share"] == pytest.approx(1, abs=1e-3)

    result = {"records": records, "versions": {"torch": torch.__version__}, "command": "python bench/sampling_task.py",
              "settings": {"n": 3, "gen_length": 16, "steps": 16, "batch_sizes": [1, 2], "rounds": 2,
                           "torch_threads": 1, "equal_quality": "within a point", "tokens": "to the first EOS"},
              "machine": {"cpus": 2, "load_average_before": [1.0], "load_average_after": [1.5], "shared": "shared"},
              "time_split": [split]}
    table = report.sampling_task(result).splitlines()
    assert len([row for row in table if row.startswith("| 1 |") or row.startswith("| 2 |")]) == 8
    assert any("| dual | 4 |" in row for row in table)  # the cache column says how often it is refreshed
    assert table[-3].startswith("- Batch 1: fastest DLM configuration") and table[-2].startswith("- Batch 2:")
    assert table[-1].startswith("- Where the time goes at batch 2 (2 problems): AR greedy spends")


def test_eval_task_command(tmp_path, tokenizer_factory, capsys):
    ar_tokenizer, dlm_tokenizer = tokenizer_factory(), tokenizer_factory()
    _tiny(ar_tokenizer).save_pretrained(tmp_path / "ar")
    ar_tokenizer.save_pretrained(tmp_path / "ar")
    DiffusionLM.from_causal_lm(_tiny(dlm_tokenizer), dlm_tokenizer).save_pretrained(tmp_path / "dlm",
                                                                                    tokenizer=dlm_tokenizer)
    out = tmp_path / "task.json"
    argv = ["eval-task", "--model", str(tmp_path / "dlm"), "--ar-model", str(tmp_path / "ar"), "--n", "2",
            "--gen-length", "16", "--steps", "16", "--block-length", "8", "--output", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "held-out problem 2" in printed and re.search(r"DLM: \d/2 right", printed) and "AR : " in printed
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"dlm", "ar"} and result["results"]["dlm"]["n"] == 2
    assert cli.main([*argv, "--cache", "bogus"]) == 2
    assert "unknown cache 'bogus'" in capsys.readouterr().err
    assert cli.main([*argv, "--threshold", "1.5"]) == 2
    assert "threshold must be in (0, 1]" in capsys.readouterr().err


def test_sft_of_a_causal_lm_saves_a_transformers_checkpoint(tmp_path, tokenizer, monkeypatch, capsys):
    monkeypatch.setattr(arithmetic, "TRAIN_SIZE", 16)
    monkeypatch.setattr(arithmetic, "HELD_OUT_SIZE", 4)
    _tiny(tokenizer).save_pretrained(tmp_path / "ar")
    tokenizer.save_pretrained(tmp_path / "ar")
    out = tmp_path / "sft"
    argv = ["sft", "--model", str(tmp_path / "ar"), "--dataset", "arithmetic", "--seq-len", "200", "--max-steps", "2",
            "--batch-size", "2", "--warmup-steps", "0", "--eval-batches", "1", "--output-dir", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "fine-tuned causal LM saved" in capsys.readouterr().out
    assert not (out / "model" / "mmdlm.json").exists() and (out / "model" / "tokenizer.json").exists()
    AutoModelForCausalLM.from_pretrained(out / "model")
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["source"] == "arithmetic" and run["train_sequences"] == 16
    assert cli.main([*argv, "--t-sampling", "uniform"]) == 2
    assert "t_sampling is a diffusion LM setting" in capsys.readouterr().err
    assert cli.main([*argv, "--lora-r", "2"]) == 2
    assert "LoRA SFT is for diffusion LMs" in capsys.readouterr().err
    assert cli.main([*argv, "--ar-loss-weight", "1"]) == 2
    assert "ar_loss_weight is a diffusion LM setting" in capsys.readouterr().err


def test_sft_of_a_diffusion_lm_with_an_auxiliary_ar_loss(tmp_path, tokenizer, monkeypatch, capsys):
    monkeypatch.setattr(arithmetic, "TRAIN_SIZE", 8)
    monkeypatch.setattr(arithmetic, "HELD_OUT_SIZE", 2)
    DiffusionLM.from_causal_lm(_tiny(tokenizer), tokenizer).save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    out = tmp_path / "sft"
    seen = []
    original = DiffusionTrainer.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs["ar_loss_weight"])
        original(self, *args, **kwargs)

    monkeypatch.setattr(DiffusionTrainer, "__init__", spy)
    argv = ["sft", "--model", str(tmp_path / "dlm"), "--dataset", "arithmetic", "--seq-len", "200", "--max-steps",
            "1", "--batch-size", "2", "--warmup-steps", "0", "--eval-batches", "1", "--ar-loss-weight", "0.5",
            "--output-dir", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert seen == [0.5] and json.loads((out / "run.json").read_text())["config"]["ar_loss_weight"] == 0.5
    assert (out / "model" / "mmdlm.json").exists()


def test_assets_row_of_a_run_stopped_early(tmp_path):
    run = {"config": {"dataset": "arithmetic", "model": "assets/teacher", "max_steps": 2500, "batch_size": 32}}
    log = [{"step": "1500", "tokens": "3456000", "elapsed_s": "1800"},  # then resumed: the clock starts again
           {"step": "1750", "tokens": "4032000", "elapsed_s": "600"}]
    recipe, tokens, loss = report._describe(tmp_path, run, log)
    assert "1750 (of 2500) steps x 32, 40 min" in recipe and tokens == "4,032,000"
    assert loss.startswith("next-token CE")
    recipe, _, _ = report._describe(tmp_path, run, [{**log[1], "step": "2500"}])
    assert "2500 steps x 32, 10 min" in recipe
