"""mmdlm in EleutherAI's lm-evaluation-harness (lm-eval 0.4.x, the `eval` extra): `--model mmdlm`.

Importing this module registers the model in lm-eval's model registry; `mmdlm eval-lm` imports it
and runs lm-eval's `simple_evaluate` (`lm_eval` itself knows only its own models). Model arguments
(`--model-args elbo_grid=8,editing_threshold=0.9,...`): the fields of `HarnessArgs`.

- `loglikelihood(context, continuation)`: the ELBO of the continuation given the clean context
  ([BOS] + context, as the pipeline prompts), a lower bound on log p, by Monte Carlo over t on a
  fixed stratified grid as `mmdlm.eval.likelihood` estimates it (`elbo_grid` strata x
  `elbo_replicates` draws, seeds fixed, so every run scores the same noise). `is_greedy`
  (`check_greedy`): whether the sampler, greedy and one token a step, most confident first,
  fills the continuation's masks with exactly the continuation (LLaDA's check).
- `loglikelihood_rolling`: lm-eval's rolling windows over the model's context, each window's ELBO
  given the tokens before it, summed.
- `generate_until`: `TextDiffusionPipeline` with every sampler option a model argument (a task's
  `temperature` / `do_sample` override `temperature`); the text is cut at the first stop sequence
  (the task's `until`, EOS, and the chat template's end of turn). A prompt that leaves less than
  `max_gen_toks` of the context keeps its last tokens.

Batched: sequences of one length share forward passes (`batch_size` rows); prompts go to the
pipeline `batch_size` at a time, left-padded, each with its own generator (seed + request index),
so a request samples the same in any batch.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ..devices import generator, resolve_device, resolve_dtype
from ..diffusion import SamplingOptions
from ..diffusion._checks import check_int
from ..pipelines import TextDiffusionPipeline
from ..schedulers import MaskedDiffusionScheduler
from ..text.chat import end_of_turn_id, render_chat
from ..text.generate import check_options, default_blocks, generate
from .likelihood import dlm_elbo_terms

SAMPLING = tuple(f.name for f in fields(SamplingOptions))  # given flat among the model arguments


@dataclass
class HarnessArgs:
    """The model arguments of lm-eval's `mmdlm` model, checked when made (before any model loads)."""

    pretrained: str = "assets/dlm"  # a DLM folder or a saved TextDiffusionPipeline
    batch_size: int = 16
    device: str | None = None  # default: the machine's accelerator when it has one, else cpu
    dtype: str = "float32"  # (or bfloat16, float16)
    elbo_grid: int = 8  # noise-level strata of the ELBO's Monte Carlo ...
    elbo_replicates: int = 1  # ... and draws per stratum
    elbo_seed: int = 0
    check_greedy: bool = True  # is_greedy by a greedy decode (only lambada-style acc reads it)
    max_gen_toks: int = 256  # generate_until's default length (a task's max_gen_toks wins)
    steps: int | None = None  # denoising steps (default: one per generated token)
    block_length: int | None = None
    cache: str = "none"
    refresh_every: int = 1  # blocks per full pass of an approximate cache
    guidance_scale: float = 0.0
    seed: int = 0  # request i samples with a generator seeded seed + i
    sampling: SamplingOptions = field(default_factory=SamplingOptions)  # rule, temperature, ... (checked when made)
    max_batch_size: int | None = None  # (lm-eval passes it; unused)

    def __post_init__(self):
        for name, low in (("batch_size", 1), ("elbo_grid", 1), ("elbo_replicates", 1), ("max_gen_toks", 1),
                          ("seed", 0), ("elbo_seed", 0)):
            check_int(getattr(self, name), name, low)
        for name in ("steps", "block_length"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, 1)
        check_options(steps=self.steps or 1, cache=self.cache, guidance_scale=self.guidance_scale,
                      refresh_every=self.refresh_every)
        if not isinstance(self.check_greedy, bool):
            raise ValueError(f"check_greedy must be True or False, got {self.check_greedy!r}")
        resolve_device(self.device), resolve_dtype(self.dtype)  # (checked: unknown or absent ones)

    @classmethod
    def make(cls, **kwargs) -> "HarnessArgs":
        """From lm-eval's flat model arguments: the sampler's go into `sampling`."""
        names = [*(f.name for f in fields(cls) if f.name != "sampling"), *SAMPLING]
        unknown = set(kwargs) - set(names)
        if unknown:
            raise ValueError(f"unknown mmdlm model argument(s) {', '.join(sorted(unknown))}; it takes "
                             f"{', '.join(names)}")
        sampling = SamplingOptions(**{k: kwargs.pop(k) for k in SAMPLING if k in kwargs})
        return cls(**kwargs, sampling=sampling)


