"""DualDiffusionPipeline: every task through one loop, guidance, history, callbacks, save/load,
VAE latents, bad input; the mmdit training recipe; the t2i / caption commands."""
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from PIL import Image

from mmdlm import cli
from mmdlm.data import shapes as S
from mmdlm.data.tokenizer import train_word_tokenizer
from mmdlm.diffusion import mask_ratio
from mmdlm.multimodal import encode_captions
from mmdlm.multimodal.mmdit import DualDiffusionTransformer2DModel
from mmdlm.pipelines import DualDiffusionPipeline, load_pipeline
from mmdlm.schedulers import MaskedDiffusionScheduler

PROMPT = "a small red circle left of a large blue square"
LENGTH = 12


@pytest.fixture(scope="module")
def caption_tokenizer():
    return train_word_tokenizer([S.caption(s) for s in S.all_scenes()[:400]] + [PROMPT])


def make_pipe(tok, vae=None, size=16, seed=0):
    torch.manual_seed(seed)
    channels = vae.config.latent_channels if vae is not None else 3
    side = size // (2 ** (len(vae.config.block_out_channels) - 1)) if vae is not None else size
    model = DualDiffusionTransformer2DModel(
        sample_size=side, patch_size=2, in_channels=channels, out_channels=channels, num_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
        pooled_projection_dim=16, pos_embed_max_size=side // 2, vocab_size=len(tok), text_length=LENGTH,
        mask_token_id=tok.mask_token_id).eval()
    with torch.no_grad():  # random weights everywhere, so that every input matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    pipe = DualDiffusionPipeline(model, tok, FlowMatchEulerDiscreteScheduler(), MaskedDiffusionScheduler(), vae=vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8),
                         norm_num_groups=8, latent_channels=4, sample_size=16).eval()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def pipe(caption_tokenizer):
    return make_pipe(caption_tokenizer)


def shapes_image(size=16):
    return S.render(S.parse_caption(PROMPT), size, 0)


def test_every_task_through_one_loop(pipe):
    out = pipe(PROMPT, num_inference_steps=3, generator=gen(), num_images_per_prompt=2)
    assert len(out.images) == 2 and out.images[0].size == (16, 16) and out.texts is None
    out = pipe(image=[shapes_image(), shapes_image()], num_inference_steps=3)
    assert out.images is None and len(out.texts) == 2 and all(isinstance(t, str) for t in out.texts)
    out = pipe(task="joint", num_images_per_prompt=3, num_inference_steps=3, generator=gen())
    assert len(out.images) == 3 and len(out.texts) == 3
    question = "a small <|mask:2|> left of a large blue square"
    out = pipe(question, image=shapes_image(), num_inference_steps=2)  # vqa: question fixed, answer masked
    assert out.images is None and out.texts[0].startswith("a small ") and out.texts[0].endswith(
        " left of a large blue square")
    assert len(out.texts[0].split()) == len(PROMPT.split())
    out = pipe(question, num_inference_steps=2, generator=gen())  # caption infilling without an image: both
    assert len(out.images) == 1 and len(out.texts) == 1
    out = pipe(question, image=shapes_image(), task="infill", num_inference_steps=2)
    assert out.images is None and len(out.texts) == 1


def test_generator_fixes_everything_and_output_types(pipe):
    a = pipe(task="joint", num_images_per_prompt=2, num_inference_steps=3, generator=gen(5), output_type="pt",
             temperature=1.0)
    b = pipe(task="joint", num_images_per_prompt=2, num_inference_steps=3, generator=gen(5), output_type="pt",
             temperature=1.0)
    c = pipe(task="joint", num_images_per_prompt=2, num_inference_steps=3, generator=gen(6), output_type="pt",
             temperature=1.0)
    assert torch.equal(a.images, b.images) and a.texts == b.texts and not torch.equal(a.images, c.images)
    assert a.images.shape == (2, 3, 16, 16) and 0 <= a.images.min() and a.images.max() <= 1
    arr = pipe(PROMPT, num_inference_steps=2, generator=gen(), output_type="np").images
    assert arr.shape == (1, 16, 16, 3)
    per_sample = pipe([PROMPT, PROMPT], num_inference_steps=2, generator=[gen(1), gen(2)], output_type="pt").images
    alone = pipe(PROMPT, num_inference_steps=2, generator=gen(2), output_type="pt").images
    assert torch.allclose(per_sample[1], alone[0], atol=1e-5)


