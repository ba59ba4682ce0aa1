"""`mmdlm generate`: continue a prompt and fill `<|mask:N|>` spans with a diffusion LM."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .common import DeviceArgs, load_text_pipeline


@dataclass
class GenerateConfig(DeviceArgs):
    """Generate with a diffusion LM: continue a prompt and/or fill masked spans."""

    model: str = field(default="assets/dlm", metadata={
        "help": "a mmdlm diffusion LM folder (mmdlm adapt output) or a saved TextDiffusionPipeline"})
    prompt: str | None = field(default=None, metadata={
        "help": "text to continue (\\n and \\t are read as newline and tab)"})
    infill: str | None = field(default=None, metadata={
        "help": "text with <|mask:N|> placeholders (N tokens each) to fill"})
    gen_length: int = field(default=64, metadata={"help": "tokens to generate after the prompt"})
    steps: int = field(default=64, metadata={"help": "denoising steps"})
    block_length: int | None = field(default=None, metadata={
        "help": "semi-autoregressive block length (default: the whole generation; block models: their block size)"})
    rule: str = field(default="confidence", metadata={
        "help": "which tokens to commit: confidence | margin | entropy | random | origin"})
    threshold: float | None = field(default=None, metadata={
        "help": "parallel decoding: commit every token with confidence >= threshold (at least one per step)"})
    factor: float | None = field(default=None, metadata={
        "help": "parallel decoding by Fast-dLLM's factor rule: commit the k most confident tokens, the largest k "
                "with (i + 1)(1 - c_i) <= factor for each of them (instead of --threshold)"})
    cache: str = field(default="none", metadata={"help": "KV cache: none | prefix | dual (exact for block models)"})
    refresh_every: int = field(default=1, metadata={
        "help": "blocks per full pass of a bidirectional model's approximate cache (1: every block, as Fast-dLLM)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0 = greedy)"})
    top_k: int | None = field(default=None, metadata={"help": "sample among the k most likely tokens"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling mass"})
    alg_temp: float = field(default=0.0, metadata={"help": "randomness in choosing which tokens to commit (Dream)"})
    remasking: bool = field(default=False, metadata={
        "help": "committed tokens can be taken back when new predictions outrank them (rule confidence)"})
    editing_threshold: float | None = field(default=None, metadata={
        "help": "token editing (LLaDA2): a committed token is replaced when the model predicts another with "
                "probability above this"})
    chat: bool = field(default=False, metadata={
        "help": "send --prompt as a user message through the tokenizer's chat template (as mmdlm sft trains); "
                "the answer ends at the template's end of turn"})
    guidance_scale: float = field(default=0.0, metadata={"help": "classifier-free guidance (the prompt masked)"})
    stop_at_eos: bool = field(default=True, metadata={"help": "stop once EOS is generated"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    history: str | None = field(default=None, metadata={
        "help": "show the unmasking: 'terminal' (animation), or a path ending in .gif or .html"})
    output: str | None = field(default=None, metadata={"help": "also write the results as JSON here"})
    attn_implementation: str = field(default="sdpa", metadata={
        "help": "sdpa | eager | flash_attention_2 (needs flash-attn; full attention only)"})


def run(c) -> dict:
    """Continue `prompt` and/or fill the placeholders of `infill`; print and optionally save."""
    from ..devices import generator
    from ..diffusion._checks import check_int
    from ..io import atomic_write_text, check_output_file
    from ..schedulers import MaskedDiffusionScheduler
    from ..text.base import check_attn_implementation
    from ..text.generate import check_options

    if c.prompt is None and c.infill is None:
        raise ValueError("nothing to do: give --prompt and/or --infill")
    check_int(c.gen_length, "gen_length", 1)
    if c.block_length is not None:
        check_int(c.block_length, "block_length", 1)
    check_options(steps=c.steps, cache=c.cache, guidance_scale=c.guidance_scale, refresh_every=c.refresh_every)
    if c.history not in (None, "terminal") and not c.history.endswith((".gif", ".html")):
        raise ValueError(f"history must be 'terminal' or a path ending in .gif or .html, got {c.history!r}")
    for name, path in (("--output", c.output), ("--history", c.history)):
        if path not in (None, "terminal"):
            check_output_file(path, name)
    if c.chat and c.prompt is None:
        raise ValueError("--chat sends --prompt through the chat template: give --prompt")
    sampling = dict(rule=c.rule, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, alg_temp=c.alg_temp,
                    threshold=c.threshold, remasking=c.remasking, editing_threshold=c.editing_threshold,
                    factor=c.factor)
    MaskedDiffusionScheduler(**sampling)  # validates every sampling option before the model loads
    device, dtype = c.resolve()
    check_attn_implementation(c.attn_implementation)
    pipe = load_text_pipeline(c.model, device=device, dtype=dtype, attn_implementation=c.attn_implementation,
                              **sampling)
    pipe.set_progress_bar_config(disable=True)
    settings = {**sampling, "steps": c.steps, "cache": c.cache, "refresh_every": c.refresh_every,
                "gen_length": c.gen_length, "block_length": c.block_length, "guidance_scale": c.guidance_scale,
                "seed": c.seed, "chat": c.chat, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                "attn_implementation": c.attn_implementation}
    results: dict = {"model": c.model, "settings": settings}
    jobs = []  # (kind, text, the call's input: a prompt or a chat, its other arguments)
    if c.prompt is not None:
        text = _unescape(c.prompt)
        call = {"messages": [{"role": "user", "content": text}]} if c.chat else {"prompt": text}
        jobs.append(("continuation", text, call, dict(gen_length=c.gen_length, block_length=c.block_length,
                                                      guidance_scale=c.guidance_scale)))
    if c.infill is not None:
        jobs.append(("infill", _unescape(c.infill), {"prompt": _unescape(c.infill)}, dict(gen_length=0)))
    for _, _, call, kw in jobs:  # every job checked (lengths against the model's context) before any runs
        pipe.check_inputs(**call, num_inference_steps=c.steps, cache=c.cache, refresh_every=c.refresh_every, **kw)
    for kind, text, call, kw in jobs:
        out = pipe(**call, num_inference_steps=c.steps, cache=c.cache, refresh_every=c.refresh_every,
                   stop_at_eos=c.stop_at_eos,
                   return_history=c.history is not None, generator=generator(device, c.seed), **kw)
        results[kind] = {"input": text, "output": out.texts[0], "nfe": out.nfe}
        turn = "\n" if "messages" in call else ""  # a chat's answer goes on a line of its own
        shown = f"{text}{turn}\033[1m{out.texts[0]}\033[0m" if kind == "continuation" else out.texts[0]
        print(f"--- {kind} ---\n{shown}\n")
        if c.history is not None:
            _show_history(pipe, out.history, c.history, kind)
    if c.output:
        atomic_write_text(c.output, json.dumps(results, indent=2))
        print(f"results written to {c.output}")
    return results


def _unescape(text: str) -> str:
    """Let shell users write newlines and tabs as \\n and \\t."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _show_history(pipe, history, target: str, kind: str) -> None:
    from pathlib import Path

    from ..text import history as h

    bos = int(pipe.tokenizer.bos_token_id is not None)
    all_frames = h.frames(pipe.tokenizer, history, pipe.mask_token_id, start=bos)
    if target == "terminal":
        h.play_terminal(all_frames)
        return
    path = Path(target)
    path = path.with_name(f"{path.stem}-{kind}{path.suffix}")
    (h.write_gif if path.suffix == ".gif" else h.write_html)(all_frames, path)
    print(f"unmasking history written to {path}")
