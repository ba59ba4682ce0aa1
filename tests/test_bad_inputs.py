"""The bad-input catalogue of the text path, the training commands and the CLI: every bad value
gets a one-line error (exit code 2 from the CLI), never a traceback, a crash or a silent wrong
result. A new option joins with its cases here (the machinery: tests/bad_inputs.py)."""
import os

import pytest
from bad_inputs import build_paths, case, check, copy_dir, plant_pickle, tiny_run, truncate

from mmdlm.placeholders import parse_infill
from mmdlm.schedulers import MaskedDiffusionScheduler
from mmdlm.text.adapt import load_dlm

NAN, INF = float("nan"), float("inf")
FINITE = "must be a finite number >= 0"


def gen(*flags, model="{dlm}", prompt=("--prompt", "def f(x):")):
    return ["generate", "--model", model, *prompt, "--gen-length", "4", "--steps", "2", *flags]


def adapt(*flags, model="{causal}", data="{corpus}", out="{root}/adapt-out"):
    return ["adapt", "--model", model, "--dataset", "local", "--data-files", data, "--output-dir", out,
            "--max-steps", "1", "--batch-size", "2", "--seq-len", "16", "--warmup-steps", "0", *flags]


def pretrain(*flags, out="{root}/pretrain-out"):
    return ["pretrain", "--dataset", "local", "--data-files", "{corpus}", "--output-dir", out, "--max-steps", "1",
            "--batch-size", "2", "--seq-len", "16", "--vocab-size", "300", "--model-config",
            '{{"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, '
            '"num_attention_heads": 2}}', *flags]


def sft(*flags, data="{sft_data}", out="{root}/sft-out"):
    return ["sft", "--model", "{dlm}", "--dataset", "local", "--data-files", data, "--output-dir", out,
            "--max-steps", "1", "--batch-size", "2", "--seq-len", "32", *flags]


def task(*flags, model="{dlm}", ar_model="{causal}"):
    return ["eval-task", "--model", model, "--ar-model", ar_model, "--n", "1", "--gen-length", "4", "--steps", "4",
            *flags]


def pipe(*args, **kwargs):
    """The text pipeline of the tiny DLM (context 64) called with these arguments."""
    return lambda p: p.pipe(*args, **kwargs)


not_root = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")

