"""Evaluation metrics under the names JiT's authors give them, all batched.

Accuracy comes in two forms: ``Acc`` as the authors compute it (the unweighted mean of
per-batch accuracies, in %, biased when the last batch is smaller) and ``AccExact``
(correct / total, in %).
"""
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def predict(model, loader, device=None, amp=False):
    """Logits and model labels of every sample in loader order, in eval mode (the model's
    previous mode is restored afterwards); ``amp`` runs the forwards under bf16 autocast."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for x, _, y in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits.append(model(x.to(device, non_blocking=True)).float().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        model.train(was_training)
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def batch_mean_accuracy(correct, batch_size):
    """Per-batch accuracy (%) averaged over batches of the loader."""
    correct = np.asarray(correct, dtype=np.float64)
    if correct.size == 0:
        return float("nan")
    return float(np.mean([c.mean() for c in np.array_split(correct, range(batch_size, correct.size, batch_size))]) * 100)


def exact_accuracy(correct):
    correct = np.asarray(correct, dtype=np.float64)
    return float(correct.mean() * 100) if correct.size else float("nan")


def evaluate(model, loader, device=None):
    """{'Loss': mean of per-batch cross-entropy, 'Acc': mean of per-batch accuracy (%),
    'AccExact': correct/total (%)}."""
    logits, labels = predict(model, loader, device)
    if len(labels) == 0:  # nothing to score: not a number, as batch_mean_accuracy gives
        return {"Loss": float("nan"), "Acc": float("nan"), "AccExact": float("nan")}
    correct = (logits.argmax(1) == labels).numpy()
    b = loader.batch_size or len(labels)
    losses = [F.cross_entropy(lg, lb).item() for lg, lb in zip(logits.split(b), labels.split(b))]
    return {"Loss": float(np.mean(losses)) if losses else float("nan"),
            "Acc": batch_mean_accuracy(correct, b),
            "AccExact": exact_accuracy(correct)}


def entropy(p, dim=-1, keepdim=False):
    """Shannon entropy (nats) of probability rows; 0·log 0 counts as 0."""
    return -torch.where(p > 0, p * p.log(), p.new_zeros(())).sum(dim=dim, keepdim=keepdim)


def collect_prob(data_loader, model, device=None):
    """Softmax outputs of every sample in loader order (the authors' code runs batch size 1)."""
    logits, _ = predict(model, data_loader, device)
    return F.softmax(logits, dim=-1)


def mia_from_entropies(retain_entropy, forget_entropy, test_entropy):
    """The entropy attack: a logistic regression with balanced class weights,
    fitted on retain (member, 1) vs test (non-member, 0) entropies; returns the fraction of
    forget samples it calls members."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([np.asarray(retain_entropy), np.asarray(test_entropy)]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(retain_entropy)), np.zeros(len(test_entropy))])
    # The authors' code fits multi_class="multinomial" (an option scikit-learn 1.7 lacks). With two
    # classes that is a two-row softmax whose L2 penalty falls on both rows, i.e. a binary
    # logistic regression with the penalty halved: C = 2 reproduces it exactly.
    clf = LogisticRegression(class_weight="balanced", solver="lbfgs", C=2.0)
    clf.fit(x, y)
    return float(clf.predict(np.asarray(forget_entropy).reshape(-1, 1)).mean())


def get_membership_attack_data(retain_loader, forget_loader, test_loader, model, device=None):
    ent = [entropy(collect_prob(dl, model, device)).numpy() for dl in (retain_loader, forget_loader, test_loader)]
    x_r = np.concatenate([ent[0], ent[2]]).reshape(-1, 1)
    y_r = np.concatenate([np.ones(len(ent[0])), np.zeros(len(ent[2]))])
    return x_r, y_r, ent[1].reshape(-1, 1), np.ones(len(ent[1]))


def get_membership_attack_prob(retain_loader, forget_loader, test_loader, model, device=None):
    """MIA: the fraction of forget samples the entropy attack calls members (``mia_from_entropies``)."""
    ent = [entropy(collect_prob(dl, model, device)).numpy() for dl in (retain_loader, forget_loader, test_loader)]
    return mia_from_entropies(ent[0], ent[1], ent[2])


def JSDiv(p, q):
    """The "JS divergence" of JiT's authors, kept for parity. It is not the textbook quantity:
    it averages m·(log m − log p) over every element (rows × classes) instead of summing over
    classes, i.e. KL(m‖p)/C per row."""
    m = (p + q) / 2
    # Written out rather than F.kl_div(reduction="mean"), whose meaning torch plans to change.
    return 0.5 * (m * (m.log() - p.log())).mean() + 0.5 * (m * (m.log() - q.log())).mean()


def UnLearningScore(tmodel, gold_model, forget_dl, batch_size=None, device=None):
    """ZRF score: 1 − JSDiv(unlearned softmax, gold-model softmax) on the
    forget set (``batch_size`` is accepted for signature parity; the loader's is used)."""
    p = collect_prob(forget_dl, tmodel, device)
    q = collect_prob(forget_dl, gold_model, device)
    return float(1 - JSDiv(p, q))


def actv_dist(model1, model2, dataloader, device=None):
    """Mean L2 distance between the two models' softmax outputs over the loader."""
    return activation_distance(collect_prob(dataloader, model1, device), collect_prob(dataloader, model2, device))


# ---- beyond the authors' metrics ----------------------------------------------------------------

def js_divergence(p, q):
    """Textbook Jensen-Shannon divergence between rows of probabilities, in nats, averaged
    over rows: ½·KL(p‖m) + ½·KL(q‖m) with m = (p + q)/2; symmetric, 0 iff p = q, ≤ log 2."""
    p, q = torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64)
    m = (p + q) / 2

    def kl(a, b):
        return torch.where(a > 0, a * (a.log() - b.log()), a.new_zeros(())).sum(dim=-1)

    return float((0.5 * kl(p, m) + 0.5 * kl(q, m)).mean())


def activation_distance(p, q):
    """Mean L2 distance between rows of probabilities (``actv_dist`` on outputs)."""
    p, q = torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64)
    return float((p - q).norm(dim=-1).mean())


