"""mmdlm in EleutherAI's lm-evaluation-harness: the `mmdlm` model (registered in lm-eval's registry),
the shipped offline tasks, and `mmdlm eval-lm`."""
import json

import pytest
import torch
from conftest import tiny_causal_lm

pytest.importorskip("lm_eval")
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from mmdlm import cli  # noqa: E402
from mmdlm.eval.harness import MMDLM  # noqa: E402
from mmdlm.eval.likelihood import dlm_elbo_terms  # noqa: E402
from mmdlm.eval.lm_tasks import TASKS, TASKS_DIR  # noqa: E402
from mmdlm.pipelines import TextDiffusionPipeline  # noqa: E402
from mmdlm.text.adapt import DiffusionLM  # noqa: E402
from mmdlm.text.generate import generate  # noqa: E402


@pytest.fixture(scope="module")
def dlm_dir(tmp_path_factory, tokenizer_factory):
    tok = tokenizer_factory()
    folder = tmp_path_factory.mktemp("lm-eval") / "dlm"
    DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tok), tok).save_pretrained(folder, tokenizer=tok)
    return folder


def request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_registered_in_lm_evals_registry():
    assert get_model("mmdlm") is MMDLM


def test_loglikelihood_is_the_conditional_elbo_and_the_greedy_check_decodes(dlm_dir):
    lm = MMDLM(pretrained=str(dlm_dir), elbo_grid=3, elbo_replicates=2, batch_size=2)
    context, continuation = "def add(a, b):", "\n    return a + b"
    (ll, _), = lm.loglikelihood([request("loglikelihood", context, continuation)], disable_tqdm=True)
    ctx = [lm.prefix_token_id, *lm.tok_encode(context)]
    cont = lm.tok_encode(context + continuation)[len(ctx) - 1:]
    terms = dlm_elbo_terms(lm.dlm, torch.tensor([ctx + cont]), context=torch.tensor([len(ctx)]), grid=3,
                           replicates=2)
    assert ll == pytest.approx(-float(terms.double().mean()), rel=1e-6) and ll < 0
    # is_greedy: what greedy decoding, one token a step, writes into the continuation's masks
    x = torch.tensor([ctx + [lm.dlm.mask_token_id] * 4])
    from mmdlm.schedulers import MaskedDiffusionScheduler

    greedy = generate(lm.dlm, x, MaskedDiffusionScheduler(), steps=4).sequences[0, len(ctx):].tolist()
    other = [(greedy[0] + 1) % 250, *greedy[1:]]
    assert lm._greedy([(ctx, greedy), (ctx, other)]) == [True, False]
    # rolling: a text within one window is its ELBO after the prefix token, as loglikelihood("", text)
    text = "import os\nprint(os.getcwd())\n"
    (rolled,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)], disable_tqdm=True)
    (alone, _), = lm.loglikelihood([request("loglikelihood", "", text)], disable_tqdm=True)
    assert rolled == pytest.approx(alone)
    # a text of several windows (the tiny model's context is 64 tokens): every token scored once
    long = text * 12
    (total,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", long)], disable_tqdm=True)
    assert len(lm.tok_encode(long)) > 2 * lm.max_length and total < 3 * rolled < 0


def test_generate_until_is_the_pipeline_cut_at_the_stop_sequences(dlm_dir):
    prompts = ["def f(x):", "import os", "class A:"]
    kwargs = {"until": ["e"], "max_gen_toks": 6, "do_sample": True, "temperature": 1.0}
    one = MMDLM(pretrained=str(dlm_dir), batch_size=1, seed=3)
    three = MMDLM(pretrained=str(dlm_dir), batch_size=3, seed=3)
    out = one.generate_until([request("generate_until", p, kwargs) for p in prompts], disable_tqdm=True)
    assert out == three.generate_until([request("generate_until", p, kwargs) for p in prompts], disable_tqdm=True)
    pipe = TextDiffusionPipeline.from_pretrained(dlm_dir)
    pipe.set_progress_bar_config(disable=True)
    for i, (prompt, text) in enumerate(zip(prompts, out)):  # request i samples with generator seed + i
        full = pipe(prompt, gen_length=6, num_inference_steps=6, temperature=1.0,
                    generator=[torch.Generator().manual_seed(3 + i)]).texts[0]
        assert text == full.split("e")[0] and "e" not in text
    with pytest.raises(ValueError, match="cannot honour the generation argument"):
        one.generate_until([request("generate_until", "x", {"until": [], "num_beams": 4})])


def test_bad_model_arguments(dlm_dir):
    for kwargs, message in (({"elbo_grid": 0}, "elbo_grid must be >= 1"), ({"threshold": 2.0}, "threshold must be"),
                            ({"mc_num": 8}, "unknown mmdlm model argument"), ({"cache": "all"}, "unknown cache"),
                            ({"check_greedy": "yes"}, "check_greedy must be"),
                            ({"dtype": "int8"}, "unknown dtype 'int8'"), ({"device": "gpu0"}, "unknown device 'gpu0'")):
        with pytest.raises(ValueError, match=message):
            MMDLM(pretrained=str(dlm_dir), **kwargs)


def test_shipped_dlm_and_ar_teacher_side_by_side_with_simple_evaluate():
    """lm-eval's own simple_evaluate on the shipped tasks (two documents each): the shipped DLM
    through `--model mmdlm`, the AR teacher through lm-eval's `hf`."""
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    runs = {"mmdlm": {"pretrained": "assets/dlm", "elbo_grid": 2, "check_greedy": False},
            "hf": {"pretrained": "assets/teacher", "add_bos_token": True}}
    results = {model: simple_evaluate(model=model, model_args=args, tasks=list(TASKS), task_manager=manager,
                                      limit=2, device="cpu", batch_size=4, log_samples=False)["results"]
               for model, args in runs.items()}
    for scores in results.values():
        assert set(scores) == set(TASKS)
        assert 0 <= scores["mmdlm_stdlib_mc"]["acc,none"] <= 1
        assert 0 <= scores["mmdlm_stdlib_line"]["exact_match,first_line"] <= 1
        assert 0 < scores["mmdlm_stdlib_ppl"]["bits_per_byte,none"] < 8
    # the DLM's ELBO bounds its likelihood from below: more bits than the teacher's exact ones here
    assert results["mmdlm"]["mmdlm_stdlib_ppl"]["bits_per_byte,none"] > results["hf"]["mmdlm_stdlib_ppl"][
        "bits_per_byte,none"]


def test_eval_lm_command_writes_a_record(dlm_dir, tmp_path, capsys):
    out = tmp_path / "lm_eval.json"
    argv = ["eval-lm", "--model", str(dlm_dir), "--tasks", "mmdlm_stdlib_mc", "--limit", "2", "--model-args",
            "elbo_grid=2", "--label", "tiny", "--output", str(out)]
    assert cli.main(argv) == 0
    (record,) = json.loads(out.read_text())["records"]
    assert record["label"] == "tiny" and record["backend"] == "mmdlm" and record["n"] == {"mmdlm_stdlib_mc": 2}
    assert record["model_args"]["check_greedy"] is False  # no task of the run reads it
    assert 0 <= record["results"]["mmdlm_stdlib_mc"]["acc"] <= 1
