"""Hand-computed cases for metrics.py."""
import math

import numpy as np
import pytest
import torch
from helpers import Triples, identity_linear
from torch import nn
from torch.utils.data import DataLoader

import metrics


def loader(x, y=None, batch_size=2):
    y = torch.zeros(len(x), dtype=torch.long) if y is None else y
    return DataLoader(Triples(x, y), batch_size=batch_size, shuffle=False)


def fixed_linear(weight, bias):
    m = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        m.weight.copy_(torch.tensor(weight))
        m.bias.copy_(torch.tensor(bias))
    return m


def np_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_entropy(p):
    p = np.asarray(p, dtype=np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)


def np_jsdiv(p, q):
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2
    return 0.5 * np.mean(m * (np.log(m) - np.log(p))) + 0.5 * np.mean(m * (np.log(m) - np.log(q)))


# five samples; logits = inputs (identity model); batch size 2 -> batches [c, c], [c, w], [w]
EVAL_X = torch.tensor([[2., 0., 0.], [0., 1., 0.], [0., 0., 3.], [1., 0., 0.], [0., 2., 0.]])
EVAL_Y = torch.tensor([0, 1, 2, 2, 0])


# ---------------------------------------------------------------- accuracy

def test_batch_mean_accuracy_is_mean_of_per_batch_accuracies():
    # batches [1, 1], [1, 0], [0] -> mean(1, 0.5, 0) * 100
    assert metrics.batch_mean_accuracy([1, 1, 1, 0, 0], 2) == pytest.approx(50.0)


def test_batch_mean_accuracy_equals_exact_when_batches_are_even():
    assert metrics.batch_mean_accuracy([1, 1, 1, 0, 0, 0], 3) == pytest.approx(50.0)
    assert metrics.batch_mean_accuracy([1, 0, 0, 0, 1, 1], 2) == pytest.approx(50.0)


def test_exact_accuracy_is_correct_over_total():
    assert metrics.exact_accuracy([1, 1, 1, 0, 0]) == pytest.approx(60.0)


def test_evaluate_on_fixed_linear_model():
    model = identity_linear()
    res = metrics.evaluate(model, loader(EVAL_X, EVAL_Y, batch_size=2))
    x, y = EVAL_X.numpy().astype(np.float64), EVAL_Y.numpy()
    per_sample_ce = np.log(np.exp(x).sum(axis=1)) - x[np.arange(5), y]
    batch_losses = [per_sample_ce[0:2].mean(), per_sample_ce[2:4].mean(), per_sample_ce[4:5].mean()]
    assert res["Acc"] == pytest.approx(50.0)
    assert res["AccExact"] == pytest.approx(60.0)
    assert res["Loss"] == pytest.approx(np.mean(batch_losses), rel=1e-6)
    # the per-batch mean is not the per-sample mean here (uneven last batch)
    assert not np.isclose(np.mean(batch_losses), per_sample_ce.mean())


# ---------------------------------------------------------------- predict

def test_predict_runs_in_eval_mode_and_restores_training_mode():
    model = nn.Sequential(nn.Dropout(0.9), identity_linear()).train()
    logits, labels = metrics.predict(model, loader(EVAL_X, EVAL_Y))
    torch.testing.assert_close(logits, EVAL_X)  # dropout inert -> eval mode was used
    torch.testing.assert_close(labels, EVAL_Y)
    assert model.training and all(m.training for m in model.modules())


def test_predict_keeps_eval_mode():
    model = nn.Sequential(nn.Dropout(0.9), identity_linear()).eval()
    metrics.predict(model, loader(EVAL_X, EVAL_Y))
    assert not any(m.training for m in model.modules())


# ---------------------------------------------------------------- entropy / collect_prob

def test_entropy_uniform_is_log_k():
    p = torch.full((2, 4), 0.25)
    torch.testing.assert_close(metrics.entropy(p), torch.full((2,), math.log(4)))


def test_entropy_one_hot_is_zero_without_nan():
    p = torch.tensor([[0., 1., 0., 0.], [0.5, 0.5, 0., 0.]])
    e = metrics.entropy(p)
    assert not torch.isnan(e).any()
    torch.testing.assert_close(e, torch.tensor([0.0, math.log(2)]))


def test_collect_prob_returns_softmax_rows_in_loader_order():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g) * 3
    probs = metrics.collect_prob(loader(x, batch_size=2), identity_linear())
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.numpy(), np_softmax(x.numpy()), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- MIA

RNG = np.random.default_rng(0)


def low(n):
    """Entropies of confident predictions (what members look like)."""
    return RNG.uniform(0.0, 0.2, n)


def high(n):
    """Entropies of unsure predictions (what non-members look like)."""
    return RNG.uniform(2.0, 2.5, n)


def test_mia_forget_like_retain_is_one():
    assert metrics.mia_from_entropies(low(200), low(50), high(200)) == pytest.approx(1.0)


def test_mia_forget_like_test_is_zero():
    assert metrics.mia_from_entropies(low(200), high(50), high(200)) == pytest.approx(0.0)


def test_mia_is_fraction_of_forget_called_members():
    forget = np.concatenate([low(30), high(10)])
    assert metrics.mia_from_entropies(low(200), forget, high(200)) == pytest.approx(0.75)


