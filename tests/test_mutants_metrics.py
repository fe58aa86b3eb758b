"""Cases added for mutants of metrics.py that the other tests let survive (docs/testing.md):
each pins a behaviour that a one-token change to the code would alter."""
import numpy as np
import pytest
import torch
from helpers import identity_linear
from torch.utils.data import DataLoader, TensorDataset

import metrics
from cli import UserError


def triples(x):
    return DataLoader(TensorDataset(x, torch.zeros(len(x)), torch.zeros(len(x), dtype=torch.long)), batch_size=4)


def hand_entropy(z):
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return -(p * np.log(p)).sum(1)


# ---- the reference's MIA: retain is the member set, whatever the forget set looks like ----

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


# ---- logit-scaled confidence -------------------------------------------------------------

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


# ---- forget_score's inputs -----------------------------------------------------------------

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


# ---- the grid counter behind forget_score: any starting guess ends at the exact count --------

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


# ---- forget_score against the literal definition on more shapes of data --------------------

# ---- accuracies, entropy, divergences --------------------------------------------------------

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


# ---- the stronger attacks --------------------------------------------------------------------

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


# ---- forget_score's grids and buckets, against the functions they reproduce -------------------

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
