"""Evaluation metrics under the reference's public names, all batched.

Accuracy comes in two forms: ``Acc`` as the reference computes it (the unweighted mean of
per-batch accuracies, in %, biased when the last batch is smaller) and ``AccExact``
(correct / total, in %).
"""
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
    """The reference's accuracy: per-batch accuracy (%) averaged over batches of the loader."""
    correct = np.asarray(correct, dtype=np.float64)
    if correct.size == 0:
        return float("nan")
    return float(np.mean([c.mean() for c in np.array_split(correct, range(batch_size, correct.size, batch_size))]) * 100)


def exact_accuracy(correct):
    correct = np.asarray(correct, dtype=np.float64)
    return float(correct.mean() * 100) if correct.size else float("nan")


def evaluate(model, loader, device=None):
    """{'Loss': mean of per-batch cross-entropy, 'Acc': mean of per-batch accuracy (%),
    'AccExact': correct/total (%)} — the reference's evaluate, batched."""
    logits, labels = predict(model, loader, device)
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
    """Softmax outputs of every sample in loader order (the reference used batch size 1)."""
    logits, _ = predict(model, data_loader, device)
    return F.softmax(logits, dim=-1)


def mia_from_entropies(retain_entropy, forget_entropy, test_entropy):
    """The reference's entropy attack: a logistic regression with balanced class weights,
    fitted on retain (member, 1) vs test (non-member, 0) entropies; returns the fraction of
    forget samples it calls members."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([np.asarray(retain_entropy), np.asarray(test_entropy)]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(retain_entropy)), np.zeros(len(test_entropy))])
    # The reference fitted multi_class="multinomial" (removed in scikit-learn 1.7). With two
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
    """MIA as in the reference (see ``mia_from_entropies``)."""
    ent = [entropy(collect_prob(dl, model, device)).numpy() for dl in (retain_loader, forget_loader, test_loader)]
    return mia_from_entropies(ent[0], ent[1], ent[2])


def JSDiv(p, q):
    """The reference's "JS divergence", kept for parity. It is not the textbook quantity:
    it averages m·(log m − log p) over every element (rows × classes) instead of summing over
    classes, i.e. KL(m‖p)/C per row."""
    m = (p + q) / 2
    # Written out rather than F.kl_div(reduction="mean"), whose meaning torch plans to change.
    return 0.5 * (m * (m.log() - p.log())).mean() + 0.5 * (m * (m.log() - q.log())).mean()


def UnLearningScore(tmodel, gold_model, forget_dl, batch_size=None, device=None):
    """ZRF score of the reference: 1 − JSDiv(unlearned softmax, gold-model softmax) on the
    forget set (``batch_size`` is accepted for signature parity; the loader's is used)."""
    p = collect_prob(forget_dl, tmodel, device)
    q = collect_prob(forget_dl, gold_model, device)
    return float(1 - JSDiv(p, q))


def actv_dist(model1, model2, dataloader, device=None):
    """Mean L2 distance between the two models' softmax outputs over the loader."""
    return activation_distance(collect_prob(dataloader, model1, device), collect_prob(dataloader, model2, device))


# ---- beyond the reference ----------------------------------------------------------------

def js_divergence(p, q):
    """Textbook Jensen-Shannon divergence between rows of probabilities, in nats, averaged
    over rows: ½·KL(p‖m) + ½·KL(q‖m) with m = (p + q)/2; symmetric, 0 iff p = q, ≤ log 2."""
    p, q = torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64)
    m = (p + q) / 2

    def kl(a, b):
        return torch.where(a > 0, a * (a.log() - b.log()), a.new_zeros(())).sum(dim=-1)

    return float((0.5 * kl(p, m) + 0.5 * kl(q, m)).mean())


def activation_distance(p, q):
    """Mean L2 distance between rows of probabilities (the reference's actv_dist, on outputs)."""
    p, q = torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64)
    return float((p - q).norm(dim=-1).mean())


def tpr_at_fpr(labels, scores, fpr=0.01):
    """Highest true-positive rate reachable with a false-positive rate ≤ ``fpr``."""
    from sklearn.metrics import roc_curve

    f, t, _ = roc_curve(labels, scores)
    return float(t[f <= fpr].max()) if (f <= fpr).any() else 0.0


def membership_attack(member_feature, nonmember_feature, folds=5, seed=0):
    """A stronger attack than the reference's: members (the forget set) against non-members
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
