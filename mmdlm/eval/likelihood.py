"""Held-out likelihood of diffusion and AR language models, on exactly the same tokens.

Every row of `ids` is scored on positions 1..L-1; position 0 is context for every model
(under shift nothing predicts it, an AR model has no prediction for its first token, and a
DLM without shift gets it unmasked), so each figure bounds or equals -log p(x_1..L-1 | x_0).

`dlm_elbo` estimates the masked-diffusion negative ELBO per token,

    -ELBO = E_{t ~ U(eps, 1)} E_{x_t} [ w(t) * sum_{i masked} -log p(x0_i | x_t) ],

by Monte Carlo over t on a fixed stratified grid: for stratum k of `grid`, each row draws
t = eps + (1 - eps) (k + u) / grid with u ~ U(0, 1), masks, and scores; `replicates`
independent draws per (row, stratum) give the Monte-Carlo standard error from the spread
within each cell (the stratified-sampling variance: sum over cells of var / replicates).
All draws come from seeds fixed by (seed, replicate, stratum, first row of the batch), so two
models evaluated with the same settings see the same noise levels and masks (common random
numbers). Block-attention models are scored under their own block-causal factorisation
(each block has its own t and sees the clean blocks before it, as in training); that sum of
per-block ELBOs is also an upper bound on the NLL.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..diffusion import block_t, corrupt, get_schedule, masked_diffusion_loss
from ..text.adapt import denoiser_logits, takes_logits_to_keep


@dataclass
class Likelihood:
    """Negative log-likelihood (or its ELBO bound) per scored token, in nats."""

    nll: float
    tokens: int
    se: float | None = None  # Monte-Carlo standard error of `nll`; None when the figure is exact

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    def to_dict(self) -> dict:
        out = {"nll": self.nll, "ppl": self.ppl, "se": self.se, "tokens": self.tokens}
        if self.se is not None:  # ppl is exp(nll): its standard error by the delta method
            out["ppl_se"] = self.ppl * self.se
        return out


def _check_ids(ids: torch.Tensor) -> None:
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point():
        raise ValueError(f"ids must be a (rows, length) tensor of token ids, got {getattr(ids, 'shape', ids)!r}")
    if ids.shape[0] == 0 or ids.shape[1] < 2:
        raise ValueError(f"ids must hold at least one row of two tokens, got shape {tuple(ids.shape)}")


def _seed(seed: int, replicate: int, stratum: int, row: int) -> int:
    return (((seed * 1_000_003 + replicate) * 10_007 + stratum) * 100_000_007 + row) % 2**62


@torch.no_grad()
def dlm_elbo_terms(dlm, ids: torch.Tensor, *, grid: int = 8, replicates: int = 2, batch_size: int = 32,
                   seed: int = 0, context: torch.Tensor | None = None) -> torch.Tensor:
    """(rows, grid, replicates) per-row sums of w(t) x CE over the masked tokens of one draw each.

    `context` (rows,): how many leading tokens of each row are given, never masked nor scored
    (default 1, position 0): the terms then bound -log p(the rest | the context)."""
    _check_ids(ids)
    if grid < 1 or replicates < 1 or batch_size < 1:
        raise ValueError(f"grid, replicates and batch_size must be >= 1, got {grid}, {replicates}, {batch_size}")
    n_context = torch.ones(len(ids), dtype=torch.long) if context is None else torch.as_tensor(context).long()
    if n_context.shape != (len(ids),) or not ((n_context >= 1) & (n_context < ids.shape[1])).all():
        raise ValueError(f"context must give each of the {len(ids)} rows between 1 and {ids.shape[1] - 1} "
                         "leading tokens")
    cfg = dlm.config
    schedule = get_schedule(cfg.schedule, cfg.eps)
    device = next(dlm.parameters()).device
    n, length = ids.shape
    n_blocks = math.ceil(length / cfg.block_size) if cfg.attention == "block" else 1
    fast_head = takes_logits_to_keep(dlm)
    was_training = dlm.training
    dlm.eval()
    out = torch.zeros(n, grid, replicates)
    draws = [(r, k) for r in range(replicates) for k in range(grid)]
    try:
        for a in range(0, n, batch_size):
            x0 = ids[a:a + batch_size].to(device)
            protect = torch.arange(length, device=device) < n_context[a:a + batch_size, None].to(device)
            per_pass = max(1, batch_size // len(x0))  # draws that share a forward pass (fewer rows, more draws)
            for d in range(0, len(draws), per_pass):
                noisy, masks, levels = [], [], []
                for r, k in draws[d:d + per_pass]:
                    g = torch.Generator(device).manual_seed(_seed(seed, r, k, a))
                    u = torch.rand(x0.shape[0], n_blocks, generator=g, device=device)
                    t = schedule.eps + (1.0 - schedule.eps) * (k + u) / grid
                    t = block_t(t, cfg.block_size, length) if cfg.attention == "block" else t[:, 0]
                    x_t, masked = corrupt(x0, t, cfg.mask_token_id, schedule, protect=protect, generator=g)
                    noisy.append(x_t), masks.append(masked), levels.append(t)
                clean, masked, t = x0.repeat(len(noisy), 1), torch.cat(masks), torch.cat(levels)
                logits = denoiser_logits(dlm, cfg, clean, torch.cat(noisy), masked, head_on_kept_only=fast_head)
                loss = masked_diffusion_loss(logits, clean, masked, t, schedule, normalize="none").float().cpu()
                for (r, k), part in zip(draws[d:d + per_pass], loss.split(len(x0))):
                    out[a:a + len(x0), k, r] = part
    finally:
        dlm.train(was_training)
    return out


def elbo_from_terms(terms: torch.Tensor, tokens: int) -> Likelihood:
    """The estimate and its Monte-Carlo standard error from `dlm_elbo_terms` output."""
    n, grid, replicates = terms.shape
    nll = float(terms.double().mean((1, 2)).sum()) / tokens
    se = None
    if replicates >= 2:
        cell_var = terms.double().var(dim=2, unbiased=True)  # (rows, grid)
        se = math.sqrt(float(cell_var.sum()) / replicates) / (grid * tokens)
    return Likelihood(nll=nll, tokens=tokens, se=se)


def dlm_elbo(dlm, ids: torch.Tensor, *, grid: int = 8, replicates: int = 2, batch_size: int = 32,
             seed: int = 0) -> Likelihood:
    """Negative ELBO per token of `ids` (rows, L) under `dlm`, with its Monte-Carlo standard error.

    The standard error needs `replicates` >= 2 (it is None otherwise).
    """
    terms = dlm_elbo_terms(dlm, ids, grid=grid, replicates=replicates, batch_size=batch_size, seed=seed)
    return elbo_from_terms(terms, ids.shape[0] * (ids.shape[1] - 1))


@torch.no_grad()
def ar_nll(model, ids: torch.Tensor, *, batch_size: int = 32) -> Likelihood:
    """Exact NLL per token of positions 1..L-1 of each row under a causal LM (transformers)."""
    _check_ids(ids)
    device = next(model.parameters()).device
    total = 0.0
    for a in range(0, ids.shape[0], batch_size):
        x = ids[a:a + batch_size].to(device)
        logits = model(input_ids=x).logits[:, :-1].float()
        total += float(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum"))
    tokens = ids.shape[0] * (ids.shape[1] - 1)
    return Likelihood(nll=total / tokens, tokens=tokens)


@torch.no_grad()
def continuation_nll(model, prompts: torch.Tensor, continuations: torch.Tensor, *,
                     batch_size: int = 32) -> Likelihood:
    """NLL per token of `continuations` (B, G) given `prompts` (B, P) under a causal LM.

    exp of it is the generative perplexity of samples under a reference AR model.
    """
    if prompts.ndim != 2 or continuations.ndim != 2 or prompts.shape[0] != continuations.shape[0]:
        raise ValueError(f"prompts (B, P) and continuations (B, G) must have one row each per sample, got "
                         f"{tuple(prompts.shape)} and {tuple(continuations.shape)}")
    if prompts.shape[1] < 1 or continuations.shape[1] < 1:
        raise ValueError("prompts need at least one token (e.g. BOS) and continuations at least one")
    device = next(model.parameters()).device
    p, total = prompts.shape[1], 0.0
    for a in range(0, prompts.shape[0], batch_size):
        x = torch.cat([prompts[a:a + batch_size], continuations[a:a + batch_size]], 1).to(device)
        logits = model(input_ids=x).logits[:, p - 1:-1].float()
        total += float(F.cross_entropy(logits.flatten(0, 1), x[:, p:].flatten(), reduction="sum"))
    return Likelihood(nll=total / continuations.numel(), tokens=continuations.numel())
