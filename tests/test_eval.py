"""Held-out measurements: the ELBO estimator, AR perplexity, infilling and samples."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TEXT, tiny_causal_lm

from mmdlm.data import pack_texts
from mmdlm.diffusion import get_schedule, masked_diffusion_loss
from mmdlm.eval.infill import exact_match, fill_spans_ar, fill_spans_dlm, held_out
from mmdlm.eval.likelihood import ar_nll, continuation_nll, dlm_elbo, dlm_elbo_terms, elbo_from_terms
from mmdlm.eval.samples import distinct_n, repeated_ngrams, sample_ar, sample_dlm, token_entropy
from mmdlm.schedulers import MaskedDiffusionScheduler
from mmdlm.text.adapt import DiffusionLM


def _dlm(tokenizer, seed=0, **kw):
    return DiffusionLM.from_causal_lm(tiny_causal_lm("llama", tokenizer, seed=seed), tokenizer, **kw).eval()


def _rows(tokenizer, n=6, seq_len=16):
    return pack_texts(TEXT, tokenizer, seq_len)[:n]


def test_loss_per_sequence_sums(tokenizer):
    sched = get_schedule("linear")
    logits = torch.randn(3, 5, 7)
    x0 = torch.randint(0, 7, (3, 5))
    masked = torch.rand(3, 5) < 0.5
    t = torch.tensor([0.2, 0.5, 0.9])
    rows = masked_diffusion_loss(logits, x0, masked, t, sched, normalize="none")
    assert rows.shape == (3,)
    assert torch.allclose(rows.sum() / 15, masked_diffusion_loss(logits, x0, masked, t, sched), rtol=1e-5)
    ce = F.cross_entropy(logits[1][masked[1]], x0[1][masked[1]], reduction="sum") / 0.5
    assert torch.allclose(rows[1], ce, rtol=1e-5)


def test_block_size_one_elbo_is_the_ar_nll(tokenizer):
    """Block size 1 with shift: every token is predicted from its clean past, so the ELBO's
    expectation is the causal model's NLL on the same tokens (and the estimator agrees)."""
    dlm = _dlm(tokenizer, attention="block", block_size=1)
    rows = _rows(tokenizer)
    exact = ar_nll(dlm.model, rows)
    est = dlm_elbo(dlm, rows, grid=8, replicates=4)
    assert est.tokens == exact.tokens == 6 * 15
    assert est.se is not None and 0 < est.se < 0.5
    assert abs(est.nll - exact.nll) < 4 * est.se


def test_ar_nll_by_hand(tokenizer):
    model = tiny_causal_lm("llama", tokenizer)
    rows = _rows(tokenizer, n=3)
    logits = model(input_ids=rows).logits
    by_hand = F.cross_entropy(logits[:, :-1].flatten(0, 1), rows[:, 1:].flatten())
    got = ar_nll(model, rows, batch_size=2)
    assert math.isclose(got.nll, float(by_hand.detach()), rel_tol=1e-5)
    assert got.se is None and math.isclose(got.ppl, math.exp(got.nll))


def test_standard_error_matches_the_spread_of_estimates(tokenizer):
    dlm = _dlm(tokenizer)
    rows = _rows(tokenizer, n=4)
    estimates = [dlm_elbo(dlm, rows, grid=2, replicates=2, seed=s) for s in range(24)]
    spread = torch.tensor([e.nll for e in estimates]).std().item()
    mean_se = sum(e.se for e in estimates) / len(estimates)
    assert 0.6 < mean_se / spread < 1.6


def test_estimator_is_reproducible_and_shares_noise_across_models(tokenizer):
    a, b = _dlm(tokenizer, seed=0), _dlm(tokenizer, seed=1)
    rows = _rows(tokenizer)
    terms = dlm_elbo_terms(a, rows, grid=3, replicates=2, batch_size=len(rows))
    assert torch.equal(terms, dlm_elbo_terms(a, rows, grid=3, replicates=2, batch_size=len(rows)))
    # several draws in one forward pass (room for 4 x the rows): the same draws, the same terms
    assert torch.allclose(terms, dlm_elbo_terms(a, rows, grid=3, replicates=2, batch_size=4 * len(rows)), atol=1e-5)
    assert dlm_elbo(a, rows, seed=0).nll != dlm_elbo(a, rows, seed=1).nll
    # Same seed, same masks: rows whose terms are zero (nothing masked) match across models.
    ta, tb = dlm_elbo_terms(a, rows, grid=4, replicates=2), dlm_elbo_terms(b, rows, grid=4, replicates=2)
    assert torch.equal(ta == 0, tb == 0)


def test_elbo_from_terms_formula():
    terms = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])  # 1 row, 2 strata, 2 replicates
    out = elbo_from_terms(terms, tokens=2)
    assert math.isclose(out.nll, 2.0 / 2)
    # cell variances 2 and 0, over 2 replicates, / (2 strata x 2 tokens)
    assert math.isclose(out.se, math.sqrt(2 / 2) / 4)
    assert elbo_from_terms(terms[:, :, :1], tokens=2).se is None


