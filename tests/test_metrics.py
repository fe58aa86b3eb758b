"""metrics.py on hand-computed cases: accuracies, the entropy membership attack, JS divergence,
activation distance, the attack's AUC and TPR at 1% FPR."""
import math

import numpy as np
import pytest
import torch
from helpers import Triples, identity_linear, literal_js
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import metrics
from cli import UserError


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


P_ROWS = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]]


Q_ROWS = [[0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.0, 1.0, 0.0]]


def test_js_divergence_matches_the_textbook_formula():
    assert metrics.js_divergence(torch.tensor(P_ROWS, dtype=torch.float64), torch.tensor(Q_ROWS, dtype=torch.float64)) == pytest.approx(literal_js(P_ROWS, Q_ROWS), rel=1e-9)


def test_js_divergence_is_symmetric_zero_on_identical_and_bounded_by_log2():
    p, q = torch.tensor(P_ROWS, dtype=torch.float64), torch.tensor(Q_ROWS, dtype=torch.float64)
    assert metrics.js_divergence(p, q) == pytest.approx(metrics.js_divergence(q, p), rel=1e-12)
    assert metrics.js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    disjoint = metrics.js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert disjoint == pytest.approx(math.log(2), rel=1e-12)


def test_activation_distance_is_the_mean_row_l2_distance():
    expected = np.mean([np.linalg.norm(np.subtract(a, b)) for a, b in zip(P_ROWS, Q_ROWS)])
    assert metrics.activation_distance(torch.tensor(P_ROWS, dtype=torch.float64), torch.tensor(Q_ROWS, dtype=torch.float64)) == pytest.approx(expected, rel=1e-9)


def test_attack_on_perfectly_separable_features_has_auc_1_and_full_tpr():
    members, nonmembers = np.linspace(0, 1, 200), np.linspace(5, 6, 300)
    auc, tpr = metrics.membership_attack(members, nonmembers)
    assert auc == pytest.approx(1.0) and tpr == pytest.approx(1.0)


def test_attack_on_identical_distributions_is_near_chance():
    rng = np.random.default_rng(1)
    auc, tpr = metrics.membership_attack(rng.normal(size=2000), rng.normal(size=2000))
    assert abs(auc - 0.5) < 0.05 and tpr < 0.05


def test_tpr_at_fpr_reads_the_roc_curve():
    # negatives 0.1..0.4, positives 0.35, 0.5, 0.6: with no false positive (threshold above
    # 0.4) two of three positives are caught; one false positive (0.4) lets all three through.
    labels = [0, 0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6]
    assert metrics.tpr_at_fpr(labels, scores, 0.01) == pytest.approx(2 / 3)
    assert metrics.tpr_at_fpr(labels, scores, 0.24) == pytest.approx(2 / 3)
    assert metrics.tpr_at_fpr(labels, scores, 0.25) == pytest.approx(1.0)


def test_attack_metrics_use_entropy_and_loss():
    g = torch.Generator().manual_seed(0)
    confident = torch.randn(100, 5, generator=g) * 0.1
    confident[:, 0] += 10  # members: confident and correct (label 0)
    unsure = torch.randn(100, 5, generator=g) * 0.1
    out = metrics.attack_metrics(confident, torch.zeros(100, dtype=torch.long), unsure,
                                 torch.zeros(100, dtype=torch.long))
    assert set(out) == {"MIAEntropyAUC", "MIAEntropyTPR@1%FPR", "MIALossAUC", "MIALossTPR@1%FPR"}
    assert out["MIAEntropyAUC"] > 0.99 and out["MIALossAUC"] > 0.99


def triples(x):
    return DataLoader(TensorDataset(x, torch.zeros(len(x)), torch.zeros(len(x), dtype=torch.long)), batch_size=4)


def hand_entropy(z):
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return -(p * np.log(p)).sum(1)


