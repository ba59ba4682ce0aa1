import pytest
import torch
from conftest import tiny_causal_lm

from mmdlm.pipelines import TextDiffusionPipeline
from mmdlm.schedulers import MaskedDiffusionScheduler
from mmdlm.text import history as h
from mmdlm.text.adapt import DiffusionLM


@pytest.fixture
def pipe(tmp_path, tokenizer):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("qwen2", tokenizer), tokenizer)
    dlm.save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    p = TextDiffusionPipeline.from_dlm(tmp_path / "dlm")
    p.set_progress_bar_config(disable=True)
    return p


def test_save_load_round_trip(pipe, tmp_path):
    kw = dict(gen_length=6, num_inference_steps=3, temperature=0.7)
    a = pipe(["def f(x):", "import os"], generator=torch.Generator().manual_seed(0), **kw)
    pipe.save_pretrained(tmp_path / "pipe")
    again = TextDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again.scheduler, MaskedDiffusionScheduler)
    assert again.mask_token_id == pipe.mask_token_id
    index = (tmp_path / "pipe" / "model_index.json").read_text()
    assert "mask_token_id" not in index and (tmp_path / "pipe" / "model" / "mmdlm.json").is_file()  # one owner
    b = again(["def f(x):", "import os"], generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a.sequences, b.sequences) and a.texts == b.texts


