"""Tests for mmdlm.diffusion: schedules, corruption, loss, unmasking."""

from __future__ import annotations

import math

import pytest
import torch

from mmdlm.diffusion import (
    SCORES,
    CosineSchedule,
    LinearSchedule,
    LogLinearSchedule,
    SamplingOptions,
    Schedule,
    block_t,
    commit_scores,
    corrupt,
    get_schedule,
    masked_diffusion_loss,
    predict,
    reverse_step,
    tokens_to_commit,
)

NAMES = ["linear", "cosine", "loglinear"]
EPS = 1e-3


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", NAMES)
def test_registry_and_names(name):
    s = get_schedule(name, eps=0.01)
    assert isinstance(s, Schedule) and s.name == name and s.eps == 0.01


def test_get_schedule_unknown():
    with pytest.raises(ValueError, match="linear.*cosine.*loglinear"):
        get_schedule("sigmoid")


def test_schedule_classes():
    assert isinstance(get_schedule("linear"), LinearSchedule)
    assert isinstance(get_schedule("cosine"), CosineSchedule)
    assert isinstance(get_schedule("loglinear"), LogLinearSchedule)
    with pytest.raises(ValueError):
        LinearSchedule(eps=1.0)


@pytest.mark.parametrize("name", NAMES)
def test_mask_prob_endpoints_and_monotone(name):
    s = get_schedule(name, eps=EPS)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    m = s.mask_prob(t)
    assert m[0].item() == pytest.approx(0.0, abs=1e-12)
    expected_end = 1 - EPS if name == "loglinear" else 1.0
    assert m[-1].item() == pytest.approx(expected_end, abs=1e-9)
    assert (m.diff() > 0).all()
    assert ((m >= 0) & (m <= 1)).all()


def test_cosine_matches_maskgit_form():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(CosineSchedule().mask_prob(t), torch.cos(math.pi / 2 * (1 - t)))


