"""Every command and pipeline end to end on a CUDA GPU, with tiny models, in float32 and bfloat16 (marked gpu:
skipped without CUDA; `make gpu-check` runs them, tests/test_host_syncs.py's CUDA cases with them). Nothing here
reaches a hub or needs assets/: each checkpoint is built here in milliseconds.

MMDLM_GPU_TEST_DEVICE=cpu runs them on another device (a dry run: the dtype paths on the CPU)."""
import json
import os

import pytest
import torch
from conftest import tiny_causal_lm
from discrete_fixtures import IMAGE_SIZE, TEXT_LENGTH, tiny_pipeline, tiny_vq
from test_dual_pipeline import make_pipe

from mmdlm import cli
from mmdlm.data import shapes as S
from mmdlm.data.tokenizer import train_word_tokenizer
from mmdlm.devices import default_mixed_precision
from mmdlm.pipelines import TextDiffusionPipeline, load_pipeline
from mmdlm.schedulers import MaskedDiffusionScheduler
from mmdlm.text.adapt import DiffusionLM, load_dlm

pytestmark = pytest.mark.gpu
DEVICE = os.environ.get("MMDLM_GPU_TEST_DEVICE", "cuda")
PROMPT = "a small red circle left of a large blue square"
STEPS = ["--max-steps", "2", "--batch-size", "2", "--warmup-steps", "0", "--eval-batches", "1", "--log-every", "1"]
COMMON = [*STEPS, "--mixed-precision", "bf16"]  # the default on a GPU; said, so that a dry run on the CPU uses it