def test_stochastic_sampling_draws_from_the_generator(pipe):
    """diffusers' stochastic_sampling re-noises every step: the fresh noise comes from `generator`
    (per sample for a list), not from torch's global generator."""
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append(pipe([PROMPT, PROMPT], num_inference_steps=3, generator=[gen(1), gen(2)], output_type="pt").images)
    assert torch.equal(runs[0], runs[1])
    alone = pipe(PROMPT, num_inference_steps=3, generator=gen(2), output_type="pt").images
    assert torch.allclose(runs[0][1], alone[0], atol=1e-5)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # the Euler step: another image
    assert not torch.allclose(pipe(PROMPT, num_inference_steps=3, generator=gen(2), output_type="pt").images, alone)


@pytest.mark.parametrize("settings", [dict(shift=3.0, stochastic_sampling=True), dict(use_karras_sigmas=True),
                                      dict(use_exponential_sigmas=True), dict(use_beta_sigmas=True),
                                      dict(shift_terminal=0.1), dict(use_dynamic_shifting=True)])
def test_flow_match_settings_drive_the_loop(pipe, settings):
    """Every stock setting of FlowMatchEulerDiscreteScheduler is accepted and sets the noise levels
    the loop follows (from 1 down to 0); dynamic shifting gets diffusers' SD3/Flux mu, from the
    image's sequence length: (16 / patch 2)^2 = 64 patches."""
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(**settings)
    images = pipe(PROMPT, num_inference_steps=4, generator=gen(), output_type="pt").images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    reference = FlowMatchEulerDiscreteScheduler(**settings)
    c = reference.config
    mu = None
    if c.use_dynamic_shifting:  # mu = shift interpolated linearly in the sequence length (calculate_shift)
        slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
        mu = c.base_shift + slope * (64 - c.base_image_seq_len)
    reference.set_timesteps(4, mu=mu)
    assert torch.allclose(pipe.scheduler.sigmas, reference.sigmas)
    assert pipe.scheduler.sigmas[0] > 0.5 and pipe.scheduler.sigmas[-1] == 0


def test_guidance_in_both_directions(pipe, monkeypatch):
    seen = []
    forward = pipe.transformer.forward
    monkeypatch.setattr(pipe.transformer, "forward", lambda *a, **k: seen.append(a) or forward(*a, **k))
    plain = pipe(PROMPT, num_inference_steps=2, generator=gen(), output_type="pt", guidance_scale=0.0).images
    assert len(seen[0][0]) == 1
    seen.clear()
    guided = pipe(PROMPT, num_inference_steps=2, generator=gen(), output_type="pt", guidance_scale=3.0).images
    x, ids, t = seen[0][:3]
    mask = pipe.tokenizer.mask_token_id
    assert len(x) == 2 and mask_ratio(ids, mask).tolist() == [0.0, 1.0]  # unconditional: caption masked
    assert not torch.allclose(plain, guided)
    seen.clear()
    pipe(image=shapes_image(), num_inference_steps=2, text_guidance_scale=2.0)
    x, ids, t = seen[0][:3]
    assert t.tolist() == [0.0, 1000.0] and not torch.allclose(x[0], x[1])  # unconditional: the image is noise
    assert torch.allclose(x[0], pipe._pixels(shapes_image())[0])
    seen.clear()  # joint: the image is guided by the words committed so far, from the second step on
    pipe(task="joint", num_inference_steps=3, guidance_scale=2.0, generator=gen())
    assert [len(a[0]) for a in seen] == [1, 2, 2]
    ids = seen[1][1]
    assert (ids[0] != mask).any() and (ids[1] == mask).all()
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        pipe(PROMPT, num_inference_steps=2, guidance_scale=-1.0)