@pytest.mark.parametrize("name", NAMES)
def test_weight_matches_autograd(name):
    s = get_schedule(name, eps=EPS)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    alpha = 1 - s.mask_prob(t)
    (dalpha,) = torch.autograd.grad(alpha.sum(), t)
    expected = -dalpha / (1 - alpha.detach())
    assert torch.allclose(s.weight(t.detach()), expected, rtol=1e-10)
    # the generic autograd fallback of the base class agrees too
    assert torch.allclose(Schedule.weight(s, t.detach()), expected, rtol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_elbo_weight_integral(name):
    # int_eps^1 w(t) m(t) dt = m(1) - m(eps): the expected weighted mask count per token.
    s = get_schedule(name, eps=EPS)
    t = torch.linspace(EPS, 1, 20001, dtype=torch.float64)
    integral = torch.trapezoid(s.weight(t) * s.mask_prob(t), t)
    assert integral.item() == pytest.approx((s.mask_prob(t[-1]) - s.mask_prob(t[0])).item(), rel=1e-6)


@pytest.mark.parametrize("method", ["uniform", "stratified", "antithetic"])
@pytest.mark.parametrize("n", [1, 7, 64])
def test_sample_t_range(method, n):
    s = LinearSchedule(eps=0.05)
    t = s.sample_t(n, generator=gen(), method=method)
    assert t.shape == (n,)
    assert ((t >= 0.05) & (t <= 1)).all()


def test_sample_t_seeded_reproducible():
    s = LinearSchedule()
    a = s.sample_t(16, generator=gen(3))
    b = s.sample_t(16, generator=gen(3))
    assert torch.equal(a, b)


def test_sample_t_stratified_one_per_bin():
    eps, n = 0.1, 50
    s = LinearSchedule(eps=eps)
    t = s.sample_t(n, generator=gen(1), method="stratified").double()
    u = (t - eps) / (1 - eps)
    bins = torch.floor(u * n).long()
    assert torch.equal(bins.sort().values, torch.arange(n))
    assert not torch.equal(bins, torch.arange(n))  # order is shuffled


@pytest.mark.parametrize("n", [10, 11])
def test_sample_t_antithetic_pairs(n):
    eps = 0.1
    s = LinearSchedule(eps=eps)
    u = (s.sample_t(n, generator=gen(2), method="antithetic").double() - eps) / (1 - eps)
    half = (n + 1) // 2
    assert torch.allclose(u[:n - half] + u[half:], torch.ones(n - half, dtype=torch.float64), atol=1e-6)


def test_sample_t_bad_method():
    with pytest.raises(ValueError, match="uniform.*stratified.*antithetic"):
        LinearSchedule().sample_t(4, method="sobol")


# ----------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tval", [0.3, 0.7])
def test_corrupt_mask_rate(name, tval):
    s = get_schedule(name)
    x0 = torch.randint(0, 50, (64, 2048), generator=gen())
    t = torch.full((64,), tval)
    xt, masked = corrupt(x0, t, 99, s, generator=gen(1))
    assert abs(masked.float().mean().item() - s.mask_prob(torch.tensor(tval)).item()) < 0.01
    assert torch.equal(xt == 99, masked)
    assert torch.equal(xt[~masked], x0[~masked])


def test_corrupt_protect():
    x0 = torch.randint(0, 50, (8, 100), generator=gen())
    protect = torch.zeros(8, 100, dtype=torch.bool)
    protect[:, :30] = True
    protect[3] = True
    xt, masked = corrupt(x0, torch.ones(8), 99, LinearSchedule(), protect=protect, generator=gen(1))
    assert not masked[protect].any()
    assert torch.equal(xt[protect], x0[protect])
    assert masked[~protect].all()  # t=1 with linear schedule masks everything else


def test_corrupt_per_position_t():
    x0 = torch.randint(0, 50, (4, 64), generator=gen())
    t_blocks = torch.tensor([[1.0, 0.0, 1.0, 0.0]]).expand(4, 4)
    t = block_t(t_blocks, 16, 64)
    _, masked = corrupt(x0, t, 99, LinearSchedule(), generator=gen(1))
    assert torch.equal(masked, t == 1.0)


def test_corrupt_seeded_reproducible():
    x0 = torch.randint(0, 50, (4, 64), generator=gen())
    t = torch.rand(4, generator=gen(5))
    a = corrupt(x0, t, 99, LinearSchedule(), generator=gen(7))
    b = corrupt(x0, t, 99, LinearSchedule(), generator=gen(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_corrupt_bad_inputs():
    s = LinearSchedule()
    x0 = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="x0"):
        corrupt(torch.zeros(5, dtype=torch.long), torch.ones(1), 1, s)
    with pytest.raises(ValueError, match="t has shape"):
        corrupt(x0, torch.ones(3), 1, s)
    with pytest.raises(ValueError, match="protect"):
        corrupt(x0, torch.ones(2), 1, s, protect=torch.zeros(2, 4, dtype=torch.bool))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="mask_id"):
            corrupt(x0, torch.ones(2), bad, s)


def test_block_t():
    tb = torch.tensor([[0.1, 0.5, 0.9]])
    out = block_t(tb, 4, 10)
    assert out.shape == (1, 10)
    assert torch.equal(out[0], torch.tensor([0.1] * 4 + [0.5] * 4 + [0.9] * 2))
    with pytest.raises(ValueError, match="blocks"):
        block_t(tb, 4, 13)
    with pytest.raises(ValueError):
        block_t(tb, 0, 10)


# ----------------------------------------------------------------------------- loss


def _toy():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 1.0, 3.0]]])
    x0 = torch.tensor([[0, 1, 2]])
    masked = torch.tensor([[True, False, True]])
    t = torch.tensor([0.5])
    return logits, x0, masked, t


