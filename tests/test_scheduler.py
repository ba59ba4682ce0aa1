import pytest
import torch

from mmdlm.diffusion import filter_logits
from mmdlm.schedulers import MaskedDiffusionScheduler

M = 9  # mask id in a vocabulary of 10


def _logits(rows):
    return torch.tensor(rows, dtype=torch.float).log()


def test_filter_logits_top_k_top_p():
    logits = _logits([[0.5, 0.3, 0.15, 0.05]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = torch.isfinite(filter_logits(logits, top_p=0.7)[0])
    assert kept.tolist() == [True, True, False, False]  # 0.5 < 0.7 <= 0.8
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()


def _probs(l, v=10, seed=0, b=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, l, v, generator=g) * 3


def test_confidence_commits_the_most_confident():
    s = MaskedDiffusionScheduler(num_inference_steps=2)
    x = torch.full((1, 4), M)
    logits = torch.zeros(1, 4, 10)
    logits[0, 2, 3] = 10.0  # position 2 is sure of token 3
    logits[0, 0, 1] = 5.0
    before = logits.clone()
    out = s.step(logits, s.timesteps[0], x, mask_token_id=M)
    assert torch.equal(logits, before)  # the caller's logits are not modified
    assert out.committed.tolist() == [[True, False, True, False]]
    assert out.prev_sample[0, 2] == 3 and out.prev_sample[0, 0] == 1
    assert not (out.pred_original_sample == M).any()


def test_threshold_and_at_least_one():
    s = MaskedDiffusionScheduler(threshold=0.9)
    x = torch.full((1, 5), M)
    logits = torch.zeros(1, 5, 10)
    out = s.step(logits, 1.0, x, mask_token_id=M)  # nothing confident: exactly one commit
    assert out.committed.sum() == 1
    logits[0, :3, 4] = 20.0
    out = s.step(logits, 1.0, x, mask_token_id=M)
    assert out.committed.tolist() == [[True, True, True, False, False]]


def _confident(confidences):
    """Logits (1, L, 10) whose prediction at position i (token i) has probability confidences[i] (mask: 9)."""
    rows = []
    for i, c in enumerate(confidences):
        row = [(1 - c) / 8] * 10
        row[i], row[M] = c, 1e-9
        rows.append(row)
    return _logits(rows)[None]


def test_factor_commits_the_largest_run_that_passes():
    """Fast-dLLM's factor rule: the k most confident, k the largest with (i + 1)(1 - c_i) <= f for i <= k."""
    x = torch.full((1, 4), M)
    logits = _confident([0.9, 0.5, 0.99, 0.95])  # sorted: 0.99, 0.95, 0.9, 0.5 -> 0.02, 0.15, 0.4, 2.5
    for factor, committed in ((1.0, [True, False, True, True]), (0.2, [False, False, True, True]),
                              (0.01, [False, False, True, False]), (3.0, [True, True, True, True])):
        out = MaskedDiffusionScheduler(factor=factor).step(logits, 1.0, x, mask_token_id=M)
        assert out.committed.tolist() == [committed], factor
    given = x.clone()
    given[0, 2] = 2  # a given token does not count: 0.95, 0.9, 0.5 -> 0.1, 0.3, 1.5
    out = MaskedDiffusionScheduler(factor=0.2).step(logits, 1.0, given, mask_token_id=M)
    assert out.committed.tolist() == [[False, False, False, True]]
    for bad, match in (({"factor": 0}, "factor must be a number above 0"),
                       ({"factor": float("nan")}, "factor must be a number above 0"),
                       ({"factor": 1.0, "threshold": 0.9}, "cannot be combined"),
                       ({"factor": 1.0, "rule": "origin"}, "cannot be combined")):
        with pytest.raises(ValueError, match=match):
            MaskedDiffusionScheduler(**bad)


def test_origin_rate_and_last_step():
    s = MaskedDiffusionScheduler(num_inference_steps=4, rule="origin")
    x = torch.full((1, 4000), M)
    g = torch.Generator().manual_seed(0)
    out = s.step(_probs(4000), s.timesteps[0], x, mask_token_id=M, generator=g)
    assert abs(out.committed.float().mean().item() - 0.25) < 0.03  # 1 - m(0.75)/m(1)
    out = s.step(_probs(4000), s.timesteps[-1], x, mask_token_id=M, generator=g)
    assert out.committed.all()


def test_editable_and_unmasked_untouched():
    s = MaskedDiffusionScheduler(num_inference_steps=1)
    x = torch.tensor([[1, M, M, 2]])
    out = s.step(_probs(4), 1.0, x, mask_token_id=M, editable=torch.tensor([[True, True, False, True]]))
    assert out.prev_sample[0, 0] == 1 and out.prev_sample[0, 3] == 2
    assert out.prev_sample[0, 2] == M and out.prev_sample[0, 1] != M


def test_alg_temp_and_sampling_are_seeded():
    s = MaskedDiffusionScheduler(num_inference_steps=4, alg_temp=1.0, temperature=1.0, top_k=3)
    x = torch.full((2, 16), M)
    a = s.step(_probs(16, b=2), 1.0, x, mask_token_id=M, generator=torch.Generator().manual_seed(1)).prev_sample
    b = s.step(_probs(16, b=2), 1.0, x, mask_token_id=M, generator=torch.Generator().manual_seed(1)).prev_sample
    assert torch.equal(a, b) and ((a != M).sum(-1) == 4).all()
    with pytest.raises(TypeError, match="unexpected"):
        s.step(_probs(16, b=2), 1.0, x, mask_token_id=M, speed="fast")


def test_remasking_takes_back_a_token_outranked_by_new_predictions():
    """4 positions, 4 steps: step 1 commits one token (confidence 0.6); in step 2 two masked
    positions become sure (0.99), and the schedule keeps two tokens: the first one goes back."""
    first = torch.zeros(1, 4, 10)
    first[0, 0, 1] = 3.0  # position 0: token 1 with p ~ 0.69, the others flat
    sure = torch.zeros(1, 4, 10)
    sure[0, 1:3, 2] = 12.0
    x = torch.full((1, 4), M)
    for remasking, expected in ((True, [M, 2, 2, M]), (False, [1, 2, M, M])):
        s = MaskedDiffusionScheduler(num_inference_steps=4, remasking=remasking)
        out = s.step(first, s.timesteps[0], x, mask_token_id=M)
        assert out.prev_sample.tolist() == [[1, M, M, M]]
        out = s.step(sure, s.timesteps[1], out.prev_sample, mask_token_id=M, confidence=out.confidence)
        assert out.prev_sample.tolist() == [expected]
        assert (out.confidence is not None) == remasking
        s.set_timesteps(4)  # the tuple form: the output's fields, the confidences included when there are any
        tup = s.step(first, s.timesteps[0], x, mask_token_id=M, return_dict=False)
        assert len(tup) == 3 + remasking and tup[0].tolist() == [[1, M, M, M]]
        if remasking:
            assert torch.equal(tup[3], s.step(first, s.timesteps[0], x, mask_token_id=M).confidence)


def test_remasking_never_touches_given_tokens_and_ends_unmasked():
    s = MaskedDiffusionScheduler(num_inference_steps=5, remasking=True, alg_temp=2.0, temperature=1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([[4, M, M, M, 5, M, M, M]] * 3)
    conf = None
    for i, t in enumerate(s.timesteps):
        out = s.step(_probs(8, b=3, seed=i), t, x, mask_token_id=M, confidence=conf, generator=g)
        x, conf = out.prev_sample, out.confidence
        assert (x[:, 0] == 4).all() and (x[:, 4] == 5).all()
    assert not (x == M).any()


def test_remasking_errors():
    with pytest.raises(ValueError, match="needs rule 'confidence'"):
        MaskedDiffusionScheduler(remasking=True, rule="margin")
    with pytest.raises(ValueError, match="no threshold"):
        MaskedDiffusionScheduler(remasking=True, threshold=0.9)
    s = MaskedDiffusionScheduler(num_inference_steps=4, remasking=True)
    x = torch.full((1, 4), M)
    with pytest.raises(ValueError, match="confidence=out.confidence"):
        s.step(_probs(4), s.timesteps[1], x, mask_token_id=M)
    with pytest.raises(ValueError, match="shape of the ids"):
        s.step(_probs(4), s.timesteps[1], x, mask_token_id=M, confidence=torch.zeros(1, 3))


def test_editing_replaces_a_committed_token_the_model_now_disagrees_with():
    """Token 4 is given, three positions are generated in three steps. Step 1 commits token 1 at
    position 1 (p ~ 0.69); at step 2 the model is sure (p ~ 0.99) that position 1 is token 2 and
    that the given position 0 is token 3: with editing above 0.9 only the committed token changes."""
    first = torch.zeros(1, 4, 10)
    first[0, 1, 1] = 3.0
    second = torch.zeros(1, 4, 10)
    second[0, 1, 2] = second[0, 0, 3] = 12.0
    x = torch.tensor([[4, M, M, M]])
    for editing, expected in ((None, 1), (0.9, 2), (0.99999, 1)):  # p(2) ~ 0.99995
        s = MaskedDiffusionScheduler(num_inference_steps=3, editing_threshold=editing)
        out = s.step(first, s.timesteps[0], x, mask_token_id=M)
        assert out.prev_sample.tolist() == [[4, 1, M, M]] and (out.confidence is None) == (editing is None)
        out = s.step(second, s.timesteps[1], out.prev_sample, mask_token_id=M, confidence=out.confidence)
        assert out.prev_sample[0, :2].tolist() == [4, expected]  # the given token is never edited
        assert out.prev_sample[0, 2:].eq(M).sum() == 1  # the schedule's commit happens as without editing
        if editing is not None:
            assert out.edited.tolist() == [[False, expected == 2, False, False]]
            # the confidence carried is that of the token now there (an edited one: its new prediction's)
            assert torch.isinf(out.confidence[0, 0]) and (out.confidence[0, 1] > 0.9) == (expected == 2)


def test_editing_never_touches_given_tokens_and_ends_unmasked():
    s = MaskedDiffusionScheduler(num_inference_steps=5, editing_threshold=0.2, temperature=1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([[4, M, M, M, 5, M, M, M]] * 3)
    conf, edits = None, 0
    for i, t in enumerate(s.timesteps):
        out = s.step(_probs(8, b=3, seed=i), t, x, mask_token_id=M, confidence=conf, generator=g)
        assert not (out.edited & (x == M)).any()  # only committed tokens are edited
        x, conf, edits = out.prev_sample, out.confidence, edits + int(out.edited.sum())
        assert (x[:, 0] == 4).all() and (x[:, 4] == 5).all()
    assert not (x == M).any() and edits > 0


def test_editing_errors():
    with pytest.raises(ValueError, match="choose one"):
        MaskedDiffusionScheduler(remasking=True, editing_threshold=0.9)
    for bad in (0, 1.5, float("nan"), "high"):
        with pytest.raises(ValueError, match=r"editing_threshold must be in \(0, 1\]"):
            MaskedDiffusionScheduler(editing_threshold=bad)
    s = MaskedDiffusionScheduler(num_inference_steps=4, editing_threshold=0.5)
    with pytest.raises(ValueError, match="token editing needs the confidences"):
        s.step(_probs(4), s.timesteps[1], torch.full((1, 4), M), mask_token_id=M)