CASES = [
    # ---- refused before issue 22 ----
    case(gen(model="{causal}"), r"not a mmdlm diffusion LM checkpoint", "generate-causal-lm"),
    case(gen(prompt=("--prompt", "x " * 80)), r"context is 64", "generate-prompt-too-long"),
    case(gen(prompt=("--infill", "no placeholder")), r"no <\|mask:N\|> placeholder", "generate-infill-no-placeholder"),
    case(gen("--steps", "0"), r"steps must be >= 1", "generate-steps-0"),
    case(gen("--rule", "vibes"), r"unknown rule 'vibes'", "generate-unknown-rule"),
    case(gen("--threshold", "0"), r"threshold must be in \(0, 1\]", "generate-threshold-0"),
    case(gen("--top-p", "nan"), r"top_p must be in \(0, 1\]", "generate-top-p-nan"),
    case(gen("--threshold", "nan"), r"threshold must be in \(0, 1\]", "generate-threshold-nan"),
    case(gen("--history", "out.png"), r"history must be", "generate-history-png"),
    case(adapt("--seq-len", "65"), r"exceeds the model's 64 positions", "adapt-seq-len"),
    case(adapt(data="{root}/none.txt"), r"data file\(s\) not found", "adapt-missing-data"),
    case(["adapt", "--config", "{typo_yaml}"], r"did you mean 'max_steps'", "adapt-typo-key"),
    case(["merge-lora"], r"give --adapter", "merge-lora-no-adapter"),
    case(pipe("x", gen_length=4, threshold=1.5), r"threshold must be in \(0, 1\]", "pipe-threshold-1.5"),
    # ---- 2: NaN, infinity and wrong types among the sampling options ----
    case(gen("--temperature", "nan"), rf"temperature {FINITE}", "generate-temperature-nan"),
    case(gen("--temperature", "inf"), rf"temperature {FINITE}", "generate-temperature-inf"),
    case(gen("--alg-temp", "nan"), rf"alg_temp {FINITE}", "generate-alg-temp-nan"),
    case(gen("--alg-temp", "inf"), rf"alg_temp {FINITE}", "generate-alg-temp-inf"),
    case(gen("--guidance-scale", "nan"), rf"guidance_scale {FINITE}", "generate-guidance-nan"),
    case(gen("--guidance-scale", "inf"), rf"guidance_scale {FINITE}", "generate-guidance-inf"),
    case(gen("--guidance-scale", "-1"), rf"guidance_scale {FINITE}", "generate-guidance-negative"),
    case(pipe("x", gen_length=4, alg_temp=NAN), rf"alg_temp {FINITE}", "pipe-alg-temp-nan"),
    case(pipe("x", gen_length=4, guidance_scale=NAN), rf"guidance_scale {FINITE}", "pipe-guidance-nan"),
    case(pipe("x", gen_length=4, temperature=INF), rf"temperature {FINITE}", "pipe-temperature-inf"),
    case(pipe("x", gen_length=4, guidance_scale="high"), rf"guidance_scale {FINITE}", "pipe-guidance-str"),
    case(lambda p: MaskedDiffusionScheduler(temperature=NAN), rf"temperature {FINITE}", "scheduler-temperature-nan"),
    case(lambda p: MaskedDiffusionScheduler(temperature="hot"), rf"temperature {FINITE}", "scheduler-temperature-str"),
    case(lambda p: MaskedDiffusionScheduler(top_k=2.5), r"top_k must be >= 1 \(an int\)", "scheduler-top-k-float"),
    case(lambda p: MaskedDiffusionScheduler(remasking="yes"), r"remasking must be True or False",
         "scheduler-remasking-str"),
    case(adapt("--lr", "inf"), r"lr must be a finite number > 0", "adapt-lr-inf"),
    case(adapt("--weight-decay", "nan"), rf"weight_decay {FINITE}", "adapt-weight-decay-nan"),
    case(adapt("--max-grad-norm", "nan"), rf"max_grad_norm {FINITE}", "adapt-max-grad-norm-nan"),
    case(adapt("--ar-loss-weight", "nan"), rf"ar_loss_weight {FINITE}", "adapt-ar-loss-weight-nan"),
    case(adapt("--validation-fraction", "nan"), r"validation_fraction must be in \[0, 1\)", "adapt-validation-nan"),
    case(sft("--validation-fraction", "1.5"), r"validation_fraction must be in \[0, 1\)", "sft-validation-1.5"),
    # ---- 3: weights that do not fit the architecture of config.json ----
    case(gen(model="{wrong_dlm}"), r"weights of .* do not fit", "generate-wrong-architecture"),
    case(gen(model="{resized_dlm}"), r"weights of .* do not fit .*another shape", "generate-wrong-vocab-size"),
    case(adapt(model="{wrong_causal}"), r"weights of .* do not fit", "adapt-wrong-architecture"),
    case(lambda p: load_dlm(p.wrong_dlm), r"weights of .* do not fit", "load-dlm-wrong-architecture"),
    case(gen(model="{dlm_block_size}"), r"block_size must be >= 1 \(an int\), got '4'",
         "generate-mmdlm-json-block-size"),
    case(gen(model="{dlm_shift}"), r"shift must be True or False", "generate-mmdlm-json-shift"),
    case(lambda p: load_dlm(p.dlm_eps), r"eps must be a finite number", "load-dlm-mmdlm-json-eps-nan"),
    # ---- 4: a checkpoint is data (tests/test_training.py plants code in every pickle-named file) ----
    case(adapt("--resume", out="{resume_custom}"), r"custom_checkpoint_0.pkl holds pickled objects",
         "adapt-resume-pickled-object"),
    case(adapt("--resume", out="{resume_optimizer}"), r"optimizer.bin is not plain data", "adapt-resume-code-pickle"),
    case(adapt("--resume", out="{resume_truncated}"), r"damaged or truncated", "adapt-resume-truncated-weights"),
    # ---- 5: lengths checked against the context before anything is built ----
    case(gen("--gen-length", "1000000000"), r"context is 64", "generate-gen-length-1e9"),
    case(gen("--steps", "1000000000000"), r"steps must be at most 1,000,000", "generate-steps-1e12"),
    case(pipe("x", gen_length=4, num_inference_steps=10**8), r"num_inference_steps must be at most",
         "pipe-steps-1e8"),
    case(gen(prompt=("--infill", "<|mask:100000000000|>")), r"context is 64", "generate-infill-1e11"),
    case(pipe("x", gen_length=10**8), r"context is 64", "pipe-gen-length-1e8"),
    case(lambda p: parse_infill(p.pipe.tokenizer, "<|mask:100000000000|>", 0, max_length=64), r"context is 64",
         "parse-infill-1e11"),
    # ---- 6: one-line messages instead of tracebacks ----
    case(gen(model="{truncated_dlm}"), r"weights of .* are damaged or truncated", "generate-truncated-weights"),
    case(adapt(model="{truncated_causal}"), r"weights of .* are damaged or truncated", "adapt-truncated-weights"),
    case(lambda p: load_dlm(p.truncated_dlm), r"weights of .* are damaged or truncated", "load-dlm-truncated-weights"),
    case(gen("--output", "{a_dir}"), r"--output .* is a folder", "generate-output-is-a-folder"),
    case(gen("--output", "{a_file}/out.json"), r"--output .* not a folder", "generate-output-inside-a-file"),
    case(gen("--output", "{readonly}/out.json"), r"--output .* cannot be written", "generate-output-read-only",
         marks=not_root),
    case(adapt(out="{a_file}"), r"output_dir .* is a file", "adapt-output-dir-is-a-file"),
    case(pretrain(out="{a_file}"), r"output_dir .* is a file", "pretrain-output-dir-is-a-file"),
    case(sft(out="{a_file}"), r"output_dir .* is a file", "sft-output-dir-is-a-file"),
    case(adapt(out="{readonly}/run"), r"output_dir .* cannot be written", "adapt-output-dir-read-only", marks=not_root),
    case(["merge-lora", "--adapter", "{lora_dlm}", "--output", "{a_file}"], r"--output .* is a file, not a folder",
         "merge-lora-output-is-a-file"),
    case(adapt(data="{binary_txt}"), r"binary.txt: not UTF-8 text", "adapt-binary-txt"),
    case(adapt(data="{empty_txt}"), r"hold no examples", "adapt-empty-txt"),
    case(adapt(data="{broken_jsonl}"), r"could not read the data files .*broken.jsonl as json", "adapt-broken-jsonl"),
    case(sft(data="{broken_jsonl}"), r"could not read the data files .*broken.jsonl as json", "sft-broken-jsonl"),
    # ---- issue 24: data prepared on disk, or streamed ----
    case(adapt("--data-cache", "{a_file}"), r"data_cache .* is a file", "adapt-data-cache-is-a-file"),
    case(adapt("--streaming", "--max-train-sequences", "4"), r"max_train_sequences and max_files cap a prepared",
         "adapt-streaming-max-train-sequences"),
    case(adapt("--streaming", "--seq-len", "64", "--validation-fraction", "0.9"),
         r"the streaming source ended before giving process 0 of 1 one sequence of 64 tokens", "adapt-streaming-short"),
    case(["adapt", "--model", "{causal}", "--streaming", "--seq-len", "16", "--output-dir", "{root}/stream-out"],
         r"streaming reads a `datasets` source", "adapt-streaming-builtin"),
    case(pipe(None), r"prompt must be a string or a list of strings", "pipe-prompt-none"),
    case(pipe([1, 2]), r"prompt must be a string or a list of strings", "pipe-prompt-ints"),
    case(pipe("x", gen_length=2.5), r"gen_length must be >= 0 \(an int\)", "pipe-gen-length-float"),
    case(pipe("x", gen_length=True), r"gen_length must be >= 0 \(an int\)", "pipe-gen-length-bool"),
    case(pipe("x", gen_length=4, num_inference_steps="4"), r"num_inference_steps must be >= 1 \(an int\)",
         "pipe-steps-str"),
    case(pipe("x", gen_length=4, block_length=2.0), r"block_length must be >= 1 \(an int\)", "pipe-block-length-float"),
    case(pipe("x", gen_length=4, cache="all"), r"unknown cache 'all'", "pipe-cache-unknown"),
    case(pipe("x", gen_length=4, cache="dual", refresh_every=0), r"refresh_every must be >= 1",
         "pipe-refresh-every-0"),
    case(pipe("x", gen_length=4, stop_at_eos="no"), r"stop_at_eos must be True or False", "pipe-stop-at-eos-str"),
    # ---- issue 27: chat, token editing, lm-eval ----
    case(gen("--editing-threshold", "0"), r"editing_threshold must be in \(0, 1\]", "generate-editing-0"),
    case(gen("--editing-threshold", "nan"), r"editing_threshold must be in \(0, 1\]", "generate-editing-nan"),
    case(gen("--editing-threshold", "0.5", "--remasking"), r"remasking and editing_threshold .* choose one",
         "generate-editing-and-remasking"),
    case(gen("--chat"), r"the tokenizer has no chat template", "generate-chat-no-template"),
    case(gen("--chat", prompt=("--infill", "a<|mask:2|>")), r"--chat sends --prompt", "generate-chat-no-prompt"),
    case(pipe("x", gen_length=4, editing_threshold=1.5), r"editing_threshold must be in \(0, 1\]",
         "pipe-editing-1.5"),
    case(pipe(messages=[{"role": "bot", "content": "x"}]), r"messages must be", "pipe-messages-bad-role"),
    case(pipe(messages="hello"), r"messages must be a chat", "pipe-messages-str"),
    case(pipe("x", messages=[{"role": "user", "content": "x"}]), r"a prompt or messages, not both",
         "pipe-prompt-and-messages"),
    case(pipe(messages=[{"role": "user", "content": "x"}]), r"the tokenizer has no chat template",
         "pipe-messages-no-template"),
    case(["eval-lm", "--model", "{root}/none"], r"no model at", "eval-lm-no-model"),
    case(["eval-lm", "--model", "{a_dir}"], r"holds no model", "eval-lm-empty-folder"),
    case(["eval-lm", "--model", "{dlm}", "--backend", "vllm"], r"unknown backend 'vllm'", "eval-lm-backend"),
    case(["eval-lm", "--model", "{dlm}", "--model-args", "mc_num=8"], r"unknown mmdlm model argument\(s\) mc_num",
         "eval-lm-unknown-model-arg"),
    case(["eval-lm", "--model", "{dlm}", "--model-args", "elbo_grid=0"], r"elbo_grid must be >= 1",
         "eval-lm-elbo-grid-0"),
    case(["eval-lm", "--model", "{dlm}", "--model-args", "editing_threshold=2"],
         r"editing_threshold must be in \(0, 1\]", "eval-lm-editing-2"),
    case(["eval-lm", "--model", "{dlm}", "--limit", "0"], r"limit must be >= 1", "eval-lm-limit-0"),
    case(["eval-lm", "--model", "{dlm}", "--device", "gpu0"], r"unknown device 'gpu0'", "eval-lm-device-unknown"),
    case(["eval-lm", "--model", "{dlm}", "--model-args", "dtype=int8"], r"unknown dtype 'int8'",
         "eval-lm-dtype-unknown"),
    case(["eval-lm", "--model", "{dlm}", "--output", "{a_dir}"], r"--output .* is a folder", "eval-lm-output-dir"),
    case(["eval-lm", "--model", "{dlm}", "--include-path", "{a_file}"], r"--include-path .* is not a folder",
         "eval-lm-include-path"),
    case(["eval-lm", "--model", "{dlm}", "--tasks", "mmdlm_stdlib_nope"],
         r"unknown lm-eval task\(s\) mmdlm_stdlib_nope", "eval-lm-unknown-task"),
    # ---- issue 25: devices, precision, attention, compilation ----
    case(gen("--device", "gpu0"), r"unknown device 'gpu0'", "generate-device-unknown"),
    case(gen("--device", "cuda:99"), r"device 'cuda:99'", "generate-device-absent"),
    case(gen("--dtype", "float8"), r"unknown dtype 'float8'", "generate-dtype-unknown"),
    case(gen("--attn-implementation", "flex"), r"unknown attn_implementation 'flex'", "generate-attn-unknown"),
    case(adapt("--attn-implementation", "flex"), r"unknown attn_implementation 'flex'", "adapt-attn-unknown"),
    case(sft("--attn-implementation", "flex"), r"unknown attn_implementation 'flex'", "sft-attn-unknown"),
    case(pretrain("--attn-implementation", "flex"), r"unknown attn_implementation 'flex'", "pretrain-attn-unknown"),
    case(adapt("--mixed-precision", "bf17"), r"mixed_precision must be one of auto, no, bf16, fp16",
         "adapt-mixed-precision-unknown"),
    case(adapt("--device", "cuda:1"), r"device must be cpu or cuda.*CUDA_VISIBLE_DEVICES", "adapt-device-index"),
    case(["demo", "--dtype", "half-ish"], r"unknown dtype 'half-ish'", "demo-dtype-unknown"),
    # ---- issue 26: the arithmetic task (SFT of a causal LM, the auxiliary AR loss, eval-task) ----
    case(sft("--ar-loss-weight", "nan"), r"ar_loss_weight must be a finite number >= 0", "sft-ar-loss-weight-nan"),
    case(sft("--ar-loss-weight", "-1"), r"ar_loss_weight must be a finite number >= 0", "sft-ar-loss-weight-neg"),
    case(sft("--model", "{causal}", "--ar-loss-weight", "1"), r"ar_loss_weight is a diffusion LM setting",
         "sft-causal-ar-loss-weight"),
    case(sft("--model", "{causal}", "--t-sampling", "uniform"), r"t_sampling is a diffusion LM setting",
         "sft-causal-t-sampling"),
    case(sft("--model", "{causal}", "--lora-r", "2"), r"LoRA SFT is for diffusion LMs", "sft-causal-lora"),
    case(sft("--model", "{truncated_causal}"), r"damaged or truncated", "sft-causal-truncated-weights"),
    case(task("--n", "0"), r"n must be >= 1", "eval-task-n-0"),
    case(task("--show", "-1"), r"show must be >= 0", "eval-task-show-negative"),
    case(task("--batch-size", "0"), r"batch_size must be >= 1", "eval-task-batch-size-0"),
    case(task("--gen-length", "0"), r"gen_length must be >= 1", "eval-task-gen-length-0"),
    case(task("--steps", "0"), r"steps must be >= 1", "eval-task-steps-0"),
    case(task("--block-length", "0"), r"block_length must be >= 1", "eval-task-block-length-0"),
    case(task("--cache", "all"), r"unknown cache 'all'", "eval-task-cache-unknown"),
    case(task("--refresh-every", "0"), r"refresh_every must be >= 1", "eval-task-refresh-every-0"),
    case(task("--factor", "1.0"), r"factor .* cannot be combined with threshold", "eval-task-factor-and-threshold"),
    case(gen("--factor", "-1"), r"factor must be a number above 0", "generate-factor-negative"),
    case(gen("--cache", "dual", "--refresh-every", "-2"), r"refresh_every must be >= 1", "generate-refresh-every-neg"),
    case(task("--threshold", "1.5"), r"threshold must be in \(0, 1\]", "eval-task-threshold-1.5"),
    case(task("--rule", "vibes"), r"unknown rule 'vibes'", "eval-task-rule-unknown"),
    case(task("--threads", "0"), r"threads must be >= 1", "eval-task-threads-0"),
    case(task("--output", "{a_dir}"), r"--output .* is a folder", "eval-task-output-is-a-folder"),
    case(task("--dtype", "float8"), r"unknown dtype 'float8'", "eval-task-dtype-unknown"),
    case(task(model="{causal}"), r"not a mmdlm diffusion LM checkpoint", "eval-task-model-causal"),
    case(task(ar_model="{a_dir}"), r"no config.json", "eval-task-ar-model-no-config"),
    case(task(ar_model="{truncated_causal}"), r"damaged or truncated", "eval-task-ar-model-truncated"),
]