def tpr_at_fpr(labels, scores, fpr=0.01):
    """Highest true-positive rate reachable with a false-positive rate ≤ ``fpr``."""
    from sklearn.metrics import roc_curve

    f, t, _ = roc_curve(labels, scores)
    return float(t[f <= fpr].max()) if (f <= fpr).any() else 0.0


def membership_attack(member_feature, nonmember_feature, folds=5, seed=0):
    """A stronger attack than ``mia_from_entropies``: members (the forget set) against non-members
    (the test set), balanced by subsampling the larger side, a logistic regression on the
    1-d feature scored out of fold with stratified ``folds``-fold cross-validation.
    Returns (ROC AUC, TPR at 1% FPR); AUC 0.5 means the forget set looks like unseen data."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    a, b = np.asarray(member_feature, dtype=np.float64), np.asarray(nonmember_feature, dtype=np.float64)
    n = min(len(a), len(b))
    if n < folds:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    a, b = rng.choice(a, n, replace=False), rng.choice(b, n, replace=False)
    x = np.concatenate([a, b]).reshape(-1, 1)
    y = np.concatenate([np.ones(n), np.zeros(n)])
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(LogisticRegression(), x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores)), tpr_at_fpr(y, scores, 0.01)


def attack_metrics(forget_logits, forget_labels, test_logits, test_labels, seed=0):
    """Entropy- and loss-based attacks, forget (member) vs test (non-member)."""
    out = {}
    for name, f in (("Entropy", lambda lg, y: entropy(F.softmax(lg, -1))),
                    ("Loss", lambda lg, y: F.cross_entropy(lg, y, reduction="none"))):
        auc, tpr = membership_attack(f(forget_logits, forget_labels).numpy(), f(test_logits, test_labels).numpy(),
                                     seed=seed)
        out[f"MIA{name}AUC"], out[f"MIA{name}TPR@1%FPR"] = auc, tpr
    return out


# ---- forgetting quality of the first NeurIPS unlearning competition ------------------------

FORGET_DELTA = 1e-5
FORGET_EPS_CAP = 50.0
_THRESHOLDS_PER_UNIT = 100
_WINDOW = 2.0  # how far (in confidence units) the double-threshold search reaches
_PEAKY_RATIO = 0.01
_BUCKET = 0.5


def logit_scaled_confidence(logits, targets):
    """log p_y − log Σ_{j≠y} p_j of softmax(logits) for the target class y, i.e. the logit of
    the target's probability, computed as ``z_y − logsumexp_{j≠y} z_j`` so that it stays finite
    where ``1 − p_y`` would round to 0 and where p_y underflows.

    ``logits``: a torch tensor [..., C] (C ≥ 2) or an array; ``targets``: integer class indices
    [...]. Returns a tensor [...] on the logits' device (an array for array input), in the
    logits' float dtype (float32 for half precision and integer input).

    Unlike the competition's code, no 1e-45 is added inside the logs, so confidences are not
    capped at about ±103.6 where a probability underflows."""
    from cli import UserError

    as_numpy = not isinstance(logits, torch.Tensor)
    z = torch.as_tensor(np.asarray(logits) if as_numpy else logits)
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()
    y = torch.as_tensor(targets, device=z.device)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise UserError(f"targets must be integer class indices, got {y.dtype}")
    if z.dim() < 1 or tuple(y.shape) != tuple(z.shape[:-1]):
        raise UserError(f"logits {tuple(z.shape)} and targets {tuple(y.shape)} do not match: "
                        "expected logits [..., C] and targets [...]")
    c = z.shape[-1]
    if c < 2:
        raise UserError(f"logit-scaled confidence needs at least 2 classes, got {c}")
    y = y.long().unsqueeze(-1)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        raise UserError(f"targets must lie in [0, {c - 1}], got values in [{int(y.min())}, {int(y.max())}]")
    others = z.scatter(-1, y, float("-inf"))
    conf = (z.gather(-1, y) - torch.logsumexp(others, dim=-1, keepdim=True)).squeeze(-1)
    return conf.cpu().numpy() if as_numpy else conf


class ForgetScore(NamedTuple):
    """``score``: the forgetting quality F in [0, 1]; ``eps``: float64 [M], each forget
    example's estimated ε in [0, 50]."""
    score: float
    eps: np.ndarray