def test_no_shift_and_annealed_models_score_the_same_tokens(tokenizer):
    rows = _rows(tokenizer)
    for kw in ({"shift": False}, {"attention": "annealed", "anneal_steps": 5}, {"attention": "block", "block_size": 4}):
        out = dlm_elbo(_dlm(tokenizer, **kw), rows, grid=2, replicates=2)
        assert out.tokens == 6 * 15 and math.isfinite(out.nll) and out.nll > 0


def test_likelihood_bad_inputs(tokenizer):
    dlm = _dlm(tokenizer)
    with pytest.raises(ValueError, match="rows, length"):
        dlm_elbo(dlm, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="two tokens"):
        dlm_elbo(dlm, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 1"):
        dlm_elbo(dlm, _rows(tokenizer), grid=0)
    with pytest.raises(ValueError, match="one row each"):
        continuation_nll(dlm.model, torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))


def test_continuation_nll_by_hand(tokenizer):
    model = tiny_causal_lm("llama", tokenizer)
    rows = _rows(tokenizer, n=2)
    got = continuation_nll(model, rows[:, :10], rows[:, 10:])
    logits = model(input_ids=rows).logits[:, 9:-1]
    by_hand = F.cross_entropy(logits.flatten(0, 1), rows[:, 10:].flatten()).detach()
    assert math.isclose(got.nll, float(by_hand), rel_tol=1e-5)
    assert got.tokens == 12


def test_held_out_prompts_and_spans(tokenizer):
    prompts, spans = held_out(tokenizer, TEXT[:4], n_prompts=3, prompt_len=4, n_spans=5, span=2, left=3, right=2)
    assert [len(p) for p in prompts] == [4, 4, 4]
    assert all((len(a), len(b), len(c)) == (3, 2, 2) for a, b, c in spans)
    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXT[:4]]
    for a, b, c in spans:  # each span is a contiguous piece of some document
        assert any(any(d[i:i + 7] == a + b + c for i in range(len(d))) for d in docs)
    again = held_out(tokenizer, TEXT[:4], n_prompts=3, prompt_len=4, n_spans=5, span=2, left=3, right=2)
    assert again == (prompts, spans)
    with pytest.raises(ValueError, match="tokens a span needs"):
        held_out(tokenizer, ["x"], n_prompts=1, prompt_len=1, n_spans=1, span=2, left=3, right=2)


@pytest.mark.parametrize("kw", [{}, {"attention": "block", "block_size": 4}, {"shift": False}])
def test_fill_spans(tokenizer, kw):
    dlm = _dlm(tokenizer, **kw)
    _, spans = held_out(tokenizer, TEXT[:4], n_prompts=0, prompt_len=0, n_spans=5, span=3, left=4, right=2)
    sched = MaskedDiffusionScheduler()
    preds = fill_spans_dlm(dlm, spans, tokenizer.bos_token_id, sched, batch_size=2)
    assert [len(p) for p in preds] == [3] * 5
    assert all(dlm.mask_token_id not in p for p in preds)
    one_by_one = fill_spans_dlm(dlm, spans, tokenizer.bos_token_id, sched, batch_size=1)
    assert preds == one_by_one
    ar = fill_spans_ar(dlm.model, spans, tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert [len(p) for p in ar] == [3] * 5
    assert exact_match([s[1] for s in spans], spans) == 1.0
    assert exact_match([[-1]] * 5, spans) == 0.0
    with pytest.raises(ValueError, match="one .left, target, right. shape"):
        fill_spans_dlm(dlm, spans + [([1], [2], [3])], tokenizer.bos_token_id, sched)


def test_samples_and_entropy(tokenizer):
    dlm = _dlm(tokenizer)
    prompts = [[5, 6, 7], [8, 9, 10]]
    sched = MaskedDiffusionScheduler(rule="random", temperature=1.0)
    head, gen = sample_dlm(dlm, prompts, tokenizer.bos_token_id, sched, gen_length=6, steps=6,
                           generator=torch.Generator().manual_seed(0))
    assert head.tolist() == [[tokenizer.bos_token_id] + p for p in prompts]
    assert gen.shape == (2, 6) and not (gen == dlm.mask_token_id).any()
    head_ar, gen_ar = sample_ar(dlm.model, prompts, tokenizer.bos_token_id, gen_length=5,
                                pad_token_id=tokenizer.pad_token_id)
    assert gen_ar.shape == (2, 5)
    assert token_entropy(torch.tensor([[1, 1, 1, 1]])) == 0.0
    assert math.isclose(token_entropy(torch.tensor([[1, 2, 3, 4]])), math.log(4))
    loop, fresh = [7, 8, 9, 7, 8, 9, 7, 8, 9], list(range(9))  # a sample that loops, one that never repeats
    assert distinct_n([fresh], 2) == 1.0 and distinct_n([loop], 2) == 3 / 8
    assert repeated_ngrams([fresh], 4) == 0.0 and repeated_ngrams([loop], 4) == 3 / 6  # 4-grams 4..6 seen before
    assert repeated_ngrams(torch.tensor([fresh, loop]), 4) == 0.25
    with pytest.raises(ValueError, match="one length"):
        sample_ar(dlm.model, [[1], [1, 2]], None, gen_length=2)