def test_membership_attack_fits_retain_not_forget_as_members():
    # Retain confident (low entropy), test unsure, forget even less sure than test: a fit on
    # retain vs test calls no forget sample a member; a fit that took forget as the members
    # would call all of them members.
    g = torch.Generator().manual_seed(0)
    retain = torch.tensor([6.0, 0.0, 0.0]) + 0.2 * torch.randn(30, 3, generator=g)
    test = torch.tensor([1.0, 0.0, 0.0]) + 0.1 * torch.randn(30, 3, generator=g)
    forget = 0.02 * torch.randn(12, 3, generator=g)
    got = metrics.get_membership_attack_prob(triples(retain), triples(forget), triples(test), identity_linear())
    ent = [hand_entropy(t.numpy().astype(np.float64)) for t in (retain, forget, test)]
    assert got == pytest.approx(metrics.mia_from_entropies(*ent))
    assert got == 0.0
    assert metrics.mia_from_entropies(ent[1], ent[1], ent[2]) == 1.0  # the swapped fit


def test_logit_scaled_confidence_keeps_the_autograd_graph():
    logits = torch.tensor([[3.0, 1.0, 1.0]], requires_grad=True)
    conf = metrics.logit_scaled_confidence(logits, torch.tensor([0]))
    conf.sum().backward()
    # d/dz of z_0 − log(e^{z_1} + e^{z_2}) = (1, −½, −½)
    np.testing.assert_allclose(logits.grad.numpy(), [[1.0, -0.5, -0.5]], atol=1e-6)


def test_logit_scaled_confidence_of_half_and_integer_logits_is_float32():
    for logits in (torch.tensor([[3, 1]]), torch.tensor([[3.0, 1.0]], dtype=torch.float16)):
        conf = metrics.logit_scaled_confidence(logits, torch.tensor([0]))
        assert conf.dtype == torch.float32
        assert conf.tolist() == [2.0]


def test_logit_scaled_confidence_of_one_row_and_two_classes():
    # logits [C] with a 0-d target is the smallest valid input; two classes are enough.
    conf = metrics.logit_scaled_confidence(torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64), torch.tensor(0))
    assert conf.shape == () and float(conf) == pytest.approx(2.0 - np.log(2.0), abs=1e-12)
    assert metrics.logit_scaled_confidence(np.array([[3.0, 1.0]]), np.array([1])).tolist() == [-2.0]


def test_logit_scaled_confidence_messages():
    with pytest.raises(UserError, match="integer class indices, got torch.bool"):
        metrics.logit_scaled_confidence(torch.zeros(2, 3), torch.tensor([True, False]))
    with pytest.raises(UserError, match=r"expected logits \[\.\.\., C\] and targets \[\.\.\.\]$"):
        metrics.logit_scaled_confidence(torch.zeros(2, 3), torch.tensor([0]))
    with pytest.raises(UserError, match="needs at least 2 classes, got 1"):
        metrics.logit_scaled_confidence(torch.zeros(2, 1), torch.tensor([0, 0]))


def test_forget_score_names_the_bad_argument():
    good = np.zeros((3, 2))
    bad = good.copy()
    bad[1, 1] = np.inf
    with pytest.raises(UserError, match="^unlearned_confs holds non-finite values$"):
        metrics.forget_score(bad, good)
    with pytest.raises(UserError, match="^retrained_confs holds non-finite values$"):
        metrics.forget_score(good, bad)
    with pytest.raises(UserError, match=r"^retrained_confs must be 2-D \[K models, M examples\]"):
        metrics.forget_score(good, good[0])
    with pytest.raises(UserError, match=r"must have the same shape \[K models, M examples\]$"):
        metrics.forget_score(good, good[:, :1])