def forget_score(unlearned_confs, retrained_confs, delta=FORGET_DELTA):
    """Forgetting quality F of the first NeurIPS unlearning competition (Triantafillou et al.,
    "Are we making progress in unlearning?", arXiv 2406.09073), with the per-example ε.

    ``unlearned_confs``, ``retrained_confs``: [K models, M forget examples] arrays or tensors
    (any device) of logit-scaled confidences (``logit_scaled_confidence``), K ≥ 2, finite.
    Returns ``ForgetScore(score, eps)``.

    For each example, an attacker sees one model's confidence and must say whether it came from
    the K unlearned or the K retrained models; ε bounds how much better than chance the best
    of a fixed family of threshold rules does, in the (ε, δ) sense. The choices, as the
    competition's evaluation code makes them:

    * Roles. The "positive" sample is the one with the larger median over models; when the
      medians are equal it is the unlearned one.
    * Peaky examples. Let range = max − min over the K models. If the smaller range is under 1%
      of the larger, one distribution is near-constant while the other is not: ε = 50 (the cap)
      outright, without looking at thresholds. When both ranges are 0 the ratio is undefined and
      the example goes through the threshold search like any other.
    * Single-threshold rules: "positive iff c ≥ t", for t on ceil(100 · (max − min)) evenly
      spaced points from the smallest to the largest of the 2K confidences. The points are
      float32 values, as torch.linspace makes them (computed here with one rounding per point,
      which is what torch's CPU kernel does); they are compared with the float64 confidences.
    * Double-threshold rules: "positive iff l ≤ c ≤ r", positive meaning the sample with the
      smaller range, on equal ranges the negative one (the search grid is built around it; which
      sample is called positive does not otherwise matter, ε being symmetric in the two rates). With w that smaller range and P
      that sample, r runs over ceil(100 · ((max P + 2) − (min P + w − 2))) evenly spaced float64
      points (numpy.linspace) from min P + w − 2 to max P + 2; for each r, l runs over 400
      points from r − w − 2 to r − w + 2. About 160 000 rules per example; l > r is an empty
      interval.
    * Rates. For every rule, FPR and FNR are the fractions of the K models of each sample it
      gets wrong. A rule with FPR = FNR = 0 separates the samples perfectly: ε = ∞ (capped to
      50 below). A rule with exactly one of them 0 is discarded as a sign of too few models.
      Otherwise the rule's ε is max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR),
      a term whose log argument is negative being ignored (the rule is discarded when both are),
      clipped below at 0.
    * The example's ε is the largest over the kept rules of both families, clipped to [0, 50].
      If no rule is kept (both samples constant at the same value) ε = 0: nothing tells the
      samples apart. The competition's code stops with an assertion there.
    * Score. With K models, ε can be resolved up to about ceil(log(K − 1)); ε is put in buckets
      [0, 0.5), [0.5, 1), ... up to that bound, worth 1, 1/2, 1/4, ... points, and 0 points at
      or beyond it (so K = 2 always scores 0). F is the mean of the points over the M examples.

    Precision: the competition's code takes the rates and the logs in float32; here they are
    exact fractions and float64 logs, so ε agree to float32 precision and F is the same unless
    an ε lies within that precision of a bucket edge. The rules are evaluated by counting, per
    example, which stretches between consecutive confidences hold a threshold (a binary search
    checked on each grid's own formula), not by testing all rules one by one; the result is the same.
    """
    from cli import UserError

    u = _confidence_matrix(unlearned_confs, "unlearned_confs")
    r = _confidence_matrix(retrained_confs, "retrained_confs")
    if u.shape != r.shape:
        raise UserError(f"unlearned_confs {u.shape} and retrained_confs {r.shape} must have the same "
                        "shape [K models, M examples]")
    k, m = u.shape
    if k < 2 or m < 1:
        raise UserError(f"forget_score needs at least 2 models and 1 example, got K={k}, M={m}")
    if not 0 <= delta < 1:
        raise UserError(f"delta must lie in [0, 1), got {delta}")
    eps = _forget_epsilons(u, r, float(delta))
    return ForgetScore(float(_bucket_points(eps, k).sum() / m), eps)


