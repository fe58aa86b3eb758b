"""The competition's forgetting quality (metrics.forget_score) and the logit-scaled confidence.

The oracle below follows the definition literally: for each example it builds every threshold
of both rule families (torch.linspace and numpy.linspace, as the competition does), tests every
model's confidence against every rule, and takes the ε of every rule. The function under test
instead counts which stretches between consecutive confidences hold a threshold, so the two
share nothing but the definition."""
import math
import warnings

import numpy as np
import pytest
import torch

import metrics
from cli import UserError

DELTA = 1e-5


def rule_eps(fpr, fnr, delta=DELTA):
    """ε of each rule from its error rates; NaN marks a discarded rule."""
    out = np.full(fpr.shape, np.nan)
    out[(fpr == 0) & (fnr == 0)] = np.inf
    keep = (fpr > 0) & (fnr > 0)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmax of two NaNs
        terms = np.stack([np.log(1 - delta - fpr[keep]) - np.log(fnr[keep]),
                          np.log(1 - delta - fnr[keep]) - np.log(fpr[keep])])
        out[keep] = np.clip(np.nanmax(terms, axis=0), 0, None)
    return out


def oracle_example(u, r, delta=DELTA):
    """ε of one example from the K unlearned (u) and K retrained (r) confidences."""
    pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
    pos_range, neg_range = pos.max() - pos.min(), neg.max() - neg.min()
    small, large = min(pos_range, neg_range), max(pos_range, neg_range)
    if large > 0 and small / large < 0.01:
        return 50.0
    both = np.concatenate([pos, neg])
    n = int(math.ceil((both.max() - both.min()) * 100))
    t = torch.linspace(torch.tensor(both.min()), torch.tensor(both.max()), n).double().numpy()
    eps = [rule_eps(fpr=(neg[:, None] >= t).mean(0), fnr=(pos[:, None] < t).mean(0), delta=delta)]

    # Double threshold on the sample with the smaller range (the negative one on a tie).
    p, q = (neg, pos) if pos_range >= neg_range else (pos, neg)
    lo, hi = p.min() + small - 2.0, p.max() + 2.0
    right = np.linspace(lo, hi, int(np.ceil((hi - lo) * 100)))
    left = np.linspace(right - small - 2.0, right - small + 2.0, 400, axis=1)  # row j: l for right[j]
    p_in = (left[..., None] <= p) & (p <= right[:, None, None])  # [right, left, model]
    q_in = (left[..., None] <= q) & (q <= right[:, None, None])
    eps.append(rule_eps(fpr=q_in.mean(-1).ravel(), fnr=(~p_in).mean(-1).ravel(), delta=delta))
    eps = np.concatenate(eps)
    kept = eps[~np.isnan(eps)]
    return float(np.clip(kept.max(), 0, 50)) if kept.size else 0.0


def oracle(u, r, delta=DELTA):
    k, m = u.shape
    eps = np.array([oracle_example(u[:, i], r[:, i], delta) for i in range(m)])
    buckets, start, points = [], 0.0, 1.0
    while start + 0.5 <= math.ceil(math.log(k - 1)):
        buckets.append((start, points))
        start, points = start + 0.5, points / 2
    total = 0.0
    for e in eps:
        for start, points in buckets:
            if e < start + 0.5:
                total += points
                break
    return total / m, eps


