"""At most one host synchronisation per denoising step in every sampler, counted with the profiler
(`mmdlm.devices.count_host_syncs`): on the CPU the operator events that would wait for a GPU (a value read by the
host, boolean indexing), on CUDA (tests marked gpu) the runtime's own synchronisations.

Each case runs twice, with n and 2n steps: what the second run adds is the cost of the n extra steps, whatever a
call costs once (tokenising, reading the prompt's layout, copying the results to the host)."""
import pytest
import torch
from conftest import TEXT, tiny_causal_lm
from discrete_fixtures import tiny_pipeline
from test_dual_pipeline import make_pipe

from mmdlm.data import shapes as S
from mmdlm.data.tokenizer import train_word_tokenizer
from mmdlm.devices import count_host_syncs
from mmdlm.pipelines import TextDiffusionPipeline
from mmdlm.schedulers import MaskedDiffusionScheduler
from mmdlm.text.adapt import DiffusionLM

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
PROMPT = "a small red circle left of a large blue square"


def counted(run, device: str) -> tuple[int, int]:
    """(host synchronisations, denoising steps) of `run(callback)`, whose pipeline calls `callback` every step."""
    steps = []

    def callback(pipe, i, t, tensors):
        steps.append(i)
        return {}

    run(callback)  # warm-up: first calls initialise lazily
    steps.clear()
    with count_host_syncs(cuda=device == "cuda") as syncs:
        run(callback)
    return syncs.count, len(steps)


def assert_one_per_step(make_run, device: str, n: int = 4) -> None:
    few, few_steps = counted(make_run(n), device)
    many, many_steps = counted(make_run(2 * n), device)
    assert many_steps > few_steps
    assert many - few <= many_steps - few_steps, (few, few_steps, many, many_steps)
    assert few <= few_steps + 8  # and a call costs a few more at most


def text_pipe(tokenizer, device, family="llama", **dlm_options):
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm(family, tokenizer), tokenizer, **dlm_options)
    pipe = TextDiffusionPipeline(dlm.model, tokenizer, MaskedDiffusionScheduler(), diffusion_config=dlm.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


TEXT_CASES = {
    "greedy": dict(),
    "prefix cache, threshold": dict(cache="prefix", threshold=0.3, block_length=4),
    "dual cache": dict(cache="dual", block_length=4),
    "dual cache, a full pass every 2 blocks": dict(cache="dual", block_length=4, refresh_every=2),
    "prefix cache, no full pass after the first": dict(cache="prefix", block_length=2, refresh_every=100),
    "sampled, top-k, top-p": dict(temperature=1.0, top_k=20, top_p=0.9),
    "remasking": dict(remasking=True, alg_temp=2.0, temperature=1.0),
    "rule origin": dict(rule="origin"),
    "rule random, per-prompt generators": dict(rule="random", generators=True),
    "guidance": dict(guidance_scale=1.0),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_text_sampler_one_sync_per_step(tokenizer, device, case):
    options = dict(TEXT_CASES[case])
    pipe = text_pipe(tokenizer, device)
    prompts = ["def add(a, b):", "class Point:\n    def"]  # of different lengths: left padding
    generators = options.pop("generators", False)

    def make_run(n):
        def run(callback):
            g = [torch.Generator(device).manual_seed(i) for i in range(len(prompts))] if generators else \
                torch.Generator(device).manual_seed(0)
            pipe(prompts, gen_length=2 * n, num_inference_steps=2 * n, stop_at_eos=True, generator=g,
                 callback_on_step_end=callback, **options)
        return run

    assert_one_per_step(make_run, device)


@pytest.mark.parametrize("device", DEVICES)
def test_block_model_sampler_one_sync_per_step(tokenizer, device):
    pipe = text_pipe(tokenizer, device, family="gpt2", attention="block", block_size=4)

    def make_run(n):
        def run(callback):
            pipe(["def add(a, b):"], gen_length=8, num_inference_steps=n, cache="prefix", callback_on_step_end=callback)
        return run

    assert_one_per_step(make_run, device)


MM_CASES = {
    "t2i": dict(prompt=PROMPT),
    "t2i with history": dict(prompt=PROMPT, return_history=True),
    "caption, text guidance": dict(image="scene", text_guidance_scale=1.5),
    "joint": dict(task="joint", num_images_per_prompt=2),
    "inpaint": dict(prompt=PROMPT, image="scene", mask_image="half"),
}


def mm_inputs(options: dict, size: int) -> dict:
    from PIL import Image

    out = dict(options)
    if out.get("image") == "scene":
        out["image"] = S.render(S.parse_caption(PROMPT), size, 0)
    if out.get("mask_image") == "half":
        mask = Image.new("L", (size, size), 0)
        mask.paste(255, (0, 0, size // 2, size))
        out["mask_image"] = mask
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backbone", ["mmdit", "discrete"])
@pytest.mark.parametrize("case", list(MM_CASES))
def test_multimodal_sampler_one_sync_per_step(device, backbone, case):
    if backbone == "mmdit":
        pipe = make_pipe(train_word_tokenizer([S.caption(s) for s in S.all_scenes()[:400]] + [PROMPT]))
    else:
        pipe = tiny_pipeline()
    pipe = pipe.to(device)
    options = mm_inputs(MM_CASES[case], pipe.image_size)

    def make_run(n):
        def run(callback):
            pipe(num_inference_steps=n, generator=torch.Generator(device).manual_seed(0), output_type="pt",
                 callback_on_step_end=callback, **options)
        return run

    assert_one_per_step(make_run, device)


@pytest.mark.parametrize("device", DEVICES)
def test_diffusion_training_step_one_sync(tmp_path, tokenizer, device):
    """The masked-diffusion loss finds the masked positions once (their number depends on the draw); on the
    CPU the forward and the loss are counted (the optimizer reads its step counters, which live on the host),
    on CUDA the whole optimizer step."""
    from mmdlm.data import pack_texts
    from mmdlm.training import TrainArgs
    from mmdlm.training.diffusion import DiffusionTrainer

    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer), tokenizer)
    args = TrainArgs(output_dir=str(tmp_path / "run"), max_steps=10, batch_size=4, warmup_steps=0,
                     device=device, mixed_precision="no")
    trainer = DiffusionTrainer(dlm, pack_texts(TEXT, tokenizer, 16), args)
    trainer.train_step()
    if device == "cuda":
        with count_host_syncs(cuda=True) as syncs:
            trainer.train_step()
    else:
        batch = trainer._batch(1, 0)
        with count_host_syncs(cuda=False) as syncs:
            trainer.compute_loss(trainer.model, batch, 1, trainer._generator(1, 0))
    assert syncs.count <= 1, syncs.names