@register_model("mmdlm")
class MMDLM(TemplateLM):
    """A mmdlm diffusion LM (a DLM folder or a saved TextDiffusionPipeline) for lm-eval; its
    arguments are `HarnessArgs`."""

    def __init__(self, **kwargs):
        super().__init__()
        self.args = a = HarnessArgs.make(**kwargs)
        self._device = resolve_device(a.device)
        self.pipe = TextDiffusionPipeline.from_pretrained(a.pretrained, dtype=resolve_dtype(a.dtype)).to(self._device)
        self.pipe.scheduler.register_to_config(**asdict(a.sampling))
        self.pipe.set_progress_bar_config(disable=True)
        self.tokenizer, self.dlm = self.pipe.tokenizer, self.pipe.dlm.eval()
        self.batch_size = a.batch_size
        self.elbo = dict(grid=a.elbo_grid, replicates=a.elbo_replicates, seed=a.elbo_seed, batch_size=a.batch_size)

    # ---- what lm-eval asks of a model ------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return self.eot_token_id if bos is None else bos

    @property
    def max_length(self) -> int:
        return self.dlm.max_length or 2048

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer(string, add_special_tokens=False)["input_ids"]

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's --apply_chat_template: the rendering `mmdlm sft` trains with."""
        return render_chat(self.tokenizer, chat_history, add_generation_prompt=add_generation_prompt)

    def get_model_info(self) -> dict:
        args = asdict(self.args)
        sampling = args.pop("sampling")
        return {"model": "mmdlm", **args, **sampling}  # (flat, as the arguments are given)

    # ---- likelihoods --------------------------------------------------------------------------
    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """The pair within the model's context: the oldest context tokens go first; one stays."""
        keep = self.max_length - len(continuation)
        if keep < 1:
            raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the model's context of "
                             f"{self.max_length} with a token of context")
        return context[-keep:], continuation

    def _elbo(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool = True) -> list[float]:
        """The ELBO of each (context, continuation) pair's continuation given its context (pairs that
        fit the context); sequences of one length are scored together."""
        out = [0.0] * len(pairs)
        by_length = defaultdict(list)
        for i, (context, continuation) in enumerate(pairs):
            by_length[len(context) + len(continuation)].append(i)
        for index in tqdm(by_length.values(), desc="ELBO", disable=disable_tqdm):
            terms = dlm_elbo_terms(self.dlm, torch.tensor([pairs[i][0] + pairs[i][1] for i in index]),
                                   context=torch.tensor([len(pairs[i][0]) for i in index]), **self.elbo)
            for i, value in zip(index, (-terms.double().mean((1, 2))).tolist()):
                out[i] = value
        return out

    def _greedy(self, pairs: list[tuple[list[int], list[int]]]) -> list[bool]:
        """Whether greedy decoding, one token a step, turns the continuation's masks into it."""
        c = self.dlm.config
        scheduler = MaskedDiffusionScheduler(schedule=c.schedule, eps=c.eps)
        out = [False] * len(pairs)
        shapes = defaultdict(list)
        for i, (context, continuation) in enumerate(pairs):
            shapes[len(context), len(continuation)].append(i)
        for (n_context, n), index in shapes.items():
            for a in range(0, len(index), self.batch_size):
                part = index[a:a + self.batch_size]
                truth = torch.tensor([pairs[i][0] + pairs[i][1] for i in part], device=self._device)
                x = truth.clone()
                x[:, n_context:] = c.mask_token_id
                blocks = default_blocks(self.dlm, n_context, n_context + n, None)
                filled = generate(self.dlm, x, scheduler, steps=n, blocks=blocks).sequences
                for i, same in zip(part, (filled == truth).all(-1).tolist()):
                    out[i] = same
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        # [BOS] + context, as the pipeline prompts (an empty context already is the prefix token)
        pairs = [self._fit(context_enc if context == "" else [self.prefix_token_id, *context_enc], continuation_enc)
                 for (context, _), context_enc, continuation_enc in requests]
        lls = self._elbo(pairs, disable_tqdm)
        greedy = self._greedy(pairs) if self.args.check_greedy else [False] * len(pairs)
        results = list(zip(lls, greedy))
        for (request, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for k, (string,) in enumerate(request.args for request in requests):
            # every token of a window is an input, so a window is one token shorter than a causal LM's
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length - 1, context_len=1)):
                windows.append((context, continuation))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, value in zip(owner, self._elbo(windows, disable_tqdm)):
            totals[k] += value
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ---- generation ---------------------------------------------------------------------------
    def _stops(self, until) -> list[str]:
        stops = handle_stop_sequences(until, eos=self.tokenizer.decode([self.eot_token_id]))
        if getattr(self.tokenizer, "chat_template", None) is not None and (end := end_of_turn_id(self.tokenizer)):
            stops.append(self.tokenizer.decode([end]))
        return stops

    def _call_options(self, gen_kwargs: dict) -> tuple[list[str], int, dict]:
        """(stop sequences, max_gen_toks, sampling overrides) of a request's generation arguments."""
        kw = dict(gen_kwargs)
        stops = self._stops(kw.pop("until", None))
        max_gen = kw.pop("max_gen_toks", self.args.max_gen_toks)
        check_int(max_gen, "max_gen_toks", 1)
        do_sample, temperature = kw.pop("do_sample", None), kw.pop("temperature", None)
        overrides = {"temperature": 0.0} if do_sample is False else {}
        if temperature is not None and do_sample is not False:
            overrides["temperature"] = float(temperature)
        unknown = set(kw) - set(SAMPLING)
        if unknown:
            raise ValueError(f"mmdlm cannot honour the generation argument(s) {', '.join(sorted(unknown))}; it "
                             f"takes until, max_gen_toks, do_sample and {', '.join(SAMPLING)}")
        return stops, max_gen, {**overrides, **kw}

    def _prompt(self, context: str, budget: int) -> str:
        """`context`, or, past `budget` tokens, the text of its last `budget` tokens (lm-eval's hf
        keeps a context's end the same way)."""
        ids, keep = self.tok_encode(context), budget
        while len(ids) > budget:  # (decoding and encoding again may merge tokens differently at the cut)
            context, keep = self.tokenizer.decode(ids[len(ids) - keep:]), keep - 1
            if len(self.tok_encode(context)) <= budget:
                break
        return context

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups = defaultdict(list)
        for i, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(i)
        bar = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)
        bos = int(self.tokenizer.bos_token_id is not None)
        for index in groups.values():
            stops, max_gen, overrides = self._call_options(requests[index[0]].args[1])
            gen_length = min(max_gen, self.max_length - bos - 1)
            prompts = {i: self._prompt(requests[i].args[0], self.max_length - bos - gen_length) for i in index}
            index.sort(key=lambda i: -len(prompts[i]))  # similar lengths together: less padding
            for a in range(0, len(index), self.batch_size):
                part = index[a:a + self.batch_size]
                a = self.args
                texts = self.pipe([prompts[i] for i in part], gen_length=gen_length,
                                  num_inference_steps=a.steps or gen_length, block_length=a.block_length,
                                  cache=a.cache, refresh_every=a.refresh_every, guidance_scale=a.guidance_scale,
                                  **overrides,
                                  generator=[generator(self._device, a.seed + i) for i in part]).texts
                for i, text in zip(part, texts):
                    cut = min([text.index(s) for s in stops if s and s in text], default=len(text))
                    out[i] = text[:cut]
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                bar.update(len(part))
        bar.close()
        return out