def test_loss_hand_computed():
    logits, x0, masked, t = _toy()
    ce0 = -(2.0 - math.log(math.exp(2) + 1 + math.exp(-1)))
    ce2 = -(3.0 - math.log(1 + math.e + math.exp(3)))
    w = 1 / 0.5
    s = LinearSchedule()
    tok = masked_diffusion_loss(logits, x0, masked, t, s)
    msk = masked_diffusion_loss(logits, x0, masked, t, s, normalize="masked")
    assert tok.item() == pytest.approx(w * (ce0 + ce2) / 3, rel=1e-6)
    assert msk.item() == pytest.approx(w * (ce0 + ce2) / 2, rel=1e-6)
    # eligible shrinks the "token" denominator only
    elig = torch.tensor([[True, False, True]])
    assert masked_diffusion_loss(logits, x0, masked, t, s, eligible=elig).item() == pytest.approx(
        w * (ce0 + ce2) / 2, rel=1e-6
    )
    # per-position t: weights 1/0.25 and 1/0.5
    tpos = torch.tensor([[0.25, 0.1, 0.5]])
    assert masked_diffusion_loss(logits, x0, masked, tpos, s).item() == pytest.approx(
        (4 * ce0 + 2 * ce2) / 3, rel=1e-6
    )


def test_loss_ignores_unmasked_positions():
    logits, x0, masked, t = _toy()
    s = CosineSchedule()
    base = masked_diffusion_loss(logits, x0, masked, t, s)
    changed = logits.clone()
    changed[0, 1] = torch.tensor([100.0, -50.0, 7.0])
    assert masked_diffusion_loss(changed, x0, masked, t, s).item() == base.item()
    # t = 0 (infinite weight) at an unmasked position must not poison the loss
    tpos = torch.tensor([[0.5, 0.0, 0.5]])
    assert torch.isfinite(masked_diffusion_loss(logits, x0, masked, tpos, s))


def test_loss_gradient_and_empty_mask():
    logits, x0, masked, t = _toy()
    logits = logits.clone().requires_grad_(True)
    masked_diffusion_loss(logits, x0, masked, t, LinearSchedule()).backward()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 0].abs().sum() > 0
    logits.grad = None
    loss = masked_diffusion_loss(logits, x0, torch.zeros_like(masked), t, LinearSchedule())
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0


def test_loss_half_precision_logits_computed_in_float32():
    logits, x0, masked, t = _toy()
    loss = masked_diffusion_loss(logits.bfloat16(), x0, masked, t, LinearSchedule())
    assert loss.dtype == torch.float32


def test_uniform_logits_elbo_is_log_v():
    # For uniform predictions the negative ELBO is exactly log V per token:
    # E_t[w(t) m(t) log V] = log V for the linear schedule.
    V = 17
    t = torch.linspace(EPS, 1, 100001, dtype=torch.float64)
    s = LinearSchedule(eps=EPS)
    grid = torch.trapezoid(s.weight(t) * s.mask_prob(t) * math.log(V), t) / (1 - EPS)
    assert grid.item() == pytest.approx(math.log(V), rel=1e-9)
    # Monte-Carlo through corrupt + masked_diffusion_loss (stratified t).
    B, L = 512, 256
    x0 = torch.randint(0, V, (B, L), generator=gen())
    tt = s.sample_t(B, generator=gen(1), method="stratified")
    _, masked = corrupt(x0, tt, V, s, generator=gen(2))
    loss = masked_diffusion_loss(torch.zeros(B, L, V), x0, masked, tt, s)
    assert loss.item() == pytest.approx(math.log(V), rel=0.03)


def test_loss_bad_inputs():
    logits, x0, masked, t = _toy()
    s = LinearSchedule()
    with pytest.raises(ValueError, match="token.*masked"):
        masked_diffusion_loss(logits, x0, masked, t, s, normalize="batch")
    with pytest.raises(ValueError, match="t has shape"):
        masked_diffusion_loss(logits, x0, masked, torch.ones(2), s)
    with pytest.raises(ValueError, match="masked"):
        masked_diffusion_loss(logits, x0, masked.long(), t, s)
    with pytest.raises(ValueError, match="x0"):
        masked_diffusion_loss(logits, x0[:, :2], masked, t, s)
    with pytest.raises(ValueError, match="eligible"):
        masked_diffusion_loss(logits, x0, masked, t, s, eligible=torch.ones(1, 2, dtype=torch.bool))