def test_text_steps_finish_the_caption_sooner(pipe):
    """With text_steps k of N the caption is complete after step k and the image takes all N;
    the default is half of N in joint generation (N otherwise); a caption generated alone is done
    after k steps."""
    mask = pipe.tokenizer.mask_token_id
    out = pipe(task="joint", num_inference_steps=5, text_steps=2, generator=gen(), return_history=True,
               output_type="pt")
    masked = [int((h["text_ids"] == mask).sum()) for h in out.history]
    assert len(out.history) == 5 and masked[0] > 0 and masked[1:] == [0, 0, 0, 0]
    assert not torch.allclose(out.history[2]["images"], out.history[4]["images"])  # the image goes on
    default = pipe(task="joint", num_inference_steps=5, generator=gen(), output_type="pt")
    half = pipe(task="joint", num_inference_steps=5, text_steps=3, generator=gen(), output_type="pt")
    every = pipe(task="joint", num_inference_steps=5, text_steps=5, generator=gen(), output_type="pt")
    assert torch.equal(default.images, half.images) and default.texts == half.texts
    assert not torch.equal(default.images, every.images)
    caption = pipe(image=shapes_image(), num_inference_steps=5, return_history=True).history
    assert len(caption) == 5 and caption[3]["text_ids"].eq(mask).any()
    assert len(pipe(image=shapes_image(), num_inference_steps=5, text_steps=2, return_history=True).history) == 2
    for bad in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="text_steps must be an integer from 1 to num_inference_steps"):
            pipe(task="joint", num_inference_steps=5, text_steps=bad)


def test_history_and_callbacks(pipe):
    out = pipe(task="joint", num_inference_steps=4, generator=gen(), return_history=True, num_images_per_prompt=2)
    assert len(out.history) == 4
    assert out.history[0]["images"].shape == (2, 3, 16, 16) and out.history[0]["text_ids"].shape == (2, LENGTH)
    mask = pipe.tokenizer.mask_token_id
    masked = [int((h["text_ids"] == mask).sum()) for h in out.history]
    assert masked == sorted(masked, reverse=True) and masked[-1] == 0
    steps = []

    def blank(p, i, t, kw):
        steps.append((i, sorted(kw)))
        return {"latents": torch.zeros_like(kw["latents"])} if i == 2 else {}

    out = pipe(PROMPT, num_inference_steps=3, generator=gen(), output_type="pt", callback_on_step_end=blank,
               callback_on_step_end_tensor_inputs=["latents", "text_ids"])
    assert steps == [(0, ["latents", "text_ids"]), (1, ["latents", "text_ids"]), (2, ["latents", "text_ids"])]
    assert torch.allclose(out.images, torch.full_like(out.images, 0.5))  # the callback's edit is the result
    with pytest.raises(ValueError, match="callback tensor inputs"):
        pipe(PROMPT, num_inference_steps=2, callback_on_step_end_tensor_inputs=["noise"])


def test_shapes_probe_swaps_the_scheduler_per_setting(pipe, tmp_path, capsys):
    pipe.save_pretrained(tmp_path / "pipe")
    probe = runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "shapes_probe.py"))
    settings = ['{}', '{"scheduler": {"stochastic_sampling": true}}', '{"num_inference_steps": 2}']
    assert probe["main"]([str(tmp_path / "pipe"), *settings, "--n", "4", "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [[json.loads(field) for field in line.split("\t")] for line in lines]
    assert [setting for setting, _ in rows] == [json.loads(s) for s in settings]
    assert all(set(shares) == {"colour", "shape", "size", "axis", "relation", "all"} for _, shares in rows)
    with pytest.raises(SystemExit):
        probe["main"]([str(tmp_path / "pipe"), "[1]"])
    # a scheduler saved before a setting existed: the override still holds
    path = tmp_path / "pipe" / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "stochastic_sampling"}))
    old = load_pipeline(tmp_path / "pipe")
    probe["swap_scheduler"](old, old.scheduler, {"stochastic_sampling": True})
    assert old.scheduler.config.stochastic_sampling


