"""`TextDiffusionPipeline`: text generation with a diffusion LM, the diffusers way.

A sibling of diffusers' `LLaDA2Pipeline`: the components are the transformers model, its
tokenizer and a `MaskedDiffusionScheduler`. The model's diffusion settings (mask id, shift,
attention mode, block size, schedule) are its `DiffusionConfig`, which lives with its weights:
`mmdlm.json` in a DLM folder and in a saved pipeline's `model/` folder alike (the tokenizer holds
the mask token itself, and must agree). The pipeline orchestrates; the sampling loop is
`mmdlm.text.generate`. `from_pretrained` takes a saved pipeline or a DLM folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..diffusion import check_generators
from ..diffusion._checks import check_bool, check_int, check_steps
from ..placeholders import PLACEHOLDER, parse_infill
from ..schedulers import MaskedDiffusionScheduler
from ..text.adapt import CONFIG_NAME, DiffusionConfig, DiffusionLM, load_dlm
from ..text.base import check_attn_implementation
from ..text.chat import check_chat, end_of_turn_id, render_chat
from ..text.generate import check_options, default_blocks, generate
from .sharing import SharedPipeline


@dataclass
class TextDiffusionPipelineOutput(BaseOutput):
    """texts: the generated text per prompt (the continuation; for prompts with <|mask:N|>
    placeholders, the whole filled text). sequences: the token ids, prompt included.
    history: ids after every step, when asked for. nfe: forward passes."""

    texts: list[str] | None
    sequences: torch.LongTensor
    history: list[torch.LongTensor] | None = None
    nfe: int = 0


class TextDiffusionPipeline(SharedPipeline, DiffusionPipeline):
    model_cpu_offload_seq = "model"
    _callback_tensor_inputs = ["sequences"]
    card_title = "Text diffusion pipeline (mmdlm TextDiffusionPipeline)"
    card_example = 'print(pipe("def add(a, b):", gen_length=32).texts[0])'
    card_tags = ("diffusion-lm", "masked-diffusion")
    card_pipeline_tag = "text-generation"

    def __init__(self, model, tokenizer, scheduler: MaskedDiffusionScheduler,
                 diffusion_config: DiffusionConfig | None = None):
        super().__init__()
        self.register_modules(model=model, tokenizer=tokenizer, scheduler=scheduler)
        saved = Path(getattr(model, "name_or_path", None) or "nowhere") / CONFIG_NAME
        if diffusion_config is None and saved.is_file():  # a saved pipeline's model/, whoever loads it
            diffusion_config = DiffusionConfig.load(saved.parent)
        if diffusion_config is None:
            mask_token_id = getattr(tokenizer, "mask_token_id", None)
            if mask_token_id is None:
                raise ValueError("the pipeline needs a mask token: the tokenizer has none and no diffusion_config "
                                 "names one")
            diffusion_config = DiffusionConfig(mask_token_id=mask_token_id, schedule=scheduler.config.schedule,
                                               eps=scheduler.config.eps)
        if getattr(tokenizer, "mask_token_id", None) not in (None, diffusion_config.mask_token_id):
            raise ValueError(f"the tokenizer's mask token id {tokenizer.mask_token_id} is not the model's "
                             f"{diffusion_config.mask_token_id}: they do not belong together")
        self.dlm = DiffusionLM(model, diffusion_config)

    @property
    def mask_token_id(self) -> int:
        return self.dlm.mask_token_id

    @classmethod
    def from_dlm(cls, path: str | Path, *, dtype=torch.float32, attn_implementation: str = "sdpa",
                 **scheduler_options) -> "TextDiffusionPipeline":
        """Build the pipeline from a mmdlm diffusion LM folder (`mmdlm adapt` output), the weights in `dtype`,
        the attention by `attn_implementation`; a LoRA adapter folder is merged into its base on load."""
        dlm, tokenizer = load_dlm(path, merge_lora=True, dtype=dtype, attn_implementation=attn_implementation)
        c = dlm.config
        scheduler = MaskedDiffusionScheduler(schedule=c.schedule, eps=c.eps, **scheduler_options)
        return cls(dlm.model.eval(), tokenizer, scheduler, diffusion_config=c)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, dtype=None, attn_implementation: str | None = None,
                        **kwargs) -> "TextDiffusionPipeline":
        """A saved pipeline (model_index.json), or a DLM folder (mmdlm.json; see `from_dlm`). `dtype`: the
        model's weights (default float32); `attn_implementation`: sdpa (default), eager or flash_attention_2."""
        path = Path(pretrained_model_name_or_path)
        if path.is_dir() and not (path / "model_index.json").is_file():  # a DLM folder (else from_dlm says why)
            return cls.from_dlm(path, dtype=dtype or torch.float32, attn_implementation=attn_implementation or "sdpa")
        if path.is_dir() and not (path / "model" / CONFIG_NAME).is_file():
            raise ValueError(f"{path} is not a saved TextDiffusionPipeline: it has no model/{CONFIG_NAME} (the "
                             "model's diffusion settings)")
        pipe = super().from_pretrained(pretrained_model_name_or_path,  # (__init__ reads model/mmdlm.json)
                                       **({"torch_dtype": dtype} if dtype is not None else {}), **kwargs)
        if attn_implementation is not None:
            pipe.set_attn_implementation(attn_implementation)
        return pipe

    def set_attn_implementation(self, name: str) -> None:
        """Run the model's attention by `name` (sdpa, eager, flash_attention_2), checked, its probe run again."""
        check_attn_implementation(name)
        if self.model.config._attn_implementation != name:
            self.model.set_attn_implementation(name)
        self.dlm = DiffusionLM(self.model, self.dlm.config)

    def _save_extra(self, folder: Path) -> None:
        self.dlm.config.save(folder / "model")  # the model's `DiffusionConfig` beside its weights

    def _card_about(self) -> str:
        c = self.dlm.config
        return (f"Text generation with a masked diffusion LM (a transformers `{type(self.model).__name__}` run "
                f"with {c.attention} attention; its diffusion settings in `model/{CONFIG_NAME}`) and mmdlm's "
                f"`MaskedDiffusionScheduler`. `pipe(messages=[...])` prompts through the tokenizer's chat template.")

    def _tokenize(self, prompts: list[str], gen_length: int) -> tuple[list[int], list[list[int]]]:
        """(BOS ids, the token ids of each prompt with its placeholders as masks), checked against
        the model's context before any mask is made."""
        tok, mask_id, limit = self.tokenizer, self.mask_token_id, self.dlm.max_length
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        bodies = []
        for p in prompts:
            if PLACEHOLDER.search(p):
                body = parse_infill(tok, p, mask_id, max_length=limit)
            else:
                body = tok(p, add_special_tokens=False)["input_ids"]
            if not bos and not body and not gen_length:
                raise ValueError("empty prompt and the tokenizer has no BOS token to start from")
            if limit is not None and len(bos) + len(body) + gen_length > limit:
                raise ValueError(f"prompt + gen_length needs {len(bos) + len(body) + gen_length} tokens but the "
                                 f"model's context is {limit}; shorten the prompt or lower gen_length")
            bodies.append(body)
        return bos, bodies

    def _encode(self, prompts: list[str], gen_length: int):
        tok, mask_id = self.tokenizer, self.mask_token_id
        bos, bodies = self._tokenize(prompts, gen_length)
        rows = [bos + body + [mask_id] * gen_length for body in bodies]
        n_prompt = [len(bos) + len(body) for body in bodies]
        width = max(map(len, rows))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)  # left padding
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        prompt_mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, (r, n) in enumerate(zip(rows, n_prompt)):
            prompt_mask[i, width - len(r) + len(bos): width - len(r) + n] = True
        return ids, attention_mask, prompt_mask, n_prompt, rows

    def _prompts(self, prompt, messages) -> list[str]:
        """The prompt texts of a call: `prompt`, or each chat of `messages` under the chat template."""
        if messages is not None:
            if prompt is not None:
                raise ValueError("give a prompt or messages, not both")
            chats = [messages] if isinstance(messages, list) and messages and isinstance(messages[0], dict) \
                else messages
            if not isinstance(chats, list) or not chats or not all(check_chat(c) for c in chats):
                raise ValueError("messages must be a chat (a non-empty list of {'role', 'content'} dicts) or a "
                                 "list of chats")
            return [render_chat(self.tokenizer, c) for c in chats]
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a list of strings (or give messages), got "
                             f"{type(prompt).__name__}" + (" with other items" if isinstance(prompt, (list, tuple))
                                                           else ""))
        if not prompts:
            raise ValueError("no prompt given")
        return list(prompts)

    def check_inputs(self, prompt=None, *, messages=None, gen_length: int = 64, block_length: int | None = None,
                     num_inference_steps: int = 64, cache: str = "none", refresh_every: int = 1,
                     guidance_scale: float = 0.0, stop_at_eos: bool = True, output_type: str = "text",
                     return_history: bool = False, return_dict: bool = True,
                     callback_on_step_end_tensor_inputs: list[str] | None = None, **sampling) -> None:
        """Refuse bad call arguments (a one-line ValueError) before anything is built or run."""
        prompts = self._prompts(prompt, messages)
        check_int(gen_length, "gen_length", 0)
        if block_length is not None:
            check_int(block_length, "block_length", 1)
        check_steps(num_inference_steps, "num_inference_steps")
        check_options(steps=num_inference_steps, cache=cache, guidance_scale=guidance_scale,
                      refresh_every=refresh_every)
        for name, flag in (("stop_at_eos", stop_at_eos), ("return_history", return_history),
                           ("return_dict", return_dict)):
            check_bool(flag, name)
        if output_type not in ("text", "ids"):
            raise ValueError(f"output_type must be 'text' or 'ids', got {output_type!r}")
        bad = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"callback tensor inputs must be among {self._callback_tensor_inputs}, got {sorted(bad)}")
        self.scheduler.sampling_options(**{k: v for k, v in sampling.items() if v is not None})
        if gen_length == 0 and not all(PLACEHOLDER.search(p) for p in prompts):
            raise ValueError("gen_length is 0 and a prompt has no <|mask:N|> placeholder: nothing to generate")
        self._tokenize(prompts, gen_length)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, *, messages: list[dict] | list[list[dict]] | None = None,
                 gen_length: int = 64, block_length: int | None = None,
                 num_inference_steps: int = 64, rule: str | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, alg_temp: float | None = None,
                 threshold: float | None = None, remasking: bool | None = None,
                 editing_threshold: float | None = None, factor: float | None = None,
                 cache: str = "none", refresh_every: int = 1, guidance_scale: float = 0.0, stop_at_eos: bool = True,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "text",
                 return_history: bool = False, return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] | None = None):
        """Continue each prompt by `gen_length` tokens and fill its `<|mask:N|>` placeholders.

        `messages` (instead of `prompt`): a chat, or a list of chats, rendered with the tokenizer's
        chat template and its generation prompt (as `mmdlm sft` renders training data); the answer
        stops at the template's end-of-turn token as at EOS. Sampling options left as None take the
        scheduler's config (`remasking`: a committed token can go back under the mask;
        `editing_threshold`: a committed token is replaced when the model disagrees with it with
        more confidence; `factor`: Fast-dLLM's factor rule for how many tokens a step commits; see
        `MaskedDiffusionScheduler`). `output_type` is "text" (decoded texts)
        or "ids" (sequences only). `generator`: one, or a list with one per prompt. `cache`: none,
        prefix or dual; `refresh_every`: blocks per full pass of a bidirectional model's approximate
        cache (1, Fast-dLLM's: every block; see `mmdlm.text.generate`).
        """
        overrides = {k: v for k, v in dict(rule=rule, temperature=temperature, top_k=top_k, top_p=top_p,
                                           alg_temp=alg_temp, threshold=threshold, remasking=remasking,
                                           editing_threshold=editing_threshold, factor=factor).items()
                     if v is not None}
        self.check_inputs(prompt, messages=messages, gen_length=gen_length, block_length=block_length,
                          num_inference_steps=num_inference_steps, cache=cache, refresh_every=refresh_every,
                          guidance_scale=guidance_scale, stop_at_eos=stop_at_eos, output_type=output_type,
                          return_history=return_history, return_dict=return_dict,
                          callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, **overrides)
        prompts = self._prompts(prompt, messages)
        stops = [] if self.tokenizer.eos_token_id is None else [self.tokenizer.eos_token_id]
        if messages is not None and (end := end_of_turn_id(self.tokenizer)) is not None:
            stops.append(end)
        check_generators(generator, len(prompts))
        ids, attention_mask, prompt_mask, n_prompt, rows = self._encode(prompts, gen_length)
        width = ids.shape[1]
        pads = [width - len(r) for r in rows]
        groups: dict[tuple, list[int]] = {}  # rows decoded on the same blocks run together
        for i, blocks in enumerate(self._row_blocks(rows, pads, gen_length, block_length)):
            groups.setdefault(blocks, []).append(i)

        callback_inputs = callback_on_step_end_tensor_inputs or []
        bar = self.progress_bar(total=num_inference_steps * len(groups))
        sequences = ids.clone()
        history = [ids.clone()] if return_history else None
        steps_done, nfe = 0, 0

        def run(blocks, index):
            """Decode rows `index`, without the padding they all have."""
            cut = min(pads[i] for i in index)
            # the rows as a slice, or an index moved to the device once (a list would be copied at every step)
            sel = slice(None) if index == list(range(len(prompts))) else torch.tensor(index, device=ids.device)
            mask = None if all(pads[i] == cut for i in index) else attention_mask[sel, cut:]

            def on_step(i, t, x):
                nonlocal steps_done
                steps_done += 1
                bar.update(1)
                sequences[sel, cut:] = x
                if callback_on_step_end is not None:
                    changed = callback_on_step_end(self, steps_done, t, {k: sequences for k in callback_inputs}) or {}
                    if "sequences" in changed:  # a callback may edit the ids, as diffusers callbacks edit latents
                        sequences.copy_(changed["sequences"])
                        x.copy_(sequences[sel, cut:])
                if history is not None:
                    history.append(sequences.clone())

            out = generate(self.dlm, sequences[sel, cut:], self.scheduler, steps=num_inference_steps,
                           blocks=[(lo - cut, hi - cut) for lo, hi in blocks],
                           attention_mask=mask, cache=cache, refresh_every=refresh_every,
                           guidance_scale=guidance_scale,
                           prompt_mask=prompt_mask[sel, cut:], eos_token_id=stops or None,
                           stop_at_eos=stop_at_eos, callback=on_step, **overrides,
                           generator=[generator[i] for i in index] if isinstance(generator, list) else generator)
            sequences[sel, cut:] = out.sequences
            return out.nfe

        for blocks, index in groups.items():
            nfe += run(blocks, index)
        bar.close()
        texts = None
        if output_type == "text":
            values = sequences.tolist()  # one copy to the host for every row
            texts = [self._decode(values[i], pad, n, PLACEHOLDER.search(p) is not None, width, stops)
                     for i, (pad, n, p) in enumerate(zip(pads, n_prompt, prompts))]
        self.maybe_free_model_hooks()
        if not return_dict:
            return texts, sequences
        return TextDiffusionPipelineOutput(texts=texts, sequences=sequences, history=history, nfe=nfe)

    def _row_blocks(self, rows: list[list[int]], pads: list[int], gen_length: int,
                    block_length: int | None) -> list[tuple]:
        """The blocks each row (its token ids, before `pads` of left padding) is decoded on: those it has alone,
        moved right by its padding. Read from the lists the ids were made of, not from the device."""
        mask_id, width = self.mask_token_id, len(rows[0]) + pads[0]
        out = []
        for row, pad in zip(rows, pads):
            masked = [pad + i for i, token in enumerate(row) if token == mask_id]
            first = masked[0]
            if not gen_length:  # pure infilling: one block over the masked region
                out.append(((first, masked[-1] + 1),))
                continue
            blocks = default_blocks(self.dlm, width - gen_length, width, block_length, origin=pad)
            if first < width - gen_length:  # placeholders in the prompt: filled first, as one block
                blocks = [(first, width - gen_length)] + blocks
            out.append(tuple(blocks))
        return out

    def _decode(self, seq: list[int], start: int, n_prompt: int, infill: bool, width: int,
                stops: list[int]) -> str:
        tok = self.tokenizer
        bos = int(tok.bos_token_id is not None)
        body = seq[start + bos: width]
        gen_from = n_prompt - bos  # index in body where the appended tail starts
        tail = body[gen_from:]
        tail = tail[: min([tail.index(i) for i in stops if i in tail], default=len(tail))]
        return tok.decode((body[:gen_from] if infill else []) + tail)