# ----------------------------------------------------------------------------- unmasking


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 4, 10, 64])
def test_tokens_to_commit_full_schedule(name, steps):
    s = get_schedule(name)
    n_masked = torch.tensor([0, 1, 5, 32, 100])
    total = torch.zeros_like(n_masked)
    remaining = n_masked.clone()
    ts = [1 - k / steps for k in range(steps + 1)]
    for t, s_next in zip(ts[:-1], ts[1:]):
        k = tokens_to_commit(remaining, t, s_next, s)
        assert ((k >= 1) | (remaining == 0)).all()
        assert (k <= remaining).all()
        remaining = remaining - k
        total += k
    assert torch.equal(total, n_masked)
    assert (remaining == 0).all()


def test_tokens_to_commit_values():
    s = LinearSchedule()
    assert tokens_to_commit(torch.tensor([100]), 1.0, 0.75, s).item() == 25
    assert tokens_to_commit(torch.tensor([10]), 0.5, 0.0, s).item() == 10
    assert tokens_to_commit(torch.tensor([100]), 0.5, 0.499, s).item() == 1  # at least one
    with pytest.raises(ValueError):
        tokens_to_commit(torch.tensor([10]), 0.5, 0.6, s)


def test_predict_argmax_and_sampling():
    logits = torch.tensor([[[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]]])
    tokens, probs = predict(logits)
    assert tokens.tolist() == [[1, 0]]
    assert probs.dtype == torch.float32 and torch.allclose(probs, logits.softmax(-1))
    big = torch.tensor([0.0, 1.0, 2.0]).expand(1, 20000, 3)
    sampled, _ = predict(big, temperature=1.0, generator=gen())
    freq = torch.bincount(sampled.flatten(), minlength=3).float() / sampled.numel()
    assert torch.allclose(freq, big[0, 0].softmax(-1), atol=0.015)
    # low temperature concentrates on the argmax
    cold, _ = predict(big, temperature=0.05, generator=gen())
    assert (cold == 2).float().mean() > 0.99
    with pytest.raises(ValueError):
        predict(logits, temperature=-1.0)


def test_commit_scores_rules():
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]])
    tokens = torch.tensor([[0, 1]])
    assert torch.allclose(commit_scores(probs, tokens, "confidence"), torch.tensor([[0.7, 0.35]]))
    assert torch.allclose(commit_scores(probs, tokens, "margin"), torch.tensor([[0.5, 0.05]]))
    ent = (probs * probs.log()).sum(-1)
    assert torch.allclose(commit_scores(probs, tokens, "entropy"), ent)
    r = commit_scores(probs, tokens, "random", generator=gen())
    assert r.shape == (1, 2) and ((r >= 0) & (r < 1)).all()
    with pytest.raises(ValueError, match="confidence.*margin.*entropy.*random"):
        commit_scores(probs, tokens, "topk")


def _unmask_case():
    M, V = 4, 6
    x = torch.tensor([[1, M, M, M, 2, M], [M, M, 3, 3, M, 0]])
    logits = torch.full((2, 6, V), -5.0)
    # row 0: confidences at masked positions 1,2,3,5 -> pos 3 > pos 1 > pos 5 > pos 2
    for pos, (tok, val) in {1: (0, 4.0), 2: (5, 1.0), 3: (2, 6.0), 5: (3, 2.0)}.items():
        logits[0, pos, tok] = val
    for pos, (tok, val) in {0: (1, 1.0), 1: (2, 5.0), 4: (0, 3.0)}.items():
        logits[1, pos, tok] = val
    logits[..., M] = 50.0  # mask_id is the top logit everywhere; it must never be chosen
    return M, x, logits


LINEAR = get_schedule("linear")


def test_reverse_step_commits_most_confident():
    M, x, logits = _unmask_case()
    orig = logits.clone()
    out = reverse_step(logits, x, 1.0, 0.5, M, LINEAR)  # 4 and 3 masked: commit 4 - 2 and 3 - round(1.5)
    assert torch.equal(logits, orig)  # caller's logits untouched
    assert out.ids.tolist() == [[1, 0, M, 2, 2, M], [M, 2, 3, 3, M, 0]]
    assert out.pred.tolist() == [[1, 0, 5, 2, 2, 3], [1, 2, 3, 3, 0, 0]]
    assert not (out.pred == M).any() and torch.equal(out.committed, (x == M) & (out.ids != M))