def test_inpainting_keeps_the_known_region(pipe):
    image = shapes_image()
    regenerate = Image.new("L", (16, 16), 0)
    regenerate.paste(255, (0, 0, 8, 16))  # regenerate the left half
    out = pipe(PROMPT, image=image, mask_image=regenerate, num_inference_steps=3, generator=gen(), output_type="np")
    known = np.asarray(image, dtype=np.float32) / 255
    assert np.allclose(out.images[0][:, 8:], known[:, 8:], atol=1 / 255)
    assert not np.allclose(out.images[0][:, :8], known[:, :8], atol=0.05)


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "DualDiffusionPipeline"] and index["vae"] == [None, None]
    again = load_pipeline(tmp_path / "p")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again, DualDiffusionPipeline) and again.vae is None and again.image_size == 16
    a = pipe(task="joint", num_inference_steps=3, generator=gen(), output_type="pt")
    b = again(task="joint", num_inference_steps=3, generator=gen(), output_type="pt")
    assert torch.allclose(a.images, b.images, atol=1e-6) and a.texts == b.texts  # same weights (kernels may differ)
    public = [{k: v for k, v in s.config.items() if not k.startswith("_")} for s in (pipe.text_scheduler,
                                                                               again.text_scheduler)]
    assert again.backbone == "mmdit" and public[0] == public[1]


def test_latent_space_with_a_vae(caption_tokenizer, tmp_path):
    vae = tiny_vae()
    pipe = make_pipe(caption_tokenizer, vae=vae)
    assert pipe.image_size == 16 and pipe.transformer.config.sample_size == 8
    out = pipe(PROMPT, num_inference_steps=2, generator=gen(), output_type="pt", return_history=True)
    assert out.images.shape == (1, 3, 16, 16) and out.history[0]["images"].shape == (1, 3, 16, 16)
    texts = pipe(image=shapes_image(), num_inference_steps=2).texts
    assert len(texts) == 1
    pipe.save_pretrained(tmp_path / "p")
    again = load_pipeline(tmp_path / "p")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again.vae, AutoencoderKL)
    b = again(PROMPT, num_inference_steps=2, generator=gen(), output_type="pt")
    assert torch.allclose(out.images, b.images, atol=1e-6)
    with pytest.raises(ValueError, match="takes 3 channels but the VAE's latents have 4"):
        DualDiffusionPipeline(make_pipe(caption_tokenizer).transformer, caption_tokenizer,
                              FlowMatchEulerDiscreteScheduler(), MaskedDiffusionScheduler(), vae=vae)


def test_bad_input(pipe, tmp_path):
    grey_big = Image.new("L", (40, 30), 200)  # another size and mode: converted
    assert len(pipe(image=grey_big, num_inference_steps=1).texts) == 1
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    assert len(pipe(image=rgba, num_inference_steps=1).texts) == 1
    with pytest.raises(ValueError, match="image tensor is 8x8 but the model works at 16x16"):
        pipe(image=torch.zeros(1, 3, 8, 8), num_inference_steps=1)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        pipe("  ", num_inference_steps=1)
    with pytest.raises(ValueError, match="text 0 has 13 tokens but the text length is 12"):
        pipe("a small red circle left of a large blue square and a small", num_inference_steps=1)
    with pytest.raises(ValueError, match="captioning needs an image"):
        pipe(task="caption", num_inference_steps=1)
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        pipe(PROMPT, num_images_per_prompt=0)
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1"):
        pipe(PROMPT, num_inference_steps=0)
    with pytest.raises(ValueError, match="must be a DualDiffusionTransformer2DModel"):
        DualDiffusionPipeline(AutoencoderKL(), pipe.tokenizer, pipe.scheduler, pipe.text_scheduler)
    small = train_word_tokenizer(["a b c"])
    with pytest.raises(ValueError, match="do not belong together"):
        DualDiffusionPipeline(make_pipe(small).transformer, pipe.tokenizer, pipe.scheduler, pipe.text_scheduler)
    # a folder of another model type where the transformer should be
    pipe.save_pretrained(tmp_path / "p")
    vae_dir = tmp_path / "p" / "transformer"
    for f in vae_dir.iterdir():
        f.unlink()
    tiny_vae().save_pretrained(vae_dir)
    with pytest.raises(ValueError, match="holds a AutoencoderKL"):
        load_pipeline(tmp_path / "p")