@pytest.fixture(scope="session")
def paths(tmp_path_factory, tokenizer_factory):
    p = build_paths(tmp_path_factory.mktemp("bad-inputs"), tokenizer_factory)
    run = tiny_run(p, tmp_path_factory.mktemp("run") / "run")
    for name, spoil in (("custom", lambda step: plant_pickle(step / "custom_checkpoint_0.pkl", step / "ran")),
                        ("optimizer", lambda step: plant_pickle(step / "optimizer.bin", step / "ran")),
                        ("truncated", lambda step: truncate(step / "model.safetensors"))):
        spoilt = copy_dir(run, tmp_path_factory.mktemp(name) / "run")
        spoil(next((spoilt / "checkpoints").iterdir()))
        setattr(p, f"resume_{name}", str(spoilt))
    return p


@pytest.mark.parametrize("target,pattern", CASES)
def test_bad_input(target, pattern, paths, capsys):
    check(target, pattern, paths, capsys)


def test_lengths_are_refused_before_anything_is_built(paths):
    """A length beyond the context is refused before the masks are made (a 10**8-token row is ~1 GB)."""
    import tracemalloc

    tracemalloc.start()
    for call in (lambda: paths.pipe("x", gen_length=10**8),
                 lambda: paths.pipe("<|mask:100000000000|>", gen_length=0),
                 lambda: parse_infill(paths.pipe.tokenizer, "a<|mask:100000000|>", 0, max_length=64)):
        with pytest.raises(ValueError, match="context is 64"):
            call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20, peak


def test_outputs_are_checked_before_generating(paths, capsys):
    from mmdlm import cli

    for output in (paths.a_dir, f"{paths.a_file}/out.json"):
        assert cli.main([a.format(**vars(paths)) for a in gen("--output", output)]) == 2
        assert "---" not in capsys.readouterr().out  # nothing was generated