@pytest.mark.parametrize("rule", SCORES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_reverse_step_invariants(rule, temperature):
    M, V, B, L = 7, 8, 6, 40
    g = gen(11)
    x = torch.randint(0, M, (B, L), generator=g)
    x[torch.rand(B, L, generator=g) < 0.6] = M
    logits = torch.randn(B, L, V, generator=g)
    logits[..., M] += 10.0
    n_masked = (x == M).sum(1)
    out = reverse_step(logits, x, 0.5, 0.25, M, LINEAR, SamplingOptions(rule=rule, temperature=temperature),
                       generator=g)
    committed = (x == M) & (out.ids != M)
    assert torch.equal(committed.sum(1), tokens_to_commit(n_masked, 0.5, 0.25, LINEAR))
    assert torch.equal(out.ids[x != M], x[x != M])  # unmasked tokens never change
    assert not (out.pred == M).any()
    assert torch.equal(out.ids[committed], out.pred[committed])


def test_reverse_step_respects_editable():
    M, x, logits = _unmask_case()
    editable = torch.ones_like(x, dtype=torch.bool)
    editable[0, 3] = False  # the most confident position of row 0 is frozen
    editable[1] = False
    out = reverse_step(logits, x, 1.0, 0.3, M, LINEAR, editable=editable)  # 3 candidates: commit 2
    assert out.ids.tolist() == [[1, 0, M, M, 2, 3], x[1].tolist()]
    assert out.pred[0, 3].item() == 2  # still predicted, just not committed


def test_reverse_step_seeded_and_a_generator_per_row():
    M, x, logits = _unmask_case()
    options = SamplingOptions(rule="random", temperature=1.0)
    a = reverse_step(logits, x, 1.0, 0.5, M, LINEAR, options, generator=gen(4))
    b = reverse_step(logits, x, 1.0, 0.5, M, LINEAR, options, generator=gen(4))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.pred, b.pred)
    both = reverse_step(logits, x, 1.0, 0.5, M, LINEAR, options, generator=[gen(5), gen(6)])
    for row, seed in enumerate((5, 6)):  # each row draws from its own generator, as it would alone
        alone = reverse_step(logits[row:row + 1], x[row:row + 1], 1.0, 0.5, M, LINEAR, options, generator=gen(seed))
        assert torch.equal(both.ids[row:row + 1], alone.ids)
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        reverse_step(logits, x, 1.0, 0.5, M, LINEAR, options, generator=[gen(), gen(), gen()])


def test_reverse_step_bad_inputs():
    M, x, logits = _unmask_case()
    with pytest.raises(ValueError, match="rule"):
        SamplingOptions(rule="best")
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        SamplingOptions(temperature=float("nan"))
    with pytest.raises(TypeError, match="unexpected arguments: colour"):
        SamplingOptions().replace(colour=1)
    with pytest.raises(ValueError, match="mask_id"):
        reverse_step(logits, x, 1.0, 0.5, 6, LINEAR)
    with pytest.raises(ValueError, match="mask_id"):
        reverse_step(logits, x, 1.0, 0.5, -1, LINEAR)
    with pytest.raises(ValueError, match="logits"):
        reverse_step(logits[:, :3], x, 1.0, 0.5, M, LINEAR)
    with pytest.raises(ValueError, match="editable"):
        reverse_step(logits, x, 1.0, 0.5, M, LINEAR, editable=torch.ones(2, 5, dtype=torch.bool))


def test_guidance_pushes_away_from_the_unconditional_and_keeps_forbidden_entries():
    from mmdlm.diffusion import guide

    c, u = torch.tensor([1.0, 2.0, float("-inf")]), torch.tensor([0.0, 3.0, float("-inf")])
    assert torch.equal(guide(c, u, 1.0), torch.tensor([2.0, 1.0, float("-inf")]))  # u + 2 (c - u)
    assert torch.equal(guide(c, u, 0.0), c)