# ---------------------------------------------------------------- training
def test_training_losses_follow_the_task(caption_tokenizer):
    from mmdlm.training.mmdit import MMDiTTrainer
    from mmdlm.training.trainer import TrainArgs

    pipe = make_pipe(caption_tokenizer)
    model = pipe.transformer.train()
    texts = [PROMPT] * 4
    data = {"pixels": torch.rand(4, 3, 16, 16) * 2 - 1,
            "text_ids": encode_captions(caption_tokenizer, texts, LENGTH)}
    seen = []
    forward = model.forward
    model.forward = lambda *a, **k: seen.append(a) or forward(*a, **k)
    mask = caption_tokenizer.mask_token_id

    def trainer(**kw):
        return MMDiTTrainer(model, data, TrainArgs(output_dir="/tmp/unused", max_steps=1, batch_size=4),
                            tokenizer=caption_tokenizer, **kw)

    out = trainer(task_weights={"t2i": 1}, caption_dropout=0.0).losses(model, data, gen())
    x, ids, t = seen[-1][:3]
    r = mask_ratio(ids, mask)  # the text noise level the model measures
    assert torch.equal(ids, data["text_ids"]) and (r == 0).all() and (t > 0).all() and out["text_loss"] == 0
    assert out["image_loss"] > 0
    out = trainer(task_weights={"caption": 1}, image_dropout=0.0).losses(model, data, gen())
    x, ids, t = seen[-1][:3]
    r = mask_ratio(ids, mask)  # the text noise level the model measures
    assert torch.equal(x, data["pixels"]) and (t == 0).all() and out["image_loss"] == 0 and out["text_loss"] > 0
    assert (ids == mask).any() and torch.allclose(r, (ids == mask).float().mean(1))
    trainer(task_weights={"t2i": 1}, caption_dropout=0.99).losses(model, data, gen())
    x, ids, t = seen[-1][:3]
    r = mask_ratio(ids, mask)  # the text noise level the model measures
    assert (ids == mask).all() and (r == 1).all()  # a dropped caption is the fully masked canvas
    trainer(task_weights={"caption": 1}, image_dropout=0.99).losses(model, data, gen())
    x, ids, t = seen[-1][:3]
    r = mask_ratio(ids, mask)  # the text noise level the model measures
    assert (t == 1000).all() and not torch.allclose(x, data["pixels"])  # a hidden image is pure noise
    out = trainer(task_weights={"joint": 1}).losses(model, data, gen())
    assert out["image_loss"] > 0 and out["text_loss"] > 0
    out["loss"].backward()
    assert model.text_embedding.weight.grad is not None and model.proj_out.weight.grad is not None


def test_ema_is_saved_and_resumes_exactly(caption_tokenizer, tmp_path):
    from mmdlm.training.mmdit import MMDiTTrainer
    from mmdlm.training.trainer import TrainArgs, latest_checkpoint

    data = {"pixels": torch.rand(8, 3, 16, 16) * 2 - 1,
            "text_ids": encode_captions(caption_tokenizer, [PROMPT] * 8, LENGTH)}

    class Interrupt(Exception):
        pass

    class Crashing(MMDiTTrainer):
        def compute_loss(self, model, batch, step, generator):
            if step == 2:
                raise Interrupt
            return super().compute_loss(model, batch, step, generator)

    def run(cls, folder, resume=False):
        model = make_pipe(caption_tokenizer).transformer.train()
        args = TrainArgs(output_dir=str(tmp_path / folder), max_steps=4, batch_size=4, save_every=2, warmup_steps=1,
                         lr=1e-2, resume=resume)
        return cls(model, data, args, tokenizer=caption_tokenizer,
                   task_weights={"t2i": 1, "caption": 1}, ema_decay=0.9)

    full = run(MMDiTTrainer, "a")
    full.train()
    with pytest.raises(Interrupt):
        run(Crashing, "b").train()
    assert latest_checkpoint(tmp_path / "b").name == "step-0000002"
    resumed = run(MMDiTTrainer, "b", resume=True)
    resumed.train()
    saved = {n: DualDiffusionTransformer2DModel.from_pretrained(tmp_path / f / "model").state_dict() for n, f in
             (("full", "a"), ("resumed", "b"))}
    last = full.accelerator.unwrap_model(full.model).state_dict()
    for key, value in saved["full"].items():
        assert torch.equal(value, saved["resumed"][key]), key
    ema = dict(zip([k for k, _ in full.accelerator.unwrap_model(full.model).named_parameters()],
                   full.ema.shadow_params))
    assert all(torch.equal(saved["full"][k], v) for k, v in ema.items())  # the saved weights are the average
    assert any(not torch.equal(saved["full"][k], last[k]) for k in ema)  # ... not the last weights


