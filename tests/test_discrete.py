"""The discrete backbone: VQ image tokenizer, Flux-block transformer, training recipe, pipeline."""
import json

import numpy as np
import pytest
import torch
from discrete_fixtures import (
    CODEBOOK,
    GRID,
    IMAGE_SIZE,
    TEXT_LENGTH,
    tiny_pipeline,
    tiny_tokenizer,
    tiny_transformer,
    tiny_vq,
)
from PIL import Image

from mmdlm import cli
from mmdlm.data.shapes import all_scenes, caption, render
from mmdlm.multimodal import VQImageTokenizer
from mmdlm.multimodal.discrete import UnifiedDiscreteTransformer
from mmdlm.pipelines import MultimodalPipelineOutput, UnifiedDiscretePipeline, load_pipeline
from mmdlm.pipelines.unified_discrete import JOINT_ALG_TEMP
from mmdlm.schedulers import MaskedDiffusionScheduler

SCENES = all_scenes()[:3]
IMAGES = [render(s, IMAGE_SIZE, i) for i, s in enumerate(SCENES)]
PROMPT = caption(SCENES[0])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pixels(n=2, seed=0):
    return torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen(seed)) * 2 - 1


# ---------------------------------------------------------------- the VQ image tokenizer
def test_vq_tokenizer_encodes_and_decodes_like_the_vq_model(tmp_path):
    vq = tiny_vq()
    tok = VQImageTokenizer(vq)
    assert (tok.codebook_size, tok.downsample, tok.grid(IMAGE_SIZE)) == (CODEBOOK, 4, GRID)
    x = pixels(3)
    codes = tok.encode(x)
    assert codes.shape == (3, GRID, GRID) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < CODEBOOK and codes.unique().numel() > 1
    with torch.no_grad():
        direct = vq(x).sample  # diffusers' own encode -> quantize -> decode
    assert torch.allclose(tok.decode(codes), direct.clamp(-1, 1), atol=1e-5)

    vq.save_pretrained(tmp_path / "vq")
    again = VQImageTokenizer.from_pretrained(tmp_path / "vq")
    assert torch.equal(again.encode(x), codes)
    # a VQ model that looks codes up itself (aMUSEd's lookup_from_codebook=True) decodes the same
    looked = tiny_vq(lookup_from_codebook=True)
    looked.load_state_dict(vq.state_dict())
    assert torch.allclose(VQImageTokenizer(looked).decode(codes), tok.decode(codes), atol=1e-6)


def test_vq_tokenizer_pixel_range():
    vq = tiny_vq()
    x = pixels(2)
    zero_one = VQImageTokenizer(vq, normalize=False)  # aMUSEd: the model sees [0, 1]
    assert torch.equal(zero_one.encode(x), VQImageTokenizer(vq).encode((x + 1) / 2))
    codes = zero_one.encode(x)
    assert torch.allclose(zero_one.decode(codes), (VQImageTokenizer(vq).decode(codes).clamp(0, 1) * 2 - 1), atol=1e-5)


