"""Turn any transformers causal LM into a masked diffusion LM.

The five changes of the adaptation recipe (../PRIMER "The five changes"): a non-causal
attention pattern given as a 4D mask, RoPE and weights untouched, a [MASK] token added when
the vocabulary has none, and the loss at masked positions only (in `mmdlm.diffusion`).
Shift (DiffuLLaMA, Dream) keeps the AR alignment: the hidden state at position i predicts
token i+1, so `align` moves the logits one step right and position 0 is never masked.

A saved DLM is a plain transformers checkpoint (safetensors + tokenizer) plus `mmdlm.json`
with the diffusion settings. A LoRA-trained DLM is saved as a peft adapter instead
(`adapter_config.json` + `adapter_model.safetensors`, naming its base) beside the same
`mmdlm.json` and tokenizer; loading it loads the base and attaches the adapter.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from ..cards import push_folder, write_card
from ..diffusion import get_schedule
from ..diffusion._checks import check_bool, check_finite, check_int
from ..io import atomic_dir
from . import attention as attn
from .base import ATTN_IMPLEMENTATIONS, CACHE, load_causal_lm, load_tokenizer

CONFIG_NAME = "mmdlm.json"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "mmdlm-text-dlm"
MASK_INITS = ("mean", "special")
SUPPORTED_ATTENTION = ATTN_IMPLEMENTATIONS
MASK_FREE_ONLY = ("flash_attention_2",)  # implementations that take no 4D mask: the mask-free path or nothing
OPEN_MODES = ("bidirectional", "annealed")  # modes whose inference pattern is full attention


@dataclass
class DiffusionConfig:
    """Diffusion settings saved beside the transformers checkpoint."""

    mask_token_id: int
    shift: bool = True
    attention: str = "bidirectional"
    block_size: int | None = None
    anneal_steps: int = 0
    schedule: str = "linear"
    eps: float = 1e-3

    def __post_init__(self):
        attn.check_mode(self.attention)
        if self.block_size is not None:
            check_int(self.block_size, "block_size", 1)
        if self.attention == "block" and self.block_size is None:
            raise ValueError("attention 'block' needs block_size >= 1")
        if isinstance(self.mask_token_id, bool) or not isinstance(self.mask_token_id, int) or self.mask_token_id < 0:
            raise ValueError(f"mask_token_id must be a non-negative int, got {self.mask_token_id!r}")
        check_bool(self.shift, "shift")
        check_int(self.anneal_steps, "anneal_steps", 0)
        get_schedule(self.schedule, check_finite(self.eps, "eps"))

    def save(self, folder: Path) -> None:
        (Path(folder) / CONFIG_NAME).write_text(json.dumps({"format": FORMAT, **asdict(self)}, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "DiffusionConfig":
        path = Path(folder) / CONFIG_NAME
        if not Path(folder).is_dir():
            raise ValueError(f"{folder} is not a folder; expected a mmdlm diffusion LM checkpoint")
        if not path.exists():
            raise ValueError(f"{folder} is not a mmdlm diffusion LM checkpoint (no {CONFIG_NAME}); "
                             "to turn a causal LM into one, run `mmdlm adapt --model ...`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is corrupt: {err}") from err
        if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
            raise ValueError(f"{path} is not a mmdlm text diffusion config (format must be {FORMAT!r})")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path} has unknown keys {sorted(unknown)}; written by a newer mmdlm?")
        return cls(**data)


def add_mask_token(model, tokenizer, mask_token: str = "<|mask|>", init: str = "mean") -> int:
    """Return the id of [MASK], adding the token (and an embedding row) when there is none.

    The new input row is the mean of all existing rows ("mean") or of the special tokens'
    rows ("special"); an untied output row gets the same treatment from the head.
    """
    if tokenizer.mask_token_id is not None:
        return tokenizer.mask_token_id
    if init not in MASK_INITS:
        raise ValueError(f"unknown mask_init {init!r}; choose one of {', '.join(MASK_INITS)}")
    tokenizer.add_special_tokens({"mask_token": mask_token})
    mask_id = tokenizer.mask_token_id
    n_old = model.get_input_embeddings().weight.shape[0]
    if mask_id >= n_old:  # some vocabularies already carry spare rows
        model.resize_token_embeddings(mask_id + 1, mean_resizing=False)
    special = [i for i in tokenizer.all_special_ids if i != mask_id and i < n_old]
    rows = special if init == "special" and special else slice(0, min(n_old, mask_id))
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                      if m is not None}.values():
            layer.weight[mask_id] = layer.weight[rows].mean(0)
            if getattr(layer, "bias", None) is not None:
                layer.bias[mask_id] = layer.bias[rows].mean()
    return mask_id


class DiffusionLM(nn.Module):
    """A causal LM run with a diffusion attention pattern; knows its [MASK] id and shift."""

    def __init__(self, model, config: DiffusionConfig):
        super().__init__()
        impl = getattr(model.config, "_attn_implementation", None)
        if impl not in SUPPORTED_ATTENTION:
            raise ValueError(f"{type(model).__name__} uses attention implementation {impl!r}, which cannot run "
                             f"diffusion attention patterns; load it with one of {', '.join(SUPPORTED_ATTENTION)}")
        if impl in MASK_FREE_ONLY and config.attention not in (*OPEN_MODES, "causal"):
            raise ValueError(f"attention mode {config.attention!r} needs a 4D attention mask, which {impl} cannot "
                             "take; load the model with attn_implementation='sdpa'")
        self.model = model
        self.config = config
        self._no_split_modules = getattr(model, "_no_split_modules", None)  # FSDP's layer-wise wrapping
        self.probe()

    @torch.no_grad()
    def probe(self) -> None:
        """Find out, by trying, what this model's forward can be trusted with (a few passes over 8 random tokens
        in eval mode; nothing is learnt for a model not yet on a real device):

        - `mask_free`: the inference pattern without a 4D mask (the model's own causal attention, or
          `is_causal=False` for full attention), which lets SDPA use its flash and memory-efficient kernels;
          some families keep their causal mask whatever they are told, so it is used only where its logits are
          those of the 4D mask (nearer them than the other pattern's by a factor of 10).
        - `keeps_masked_logits`: `logits_to_keep` may be a (B, L) boolean mask (the output head on the masked
          positions only; newer transformers).
        """
        self.mask_free = self.keeps_masked_logits = False
        self._probed_impl = getattr(self.model.config, "_attn_implementation", None)
        weight = self.model.get_input_embeddings().weight
        # flash attention runs on CUDA only: its probe waits for the first forward there
        self._probe_pending = self._probed_impl in MASK_FREE_ONLY and weight.device.type != "cuda"
        if weight.device.type == "meta" or self._probe_pending:
            return
        length = 8
        ids = torch.randint(0, weight.shape[0], (2, length), generator=torch.Generator().manual_seed(0))
        ids = ids.to(weight.device)
        positions = torch.arange(length, device=weight.device)[None].expand(2, -1)
        with _eval_mode(self), _attention_implementation(self.model, "sdpa", when=self._probed_impl in MASK_FREE_ONLY):
            patterns = {m: attn.inference_pattern(m, length, device=weight.device) for m in ("causal", "bidirectional")}
            ref = {m: self._masked(ids, pattern, positions).logits.float() for m, pattern in patterns.items()}
            keep = torch.zeros_like(ids, dtype=torch.bool)
            keep[:, 1::3] = True
            try:
                kept = self._masked(ids, patterns["bidirectional"], positions, logits_to_keep=keep).logits.float()
                self.keeps_masked_logits = kept.shape == (int(keep.sum()), ref["causal"].shape[-1]) and \
                    torch.allclose(kept, ref["bidirectional"][keep], rtol=1e-2, atol=1e-3)
            except Exception:  # noqa: BLE001 - an older transformers indexes the hidden states with it and fails
                self.keeps_masked_logits = False
        if self.config.attention not in (*OPEN_MODES, "causal"):
            return  # block patterns always take the 4D mask
        mode = "causal" if self.config.attention == "causal" else "bidirectional"
        other = ref["bidirectional" if mode == "causal" else "causal"]
        with _eval_mode(self):
            try:
                fast = self._mask_free(ids, positions, causal=mode == "causal").logits.float()
            except Exception:  # noqa: BLE001 - a family whose forward refuses is_causal: the 4D mask it is
                return
        gap = (ref[mode] - other).abs().max()
        self.mask_free = bool(gap > 0 and (fast - ref[mode]).abs().max() < 0.1 * gap)
        if self._probed_impl in MASK_FREE_ONLY and not self.mask_free:
            raise ValueError(f"{type(self.model).__name__} does not run {mode} attention under "
                             f"{self._probed_impl} (the probe's logits differ from the 4D mask's); load it with "
                             "attn_implementation='sdpa'")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_causal_lm(cls, model, tokenizer, *, attention: str = "bidirectional", shift: bool = True,
                       mask_token: str = "<|mask|>", mask_init: str = "mean", block_size: int | None = None,
                       anneal_steps: int = 0, schedule: str = "linear", eps: float = 1e-3,
                       check: bool = True) -> "DiffusionLM":
        """Adapt a causal LM (a model object, a local folder or a hub id). Mutates `tokenizer`.

        `check=False` leaves `check_bidirectional` to the caller, for a model whose weights are
        not there yet (on the meta device, until an engine fills them in)."""
        if isinstance(model, (str, Path)):
            model = load_causal_lm(str(model))
        mask_id = add_mask_token(model, tokenizer, mask_token, mask_init)
        config = DiffusionConfig(mask_token_id=mask_id, shift=shift, attention=attention,
                                 block_size=block_size, anneal_steps=anneal_steps, schedule=schedule, eps=eps)
        dlm = cls(model, config)
        if check:
            dlm.check_bidirectional()
        return dlm

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype=torch.float32, attn_implementation: str = "sdpa",
                        base_model: str | None = None, merge_lora: bool = False) -> "DiffusionLM":
        """Load a saved DLM (weights in `dtype`, attention by `attn_implementation`). For a LoRA adapter folder:
        its base (`base_model` overrides the path recorded in the adapter) with the adapter attached, or merged
        into it with `merge_lora`."""
        config = DiffusionConfig.load(path)
        load = dict(dtype=dtype, attn_implementation=attn_implementation)
        if not (Path(path) / ADAPTER_CONFIG).exists():
            return cls(load_causal_lm(str(path), **load), config)
        model = _load_adapter(Path(path), config, base_model, **load)
        return cls(model.merge_and_unload() if merge_lora else model, config)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Checkpoint the wrapped model's layers: transformers' switch (`activation_checkpointing_enable` where
        a newer transformers names it so)."""
        if hasattr(self.model, "activation_checkpointing_enable"):
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=gradient_checkpointing_kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    def save_pretrained(self, path: str | Path, tokenizer=None) -> None:
        """Write atomically: the folder appears complete or not at all. With LoRA, the adapter.
        A model card (README.md) says what the folder holds and how to load it."""
        with atomic_dir(path) as tmp:
            if self.is_lora:  # the adapter only: the [MASK] rows are in it (trainable tokens), no full embedding
                self.model.save_pretrained(tmp, save_embedding_layers=False)
            else:
                self.model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            self.config.save(tmp)
            self.write_model_card(tmp)

    def write_model_card(self, folder: Path) -> None:
        """README.md in `folder`: what this model is and how to load it."""
        c = self.config
        inner = self.model.get_base_model() if self.is_lora else self.model
        base = next(iter(self.model.peft_config.values())).base_model_name_or_path if self.is_lora else None
        what = f"a LoRA adapter (peft) on `{base}`, loaded with its base" if self.is_lora else "the full weights"
        about = (f"A masked diffusion language model made with mmdlm from the transformers causal LM "
                 f"`{type(inner).__name__}` ({what}). Attention: {c.attention}"
                 + (f" (blocks of {c.block_size})" if c.attention == "block" else "")
                 + f"; shift: {c.shift}; [MASK] id {c.mask_token_id}; noise schedule {c.schedule}. The diffusion "
                 f"settings are `{CONFIG_NAME}`, beside the weights: transformers alone loads the weights as a "
                 f"causal LM, which this model is no longer trained to be.")
        usage = ('from mmdlm.pipelines import TextDiffusionPipeline\n\n'
                 'pipe = TextDiffusionPipeline.from_pretrained("PATH")  # this folder\n'
                 'print(pipe("def add(a, b):", gen_length=32).texts[0])')
        write_card(folder, title="Masked diffusion LM", about=about, usage=usage, library_name="mmdlm",
                   tags=["diffusion-lm", "masked-diffusion", *(["lora"] if self.is_lora else [])],
                   pipeline_tag="text-generation", base_model=base)

    def push_to_hub(self, repo_id: str, tokenizer=None, **hub_options):
        """Save (card included) and upload to the hub repository `repo_id` (`mmdlm.cards.push_folder`'s options)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(Path(tmp) / "model", tokenizer)
            return push_folder(Path(tmp) / "model", repo_id, **hub_options)

    @torch.no_grad()
    def check_bidirectional(self) -> None:
        """Fail clearly if the model ignores 4D masks (changing a later token must reach position 0);
        nothing to check in the causal mode.

        Runs in eval mode (dropout alone would change the logits), then restores the mode. Called
        through the module (`self(...)`), so that an engine's hooks (FSDP's gathering of sharded
        weights) run: under an engine, every process calls it."""
        if self.config.attention == "causal":
            return
        device = next(self.model.parameters()).device
        vocab = self.model.get_input_embeddings().weight.shape[0]
        ids = torch.randint(0, vocab, (1, 6), generator=torch.Generator().manual_seed(0)).to(device)
        other = ids.clone()
        other[0, -1] = (ids[0, -1] + 1) % vocab
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            a, b = (self(x, pattern=attn.bidirectional(6, device)).logits[0, 0] for x in (ids, other))
        except Exception as err:  # noqa: BLE001 - any failure here means the model cannot be adapted
            raise ValueError(f"{type(self.model).__name__} cannot be made bidirectional: its forward "
                             f"rejected a 4D attention mask ({err})") from err
        finally:
            for module, mode in modes:
                module.training = mode
        if torch.allclose(a, b):
            raise ValueError(f"{type(self.model).__name__} cannot be made bidirectional: it ignores 4D "
                             "attention masks (a later token did not change earlier logits)")

    # ---- running ------------------------------------------------------------------------
    @property
    def mask_token_id(self) -> int:
        return self.config.mask_token_id

    @property
    def max_length(self) -> int | None:
        c = self.model.config
        return getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)

    def pattern(self, length: int, device=None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The inference pattern, (L, L); per row, (B, L, L), for block models given `positions` (B, L)."""
        return attn.inference_pattern(self.config.attention, length, self.config.block_size, device, positions)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                pattern: torch.Tensor | None = None, position_ids: torch.Tensor | None = None, **kwargs):
        """Run the model under `pattern` (default: the inference pattern of the configured mode).

        `attention_mask` is the usual (B, K) padding mask over the keys (cached ones first); the
        positions (and a block model's block grid) are then counted from each row's first real
        token. `pattern` is (L, L) or (B, L, L), or (.., L, K) when `cache` (a transformers Cache)
        holds the first K - L keys. Returns the model's output with raw (unshifted) logits; `align`
        gives logits[:, i] for token i, `cache_of` its cache.
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"sequence has {length} tokens but the model's context is {self.max_length}")
        if position_ids is None and attention_mask is not None:  # left padding: count real tokens
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        for name in ("cache", "past_key_values"):  # either name, passed on under the installed version's
            if name != CACHE and name in kwargs:
                kwargs[CACHE] = kwargs.pop(name)
        if self._probe_pending and input_ids.device.type == "cuda":
            self.probe()
        if pattern is None and self._can_skip_mask(attention_mask, kwargs):
            return self._mask_free(input_ids, position_ids, causal=self.config.attention == "causal", **kwargs)
        if pattern is None:
            pattern = self.pattern(length, input_ids.device, position_ids)
        return self._masked(input_ids, pattern.to(input_ids.device), position_ids, attention_mask, **kwargs)

    def _can_skip_mask(self, attention_mask, kwargs) -> bool:
        """Whether the inference pattern may run mask-free: the probe trusts it, no padding, no cached keys."""
        return (self.mask_free and attention_mask is None and kwargs.get(CACHE) is None
                and self.config.attention in (*OPEN_MODES, "causal")
                and getattr(self.model.config, "_attn_implementation", None) == self._probed_impl)

    def _masked(self, input_ids, pattern, position_ids, attention_mask=None, **kwargs):
        dtype = self.model.get_input_embeddings().weight.dtype
        mask = attn.to_additive(pattern, attention_mask, dtype=dtype)
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **kwargs)

    def _mask_free(self, input_ids, position_ids, *, causal: bool, **kwargs):
        if not causal:
            kwargs["is_causal"] = False  # reaches the attention functions (transformers' attention kwargs)
        return self.model(input_ids=input_ids, position_ids=position_ids, **kwargs)

    @staticmethod
    def cache_of(output):
        """The KV cache of a forward's output (under the installed transformers' name)."""
        return getattr(output, CACHE)

    def align(self, logits: torch.Tensor) -> torch.Tensor:
        """With shift, logits[:, i-1] predict token i: move them right; position 0 keeps its own."""
        if not self.config.shift:
            return logits
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)

    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Logits aligned to tokens: out[:, i] is the distribution of token i."""
        return self.align(self.forward(input_ids, attention_mask, **kwargs).logits)


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    """`module` in eval mode (no dropout) inside, every submodule's own mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def _attention_implementation(model, impl: str, *, when: bool):
    """`model` with attention implementation `impl` inside (when `when`), its own restored after."""
    if not when:
        yield
        return
    own = model.config._attn_implementation
    model.set_attn_implementation(impl)
    try:
        yield
    finally:
        model.set_attn_implementation(own)


def _load_adapter(path: Path, config: DiffusionConfig, base_model: str | None, **load):
    """The base model named by a LoRA adapter folder, with the adapter attached (peft)."""
    from peft import PeftConfig, PeftModel

    try:
        peft_config = PeftConfig.from_pretrained(str(path))
    except Exception as err:  # noqa: BLE001 - peft raises several types for a corrupt file
        raise ValueError(f"{path / ADAPTER_CONFIG} is not a valid peft adapter config: {err}") from err
    base = base_model or peft_config.base_model_name_or_path
    if not base:
        raise ValueError(f"the LoRA adapter in {path} does not name its base model; pass base_model")
    if (Path(base) / CONFIG_NAME).exists():  # a DLM (SFT on a DLM); merge its own adapter, if any
        model = DiffusionLM.from_pretrained(base, merge_lora=True, **load).model
    else:  # a causal LM adapted with LoRA: the [MASK] row comes back from the adapter
        try:
            model = load_causal_lm(base, **load)
        except ValueError as err:
            raise ValueError(f"the LoRA adapter in {path} was trained on the base {base!r}, which could not be "
                             f"loaded; pass base_model (mmdlm: --base-model) with its path ({err})") from err
    if model.get_input_embeddings().weight.shape[0] <= config.mask_token_id:
        # The new row's values are restored by the adapter (the [MASK] row is trained with it).
        model.resize_token_embeddings(config.mask_token_id + 1, mean_resizing=False)
    try:
        return PeftModel.from_pretrained(model, str(path))
    except SafetensorError as err:
        raise ValueError(f"the LoRA adapter weights in {path} are damaged or truncated (safetensors: {err}); "
                         "copy them again") from err


def takes_logits_to_keep(dlm) -> bool:
    """Whether the wrapped transformers model can run its output head on the masked positions only (a boolean
    `logits_to_keep`, found by `DiffusionLM.probe`)."""
    return dlm.keeps_masked_logits


def denoiser_logits(model, config: DiffusionConfig, x0: torch.Tensor, x_t: torch.Tensor, masked: torch.Tensor, *,
                    pattern: torch.Tensor | None = None, block_size: int | None = None,
                    head_on_kept_only: bool = False) -> torch.Tensor:
    """The logits that predict the masked tokens of `x_t`: (#masked, V), in row-major order.

    Training and held-out evaluation share this one function. `model` is a `DiffusionLM` (or
    its accelerate-wrapped self). Non-block modes: one pass over `x_t` under `pattern` (default:
    the inference pattern); with shift, token i comes from position i-1, and with
    `head_on_kept_only` the output head runs only there. Block mode: one pass over
    `[x_t ; x_0]` under the context-causal mask with `block_size` (default: the model's): each
    noisy block sees itself and the clean blocks before it, exactly as when it is decoded;
    with shift, the first token of a block comes from the last position of the clean block
    before it.
    """
    b, length = x0.shape
    if config.attention == "block":
        bs = block_size or config.block_size
        pos = torch.arange(length, device=x0.device).repeat(2)[None].expand(b, -1)
        raw = model(torch.cat([x_t, x0], 1), pattern=attn.context_causal(length, bs, x0.device),
                    position_ids=pos).logits
        noisy, clean = raw[:, :length], raw[:, length:]
        if not config.shift:
            return noisy[masked]
        logits = torch.cat([noisy[:, :1], noisy[:, :-1]], 1)
        first = torch.arange(bs, length, bs, device=x0.device)
        logits[:, first] = clean[:, first - 1]
        return logits[masked]
    keep = torch.cat([masked[:, 1:], torch.zeros_like(masked[:, :1])], 1) if config.shift else masked
    if head_on_kept_only:
        return model(x_t, pattern=pattern, logits_to_keep=keep).logits
    return model(x_t, pattern=pattern).logits[keep]


def load_dlm(path: str | Path, *, base_model: str | None = None, merge_lora: bool = False, dtype=torch.float32,
             attn_implementation: str = "sdpa"):
    """(DiffusionLM, tokenizer) from a folder written by `save_pretrained(path, tokenizer)`, the weights in
    `dtype`, the attention by `attn_implementation`.

    A LoRA adapter folder loads its base plus the adapter (merged into it with `merge_lora`)."""
    dlm = DiffusionLM.from_pretrained(path, base_model=base_model, merge_lora=merge_lora, dtype=dtype,
                                      attn_implementation=attn_implementation)
    tokenizer = load_tokenizer(str(path))
    if tokenizer.mask_token_id != dlm.mask_token_id:
        raise ValueError(f"{path}: the tokenizer's mask token id {tokenizer.mask_token_id} does not match "
                         f"the model's {dlm.mask_token_id}")
    return dlm, tokenizer