def random_case(kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "shifted":  # K=4: few models, many one-sided zero rates
        r = rng.normal(size=(4, 8))
        return r + rng.normal(0, 1, size=8) + rng.normal(0, 0.5, size=(4, 8)), r
    if kind == "scales":  # some unlearned spreads near 1% of the retrained ones
        r = rng.normal(size=(8, 8))
        return rng.normal(size=(8, 8)) * np.array([1, 0.3, 0.05, 0.012, 0.009, 0.02, 2, 0.0101]), r
    if kind == "ties":  # quarter-integers: tied models, confidences on grid points
        return rng.integers(-4, 5, size=(5, 8)) / 4, rng.integers(-6, 3, size=(5, 8)) / 4
    if kind == "quarters":  # K in 3..6; equal medians and equal ranges with different data
        k = int(rng.integers(3, 7))
        return rng.integers(-8, 9, size=(k, 20)) / 4, rng.integers(-8, 9, size=(k, 20)) / 4
    if kind == "identical":  # equal medians, every confidence tied; constant columns
        u = rng.normal(size=(3, 6))
        u[:, 0] = 1.5
        r = u.copy()
        r[:, 1] = -0.75
        return u, r
    if kind == "wide":  # K=16, thousands of single thresholds
        return rng.normal(0, 5, size=(16, 4)), rng.normal(1, 5, size=(16, 4))
    if kind == "far":  # confidences near 300, where float32 thresholds are coarse
        return 300 + rng.normal(size=(6, 6)), 300.3 + rng.normal(size=(6, 6))
    k, m = int(rng.integers(2, 7)), 6
    if kind == "gap":  # two narrow samples a small gap apart, near the grids' spacing
        s = rng.choice([1e-3, 3e-3, 1e-2, 3e-2])
        g = rng.uniform(0, 0.02)
        u = rng.uniform(0, s, size=(k, m))
        return u + rng.uniform(-1, 1), u.max(0) + g + rng.uniform(0, s, size=(k, m))
    if kind == "near200":  # near 200, where float32 single thresholds are coarse
        return 200 + rng.normal(size=(k, m)), 200.2 + rng.normal(size=(k, m))
    if kind == "neg":  # skewed, all below -5
        return -rng.exponential(size=(k, m)) - 5, -rng.exponential(size=(k, m)) - 5.5
    if kind == "wider":  # spreads far beyond the double threshold's ±2 window
        k = int(rng.integers(6, 12))
        return rng.normal(0, 6, size=(k, 3)), rng.normal(rng.uniform(-3, 3), 6, size=(k, 3))
    raise ValueError(kind)


@pytest.mark.parametrize("kind,seed", [("shifted", 0), ("shifted", 1), ("scales", 2), ("ties", 3),
                                       ("ties", 4), ("quarters", 8), ("quarters", 44), ("identical", 5), ("wide", 6), ("far", 7),
                                       ("gap", 0), ("gap", 1), ("near200", 1), ("neg", 1), ("wider", 0)])
def test_matches_the_literal_definition(kind, seed):
    u, r = random_case(kind, seed)
    got = metrics.forget_score(u, r)
    want_score, want_eps = oracle(u, r)
    np.testing.assert_allclose(got.eps, want_eps, rtol=0, atol=1e-9)
    assert got.score == want_score


def test_single_threshold_grid_is_torch_linspace():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.normal() * 10 ** rng.uniform(-1, 2.5)
        b = a + rng.uniform(0.005, 30)
        n = int(math.ceil((b - a) * 100))
        want = torch.linspace(torch.tensor(a), torch.tensor(b), n).double().numpy()
        s, e = np.float32(a), np.float32(b)
        step = np.float64((e - s) / np.float32(max(n - 1, 1)))
        got = metrics._single_grid(np.arange(n), n, np.float64(s), np.float64(e), step)
        np.testing.assert_array_equal(got, want)


def test_hand_computed_epsilon():
    # Unlearned (0.5, 1.5, 2.5) against retrained (0, 1, 2), K = 3: the unlearned median is
    # larger, so it is the positive sample. The single threshold t in (1, 1.5] calls 2 of 3
    # unlearned and 1 of 3 retrained models positive: FNR = FPR = 1/3, so
    # ε = log(1 − δ − 1/3) − log(1/3) = log(2 − 3δ) = 0.693132... No rule does better: with
    # K = 3 the rates are multiples of 1/3, a zero rate discards the rule, and no interval holds
    # one sample whole and nothing of the other. log(K − 1) = log 2 rounds up to 1: buckets
    # [0, 0.5) and [0.5, 1), worth 1 and 1/2, so F = 1/2.
    got = metrics.forget_score(np.array([[0.5], [1.5], [2.5]]), np.array([[0.0], [1.0], [2.0]]))
    assert got.eps[0] == pytest.approx(math.log(2 - 3 * DELTA), abs=1e-12)
    assert got.eps[0] == pytest.approx(0.6931322, abs=1e-7)
    assert got.score == 0.5


def test_single_thresholds_are_float32():
    # Unlearned (0.1, 0.105, 6) against retrained (0.1, 0.1, 5), K = 3. The first single
    # threshold is float32(0.1) = 0.10000000149 > 0.1, so it calls 2 of 3 unlearned models
    # (0.105, 6) and 1 of 3 retrained (5) positive: FNR = FPR = 1/3, ε = log(2 − 3δ). The next
    # threshold, ≈ 0.11, is past 0.105, and no double-threshold interval gets there (they all
    # end at r ≥ 3), so on an exact float64 grid ε would be 0.
    got = metrics.forget_score(np.array([[0.1], [0.105], [6.0]]), np.array([[0.1], [0.1], [5.0]]))
    assert got.eps[0] == pytest.approx(math.log(2 - 3 * DELTA), abs=1e-12)


def test_perfect_separation():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(16, 50))
    got = metrics.forget_score(r + 10, r + rng.normal(0, 0.1, size=r.shape))
    np.testing.assert_array_equal(got.eps, 50.0)
    assert got.score == 0.0
    # Unlearned (1.2, 1.5, 1.8) lies between retrained 0 and (2.5, 3): no single threshold
    # separates them, the interval [~1.1, ~1.9] of the double-threshold family does.
    got = metrics.forget_score(np.array([[1.2], [1.5], [1.8]]), np.array([[0.0], [2.5], [3.0]]))
    assert got.eps[0] == 50.0