def main(capsys, *argv) -> str:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A causal LM, its DLM, a corpus, SFT pairs, a tiny VQ model and both tiny multimodal pipelines, on disk."""
    from conftest import TEXT

    from mmdlm.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("gpu")
    tokenizer = train_bpe(TEXT, vocab_size=300, min_frequency=1)
    causal = tiny_causal_lm("llama", tokenizer)
    causal.save_pretrained(root / "causal")
    tokenizer.save_pretrained(root / "causal")
    DiffusionLM.from_causal_lm(causal, tokenizer).save_pretrained(root / "dlm", tokenizer=tokenizer)
    (root / "corpus.txt").write_text("".join(TEXT))
    (root / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": f"def f{i}(x):\n", "response": f"    return x + {i}\n"}) + "\n" for i in range(16)))
    tiny_vq().save_pretrained(root / "vq")
    words = train_word_tokenizer([S.caption(s) for s in S.all_scenes()[:400]] + [PROMPT])
    words.save_pretrained(root / "words")  # knows every word of the shapes captions
    make_pipe(words).save_pretrained(root / "mmdit")
    discrete = tiny_pipeline()
    discrete.scheduler = MaskedDiffusionScheduler(schedule="cosine", remasking=True, alg_temp=2.0)  # as shipped
    discrete.save_pretrained(root / "discrete")
    S.render(S.parse_caption(PROMPT), 32, 0).save(root / "scene.png")
    return root


def run_json(folder) -> dict:
    return json.loads((folder / "run.json").read_text())


# ---------------------------------------------------------------- training commands
def test_pretrain_defaults_to_bf16(files, capsys):
    out = files / "pretrain"
    main(capsys, "pretrain", "--dataset", "local", "--data-files", files / "corpus.txt", "--seq-len", "16",
         "--vocab-size", "300", "--model-config", json.dumps(
             {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "max_position_embeddings": 64}), "--output-dir", out, *STEPS)
    assert run_json(out)["mixed_precision"] == default_mixed_precision()  # bf16 on a GPU that has it
    assert (out / "model" / "config.json").is_file()


@pytest.mark.parametrize("attention", ["bidirectional", "annealed", "block", "causal"])
def test_adapt_each_attention_mode(files, capsys, attention):
    out = files / f"adapt-{attention}"
    main(capsys, "adapt", "--model", files / "causal", "--dataset", "local", "--data-files", files / "corpus.txt",
         "--seq-len", "16", "--attention", attention, "--anneal-steps", "2", "--block-size", "4",
         "--output-dir", out, *COMMON)
    dlm, _ = load_dlm(out / "model")
    assert dlm.config.attention == attention
    assert run_json(out)["mixed_precision"] in ("bf16", "no")


OPTIONS = {"checkpointing": ["--gradient-checkpointing"], "fp16": ["--mixed-precision", "fp16"],
           "fp32-lora": ["--mixed-precision", "no", "--lora-r", "2"]}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_adapt_options(files, capsys, name):
    out = files / f"adapt-{name}"
    main(capsys, "adapt", "--model", files / "causal", "--dataset", "local", "--data-files", files / "corpus.txt",
         "--seq-len", "16", "--output-dir", out, *COMMON, *OPTIONS[name])
    assert (out / "model" / "mmdlm.json").is_file()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft(files, capsys, lora):
    out = files / f"sft-{lora}"
    main(capsys, "sft", "--model", files / "dlm", "--dataset", "json", "--data-files", files / "pairs.jsonl",
         "--seq-len", "32", "--output-dir", out, *COMMON, *(["--lora-r", "2"] if lora else []))
    if lora:
        main(capsys, "merge-lora", "--adapter", out / "model", "--output", files / "sft-merged")
        main(capsys, "generate", "--model", files / "sft-merged", "--prompt", "def f(x):", "--gen-length", "4",
             "--steps", "4", "--device", DEVICE)


@pytest.mark.parametrize("backbone", ["mmdit", "discrete"])
def test_train_mm_and_eval(files, capsys, backbone):
    out = files / f"train-{backbone}"
    model = ({"num_layers": 1, "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 16,
              "caption_projection_dim": 16, "pooled_projection_dim": 16} if backbone == "mmdit" else
             {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16,
              "axes_dims_rope": [4, 6, 6], "timestep_channels": 32})
    extra = ["--image-tokenizer", files / "vq"] if backbone == "discrete" else []
    main(capsys, "train-mm", "--backbone", backbone, "--dataset", "shapes", "--image-size", IMAGE_SIZE,
         "--text-length", TEXT_LENGTH, "--n-train", "8", "--n-eval", "4", "--model-config", json.dumps(model),
         "--tokenizer", files / "words", "--output-dir", out, *COMMON, *extra)
    assert run_json(out)["mixed_precision"] in ("bf16", "no")
    record = files / f"eval-{backbone}.json"
    main(capsys, "eval-mm", "--model", out / "model", "--n", "2", "--steps", "2", "--device", DEVICE, "--dtype",
         "bfloat16", "--output", record)
    saved = json.loads(record.read_text())["records"][0]
    assert saved["device"].startswith(DEVICE) and saved["dtype"] == "bfloat16"


def test_train_vq(files, capsys):
    out = files / "vq-run"
    main(capsys, "train-vq", "--datasets", "shapes", "--image-size", "16", "--n-train", "8", "--n-eval", "4",
         "--n-report", "4", "--restart-every", "1", "--restart-until", "1.0", "--output-dir", out, "--vq-config",
         json.dumps({"block_out_channels": [8, 8, 8], "latent_channels": 4, "num_vq_embeddings": 16,
                     "norm_num_groups": 4}), *COMMON)
    assert json.loads((out / "reconstruction.json").read_text())["restarted_codes"][0] == 16


def test_train_mm_with_gradient_checkpointing(files, capsys):
    """The discrete backbone's own checkpointing (diffusers' switch, its Flux blocks recomputed)."""
    out = files / "train-discrete-ckpt"
    main(capsys, "train-mm", "--backbone", "discrete", "--dataset", "shapes", "--image-size", IMAGE_SIZE,
         "--text-length", TEXT_LENGTH, "--n-train", "8", "--n-eval", "0", "--image-tokenizer", files / "vq",
         "--model-config", json.dumps({"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2,
                                       "attention_head_dim": 16, "axes_dims_rope": [4, 6, 6],
                                       "timestep_channels": 32}),
         "--gradient-checkpointing", "--output-dir", out, *COMMON)
    assert (out / "model" / "model_index.json").is_file()


# ---------------------------------------------------------------- sampling commands
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generate_every_cache(files, capsys, cache, dtype):
    result = files / f"generate-{cache}-{dtype}.json"
    main(capsys, "generate", "--model", files / "dlm", "--prompt", "def add(a, b):", "--infill",
         "def <|mask:2|>(x):", "--gen-length", "8", "--block-length", "4", "--steps", "8", "--cache", cache,
         "--device", DEVICE, "--dtype", dtype, "--output", result)
    settings = json.loads(result.read_text())["settings"]
    assert settings["device"].startswith(DEVICE) and settings["dtype"] == dtype


@pytest.mark.parametrize("sampling", [["--temperature", "1.0", "--top-k", "20"], ["--rule", "random"],
                                      ["--remasking", "--alg-temp", "2.0"], ["--rule", "origin"],
                                      ["--threshold", "0.5"]], ids=["temperature", "random", "remasking", "origin",
                                                                    "threshold"])
def test_generate_draws_on_the_gpu(files, capsys, sampling):
    main(capsys, "generate", "--model", files / "dlm", "--prompt", "def add(a, b):", "--gen-length", "8",
         "--steps", "8", "--device", DEVICE, *sampling)


@pytest.mark.parametrize("backbone", ["mmdit", "discrete"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_t2i_and_caption(files, capsys, backbone, dtype):
    out = files / f"t2i-{backbone}-{dtype}"
    main(capsys, "t2i", PROMPT, "--model", files / backbone, "--n", "2", "--steps", "3", "--device", DEVICE,
         "--dtype", dtype, "--output-dir", out)
    assert (out / "t2i-1.png").is_file() and (out / "t2i-denoising.gif").is_file()
    text = main(capsys, "caption", out / "t2i-0.png", "--model", files / backbone, "--steps", "3", "--n", "2",
                "--temperature", "1.0", "--device", DEVICE, "--dtype", dtype)
    assert len(text.strip().splitlines()) == 2
    main(capsys, "caption", files / "scene.png", "--model", files / backbone, "--steps", "3", "--question",
         "a small <|mask:1|> circle left of a large blue square", "--device", DEVICE, "--dtype", dtype)


# ---------------------------------------------------------------- pipelines
@pytest.mark.parametrize("backbone", ["mmdit", "discrete"])
@pytest.mark.parametrize("generator_device", [DEVICE, "cpu"])
def test_joint_generation(files, backbone, generator_device):
    """Joint generation draws words and commit orders; a CPU generator works too (its draws are copied over)."""
    pipe = load_pipeline(files / backbone).to(DEVICE, torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(task="joint", num_images_per_prompt=3, num_inference_steps=4,
               generator=[torch.Generator(generator_device).manual_seed(i) for i in range(3)])
    assert len(out.images) == 3 and len(out.texts) == 3


def test_demo_pipelines_step_by_step(files):
    """The pipelines the demo runs (a text DLM, both multimodal backbones), through the same streaming iterator."""
    from mmdlm.pipelines.streaming import Done, Step, iterate_steps

    text = TextDiffusionPipeline.from_dlm(files / "dlm").to(DEVICE, torch.bfloat16)
    items = list(iterate_steps(text, "def add(a, b):", gen_length=8, num_inference_steps=4,
                               generator=torch.Generator(DEVICE).manual_seed(0)))
    assert isinstance(items[-1], Done) and sum(isinstance(x, Step) for x in items) == 4
    for backbone in ("mmdit", "discrete"):
        pipe = load_pipeline(files / backbone).to(DEVICE, torch.bfloat16)
        pipe.set_progress_bar_config(disable=True)
        items = list(iterate_steps(pipe, PROMPT, num_inference_steps=3,
                                   generator=torch.Generator(DEVICE).manual_seed(0)))
        steps = [x for x in items if isinstance(x, Step)]
        assert len(steps) == 3 and steps[-1].images is not None and isinstance(items[-1], Done)


# ---------------------------------------------------------------- the fast paths
@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_mask_free_path_matches_the_4d_mask_in_bf16(tokenizer, family):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm(family, tokenizer), tokenizer).to(DEVICE, torch.bfloat16).eval()
    dlm.probe()  # again, on the GPU in bfloat16
    assert dlm.mask_free
    ids = torch.randint(0, 200, (4, 32), device=DEVICE)
    with torch.no_grad():
        fast = dlm(ids).logits.float()
        masked = dlm(ids, pattern=dlm.pattern(32, DEVICE)).logits.float()
    assert (fast - masked).abs().max() <= 0.05 * masked.abs().max()


def test_compile_trains(files, capsys):
    out = files / "adapt-compiled"
    main(capsys, "adapt", "--model", files / "causal", "--dataset", "local", "--data-files", files / "corpus.txt",
         "--seq-len", "16", "--compile", "--output-dir", out, *COMMON)
    assert (out / "model" / "mmdlm.json").is_file()