def test_train_mm_mmdit_end_to_end(tmp_path, capsys):
    recipe = tmp_path / "mmdit.yaml"
    recipe.write_text(
        "backbone: mmdit\ndataset: shapes\nimage_size: 16\ntext_length: 12\nn_train: 16\nn_eval: 8\n"
        "model_config: {num_layers: 1, attention_head_dim: 8, num_attention_heads: 2, joint_attention_dim: 16,\n"
        "  caption_projection_dim: 16, pooled_projection_dim: 16}\n"
        "max_steps: 3\nbatch_size: 4\nwarmup_steps: 1\nflow_shift: 2.5\nsampler: {stochastic_sampling: true}\n"
        f"output_dir: {tmp_path / 'run'}\n")
    assert cli.main(["train-mm", "--config", str(recipe)]) == 0, capsys.readouterr().err
    pipe = load_pipeline(tmp_path / "run" / "model")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, DualDiffusionPipeline) and pipe.image_size == 16 and pipe.text_length == 12
    assert pipe.scheduler.config.shift == 2.5 and pipe.scheduler.config.stochastic_sampling
    assert pipe.transformer.config.prediction_type == "velocity"
    assert len(pipe(image=shapes_image(), num_inference_steps=2).texts) == 1
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["backbone"] == "mmdit" and run["parameters"] > 0
    # continue from the trained pipeline folder (its transformer/ subfolder)
    assert cli.main(["train-mm", "--config", str(recipe), "--pretrained", str(tmp_path / "run" / "model"),
                     "--output-dir", str(tmp_path / "run2"), "--max-steps", "1"]) == 0, capsys.readouterr().err
    assert cli.main(["train-mm", "--config", str(recipe), "--pretrained", str(tmp_path / "run" / "model"),
                     "--model-config", '{"num_layers": 2}', "--output-dir", str(tmp_path / "run3")]) == 2
    assert "num_layers=2 (the checkpoint has 1), but a pretrained model" in capsys.readouterr().err
    for flag, value, message in [("--model-config", '{"vocab_size": 3}', "follow from the data"),
                                 ("--model-config", '{"depth": 3}', "model_config: "),
                                 ("--image-tokenizer", str(tmp_path / "run" / "model" / "transformer"),
                                  "not an AutoencoderKL"),
                                 ("--pretrained", str(tmp_path), "holds no diffusers model"),
                                 ("--text-schedule", "cubic", "unknown schedule"),
                                 ("--flow-shift", "0", "flow_shift=0.0"),
                                 ("--flow-shift", "nan", "flow_shift must be a finite number"),
                                 ("--logit-std", "nan", "logit_std must be a finite number"),
                                 ("--text-loss-weight", "nan", "text_loss_weight must be a finite number"),
                                 ("--sampler", '{"stochastic": true}', "has no setting(s) ['stochastic']")]:
        assert cli.main(["train-mm", "--config", str(recipe), flag, value]) == 2
        assert message in capsys.readouterr().err


def test_train_mm_mmdit_with_a_vae(tmp_path, capsys):
    tiny_vae().save_pretrained(tmp_path / "vae")
    assert cli.main(["train-mm", "--backbone", "mmdit", "--image-size", "16", "--text-length", "12", "--n-train", "8",
                     "--n-eval", "4", "--max-steps", "2", "--batch-size", "4", "--warmup-steps", "1",
                     "--caption-column", "canonical", "--image-tokenizer", str(tmp_path / "vae"),
                     "--output-dir", str(tmp_path / "run"),
                     "--model-config", json.dumps({"num_layers": 1, "attention_head_dim": 8, "num_attention_heads": 2,
                                                   "joint_attention_dim": 16, "caption_projection_dim": 16,
                                                   "pooled_projection_dim": 16})]) == 0, capsys.readouterr().err
    pipe = load_pipeline(tmp_path / "run" / "model")
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.transformer.config.in_channels == 4 and pipe.image_size == 16