def test_constant_distribution_scores_nothing():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(16, 20))
    constant = np.tile(rng.normal(size=20), (16, 1))  # every unlearned model outputs the same
    for u, rr in ((constant, r), (r, constant)):
        got = metrics.forget_score(u, rr)
        np.testing.assert_array_equal(got.eps, 50.0)
        assert got.score == 0.0
    # Near-constant: a spread under 1% of the other's scores 50 even where no rule separates
    # the two (the compact sample sits on a retrained model's confidence); at 1.01% it does not.
    spread = np.linspace(0, 1, 16)[:, None]
    assert metrics.forget_score(spread[7] + 0.0099 * spread, spread).eps[0] == 50.0
    assert metrics.forget_score(spread[7] + 0.0101 * spread, spread).eps[0] < 5.0
    assert metrics.forget_score(0.01 * spread, spread).eps[0] < 5.0  # exactly 1% is not "under"


def test_both_constant():
    same = np.full((16, 2), 0.7)
    got = metrics.forget_score(same, same)  # nothing tells them apart
    np.testing.assert_array_equal(got.eps, 0.0)
    assert got.score == 1.0
    got = metrics.forget_score(same, same + 0.5)  # every model apart by 0.5
    np.testing.assert_array_equal(got.eps, 50.0)


def test_identical_and_shifted_distributions():
    # Known small-K bias: among ~160 000 rules on 2K samples an attacker always finds a tail
    # where the two samples look different (e.g. 1 of 16 retrained models below a threshold
    # against 5 unlearned ones gives ε ≈ log 5), so even identical distributions get ε around
    # 1–2 at K = 16 and F ≈ 0.17, not 1; the bias shrinks only slowly with K. F is therefore
    # read against retrain-vs-retrain at the same K (the best a method can expect), never 1.
    rng = np.random.default_rng(0)
    k, m = 16, 150
    loc, scale = rng.normal(0, 3, size=m), rng.uniform(0.5, 2, size=m)
    u = loc + scale * rng.normal(size=(k, m))
    r = loc + scale * rng.normal(size=(k, m))
    same = metrics.forget_score(u, r)
    assert np.median(same.eps) < math.log(k - 1)  # well inside the scored range
    assert same.eps.max() < 50.0
    assert 0.1 < same.score < 0.3
    scores = [metrics.forget_score(u + shift * scale, r).score for shift in (0.5, 1, 2, 4)]
    assert same.score > scores[0] > scores[1] > scores[2] > scores[3], (same.score, scores)


def test_inputs():
    rng = np.random.default_rng(0)
    u, r = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    want = metrics.forget_score(u, r)
    got = metrics.forget_score(torch.tensor(u), torch.tensor(r))
    np.testing.assert_array_equal(got.eps, want.eps)
    assert got.score == want.score
    assert isinstance(got.score, float) and got.eps.dtype == np.float64
    assert metrics.forget_score(u[:2], r[:2]).score == 0.0  # K = 2 leaves no bucket
    with pytest.raises(UserError, match="same shape"):
        metrics.forget_score(u, r[:, :4])
    with pytest.raises(UserError, match="at least 2 models"):
        metrics.forget_score(u[:1], r[:1])
    with pytest.raises(UserError, match="2-D"):
        metrics.forget_score(u[0], r[0])
    bad = u.copy()
    bad[0, 0] = np.nan
    with pytest.raises(UserError, match="non-finite"):
        metrics.forget_score(bad, r)


def test_logit_scaled_confidence_moderate_logits():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4, 5, 10, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 10, (4, 5), generator=g)
    p = torch.softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    want = torch.log(p / (1 - p))
    got = metrics.logit_scaled_confidence(logits, targets)
    assert got.shape == (4, 5) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-9)
    got32 = metrics.logit_scaled_confidence(logits.float(), targets)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    as_array = metrics.logit_scaled_confidence(logits.numpy(), targets.numpy())
    assert isinstance(as_array, np.ndarray)
    np.testing.assert_allclose(as_array, want.numpy(), rtol=0, atol=1e-9)


def test_logit_scaled_confidence_extreme_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4], [-1e4, 0.0, 1e4], [1e4, 1e4, 0.0]], dtype=torch.float64)
    targets = torch.tensor([0, 0, 0])
    p = torch.softmax(logits, -1)[torch.arange(3), targets]
    literal = torch.log(p / (1 - p))
    assert not torch.isfinite(literal[:2]).any()  # 1 − p_y rounds to 0, or p_y to 0
    got = metrics.logit_scaled_confidence(logits, targets)
    # z_y − logsumexp of the others: 1e4 − 0, −1e4 − 1e4, and a two-way tie: log(1/2 / 1/2) = 0.
    np.testing.assert_allclose(got.numpy(), [1e4, -2e4, 0.0], rtol=0, atol=1e-9)
    assert torch.isfinite(metrics.logit_scaled_confidence(logits.float(), targets)).all()


def test_logit_scaled_confidence_rejects_bad_targets():
    logits = torch.zeros(2, 3)
    with pytest.raises(UserError, match=r"lie in \[0, 2\]"):
        metrics.logit_scaled_confidence(logits, torch.tensor([0, 3]))
    with pytest.raises(UserError, match="do not match"):
        metrics.logit_scaled_confidence(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(UserError, match="integer"):
        metrics.logit_scaled_confidence(logits, torch.tensor([0.0, 1.0]))