def test_forget_score_delta_range():
    rng = np.random.default_rng(3)
    u, r = rng.normal(size=(6, 4)), rng.normal(0.5, 1, size=(6, 4))
    # δ = 0 is allowed and only moves ε: ln(1 − δ − FPR) with δ = 0 against δ = 1e-5.
    at0, default = metrics.forget_score(u, r, delta=0.0), metrics.forget_score(u, r)
    assert (at0.eps >= default.eps).all() and (at0.eps > default.eps).any()
    for delta in (1.0, 1.5, -1e-9):
        with pytest.raises(UserError, match=r"^delta must lie in \[0, 1\), got "):
            metrics.forget_score(u, r, delta=delta)


def test_forget_score_takes_tensors_that_require_grad_and_float32():
    rng = np.random.default_rng(4)
    u, r = rng.normal(size=(5, 3)), rng.normal(1, 1, size=(5, 3))
    want = metrics.forget_score(u, r)
    got = metrics.forget_score(torch.tensor(u, requires_grad=True), torch.tensor(r))
    np.testing.assert_array_equal(got.eps, want.eps)
    u32, r32 = u.astype(np.float32), r.astype(np.float32)
    # float32 tensors are read as float64 values: the same ε as the float64 array of the same numbers
    np.testing.assert_array_equal(metrics.forget_score(torch.from_numpy(u32), torch.from_numpy(r32)).eps,
                                  metrics.forget_score(u32.astype(np.float64), r32.astype(np.float64)).eps)


def _line(i, n, start, step):
    return start + step * i


@pytest.mark.parametrize("offset", [-7, -2, -1, 0, 1, 2, 9, np.nan])
def test_count_le_corrects_any_guess(offset):
    rng = np.random.default_rng(5)
    z = np.sort(rng.uniform(-1.5, 2.5, size=(3, 6)), axis=1)
    z[0, 2] = 0.5  # exactly on a grid point: counted (≤)
    start, step = np.array([[-1.0], [0.0], [0.25]]), np.array([[0.25], [0.5], [0.1]])
    n = np.array([[9], [1], [12]])
    want = np.array([[np.sum(_line(np.arange(nn), nn, s, st) <= v) for v in row]
                     for row, nn, s, st in zip(z, n[:, 0], start[:, 0], step[:, 0])])
    guess = want + offset
    got = metrics._count_le(z, guess, _line, n=n, start=start, step=step)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64


def test_count_le_broadcasts_every_argument():
    # z alone carries the query shape; the grid's parameters and the guess broadcast against it.
    z = np.array([-1.0, 0.0, 0.35, 0.95, 5.0])
    got = metrics._count_le(z, np.float64(0), _line, n=np.int64(10), start=np.float64(0), step=np.float64(0.1))
    np.testing.assert_array_equal(got, [0, 1, 4, 10, 10])
    z2 = np.array([[0.35], [0.35]])
    got = metrics._count_le(z2, np.zeros((2, 3)), _line, n=np.array([10, 3, 1]), start=np.float64(0),
                            step=np.array([[0.1], [0.2]]))
    np.testing.assert_array_equal(got, [[4, 3, 1], [2, 2, 1]])


def test_accuracies_of_one_and_of_no_sample():
    assert metrics.batch_mean_accuracy([1.0], 4) == 100.0
    assert metrics.exact_accuracy([0.0]) == 0.0
    assert np.isnan(metrics.batch_mean_accuracy([], 4)) and np.isnan(metrics.exact_accuracy([]))


def test_entropy_keepdim():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    got = metrics.entropy(p, keepdim=True)
    assert got.shape == (2, 1)
    np.testing.assert_allclose(got.numpy(), [[np.log(2)], [0.0]], atol=1e-7)