def _confidence_matrix(x, name):
    from cli import UserError

    a = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise UserError(f"{name} must be 2-D [K models, M examples], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise UserError(f"{name} holds non-finite values")
    return a


def _threshold_eps_table(k, delta):
    """ε of one rule by its counts: entry [a, b] for a rule that calls a of the K positive-sample
    models and b of the K negative-sample models positive; −1 marks a discarded rule."""
    a = np.arange(k + 1)[:, None]
    b = np.arange(k + 1)[None, :]
    fnr, fpr = (k - a) / k, b / k
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.fmax(np.log((1 - delta) - fpr) - np.log(fnr), np.log((1 - delta) - fnr) - np.log(fpr))
    v = np.where(np.isnan(v), -1.0, np.maximum(v, 0.0))
    v = np.where((fpr == 0) | (fnr == 0), -1.0, v)
    return np.where((fpr == 0) & (fnr == 0), np.inf, v)


def _count_le(z, guess, grid, **params):
    """How many points of a non-decreasing grid are ≤ z. ``grid(i, **params)`` gives point i of
    a grid of ``params["n"]`` points; z, guess and the params broadcast together. ``guess``
    (from the grid's nominal spacing) is checked against the points on either side of it and
    moved one point at a time where rounding put it off, which is rare, so that only the first
    check covers every query."""
    shape = np.broadcast_shapes(np.shape(z), np.shape(guess), *(np.shape(v) for v in params.values()))

    def check(c, at):
        pick = (lambda v: np.broadcast_to(v, shape)) if at is None else (lambda v: np.broadcast_to(v, shape)[at])
        p = {key: pick(v) for key, v in params.items()}
        zz, n = pick(z), p["n"]
        down = (c > 0) & (grid(np.maximum(c - 1, 0), **p) > zz)
        up = (c < n) & (grid(np.minimum(c, np.maximum(n - 1, 0)), **p) <= zz)
        return down, up

    n = np.broadcast_to(params["n"], shape)
    c = np.minimum(np.where(guess > 0, guess, 0), n).astype(np.int64)  # NaN guesses go to 0
    down, up = check(c, None)
    c += up.astype(np.int64) - down
    at = np.nonzero(down | up)
    while at[0].size:
        cm = c[at]
        down, up = check(cm, at)
        c[at] = cm + up - down
        at = tuple(ix[down | up] for ix in at)
    return c


def _forget_epsilons(u, r, delta):
    k, m = u.shape
    retrain_positive = np.median(r, axis=0) > np.median(u, axis=0)
    pos = np.where(retrain_positive, r, u).T.copy()  # [M, K]
    neg = np.where(retrain_positive, u, r).T.copy()
    pos_range = pos.max(1) - pos.min(1)
    neg_range = neg.max(1) - neg.min(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        peaky = np.minimum(pos_range, neg_range) / np.maximum(pos_range, neg_range) < _PEAKY_RATIO
    eps = np.full(m, FORGET_EPS_CAP)
    table = _threshold_eps_table(k, delta)
    todo = np.flatnonzero(~peaky)
    # The double-threshold search works on [examples, ~401 right thresholds, 2K confidences].
    chunk = max(1, 250000 // (2 * k * (4 * _THRESHOLDS_PER_UNIT + 2)))
    for i in range(0, len(todo), chunk):
        idx = todo[i:i + chunk]
        eps[idx] = _epsilons_chunk(pos[idx], neg[idx], pos_range[idx], neg_range[idx], table)
    return np.clip(eps, 0.0, FORGET_EPS_CAP)


def _epsilons_chunk(pos, neg, pos_range, neg_range, table):
    """Best ε over both rule families for each example of a chunk (rows of pos/neg, [m, K])."""
    m, k = pos.shape
    vals = np.concatenate([pos, neg], axis=1)
    order = np.argsort(vals, axis=1, kind="stable")
    z = np.take_along_axis(vals, order, axis=1)  # [m, 2K] sorted
    # Every rule family is scanned stretch by stretch: stretch s holds the thresholds in
    # (z_s, z_{s+1}] (z_0 = −∞, z_{2K+1} = +∞), where the counts "c ≥ threshold" stay fixed.
    # cum_pos[s] = how many of the s smallest confidences are the positive sample's.
    cum_pos = np.concatenate([np.zeros((m, 1), np.int64), np.cumsum(order < k, axis=1)], axis=1)
    cum_neg = np.arange(2 * k + 1) - cum_pos
    best = np.full(m, -1.0)

    # Single threshold: float32 points from the smallest to the largest confidence.
    lo, hi = z[:, 0], z[:, -1]
    n = np.ceil((hi - lo) * _THRESHOLDS_PER_UNIT).astype(np.int64)
    s32, e32 = lo.astype(np.float32), hi.astype(np.float32)
    s64, e64 = s32.astype(np.float64), e32.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = ((e32 - s32) / np.maximum(n - 1, 0).astype(np.float32)).astype(np.float64)
        guess = np.floor((z - s64[:, None]) / step[:, None]) + 1
    counts = _count_le(z, guess, _single_grid, n=n[:, None], start=s64[:, None], end=e64[:, None],
                       step=step[:, None])
    full = np.concatenate([np.zeros((m, 1), np.int64), counts, n[:, None]], axis=1)
    present = full[:, 1:] > full[:, :-1]  # [m, 2K+1]
    e = table[k - cum_pos, k - cum_neg]
    best = np.maximum(best, np.where(present, e, -1.0).max(axis=1))

    # Double threshold on the sample with the smaller range (P; the other is Q).
    p_is_neg = pos_range >= neg_range
    p = np.where(p_is_neg[:, None], neg, pos)
    q = np.where(p_is_neg[:, None], pos, neg)
    cum_p = np.where(p_is_neg[:, None], cum_neg, cum_pos)
    cum_q = np.where(p_is_neg[:, None], cum_pos, cum_neg)
    w = np.minimum(pos_range, neg_range)
    r_lo, r_hi = (p.min(1) + w) - _WINDOW, p.max(1) + _WINDOW
    n_r = np.ceil((r_hi - r_lo) * _THRESHOLDS_PER_UNIT).astype(np.int64)
    j = np.arange(n_r.max())[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        r_step = (r_hi - r_lo) / (n_r - 1)
    # numpy.linspace: i·step + start, the last point set to stop.
    right = np.where(n_r[:, None] == 1, r_lo[:, None], j * r_step[:, None] + r_lo[:, None])
    right = np.where(j == (n_r - 1)[:, None], r_hi[:, None], right)
    valid = j < n_r[:, None]  # [m, R]
    p_le = (p[:, None, :] <= right[:, :, None]).sum(-1)
    q_le = (q[:, None, :] <= right[:, :, None]).sum(-1)
    n_l = int(np.ceil(2 * _WINDOW * _THRESHOLDS_PER_UNIT))
    l_start = (right - w[:, None]) - _WINDOW
    l_stop = (right - w[:, None]) + _WINDOW
    l_step = (l_stop - l_start) / (n_l - 1)

    guess = np.floor((z[:, None, :] - l_start[..., None]) / l_step[..., None]) + 1
    counts = _count_le(z[:, None, :], guess, _numpy_linspace, n=n_l, start=l_start[..., None],
                       step=l_step[..., None], stop=l_stop[..., None])  # [m, R, 2K]
    edge = np.broadcast_to
    full = np.concatenate([edge(0, counts.shape[:2] + (1,)), counts, edge(n_l, counts.shape[:2] + (1,))], axis=2)
    present = (full[..., 1:] > full[..., :-1]) & valid[..., None]  # [m, R, 2K+1]
    # A left threshold in stretch s leaves out the s smallest confidences; [l, r] holds the rest
    # that are ≤ r (none when l > r).
    a = np.maximum(p_le[:, :, None] - cum_p[:, None, :], 0)
    b = np.maximum(q_le[:, :, None] - cum_q[:, None, :], 0)
    e = table[a, b]
    best = np.maximum(best, np.where(present, e, -1.0).reshape(m, -1).max(axis=1))
    return np.maximum(best, 0.0)


def _single_grid(i, n, start, end, step):
    """Point i of torch's CPU float32 linspace of n points: start + i·step for the first half,
    end − (n−1−i)·step for the second, each rounded once to float32 (start, end and step are
    float32 values held in float64, where these products and sums are exact)."""
    with np.errstate(invalid="ignore"):
        first = (start + step * i).astype(np.float32)
        second = (end - step * (n - 1 - i)).astype(np.float32)
    v = np.where(i < n // 2, first, second)
    return np.where(n == 1, start, v.astype(np.float64))


def _numpy_linspace(i, n, start, step, stop):
    """Point i of numpy.linspace(start, stop, n) (n ≥ 2): i·step + start, the last point stop."""
    return np.where(i == n - 1, stop, i * step + start)


def _bucket_points(eps, k):
    """Points per example: 1, 1/2, 1/4, ... for ε in [0, 0.5), [0.5, 1), ..., none from
    ceil(log(K − 1)) on."""
    bound = np.ceil(np.log(k - 1))
    n_buckets = int(2 * bound) if bound > 0 else 0
    b = np.floor(eps / _BUCKET)
    return np.where(b < n_buckets, _BUCKET ** b, 0.0)