def test_vq_tokenizer_errors(tmp_path):
    tok = VQImageTokenizer(tiny_vq())
    codes = tok.encode(pixels(1))
    with pytest.raises(ValueError, match=r"must lie in \[0, 15\].*got values in \[\d+, 16\].*\[MASK\]"):
        tok.decode(torch.cat([codes, torch.full_like(codes, CODEBOOK)]))
    with pytest.raises(ValueError, match="got values in"):
        tok.decode(codes - 100)
    with pytest.raises(ValueError, match="integer indices"):
        tok.decode(codes.float())
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        tok.decode(codes.flatten(1))
    with pytest.raises(ValueError, match="image size 18 cannot be tiled.*multiple of 4"):
        tok.encode(torch.zeros(1, 3, 18, 18))
    with pytest.raises(ValueError, match="cannot be tiled"):
        tok.grid(2)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tok.encode(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="needs a diffusers VQModel"):
        VQImageTokenizer(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not a VQ model folder"):
        VQImageTokenizer.from_pretrained(tmp_path)
    tiny_transformer(tiny_tokenizer()).save_pretrained(tmp_path / "t")
    with pytest.raises(ValueError, match="holds a UnifiedDiscreteTransformer model, not a diffusers VQModel"):
        VQImageTokenizer.from_pretrained(tmp_path / "t")


# ---------------------------------------------------------------- the transformer
def test_transformer_outputs_and_round_trip(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_transformer(tok)
    img = torch.randint(0, CODEBOOK + 1, (2, GRID, GRID), generator=gen())
    txt = torch.randint(0, len(tok), (2, TEXT_LENGTH), generator=gen())
    out = model(img, txt)
    assert out.image_logits.shape == (2, GRID * GRID, CODEBOOK + 1)
    assert out.text_logits.shape == (2, TEXT_LENGTH, len(tok))
    assert torch.isneginf(out.image_logits[..., -1]).all() and torch.isfinite(out.image_logits[..., :-1]).all()
    assert model.mask_token_ids == {"image": CODEBOOK, "text": tok.mask_token_id}
    model.save_pretrained(tmp_path / "t")
    again = UnifiedDiscreteTransformer.from_pretrained(tmp_path / "t").eval()
    public = lambda c: json.loads(json.dumps({k: v for k, v in c.items() if not k.startswith("_")}))  # noqa: E731
    assert public(again.config) == public(model.config)
    out2 = again(img, txt)
    assert torch.equal(out2.image_logits, out.image_logits) and torch.equal(out2.text_logits, out.text_logits)
    # the transformer is made of diffusers' own Flux blocks
    names = {type(m).__name__ for m in model.modules()}
    assert {"FluxTransformerBlock", "FluxSingleTransformerBlock", "FluxPosEmbed"} <= names


def test_a_padded_text_token_changes_nothing():
    tok = tiny_tokenizer()
    model = tiny_transformer(tok)
    img = torch.randint(0, CODEBOOK + 1, (2, GRID, GRID), generator=gen())
    txt = torch.randint(4, len(tok), (2, TEXT_LENGTH), generator=gen())
    keep = torch.ones(2, TEXT_LENGTH, dtype=torch.bool)
    keep[0, 7:] = False  # row 0 has 5 padded positions
    other = txt.clone()
    other[0, 7:] = torch.randint(4, len(tok), (5,), generator=gen(1))  # whatever the pads hold
    a = model(img, txt, text_attention_mask=keep)
    b = model(img, other, text_attention_mask=keep)
    assert torch.equal(a.image_logits[..., :-1], b.image_logits[..., :-1])
    assert torch.equal(a.text_logits[:, :7], b.text_logits[:, :7]) and torch.equal(a.text_logits[1], b.text_logits[1])
    # without the mask the pads are attended to, and the same change moves the image logits
    c, d = model(img, txt), model(img, other)
    assert not torch.allclose(c.image_logits[0, :, :-1], d.image_logits[0, :, :-1])


def test_mask_ratio_conditioning_is_per_modality():
    tok = tiny_tokenizer()
    model = tiny_transformer(tok)
    img = torch.randint(0, CODEBOOK, (1, GRID, GRID), generator=gen())
    txt = torch.randint(4, len(tok), (1, TEXT_LENGTH), generator=gen())
    base = model(img, txt).image_logits
    assert torch.equal(model(img, txt, image_ratio=torch.zeros(1), text_ratio=torch.zeros(1)).image_logits, base)
    for kw in (dict(image_ratio=torch.ones(1)), dict(text_ratio=torch.ones(1))):
        assert not torch.allclose(model(img, txt, **kw).image_logits[..., :-1], base[..., :-1])


def test_blocks_start_as_the_identity():
    tok = tiny_tokenizer()
    model = tiny_transformer(tok, fresh=True)
    image, text, temb = torch.randn(2, 16, 32), torch.randn(2, TEXT_LENGTH, 32), torch.randn(2, 32)
    rotary = model.positions(TEXT_LENGTH, GRID, GRID, "cpu")
    for block in (model.transformer_blocks[0], model.single_transformer_blocks[0]):
        t, i = block(hidden_states=image, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary)
        assert torch.equal(t, text) and torch.equal(i, image)
    assert model.image_embed.weight.std() < 0.05  # embeddings at the transformer scale


def test_transformer_errors():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="axes_dims_rope must be three even numbers summing to attention_head_dim"):
        tiny_transformer(tok, axes_dims_rope=(4, 4, 4))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_transformer(tok, mask_token_id=len(tok))
    with pytest.raises(ValueError, match="at least one block"):
        tiny_transformer(tok, num_layers=0, num_single_layers=0)
    model = tiny_transformer(tok)
    img = torch.zeros(1, GRID, GRID, dtype=torch.long)
    txt = torch.zeros(1, TEXT_LENGTH, dtype=torch.long)
    with pytest.raises(ValueError, match=r"image_ids must lie in \[0, 16\]"):
        model(img + CODEBOOK + 1, txt)
    with pytest.raises(ValueError, match="text_ids must lie in"):
        model(img, txt + len(tok))
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        model(img.flatten(1), txt)
    with pytest.raises(ValueError, match="integer tensor"):
        model(img.float(), txt)
    with pytest.raises(ValueError, match="text_attention_mask has shape"):
        model(img, txt, text_attention_mask=torch.ones(1, 3, dtype=torch.bool))


# ---------------------------------------------------------------- training
def test_unweighted_loss_is_maskgits_mean_cross_entropy():
    from mmdlm.diffusion import get_schedule, masked_diffusion_loss

    logits = torch.randn(2, 5, 7, generator=gen())
    x0 = torch.randint(0, 7, (2, 5), generator=gen())
    masked = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    t = torch.tensor([0.9, 0.2])
    ce = torch.nn.functional.cross_entropy(logits[masked], x0[masked])
    schedule = get_schedule("cosine")
    plain = masked_diffusion_loss(logits, x0, masked, t, schedule, normalize="masked", elbo_weight=False)
    assert torch.allclose(plain, ce)
    weighted = masked_diffusion_loss(logits, x0, masked, t, schedule, normalize="masked")
    assert not torch.allclose(weighted, ce)  # the default keeps the ELBO weight


class Recorder(torch.nn.Module):
    """Wraps the transformer and keeps the inputs of each call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    @property
    def config(self):
        return self.model.config

    @property
    def mask_token_ids(self):
        return self.model.mask_token_ids

    def forward(self, image_ids, text_ids, **kw):
        self.calls.append((image_ids.clone(), text_ids.clone()))
        return self.model(image_ids, text_ids, **kw)


def _train_data(tok, n=16):
    from mmdlm.multimodal import encode_captions

    scenes = all_scenes()[:n]
    codes = torch.randint(0, CODEBOOK, (n, GRID * GRID), generator=gen())
    return {"codes": codes, "text_ids": encode_captions(tok, [caption(s) for s in scenes], TEXT_LENGTH)}


def test_training_tasks_mask_the_right_streams(tmp_path):
    from mmdlm.training.discrete import DiscreteTrainer
    from mmdlm.training.trainer import TrainArgs

    tok = tiny_tokenizer()
    rec = Recorder(tiny_transformer(tok))
    data = _train_data(tok)
    args = TrainArgs(output_dir=str(tmp_path), max_steps=1, batch_size=16, warmup_steps=0)
    trainer = DiscreteTrainer(rec, data, args, task_weights={"t2i": 0.5, "caption": 0.5}, caption_dropout=0.5)
    image_loss, text_loss = trainer.losses(rec, data, gen(3))
    assert image_loss > 0 and text_loss > 0
    img, txt = rec.calls[0]
    img = img.flatten(1)
    k, m = CODEBOOK, tok.mask_token_id
    image_clean = (img != k).all(1)
    assert image_clean.sum() == 8  # Muddit's half and half: 8 captioning rows keep their image
    for row in range(16):
        if image_clean[row]:  # captioning: image clean and equal to the data, caption masked somewhere
            assert torch.equal(img[row], data["codes"][row])
        else:  # text-to-image: the caption is the data's, or all [MASK] when dropped (guidance)
            assert torch.equal(txt[row], data["text_ids"][row]) or (txt[row] == m).all()
    dropped = (~image_clean) & (txt == m).all(1)
    assert 0 < dropped.sum() < 8  # caption dropout 0.5 on the 8 text-to-image rows only


def test_image_schedule_sets_the_image_mask_ratios_only(tmp_path):
    """`image_schedule` changes how many image codes a training sample masks (cosine: mean ratio
    2/pi, linear: 1/2) and leaves the text's masking, drawn from the same generator, as it was."""
    from mmdlm.training.discrete import DiscreteTrainer
    from mmdlm.training.trainer import TrainArgs

    tok = tiny_tokenizer()
    data = _train_data(tok, 256)
    args = TrainArgs(output_dir=str(tmp_path), max_steps=1, batch_size=256, warmup_steps=0)
    inputs = {}
    for schedule in ("cosine", "linear"):
        rec = Recorder(tiny_transformer(tok))
        trainer = DiscreteTrainer(rec, data, args, task_weights={"t2i": 1, "joint": 1}, image_schedule=schedule)
        with torch.no_grad():
            trainer.losses(rec, data, gen(5))
        inputs[schedule] = rec.calls[0]
    image_ratio = {s: (img == CODEBOOK).float().mean().item() for s, (img, _) in inputs.items()}
    assert abs(image_ratio["cosine"] - 2 / np.pi) < 0.04 and abs(image_ratio["linear"] - 0.5) < 0.04
    assert torch.equal(inputs["cosine"][1], inputs["linear"][1])
    with pytest.raises(ValueError, match="schedule"):
        DiscreteTrainer(rec, data, args, task_weights={"t2i": 1}, image_schedule="sqrt")


def test_training_lowers_the_loss(tmp_path):
    from mmdlm.training.discrete import DiscreteTrainer
    from mmdlm.training.trainer import TrainArgs

    tok = tiny_tokenizer()
    data = _train_data(tok, 8)
    args = TrainArgs(output_dir=str(tmp_path), max_steps=40, batch_size=8, warmup_steps=0, lr=3e-3, log_every=40)
    trainer = DiscreteTrainer(tiny_transformer(tok), data, args, task_weights={"t2i": 1, "caption": 1, "joint": 1})

    def mean_loss():
        with torch.no_grad():
            return sum(sum(trainer.losses(trainer.model, data, gen(s))).item() for s in range(4)) / 4

    before = mean_loss()
    for _ in range(40):
        trainer.train_step()
    assert mean_loss() < 0.8 * before


def test_train_mm_discrete_writes_a_pipeline_that_evaluates(tmp_path, capsys):
    tiny_vq().save_pretrained(tmp_path / "vq")
    recipe = tmp_path / "d.yaml"
    recipe.write_text(json.dumps({
        "backbone": "discrete", "dataset": "shapes", "image_size": IMAGE_SIZE, "text_length": TEXT_LENGTH,
        "n_train": 16, "n_eval": 4, "image_tokenizer": str(tmp_path / "vq"), "max_steps": 2, "batch_size": 4,
        "caption_column": "canonical", "sampler": {"remasking": True, "alg_temp": 2.0},
        "warmup_steps": 0, "output_dir": str(tmp_path / "run"),
        "model_config": {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16,
                         "axes_dims_rope": [4, 6, 6], "timestep_channels": 32}}))
    assert cli.main(["train-mm", "--config", str(recipe)]) == 0, capsys.readouterr().err
    pipe = load_pipeline(tmp_path / "run" / "model")
    assert isinstance(pipe, UnifiedDiscretePipeline) and pipe.image_size == IMAGE_SIZE
    assert pipe.transformer.config.codebook_size == CODEBOOK
    out = tmp_path / "it.json"
    assert cli.main(["eval-mm", "--model", str(tmp_path / "run" / "model"), "--n", "2", "--steps", "2",
                     "--text-steps", "1", "--output", str(out)]) == 0, capsys.readouterr().err
    record = json.loads(out.read_text())["records"][0]
    assert record["text_steps"] == 1  # a call option: passed to the pipeline and recorded
    assert record["backbone"] == "discrete" and record["pipeline"] == "UnifiedDiscretePipeline"
    assert record["s_per_image"] > 0 and record["s_per_caption"] > 0 and record["joint_consistency"] is not None
    assert record["scheduler"]["class"] == "MaskedDiffusionScheduler" and record["scheduler"]["remasking"]
    assert pipe.scheduler.config.alg_temp == 2.0  # the recipe's sampler, saved with the pipeline
    assert cli.main(["train-mm", "--config", str(recipe), "--pretrained", str(tmp_path / "run" / "model"),
                     "--model-config", '{"num_single_layers": 3}', "--output-dir", str(tmp_path / "run2")]) == 2
    assert "num_single_layers=3 (the checkpoint has 1), but a pretrained model" in capsys.readouterr().err
    # clear errors: the data decides codebook, vocabulary and grid
    recipe.write_text(recipe.read_text().replace('"timestep_channels": 32', '"timestep_channels": 32, '
                                                                            '"codebook_size": 8'))
    assert cli.main(["train-mm", "--config", str(recipe)]) == 2
    assert "come from the data" in capsys.readouterr().err
    assert cli.main(["train-mm", "--config", str(recipe), "--image-size", "18"]) == 2
    assert "cannot be tiled" in capsys.readouterr().err
    assert cli.main(["train-mm", "--config", str(recipe), "--sampler", '{"remasking": true, "rule": "margin"}']) == 2
    assert "remasking ranks by confidence" in capsys.readouterr().err


def test_train_vq_command(tmp_path, capsys):
    recipe = tmp_path / "vq.yaml"
    recipe.write_text(json.dumps({
        "datasets": ["shapes", "digits"], "image_size": 16, "n_train": 8, "n_eval": 4, "n_report": 4,
        "max_steps": 2, "batch_size": 4, "warmup_steps": 0, "restart_every": 1, "restart_until": 1.0,
        "output_dir": str(tmp_path / "vq"),
        "vq_config": {"block_out_channels": [8, 8, 8], "latent_channels": 4, "num_vq_embeddings": 16,
                      "norm_num_groups": 4}}))
    assert cli.main(["train-vq", "--config", str(recipe)]) == 0, capsys.readouterr().err
    tok = VQImageTokenizer.from_pretrained(tmp_path / "vq" / "model")
    assert tok.codebook_size == 16 and tok.grid(16) == 4
    report = json.loads((tmp_path / "vq" / "reconstruction.json").read_text())
    assert report["shapes"]["parser_accuracy_original"] == 1.0 and "parser_accuracy_reconstruction" in report["shapes"]
    assert "classifier_accuracy_reconstruction" in report["digits"]
    assert report["restarted_codes"][0] == 16  # the first step puts every code on an encoder output
    assert len(report["restarted_codes"]) == 2  # then a restart of the rarely used codes at step 1
    recipe.write_text(recipe.read_text().replace('"norm_num_groups": 4', '"norm_num_groups": 4, "n_codes": 3'))
    assert cli.main(["train-vq", "--config", str(recipe)]) == 2
    assert "unknown VQModel argument(s) ['n_codes']" in capsys.readouterr().err


def test_vq_training_learns_and_resumes_exactly(tmp_path):
    from mmdlm.training.trainer import TrainArgs
    from mmdlm.training.vq import VQTrainer

    data = {"pixels": pixels(8)}

    def run(out, steps, resume=False, max_steps=6):
        vq = tiny_vq()
        args = TrainArgs(output_dir=str(tmp_path / out), max_steps=max_steps, batch_size=4, warmup_steps=0, lr=3e-3,
                         save_every=3, resume=resume)
        trainer = VQTrainer(vq, data, args, restart_every=2, restart_until=1.0)
        if resume:
            trainer.train()
            return trainer
        for _ in range(steps):
            trainer.train_step()
        return trainer

    full = run("a", 0)
    with torch.no_grad():
        before = full.eval_loss(full.model, data, None).item()
    full.train()
    with torch.no_grad():
        after = full.eval_loss(full.model, data, None).item()
    assert after < before
    codebook = full.model.quantize.embedding.weight
    assert not codebook.requires_grad and full.ema.size.sum() > 0  # learned by moving averages
    # stop after step 3 (a checkpoint), resume: the same weights and codebook as the uninterrupted run
    half = VQTrainer(tiny_vq(), data, TrainArgs(output_dir=str(tmp_path / "b"), max_steps=6, batch_size=4,
                                                   warmup_steps=0, lr=3e-3, save_every=3),
                     restart_every=2, restart_until=1.0)
    for _ in range(3):
        half.train_step()
    half.save_checkpoint()
    resumed = run("b", 0, resume=True)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------- the pipeline
def test_every_task_runs_through_one_loop():
    pipe = tiny_pipeline()
    steps = 3
    out = pipe(PROMPT, num_inference_steps=steps, generator=gen(), num_images_per_prompt=2)
    assert isinstance(out, MultimodalPipelineOutput) and len(out.images) == 2 and out.texts is None
    assert out.images[0].size == (IMAGE_SIZE, IMAGE_SIZE)
    out = pipe(image=IMAGES[:2], num_inference_steps=steps, generator=gen())
    assert out.images is None and len(out.texts) == 2 and all(isinstance(t, str) for t in out.texts)
    out = pipe("what shape ?<|mask:2|>", IMAGES[:2], num_inference_steps=steps, generator=gen())
    assert len(out.texts) == 2 and all(t.startswith("what shape ?") for t in out.texts)
    out = pipe(task="joint", num_images_per_prompt=3, num_inference_steps=steps, generator=gen(), output_type="np")
    assert out.images.shape == (3, IMAGE_SIZE, IMAGE_SIZE, 3) and len(out.texts) == 3
    out = pipe("a small <|mask:1|> circle left of a large blue square", num_inference_steps=steps, generator=gen())
    assert len(out.images) == 1 and out.texts[0].startswith("a small ") and out.texts[0].endswith(
        " circle left of a large blue square")
    out = pipe("a small <|mask:1|> circle left of a large blue square", IMAGES[0], task="infill",
               num_inference_steps=steps, generator=gen())
    assert out.images is None and len(out.texts) == 1
    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    out = pipe(image=IMAGES[:2], mask_image=mask, num_inference_steps=steps, generator=gen(), output_type="pt")
    assert out.images.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and out.texts is None
    images, texts = pipe(image=IMAGES[0], num_inference_steps=steps, generator=gen(), return_dict=False)
    assert images is None and len(texts) == 1


def test_joint_generation_samples_words_and_commit_order_by_default():
    pipe = tiny_pipeline()
    kw = dict(task="joint", num_images_per_prompt=4, num_inference_steps=3, output_type="np")
    default = pipe(**kw, generator=gen())
    sampled = pipe(**kw, generator=gen(), temperature=1.0, alg_temp=JOINT_ALG_TEMP)
    greedy = pipe(**kw, generator=gen(), temperature=0.0, alg_temp=0.0)
    assert default.texts == sampled.texts and np.array_equal(default.images, sampled.images)
    assert default.texts != greedy.texts
    # captioning keeps the scheduler's greedy, confidence-ordered defaults
    assert pipe(image=IMAGES[:2], num_inference_steps=3, generator=gen()).texts == pipe(
        image=IMAGES[:2], num_inference_steps=3, generator=gen(), temperature=0.0, alg_temp=0.0).texts


@pytest.mark.parametrize("remasking", [False, True])
def test_inpainting_keeps_the_known_codes_and_infilling_the_known_words(remasking):
    pipe = tiny_pipeline()
    pipe.scheduler = MaskedDiffusionScheduler.from_config(pipe.scheduler.config, remasking=remasking, alg_temp=2.0)
    seen = {}

    def keep(pipe_, step, t, tensors):
        seen.setdefault("first", {k: v.clone() for k, v in tensors.items()})
        seen["last"] = {k: v.clone() for k, v in tensors.items()}
        return {}

    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    mask.paste(255, (0, 0, 8, 4))  # the top-left cells: 2 columns x 1 row of 4x4-pixel codes
    pipe(image=IMAGES[0], mask_image=mask, num_inference_steps=3, generator=gen(), callback_on_step_end=keep,
         callback_on_step_end_tensor_inputs=["image_ids", "text_ids"])
    known = pipe._image_codes(IMAGES[0])
    final = seen["last"]["image_ids"]
    cells = torch.zeros(GRID, GRID, dtype=torch.bool)
    cells[0, :2] = True
    cells = cells.flatten()
    assert torch.equal(final[0, ~cells], known[0, ~cells])  # kept
    assert (final != CODEBOOK).all()  # and the hole is filled
    assert (seen["first"]["text_ids"] == pipe.tokenizer.mask_token_id).all()  # no prompt: the caption stays hidden

    seen.clear()
    prompt = "a small <|mask:2|> left of a large blue square"
    pipe(prompt, IMAGES[0], task="infill", num_inference_steps=3, generator=gen(), callback_on_step_end=keep,
         callback_on_step_end_tensor_inputs=["text_ids"])
    from mmdlm.multimodal import encode_captions

    start = encode_captions(pipe.tokenizer, [prompt], TEXT_LENGTH)
    holes = start == pipe.tokenizer.mask_token_id
    assert holes.sum() == 2
    assert torch.equal(seen["last"]["text_ids"][~holes], start[~holes])
    assert (seen["last"]["text_ids"] != pipe.tokenizer.mask_token_id).all()


def test_remasking_takes_codes_back_and_follows_the_generator():
    pipe = tiny_pipeline()
    pipe.scheduler = MaskedDiffusionScheduler.from_config(pipe.scheduler.config, remasking=True, alg_temp=2.0)
    steps = []

    def record(pipe_, step, t, tensors):
        steps.append(tensors["image_ids"].clone())
        return {}

    a = pipe([PROMPT] * 4, num_inference_steps=6, generator=gen(5), output_type="pt", callback_on_step_end=record,
             callback_on_step_end_tensor_inputs=["image_ids"]).images
    masked = [ids == CODEBOOK for ids in steps]
    assert any((~before & after).any() for before, after in zip(masked, masked[1:]))  # a code was taken back
    assert [int(m.sum()) for m in masked] == sorted((int(m.sum()) for m in masked), reverse=True)  # the schedule
    assert not masked[-1].any()
    assert torch.equal(a, pipe([PROMPT] * 4, num_inference_steps=6, generator=gen(5), output_type="pt").images)
    listed = pipe([PROMPT] * 2, num_inference_steps=6, generator=[gen(5), gen(6)], output_type="pt").images
    alone = pipe(PROMPT, num_inference_steps=6, generator=gen(6), output_type="pt").images
    assert torch.allclose(listed[1:], alone, atol=1e-5)


def test_guidance_passes_and_math():
    pipe = tiny_pipeline()
    sizes = []
    hook = pipe.transformer.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    pipe(PROMPT, num_inference_steps=2, guidance_scale=2.0, generator=gen())
    assert sizes == [2, 2]  # conditional + caption-hidden pass, in one batch
    sizes.clear()
    pipe(PROMPT, num_inference_steps=2, guidance_scale=0.0, generator=gen())
    assert sizes == [1, 1]
    sizes.clear()
    pipe(image=IMAGES[0], num_inference_steps=2, text_guidance_scale=1.0, generator=gen())
    assert sizes == [2, 2]
    sizes.clear()
    pipe(task="joint", num_inference_steps=3, guidance_scale=1.0, text_guidance_scale=1.0, generator=gen())
    # nothing known at the first step; then each stream guides the other until the caption is done
    # (after 2 of 3 steps, joint's default text_steps), and the last step guides the image alone
    assert sizes == [1, 3, 2]
    hook.remove()


def test_generators_history_and_callbacks():
    pipe = tiny_pipeline()
    a = pipe(PROMPT, num_inference_steps=3, generator=gen(5), output_type="pt").images
    b = pipe(PROMPT, num_inference_steps=3, generator=gen(5), output_type="pt").images
    assert torch.equal(a, b)
    listed = pipe(PROMPT, num_inference_steps=3, num_images_per_prompt=2, generator=[gen(5), gen(6)],
                  output_type="pt").images
    assert torch.allclose(listed[:1], a, atol=1e-5)  # a list: one generator per sample (batched float noise aside)
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        pipe(PROMPT, num_images_per_prompt=2, generator=[gen(), gen(), gen()])
    greedy = pipe(image=IMAGES[0], num_images_per_prompt=4, num_inference_steps=3, generator=gen()).texts
    sampled = pipe(image=IMAGES[0], num_images_per_prompt=4, num_inference_steps=3, generator=gen(),
                   temperature=1.0).texts  # `temperature` is the text's, as in DualDiffusionPipeline
    assert len(set(greedy)) == 1 and len(set(sampled)) > 1
    out = pipe(task="joint", num_inference_steps=3, generator=gen(), return_history=True)
    assert len(out.history) == 3
    assert out.history[0]["images"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert (out.history[0]["text_ids"] == pipe.tokenizer.mask_token_id).any()
    assert not (out.history[-1]["text_ids"] == pipe.tokenizer.mask_token_id).any()
    assert pipe(image=IMAGES[0], num_inference_steps=2, return_history=True).history[0]["images"] is None

    def fill(pipe_, step, t, tensors):  # a callback may replace the ids, as diffusers callbacks replace latents
        return {"image_ids": torch.zeros_like(tensors["image_ids"])}

    out = pipe(PROMPT, num_inference_steps=2, callback_on_step_end=fill,
               callback_on_step_end_tensor_inputs=["image_ids"], output_type="pt").images
    zeros = pipe.image_tokenizer.decode(torch.zeros(1, GRID, GRID, dtype=torch.long))
    assert torch.allclose(out, (zeros + 1) / 2)
    with pytest.raises(ValueError, match="callback tensor inputs"):
        pipe(PROMPT, callback_on_step_end=fill, callback_on_step_end_tensor_inputs=["latents"])


def test_text_steps_finish_the_caption_sooner():
    """The text on a schedule of its own: done after text_steps of N while the image takes all N
    (by default half of N in joint generation, N otherwise)."""
    pipe = tiny_pipeline()
    mask, k = pipe.tokenizer.mask_token_id, CODEBOOK
    out = pipe(task="joint", num_inference_steps=6, text_steps=2, generator=gen(), return_history=True)
    masked = [int((h["text_ids"] == mask).sum()) for h in out.history]
    assert len(out.history) == 6 and masked[0] > 0 and masked[1:] == [0] * 5
    seen = []
    pipe(task="joint", num_inference_steps=6, text_steps=2, generator=gen(),
         callback_on_step_end=lambda p, i, t, kw: seen.append(int((kw["image_ids"] == k).sum())),
         callback_on_step_end_tensor_inputs=["image_ids"])
    assert seen[1] > 0 and seen[-1] == 0  # the image codes follow their own 6-step schedule
    default = pipe(task="joint", num_inference_steps=6, generator=gen(), output_type="pt")
    half = pipe(task="joint", num_inference_steps=6, text_steps=3, generator=gen(), output_type="pt")
    every = pipe(task="joint", num_inference_steps=6, text_steps=6, generator=gen(), output_type="pt")
    assert torch.equal(default.images, half.images) and default.texts == half.texts
    assert not torch.equal(default.images, every.images)
    caption = pipe(image=IMAGES[0], num_inference_steps=6, return_history=True).history
    assert len(caption) == 6 and caption[3]["text_ids"].eq(mask).any()
    assert len(pipe(image=IMAGES[0], num_inference_steps=6, text_steps=2, return_history=True).history) == 2
    with pytest.raises(ValueError, match="text_steps must be an integer from 1 to num_inference_steps"):
        pipe(task="joint", num_inference_steps=6, text_steps=7)


def test_live_previews_through_streaming():
    from mmdlm.pipelines.streaming import Done, Step, can_preview, iterate_steps

    pipe = tiny_pipeline()
    assert can_preview(pipe)
    items = list(iterate_steps(pipe, PROMPT, num_inference_steps=3, generator=gen()))
    steps, done = items[:-1], items[-1]
    assert [type(x) for x in steps] == [Step] * 3 and isinstance(done, Done)
    assert all(x.images.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE) for x in steps)
    assert torch.allclose(steps[-1].images, to_unit(done.output.images), atol=1 / 127.5 + 1e-6)
    # without the prediction, still-masked cells are shown grey
    ids = torch.full((1, GRID * GRID), CODEBOOK)
    ids[0, 0] = 3
    grey = pipe.preview_images({"image_ids": ids})
    assert torch.equal(grey[0, :, 4:, 4:], torch.zeros(3, IMAGE_SIZE - 4, IMAGE_SIZE - 4))
    assert not torch.equal(grey[0, :, :4, :4], torch.zeros(3, 4, 4))


def to_unit(images):
    """PIL images -> (B, 3, H, W) in [-1, 1]."""
    from mmdlm.images import to_tensor

    return to_tensor(images, IMAGE_SIZE)


def test_pipeline_round_trip(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert {"transformer", "vqvae", "tokenizer", "scheduler"} <= set(index) and index["image_size"] == IMAGE_SIZE
    again = load_pipeline(tmp_path / "p")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again, UnifiedDiscretePipeline) and isinstance(again.scheduler, MaskedDiffusionScheduler)
    for kw in (dict(prompt=PROMPT), dict(image=IMAGES[:2]), dict(task="joint", num_images_per_prompt=2)):
        x = pipe(**kw, num_inference_steps=3, generator=gen(), output_type="pt")
        y = again(**kw, num_inference_steps=3, generator=gen(), output_type="pt")
        assert x.texts == y.texts
        assert (x.images is None and y.images is None) or torch.equal(x.images, y.images)
    assert isinstance(UnifiedDiscretePipeline.from_pretrained(tmp_path / "p"), UnifiedDiscretePipeline)


def test_pipeline_errors(tmp_path):
    pipe = tiny_pipeline()
    tok = pipe.tokenizer
    with pytest.raises(ValueError, match="codebook has 32 entries but the transformer was built for 16"):
        UnifiedDiscretePipeline(pipe.transformer, tiny_vq(codebook=32), tok, pipe.scheduler)
    with pytest.raises(ValueError, match="gives a 5x5 code grid but the transformer works on 4x4"):
        UnifiedDiscretePipeline(pipe.transformer, pipe.vqvae, tok, pipe.scheduler, image_size=20)
    with pytest.raises(ValueError, match="cannot be tiled"):
        UnifiedDiscretePipeline(pipe.transformer, pipe.vqvae, tok, pipe.scheduler, image_size=18)
    other = tiny_tokenizer()
    other.add_tokens(["pink"])
    with pytest.raises(ValueError, match="vocabulary"):
        UnifiedDiscretePipeline(pipe.transformer, pipe.vqvae, other, pipe.scheduler)
    with pytest.raises(ValueError, match="vqvae must be a VQModel"):
        UnifiedDiscretePipeline(pipe.transformer, torch.nn.Linear(1, 1), tok, pipe.scheduler)
    for kwargs, message in [
        (dict(prompt=""), "prompt 0 is empty"),
        (dict(prompt="a " * (TEXT_LENGTH + 1)), f"but the text length is {TEXT_LENGTH}"),
        (dict(task="caption"), "captioning needs an image"),
        (dict(prompt=PROMPT, image=IMAGES[0]), "without <|mask:N|> placeholders"),
        (dict(prompt=PROMPT, num_inference_steps=0), "num_inference_steps"),
        (dict(prompt=PROMPT, output_type="latent"), "output_type"),
        (dict(prompt=PROMPT, guidance_scale=-1), "guidance_scale must be a finite number >= 0"),
        (dict(image=torch.zeros(1, 3, 8, 8)), "image tensor is 8x8 but the model works at 16x16"),
    ]:
        with pytest.raises(ValueError, match=message.replace("|", r"\|")):
            pipe(**{"num_inference_steps": 2, **kwargs})
    # a checkpoint of another type
    from mm_oracle import OraclePipeline

    OraclePipeline().save_pretrained(tmp_path / "oracle")
    with pytest.raises(ValueError, match="holds a OraclePipeline pipeline, not a UnifiedDiscretePipeline"):
        UnifiedDiscretePipeline.from_pretrained(tmp_path / "oracle")