def test_divergences_work_in_float64_over_the_last_dim():
    g = torch.Generator().manual_seed(6)
    p = torch.softmax(torch.randn(2, 3, 5, generator=g), -1)  # float32 rows, batched as [2, 3]
    q = torch.softmax(torch.randn(2, 3, 5, generator=g), -1)
    p64, q64 = p.double().reshape(6, 5), q.double().reshape(6, 5)
    m = (p64 + q64) / 2
    js = float((0.5 * (p64 * (p64 / m).log()).sum(-1) + 0.5 * (q64 * (q64 / m).log()).sum(-1)).mean())
    assert metrics.js_divergence(p, q) == pytest.approx(js, rel=1e-12)
    assert metrics.js_divergence(p.tolist(), q64.reshape(2, 3, 5)) == pytest.approx(js, rel=1e-12)
    dist = float((p64 - q64).norm(dim=-1).mean())
    assert metrics.activation_distance(p, q) == pytest.approx(dist, rel=1e-12)
    # Python floats that float32 would round: each side is read as float64
    a = torch.softmax(torch.randn(4, 5, generator=g, dtype=torch.float64), -1)
    b = torch.softmax(torch.randn(4, 5, generator=g, dtype=torch.float64), -1)
    dist = float((a - b).norm(dim=-1).mean())
    assert metrics.activation_distance(a.tolist(), b) == pytest.approx(dist, rel=1e-12, abs=0)
    assert metrics.activation_distance(a, b.tolist()) == pytest.approx(dist, rel=1e-12, abs=0)


def test_tpr_at_fpr_edges():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.05])
    assert metrics.tpr_at_fpr(labels, scores, fpr=0.0) == pytest.approx(2 / 3)  # above 0.7: two members
    assert metrics.tpr_at_fpr(labels, scores) == pytest.approx(2 / 3)  # default 1%: still no false positive
    assert metrics.tpr_at_fpr(labels, scores, fpr=0.25) == 1.0
    assert metrics.tpr_at_fpr(labels, scores, fpr=-0.1) == 0.0  # no threshold reaches a negative rate


def hand_attack(a, b, folds=5, seed=0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score, roc_curve
    from sklearn.model_selection import StratifiedKFold

    n = min(len(a), len(b))
    rng = np.random.default_rng(seed)
    a, b = rng.choice(np.asarray(a, float), n, replace=False), rng.choice(np.asarray(b, float), n, replace=False)
    x, y = np.concatenate([a, b])[:, None], np.concatenate([np.ones(n), np.zeros(n)])
    scores = np.empty(2 * n)
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        scores[test] = LogisticRegression().fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    f, t, _ = roc_curve(y, scores)
    return roc_auc_score(y, scores), t[f <= 0.01].max()


@pytest.mark.parametrize("folds,seed", [(5, 0), (4, 3)])
def test_membership_attack_is_the_hand_pipeline(folds, seed):
    rng = np.random.default_rng(7)
    members, nonmembers = rng.normal(0.6, 1, size=23), rng.normal(0, 1, size=31)
    auc, tpr = metrics.membership_attack(members, nonmembers, folds=folds, seed=seed)
    want_auc, want_tpr = hand_attack(members, nonmembers, folds, seed)
    assert auc == pytest.approx(want_auc, abs=1e-12) and tpr == pytest.approx(want_tpr, abs=1e-12)
    if folds == 5:
        assert (auc, tpr) == metrics.membership_attack(members, nonmembers)  # the defaults


def test_membership_attack_fold_count_edge():
    auc, tpr = metrics.membership_attack(np.arange(5.0), np.arange(5.0) + 0.5)  # n = folds: runs
    assert np.isfinite(auc) and np.isfinite(tpr)
    auc, tpr = metrics.membership_attack(np.arange(4.0), np.arange(9.0))  # n < folds: nan, nan
    assert np.isnan(auc) and np.isnan(tpr)


def test_attack_metrics_pass_the_seed():
    g = torch.Generator().manual_seed(8)
    fl, tl = torch.randn(20, 4, generator=g) * 3, torch.randn(20, 4, generator=g)
    fy, ty = torch.randint(0, 4, (20,), generator=g), torch.randint(0, 4, (20,), generator=g)
    got = metrics.attack_metrics(fl, fy, tl, ty, seed=2)
    ent = [metrics.entropy(torch.softmax(lg, -1)).numpy() for lg in (fl, tl)]
    loss = [torch.nn.functional.cross_entropy(lg, y, reduction="none").numpy() for lg, y in ((fl, fy), (tl, ty))]
    assert (got["MIAEntropyAUC"], got["MIAEntropyTPR@1%FPR"]) == metrics.membership_attack(*ent, seed=2)
    assert (got["MIALossAUC"], got["MIALossTPR@1%FPR"]) == metrics.membership_attack(*loss, seed=2)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1001])