# ---------------------------------------------------------------- commands
def test_t2i_writes_one_consistent_set(pipe, tmp_path, monkeypatch, capsys):
    """A run replaces the earlier run's t2i-* files, whole: fewer images leave no stale ones behind,
    other files stay, and a failure while writing leaves the earlier set as it was."""
    from mmdlm.commands import t2i as t2i_command

    pipe.save_pretrained(tmp_path / "p")
    out = tmp_path / "out"

    def t2i(*options):
        return cli.main(["t2i", PROMPT, "--model", str(tmp_path / "p"), "--steps", "2", "--output-dir", str(out),
                         *options])

    assert t2i("--n", "4") == 0
    (out / "notes.txt").write_text("mine\n")
    assert t2i("--n", "1", "--seed", "1") == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "t2i-0.png", "t2i-denoising.gif"]
    first = (out / "t2i-0.png").read_bytes()
    assert t2i("--n", "2", "--no-gif") == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "t2i-0.png", "t2i-1.png"]
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    assert kept["t2i-0.png"] != first  # seed 0, not the seed-1 image

    def broken(history, path):
        raise ValueError("the GIF cannot be written")

    monkeypatch.setattr(t2i_command, "write_denoising_gif", broken)
    capsys.readouterr()
    assert t2i("--n", "3", "--seed", "1") == 2
    assert "the GIF cannot be written" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept  # no temporary folder either


def test_t2i_and_caption_commands(pipe, tmp_path, capsys):
    pipe.save_pretrained(tmp_path / "p")
    out = tmp_path / "out"
    assert cli.main(["t2i", PROMPT, "--model", str(tmp_path / "p"), "--n", "2", "--steps", "3",
                     "--output-dir", str(out)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["t2i-0.png", "t2i-1.png", "t2i-denoising.gif"]
    gif = Image.open(out / "t2i-denoising.gif")
    assert gif.n_frames == 3 and gif.size[0] == 2 * gif.size[1]  # one frame per step, two images side by side
    assert Image.open(out / "t2i-0.png").size == (16, 16)
    capsys.readouterr()
    assert cli.main(["caption", str(out / "t2i-0.png"), "--model", str(tmp_path / "p"), "--steps", "2",
                     "--output", str(tmp_path / "c.json")]) == 0
    printed = capsys.readouterr().out.strip()
    assert json.loads((tmp_path / "c.json").read_text())["texts"] == [printed]
    assert cli.main(["caption", str(out / "t2i-0.png"), "--model", str(tmp_path / "p"), "--steps", "2",
                     "--question", "a small <|mask:1|> circle left of a large blue square"]) == 0
    answer = capsys.readouterr().out.strip()
    assert answer.startswith("a small ") and answer.endswith(" circle left of a large blue square")
    recipe = tmp_path / "t2i.yaml"
    recipe.write_text(f"prompt: {PROMPT}\nmodel: {tmp_path / 'p'}\nn: 1\nsteps: 2\ngif: false\n"
                      f"output_dir: {tmp_path / 'out2'}\n")
    assert cli.main(["t2i", "--config", str(recipe)]) == 0
    assert [p.name for p in (tmp_path / "out2").iterdir()] == ["t2i-0.png"]
    for argv, message in [(["t2i", "--model", str(tmp_path / "p")], "give the caption to draw"),
                          (["t2i", "", "--model", str(tmp_path / "p")], "give the caption to draw"),
                          (["t2i", "x " * 20, "--model", str(tmp_path / "p")], "the text length is 12"),
                          (["t2i", PROMPT, "--model", str(tmp_path)], "not a saved pipeline"),
                          (["caption", "--model", str(tmp_path / "p")], "give the image to caption"),
                          (["caption", str(tmp_path / "none.png"), "--model", str(tmp_path / "p")], "no image at"),
                          (["caption", str(recipe), "--model", str(tmp_path / "p")], "not an image"),
                          (["caption", str(out / "t2i-0.png"), "--model", str(tmp_path / "p"), "--question", "what ?"],
                           "<|mask:N|>")]:
        assert cli.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