def test_generic_loader_keeps_the_models_diffusion_settings(tmp_path, tokenizer, monkeypatch):
    """diffusers' DiffusionPipeline.from_pretrained builds the pipeline itself: the DiffusionConfig
    still comes from model/mmdlm.json (here a block model with a cosine schedule), not from defaults."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import dynamic_modules_utils

    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer, attention="block", block_size=4,
                                     shift=False, schedule="cosine")
    dlm.save_pretrained(tmp_path / "dlm", tokenizer=tokenizer)
    TextDiffusionPipeline.from_dlm(tmp_path / "dlm").save_pretrained(tmp_path / "pipe")
    generic = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    assert isinstance(generic, TextDiffusionPipeline) and generic.dlm.config == dlm.config


def test_batch_left_padding_matches_single(pipe):
    """A short prompt in a batch with a longer one generates what it generates alone."""
    alone = pipe("x", gen_length=5, num_inference_steps=5)
    batch = pipe(["x", "import os, sys"], gen_length=5, num_inference_steps=5)
    assert batch.sequences.shape[0] == 2
    assert batch.sequences[0, -5:].tolist() == alone.sequences[0, -5:].tolist()


def test_callbacks_history_and_output_types(pipe):
    seen = []

    def cb(p, i, t, tensors):
        seen.append((i, round(t, 3), tuple(tensors["sequences"].shape)))
        return {}

    out = pipe("a", gen_length=4, num_inference_steps=4, callback_on_step_end=cb,
               callback_on_step_end_tensor_inputs=["sequences"], return_history=True, output_type="ids")
    assert [s[0] for s in seen] == [1, 2, 3, 4] and seen[0][1] == 1.0

    def force_last(p, i, t, tensors):  # a callback can edit the ids
        seq = tensors["sequences"].clone()
        seq[:, -1] = 7
        return {"sequences": seq}

    forced = pipe("a", gen_length=4, num_inference_steps=4, callback_on_step_end=force_last,
                  callback_on_step_end_tensor_inputs=["sequences"], output_type="ids")
    assert (forced.sequences[:, -1] == 7).all()
    assert out.texts is None and len(out.history) == 5
    frames = h.frames(pipe.tokenizer, out.history, pipe.mask_token_id, start=1)
    assert [s for _, s in frames[0]].count("masked") == 4 and "masked" not in [s for _, s in frames[-1]]
    assert sum(s == "new" for _, s in frames[1]) == 1


def test_infill_and_bad_inputs(pipe):
    out = pipe("x = <|mask:3|> + 1", gen_length=0, num_inference_steps=3)
    assert out.texts[0].startswith("x = ") and out.texts[0].endswith(" + 1")
    with pytest.raises(ValueError, match="context is 64"):
        pipe("x " * 70, gen_length=8)
    with pytest.raises(ValueError, match="nothing to generate"):
        pipe("x", gen_length=0)
    with pytest.raises(ValueError, match="threshold"):
        pipe("x", gen_length=4, threshold=1.5)
    with pytest.raises(ValueError, match="output_type"):
        pipe("x", gen_length=4, output_type="pil")
    with pytest.raises(ValueError, match="steps"):
        pipe("x", gen_length=4, num_inference_steps=0)


def test_remasking_is_a_call_option(pipe):
    out = pipe("a", gen_length=6, num_inference_steps=6, remasking=True, output_type="ids")
    assert not (out.sequences == pipe.mask_token_id).any()
    assert pipe.scheduler.config.remasking is False  # a call option, not a change to the scheduler
    with pytest.raises(ValueError, match="remasking ranks by confidence"):  # it reaches the scheduler
        pipe("a", gen_length=6, remasking=True, threshold=0.5)


def test_editing_is_a_call_option(pipe):
    out = pipe("a", gen_length=6, num_inference_steps=6, editing_threshold=0.5, output_type="ids")
    assert not (out.sequences == pipe.mask_token_id).any()
    assert pipe.scheduler.config.editing_threshold is None
    with pytest.raises(ValueError, match="choose one"):
        pipe("a", gen_length=6, remasking=True, editing_threshold=0.5)


CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_is_prompted_as_sft_trains_and_stops_at_the_end_of_turn(tmp_path, tokenizer):
    from mmdlm.data.sft import encode_sft
    from mmdlm.text.chat import render_chat

    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer).save_pretrained(tmp_path / "dlm",
                                                                                          tokenizer=tokenizer)
    chat_pipe = TextDiffusionPipeline.from_dlm(tmp_path / "dlm")
    chat_pipe.set_progress_bar_config(disable=True)
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "def f(x):"}]
    trained, _ = encode_sft([{"messages": [*chat, {"role": "assistant", "content": "ok"}]}], tokenizer, 64)
    n = int(trained["prompt_mask"].sum())

    def end_turn(pipe, step, t, tensors):  # the model "answers" one token, then ends its turn
        seq = tensors["sequences"]
        seq[:, n + 1] = end
        return {"sequences": seq}

    kw = dict(gen_length=6, block_length=2, num_inference_steps=6, callback_on_step_end=end_turn,
              callback_on_step_end_tensor_inputs=["sequences"])
    as_chat = chat_pipe(messages=chat, **kw)
    assert torch.equal(as_chat.sequences[0, :n], trained["input_ids"][0, :n])  # the prompt sft trains with
    assert as_chat.sequences[0, n + 2:].eq(tokenizer.eos_token_id).all()  # later blocks: EOS, not generated
    assert as_chat.texts[0] == tokenizer.decode(as_chat.sequences[0, n:n + 1])
    plain = chat_pipe(render_chat(tokenizer, chat), **kw)  # the same text as a plain prompt: no end of turn
    assert torch.equal(plain.sequences[0, :n], as_chat.sequences[0, :n]) and "<|im_end|>" in plain.texts[0]
    batch = chat_pipe(messages=[chat, chat[1:]], gen_length=2, num_inference_steps=2)
    assert len(batch.texts) == 2
    for bad, match in (({"prompt": "x", "messages": chat}, "not both"), ({"messages": [{"role": "bot"}]}, "messages"),
                       ({"messages": []}, "messages must be a chat")):
        with pytest.raises(ValueError, match=match):
            chat_pipe(gen_length=2, **bad)


def test_history_writers(tmp_path, pipe):
    out = pipe("a", gen_length=3, num_inference_steps=3, return_history=True)
    frames = h.frames(pipe.tokenizer, out.history, pipe.mask_token_id, start=1)
    h.write_html(frames, tmp_path / "u.html")
    h.write_gif(frames, tmp_path / "u.gif")
    assert "const frames" in (tmp_path / "u.html").read_text()
    from PIL import Image

    with Image.open(tmp_path / "u.gif") as gif:
        assert gif.n_frames == 4
    import io

    buf = io.StringIO()
    h.play_terminal(frames, delay=0, stream=buf)
    assert buf.getvalue().count("step ") == 4


def test_scheduler_config_round_trip(tmp_path):
    s = MaskedDiffusionScheduler(num_inference_steps=7, schedule="cosine", threshold=0.9, rule="margin")
    s.save_pretrained(tmp_path / "s")
    t = MaskedDiffusionScheduler.from_pretrained(tmp_path / "s")
    assert t.config.threshold == 0.9 and t.config.rule == "margin" and len(t) == 7
    with pytest.raises(ValueError, match="unknown rule"):
        MaskedDiffusionScheduler(rule="vibes")
    with pytest.raises(ValueError, match="top_p"):
        MaskedDiffusionScheduler(top_p=0)