def reference_multinomial_mia(retain, forget, test):
    """The reference's attack, written out: LogisticRegression(class_weight="balanced",
    solver="lbfgs", multi_class="multinomial") with the default C=1. On two classes old
    scikit-learn fits a 2-row softmax model with the L2 penalty on BOTH rows (intercepts
    unpenalised) and predicts the argmax; minimised here directly with scipy."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    x = np.concatenate([retain, test])
    y = np.r_[np.ones(len(retain)), np.zeros(len(test))].astype(int)
    sw = np.where(y == 1, len(y) / (2 * len(retain)), len(y) / (2 * len(test)))  # "balanced"
    rows = np.arange(len(y))

    def objective(theta):
        w, b = theta[:2], theta[2:]
        z = x[:, None] * w + b
        lse = logsumexp(z, axis=1)
        loss = np.sum(sw * (lse - z[rows, y])) + 0.5 * np.sum(w ** 2)
        g = np.exp(z - lse[:, None])
        g[rows, y] -= 1
        g *= sw[:, None]
        return loss, np.r_[(g * x[:, None]).sum(0) + w, g.sum(0)]

    res = minimize(objective, np.zeros(4), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 10000})
    w, b = res.x[:2], res.x[2:]
    return float(((np.asarray(forget)[:, None] * w + b).argmax(1) == 1).mean())


def test_mia_matches_reference_multinomial_fit():
    """Overlapping entropies, where the fitted threshold (and so the regularisation) matters.
    The 2-row multinomial fit of the reference is a binary logistic regression with C=2, not 1:
    its threshold differs by ~0.0025 nats here, i.e. ~10 points of the forget grid."""
    rng = np.random.default_rng(0)
    retain, test = rng.exponential(0.05, 5000), rng.exponential(0.3, 1000)
    forget = np.linspace(0.0, 0.5, 2001)
    expected = reference_multinomial_mia(retain, forget, test)
    got = metrics.mia_from_entropies(retain, forget, test)
    assert got == pytest.approx(expected, abs=2 / len(forget))


def test_get_membership_attack_prob_matches_hand_entropies():
    g = torch.Generator().manual_seed(1)
    confident = torch.tensor([8.0, 0.0, 0.0]) + 0.5 * torch.randn(46, 3, generator=g)
    unsure = 0.3 * torch.randn(42, 3, generator=g)
    retain, test = confident[:40], unsure[:40]
    forget = torch.cat([confident[40:], unsure[40:]])  # 6 member-like, 2 non-member-like
    model = identity_linear()
    got = metrics.get_membership_attack_prob(loader(retain, batch_size=7), loader(forget, batch_size=3),
                                             loader(test, batch_size=5), model)
    ent = [np_entropy(np_softmax(t.numpy())) for t in (retain, forget, test)]
    expected = metrics.mia_from_entropies(ent[0], ent[1], ent[2])
    assert got == pytest.approx(expected)
    assert expected == pytest.approx(0.75)


# ---------------------------------------------------------------- JSDiv / actv_dist / ZRF

P = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
Q = torch.tensor([[0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])


def test_jsdiv_matches_hand_formula():
    got = float(metrics.JSDiv(P, Q))
    assert got == pytest.approx(np_jsdiv(P.numpy(), Q.numpy()), rel=1e-5)
    assert got > 0


def test_jsdiv_of_identical_inputs_is_zero():
    assert float(metrics.JSDiv(P, P)) == pytest.approx(0.0, abs=1e-8)


W1, B1 = [[1.0, -0.5, 0.2], [0.3, 0.8, -1.0], [-0.7, 0.1, 0.4]], [0.1, -0.2, 0.05]
W2, B2 = [[0.2, 0.4, -0.3], [-0.6, 0.5, 0.9], [0.8, -0.2, 0.1]], [-0.3, 0.0, 0.2]
XS = torch.tensor([[1.0, 2.0, -1.0], [0.5, -0.3, 0.8], [-1.2, 0.4, 2.0], [2.0, 0.0, 0.0], [0.1, 0.1, -0.2]])


def test_actv_dist_is_mean_rowwise_l2_between_softmaxes():
    m1, m2 = fixed_linear(W1, B1), fixed_linear(W2, B2)
    x = XS.numpy().astype(np.float64)
    p1 = np_softmax(x @ np.array(W1).T + np.array(B1))
    p2 = np_softmax(x @ np.array(W2).T + np.array(B2))
    expected = np.sqrt(((p1 - p2) ** 2).sum(axis=1)).mean()
    assert metrics.actv_dist(m1, m2, loader(XS, batch_size=2)) == pytest.approx(expected, rel=1e-5)


def test_unlearning_score_is_one_minus_jsdiv_of_softmaxes():
    m1, m2 = fixed_linear(W1, B1), fixed_linear(W2, B2)
    x = XS.numpy().astype(np.float64)
    p1 = np_softmax(x @ np.array(W1).T + np.array(B1))
    p2 = np_softmax(x @ np.array(W2).T + np.array(B2))
    expected = 1 - np_jsdiv(p1, p2)
    got = metrics.UnLearningScore(m1, m2, loader(XS, batch_size=2))
    assert got == pytest.approx(expected, rel=1e-6)
    assert got < 1.0
    assert metrics.UnLearningScore(m1, m1, loader(XS, batch_size=2)) == pytest.approx(1.0)