def test_single_grid_is_torch_float32_linspace(n):
    start, end = np.float32(-1.2345), np.float32(3.3)
    want = torch.linspace(torch.tensor(start), torch.tensor(end), n).double().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        step = ((end - start) / np.float32(max(n - 1, 0))).astype(np.float64)
    got = metrics._single_grid(np.arange(n), n, np.float64(start), np.float64(end), step)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n", [2, 3, 400])
def test_numpy_linspace_point(n):
    start, stop = -2.0031, 1.9977
    got = metrics._numpy_linspace(np.arange(n), n, start, (stop - start) / (n - 1), stop)
    np.testing.assert_array_equal(got, np.linspace(start, stop, n))


def test_bucket_points():
    eps = np.array([0.0, 0.49, 0.5, 0.99, 1.0, 1.49, 4.9, 50.0])
    # K = 3: ceil(ln 2) = 1, two buckets; K = 2: none; K = 100: ceil(ln 99) = 5, ten buckets
    np.testing.assert_array_equal(metrics._bucket_points(eps, 3), [1, 1, 0.5, 0.5, 0, 0, 0, 0])
    np.testing.assert_array_equal(metrics._bucket_points(eps, 2), np.zeros(8))
    np.testing.assert_array_equal(metrics._bucket_points(eps, 100), [1, 1, .5, .5, .25, .25, .5 ** 9, 0])


def test_count_le_takes_its_shape_from_the_guess_or_the_grid_alone():
    z = np.array([[0.35], [0.15]])
    got = metrics._count_le(z, np.zeros((2, 3)), _line, n=np.int64(10), start=np.float64(0), step=np.float64(0.1))
    np.testing.assert_array_equal(got, [[4, 4, 4], [2, 2, 2]])
    got = metrics._count_le(z, np.zeros((2, 1)), _line, n=np.array([10, 3, 1]), start=np.float64(0),
                            step=np.float64(0.1))
    np.testing.assert_array_equal(got, [[4, 3, 1], [2, 2, 1]])


def test_membership_attack_data_layout():
    # The reference's helper: retain (label 1) then test (label 0) entropies as a column, and
    # the forget entropies as a column with label 1.
    retain, forget, test = torch.tensor([[4.0, 0, 0]] * 3), torch.tensor([[1.0, 1, 0]] * 2), torch.zeros(2, 3)
    x, y, xf, yf = metrics.get_membership_attack_data(triples(retain), triples(forget), triples(test), identity_linear())
    ent = [hand_entropy(t.numpy().astype(np.float64)) for t in (retain, forget, test)]
    np.testing.assert_allclose(x, np.concatenate([ent[0], ent[2]])[:, None], rtol=1e-6)
    np.testing.assert_array_equal(y, [1, 1, 1, 0, 0])
    np.testing.assert_allclose(xf, ent[1][:, None], rtol=1e-6)
    np.testing.assert_array_equal(yf, [1, 1])
    assert x.shape == (5, 1) and xf.shape == (2, 1)


def test_evaluate_on_an_empty_loader_is_not_a_number_not_an_error():
    import math

    from torch.utils.data import DataLoader

    import metrics

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    out = metrics.evaluate(model, DataLoader([], batch_size=2), torch.device("cpu"))
    assert set(out) == {"Loss", "Acc", "AccExact"} and all(math.isnan(v) for v in out.values())
