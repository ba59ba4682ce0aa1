"""SFT: prompt/response data, the prompt never noised, EOS padding learned, the built-in set."""
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_causal_lm

from mmdlm import cli
from mmdlm.data.sft import encode_sft, function_pairs
from mmdlm.diffusion import corrupt, get_schedule
from mmdlm.pipelines import TextDiffusionPipeline
from mmdlm.schedulers import MaskedDiffusionScheduler
from mmdlm.text import attention as attn
from mmdlm.text.adapt import DiffusionLM, load_dlm
from mmdlm.text.chat import render_chat
from mmdlm.training import TrainArgs
from mmdlm.training.diffusion import DiffusionTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


SOURCE = '''import os


def top(a, b=1):
    """Add.

    More."""
    c = a + b

    return c


class K:
    async def meth(self):
        """Doc."""
        # comment
        return 1


def nodoc(x):
    return x


def only_doc():
    """Nothing else."""
'''


def test_function_pairs_split_signature_and_docstring_from_the_body():
    assert function_pairs([SOURCE, "def broken(:\n"]) == [
        {"prompt": 'def top(a, b=1):\n    """Add.\n\n    More."""\n', "response": "    c = a + b\n\n    return c\n"},
        {"prompt": 'async def meth(self):\n    """Doc."""\n', "response": "    # comment\n    return 1\n"},
    ]


def test_encode_sft_layout_padding_and_drops(tokenizer):
    records = [{"q": "def f(x):\n", "a": "    return x\n"},
               {"q": "x" * 200, "a": "y"},  # the prompt alone is too long
               {"q": "def g():\n", "a": "    pass\n" * 30},  # the response is too long
               {"q": "def h():\n", "a": ""}]
    data, stats = encode_sft(records, tokenizer, 24, prompt_field="q", response_field="a")
    p = [tokenizer.bos_token_id] + tokenizer("def f(x):\n", add_special_tokens=False)["input_ids"]
    r = tokenizer("    return x\n", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    assert data["input_ids"].tolist() == [p + r + [eos] * (24 - len(p) - len(r))]
    assert data["prompt_mask"].tolist() == [[True] * len(p) + [False] * (24 - len(p))]
    assert (stats.records, stats.kept, stats.dropped_too_long, stats.dropped_prompt_too_long,
            stats.dropped_empty) == (4, 1, 2, 1, 1)
    with pytest.raises(ValueError, match="'prompt'"):
        encode_sft([{"question": "a", "response": "b"}], tokenizer, 24)


def test_chat_template_path(tokenizer):
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    by_messages, _ = encode_sft([{"messages": chat}], tokenizer, 32)
    by_pair, _ = encode_sft([{"prompt": "hi", "response": "ok"}], tokenizer, 32)
    assert torch.equal(by_messages["input_ids"], by_pair["input_ids"])
    n_prompt = int(by_pair["prompt_mask"].sum())
    assert tokenizer.decode(by_pair["input_ids"][0, 1:n_prompt]) == render_chat(tokenizer, chat[:1]) == \
        "<user>hi\n<assistant>"
    assert tokenizer.decode(by_pair["input_ids"][0, n_prompt:]).startswith("ok\n")
    plain, _ = encode_sft([{"prompt": "hi", "response": "ok"}], tokenizer, 32, chat_template=False)
    assert not torch.equal(plain["input_ids"], by_pair["input_ids"])
    with pytest.raises(ValueError, match="assistant"):
        encode_sft([{"messages": chat[:1]}], tokenizer, 32)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        encode_sft([{"prompt": "hi", "response": "ok"}], tokenizer, 32, chat_template=True)


def test_prompt_is_never_masked_and_loss_is_per_response_token(tmp_path, tokenizer):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer).eval()
    records = [{"prompt": f"def f{i}(x):\n", "response": f"    return x * {i}\n"} for i in range(6)]
    data, stats = encode_sft(records, tokenizer, 28)
    assert stats.kept == 6
    trainer = DiffusionTrainer(dlm, data, TrainArgs(output_dir=str(tmp_path), max_steps=1, batch_size=6))
    seen = []

    def model(x_t, **kw):
        seen.append(x_t)
        return trainer.model(x_t, **kw)

    x0, prompt = data["input_ids"], data["prompt_mask"]
    got = trainer.diffusion_loss(model, x0, 0, torch.Generator().manual_seed(3), prompt_mask=prompt)
    x_t = seen[0]
    masked = x_t == dlm.mask_token_id
    assert not masked[prompt].any() and masked[~prompt].sum() > 10

    g = torch.Generator().manual_seed(3)
    sched = get_schedule("linear")
    t = sched.sample_t(6, generator=g, method="stratified")
    protect = prompt.clone()
    protect[:, 0] = True
    _, expected_masked = corrupt(x0, t, dlm.mask_token_id, sched, protect=protect, generator=g)
    assert torch.equal(expected_masked, masked)
    raw = dlm.model(input_ids=x_t, attention_mask=attn.to_additive(attn.bidirectional(28))).logits
    total = sum(F.cross_entropy(raw[b, j - 1], x0[b, j]) / t[b]
                for b in range(6) for j in range(1, 28) if masked[b, j])
    assert torch.allclose(got, total / (~prompt).sum(), rtol=1e-5)  # normalised by the response tokens


def test_sft_learns_the_responses_and_to_stop(tmp_path, tokenizer):
    """A tiny DLM overfits three pairs: generation writes each response, then EOS (the padding learned)."""
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    records = [{"prompt": "def add(a, b):\n", "response": "    return a + b\n"},
               {"prompt": "class Point:\n", "response": "    def __init__(self, x, y):\n"},
               {"prompt": "for i in range(10):\n", "response": "    print(i * i)\n"}]
    data, stats = encode_sft(records, tokenizer, 28)
    assert stats.kept == 3
    args = TrainArgs(output_dir=str(tmp_path), max_steps=300, batch_size=3, lr=1e-2, warmup_steps=10, log_every=50,
                     eval_batches=1)
    trainer = DiffusionTrainer(dlm, data, args, tokenizer=tokenizer)
    trainer.train()
    dlm = trainer.accelerator.unwrap_model(trainer.model).eval()
    pipe = TextDiffusionPipeline(dlm.model, tokenizer, MaskedDiffusionScheduler(), diffusion_config=dlm.config)
    pipe.set_progress_bar_config(disable=True)
    outputs = [pipe(r["prompt"], gen_length=22, num_inference_steps=22).texts[0] for r in records]
    assert outputs == [r["response"] for r in records]  # cut at the first EOS: the model stopped


def test_sft_command_on_the_builtin_set(tmp_path, tokenizer, capsys):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    dlm.save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    out = tmp_path / "sft"
    code = cli.main(["sft", "--model", str(tmp_path / "dlm"), "--max-files", "40", "--seq-len", "64",
                     "--max-steps", "2", "--batch-size", "2", "--warmup-steps", "0", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "dropped as longer than seq_len 64" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    stats = run["train_stats"]
    assert stats["kept"] > 0 and stats["kept"] + stats["dropped_too_long"] + stats["dropped_empty"] == stats["records"]
    assert run["data"]["records"].startswith("stdlib functions") and run["data"]["files"] == 40
    again, _ = load_dlm(out / "model")
    assert again.config == dlm.config

    code = cli.main(["sft", "--model", str(tmp_path / "dlm"), "--max-files", "40", "--seq-len", "4",
                     "--max-steps", "1", "--output-dir", str(tmp_path / "none")])
    assert code == 2 and "no training example fits in seq_len 4" in capsys.readouterr().err
