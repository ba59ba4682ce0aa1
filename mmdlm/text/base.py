"""Loading or building the causal LM that becomes a diffusion LM."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_outputs import CausalLMOutputWithPast

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")  # those that run diffusion attention (adapt.py)
# The KV cache's name in the models' arguments and outputs: transformers renamed `past_key_values` to `cache`
# (the old name warns, and goes in 5.40); mmdlm says `cache` and passes it on under the installed version's name.
CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def check_attn_implementation(name: str) -> str:
    """`name` if it is one of `ATTN_IMPLEMENTATIONS` that this machine can run, else a one-line ValueError."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"unknown attn_implementation {name!r}; choose one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if name == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise ValueError("attn_implementation flash_attention_2 needs the flash-attn package and a CUDA GPU; "
                             "use sdpa (which picks a flash kernel itself where the attention allows)")
    return name


def load_tokenizer(name_or_path: str):
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:
        raise ValueError(f"could not load a tokenizer from {name_or_path!r}: {err}") from err


def load_causal_lm(name_or_path: str, *, attn_implementation: str = "sdpa", dtype=torch.float32,
                   empty: bool = False):
    """`AutoModelForCausalLM.from_pretrained`, refusing weights that do not fit the architecture
    of the checkpoint's config.json (a model with random weights in their place would load), with
    a message that names the input on any failure.

    `empty`: the architecture only, its parameters on the meta device (no memory, no weights
    read): for the processes that FSDP's RAM-efficient loading sends the main process's weights."""
    if empty:
        return random_causal_lm_like(name_or_path, attn_implementation=attn_implementation, empty=True)
    check_attn_implementation(attn_implementation)
    if Path(name_or_path).exists() and not (Path(name_or_path) / "config.json").exists():
        raise ValueError(f"{name_or_path} has no config.json: not a transformers checkpoint")
    try:
        with _no_load_report():  # what it would list, the error below says in one line
            model, info = AutoModelForCausalLM.from_pretrained(
                name_or_path, attn_implementation=attn_implementation, dtype=dtype, output_loading_info=True)
    except SafetensorError as err:
        raise ValueError(f"the weights of {name_or_path!r} are damaged or truncated (safetensors: {err}); "
                         "copy or download them again") from err
    except RuntimeError as err:
        if "ignore_mismatched_sizes" not in str(err):  # transformers' error for weights of another shape
            raise
        raise ValueError(f"the weights of {name_or_path!r} do not fit the architecture its config.json describes "
                         "(some have another shape): is config.json another model's?") from err
    except ValueError as err:
        raise ValueError(f"could not load a causal LM from {name_or_path!r}: {_one_line(err)}") from err
    except OSError as err:
        raise ValueError(f"could not load a causal LM from {name_or_path!r} (a local folder or a hub id; "
                         f"this machine may be offline): {_one_line(err)}") from err
    check_weights_fit(model, info, name_or_path)
    return model


def _one_line(err: Exception) -> str:
    """transformers' and the hub's messages run over several lines; the CLI says one."""
    return " ".join(str(err).split())


@contextlib.contextmanager
def _no_load_report():
    """Drop the table of missing / unexpected keys transformers logs while loading (a filter: a
    level change on the logger would switch on other warnings)."""
    log = logging.getLogger("transformers.modeling_utils")
    drop = logging.Filter()
    drop.filter = lambda record: "LOAD REPORT" not in record.getMessage()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def check_weights_fit(model, info: dict, name_or_path: str) -> None:
    """Refuse a load whose `info` (transformers' `output_loading_info`) has weights missing (tied
    ones are not) or left over: the model's would be random."""
    problems = {kind: sorted(info[f"{kind}_keys"]) for kind in ("missing", "unexpected") if info[f"{kind}_keys"]}
    if problems:
        counts = ", ".join(f"{len(keys)} {kind}" for kind, keys in problems.items())
        kind, keys = next(iter(problems.items()))
        raise ValueError(f"the weights of {name_or_path!r} do not fit the {type(model).__name__} its config.json "
                         f"describes ({counts}; e.g. {kind} {keys[0]}): is config.json another model's?")


def random_causal_lm_like(name_or_path: str, *, seed: int = 0, attn_implementation: str = "sdpa",
                          empty: bool = False):
    """A freshly initialised causal LM with the architecture (config.json) of `name_or_path`
    (`empty`: its parameters on the meta device, `from_config`)."""
    check_attn_implementation(attn_implementation)
    if Path(name_or_path).exists() and not (Path(name_or_path) / "config.json").exists():
        raise ValueError(f"{name_or_path} has no config.json: not a transformers checkpoint")
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (ValueError, OSError) as err:
        raise ValueError(f"could not load a model config from {name_or_path!r}: {err}") from err
    return from_config(config, attn_implementation, seed, empty)


def from_config(config, attn_implementation: str, seed: int, empty: bool):
    """`AutoModelForCausalLM.from_config`: initialised from `seed`, or with `empty` its parameters
    on the meta device (accelerate's `init_empty_weights`; buffers such as RoPE's frequencies are
    computed as usual)."""
    if empty:
        from accelerate import init_empty_weights

        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
        model.tie_weights()  # skipped under init_empty_weights: a tied head would be a parameter of its own
        return model
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def build_causal_lm(model_config: dict, tokenizer, *, attn_implementation: str = "sdpa", seed: int = 0,
                    empty: bool = False):
    """A freshly initialised causal LM from a transformers config dict with a `model_type` key
    (`empty`: on the meta device, `from_config`)."""
    check_attn_implementation(attn_implementation)
    cfg = dict(model_config)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise ValueError("model_config needs a 'model_type' (e.g. llama, gpt2, qwen2)")
    try:
        config = AutoConfig.for_model(model_type, **cfg)
    except ValueError as err:
        raise ValueError(f"unknown model_type {model_type!r}: {err}") from err
    config.vocab_size = len(tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, name, getattr(tokenizer, name))
    return from_config(config, attn_implementation, seed, empty)
