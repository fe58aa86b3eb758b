"""The evaluation wiring, end to end through the real mains, with planted outputs.

A "planted" model reads each image's index (written into its pixels) and returns logits the
test chose for that image. Every record field is then recomputed here by hand from the planted
logits and the split, written out literally, so a swapped split, a swapped role or the wrong
batch size in any metric changes at least one field. The logits are drawn so that every group
of images has its own distribution: training images are confident (low entropy), test images
diffuse, forget-class test images often wrong; no two splits share a value by accident.
"""
import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import literal_js, run_target

import datasets
import metrics
import models
import records
from images import MEAN, STD, ArrayImages, ImageTransform
from retrained import RetrainStore

REPO = Path(__file__).resolve().parent.parent
N_TRAIN, N_TEST, N_FINE = 307, 131, 10  # not multiples of the batch, so the last batch is partial
B = 16                                  # -b: the reference's mean-of-batch accuracy uses it


def _encode(n, is_test):
    """uint8 images (n, 32, 32, 3) carrying their index in pixel (0, 0) of channels 0/1 and the
    split (0 train, 255 test) in channel 2; the rest is noise the model ignores."""
    rng = np.random.default_rng(n)
    img = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    idx = np.arange(n)
    img[:, 0, 0, 0], img[:, 0, 0, 1], img[:, 0, 0, 2] = idx % 256, idx // 256, 255 if is_test else 0
    return img


class Planted(nn.Module):
    """Logits looked up by image index: ``train_logits[i]`` for training image i,
    ``test_logits[i]`` for test image i (parameters, so the state dict carries them)."""

    def __init__(self, num_classes):
        super().__init__()
        self.train_logits = nn.Parameter(torch.zeros(N_TRAIN, num_classes))
        self.test_logits = nn.Parameter(torch.zeros(N_TEST, num_classes))

    def forward(self, x):
        mean, std = torch.tensor(MEAN, device=x.device), torch.tensor(STD, device=x.device)
        px = ((x[:, :, 0, 0] * std + mean) * 255).round().long()  # undo Normalize on pixel (0, 0)
        idx, is_test = px[:, 0] + 256 * px[:, 1], px[:, 2] > 127
        return torch.where(is_test[:, None], self.test_logits[idx.clamp(max=N_TEST - 1)],
                           self.train_logits[idx.clamp(max=N_TRAIN - 1)])


def _labels(rng):
    fine_train, fine_test = rng.integers(0, N_FINE, N_TRAIN), rng.integers(0, N_FINE, N_TEST)
    return fine_train, fine_test


def _planted_logits(rng, labels, scale_lo, scale_hi, p_right, num_classes):
    """Random logits whose argmax is the label with probability about ``p_right``, with a
    per-image confidence scale in [scale_lo, scale_hi)."""
    n = len(labels)
    z = rng.normal(size=(n, num_classes))
    right = rng.random(n) < p_right
    z[np.arange(n), labels] = np.where(right, z.max(1) + 1.0, z.min(1) - 1.0)
    return torch.tensor(z * rng.uniform(scale_lo, scale_hi, size=(n, 1)), dtype=torch.float32)


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """Install the planted data and net; return a runner of one main that gives back the
    record together with everything needed to recompute it."""
    rng = np.random.default_rng(0)
    fine_train, fine_test = _labels(rng)
    images = {False: _encode(N_TRAIN, False), True: _encode(N_TEST, True)}

    def load(name, root="./data", train=True, size=32, augment=False, pins_split="none"):
        fine_tr, fine_te = fine_train, fine_test
        fine = fine_tr if train else fine_te
        tf = ImageTransform(size, augment)
        if name == "Digits5":  # coarse model labels, fine labels in the middle slot
            return ArrayImages(images[not train], fine // 2, fine=fine, transform=tf)
        return ArrayImages(images[not train], fine, transform=tf)

    monkeypatch.setattr(datasets, "load_dataset", load)
    monkeypatch.setitem(models.MODELS, "Planted", Planted)

    def run(main, dataset, classes_args, target_args, num_classes, extra=()):
        y_train = fine_train // 2 if dataset == "Digits5" else fine_train
        y_test = fine_test // 2 if dataset == "Digits5" else fine_test
        net = Planted(num_classes)
        # training images confident and mostly right, test images diffuse and less often right
        net.train_logits.data = _planted_logits(rng, y_train, 3.0, 9.0, 0.9, num_classes)
        net.test_logits.data = _planted_logits(rng, y_test, 0.2, 1.5, 0.6, num_classes)
        gold = Planted(num_classes)
        gold.train_logits.data = _planted_logits(rng, y_train, 0.5, 3.0, 0.5, num_classes)
        gold.test_logits.data = _planted_logits(rng, y_test, 0.5, 3.0, 0.5, num_classes)
        weights = tmp_path / "planted.pth"
        torch.save(net.state_dict(), weights)
        results = tmp_path / "results.jsonl"
        argv = [main, "-net", "Planted", "-dataset", dataset, *classes_args, *target_args,
                "-method", "baseline", "-weight_path", str(weights), "-b", str(B), "-seed", "3",
                "-results", str(results), "-retrain_dir", str(tmp_path / "retrained"), *extra]
        # a saved "retrained" model for JSToRetrain / ActDistToRetrain, named as retrain runs name theirs
        setting = {"forget_full_class_main.py": "fullclass", "forget_sub_class_main.py": "subclass",
                   "forget_random_main.py": "random"}[main]
        flags = {"dataset": dataset, "net": "Planted", "seed": 3, "method": "retrain_full",
                 target_args[0][1:]: target_args[1] if target_args[0] == "-forget_class" else float(target_args[1])}
        RetrainStore(str(tmp_path / "retrained")).save(gold.state_dict(), records.run_identity(setting, flags),
                                                       run_target(setting, flags))

        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as ex:
            runpy.run_path(str(REPO / main), run_name="__main__")
            raise SystemExit(0)
        assert ex.value.code in (0, None)
        (record,) = [json.loads(line) for line in results.read_text().splitlines()]
        return record, dict(net=net, gold=gold, y_train=y_train, y_test=y_test, fine_train=fine_train,
                            fine_test=fine_test)

    return run


# ---- the oracle: every metric written out literally ------------------------------------------

def mean_of_batches(correct, b):
    accs, i = [], 0
    while i < len(correct):
        chunk = correct[i:i + b]
        accs.append(sum(chunk) / len(chunk))
        i += b
    return 100.0 * sum(accs) / len(accs)


def softmax_rows(lg):
    out = []
    for row in lg.tolist():
        m = max(row)
        e = [math.exp(v - m) for v in row]
        s = sum(e)
        out.append([v / s for v in e])
    return out


def entropies(lg):
    return np.array([-sum(p * math.log(p) for p in row if p > 0) for row in softmax_rows(lg)])


def losses(lg, y):
    return np.array([-math.log(row[int(t)]) for row, t in zip(softmax_rows(lg), y)])


def mia(retain_ent, forget_ent, test_ent):
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([retain_ent, test_ent]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(retain_ent)), np.zeros(len(test_ent))])  # member = 1
    clf = LogisticRegression(class_weight="balanced", C=2.0).fit(x, y)
    return float(clf.predict(forget_ent.reshape(-1, 1)).mean())


def act_dist(p, q):
    return sum(math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b))) for a, b in zip(p, q)) / len(p)


def expected(split, planted, df_batch=B):
    """Every metric field from the planted logits and the split ({name: (source, indices)});
    Df's mean of per-batch accuracies in batches of ``df_batch``."""
    net, gold = planted["net"], planted["gold"]
    logits = {"train": net.train_logits.detach(), "test": net.test_logits.detach()}
    labels = {"train": planted["y_train"], "test": planted["y_test"]}

    def part(name):
        src, idx = split[name]
        return logits[src][list(idx)], labels[src][list(idx)]

    out = {}
    for key, name in (("TestAcc", "test"), ("RetainTestAcc", "retain_valid"), ("Df", "forget_valid")):
        lg, y = part(name)
        correct = [int(int(np.argmax(row)) == int(t)) for row, t in zip(lg.tolist(), y)]
        out[key] = mean_of_batches(correct, df_batch if key == "Df" else B)
        out[key + "Exact"] = 100.0 * sum(correct) / len(correct)
    ent = {n: entropies(part(n)[0]) for n in ("retain_train", "forget_train", "test")}
    out["MIA"] = mia(ent["retain_train"], ent["forget_train"], ent["test"])
    (f_lg, f_y), (t_lg, t_y) = part("forget_train"), part("test")
    for name, feat in (("Entropy", lambda lg, y: entropies(lg)), ("Loss", losses)):
        auc, tpr = metrics.membership_attack(feat(f_lg, f_y), feat(t_lg, t_y))
        out[f"MIA{name}AUC"], out[f"MIA{name}TPR@1%FPR"] = auc, tpr
    p = softmax_rows(f_lg)
    q = softmax_rows(gold.train_logits.detach()[list(split["forget_train"][1])])
    out["JSToRetrain"], out["ActDistToRetrain"] = literal_js(p, q), act_dist(p, q)
    return out


def check(record, want):
    for key, value in want.items():
        assert record[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert record["RetrainReference"] == "retrain_full"
    assert record["RelearnSteps"] == 0  # the unchanged model already has its own Df


def test_full_class_record_equals_the_hand_computed_metrics(planted):
    cls = 3
    record, p = planted("forget_full_class_main.py", "Digits", ["-classes", "10"], ["-forget_class", str(cls)], 10)
    y_tr, y_te = p["y_train"], p["y_test"]
    # retain test images grouped by class in class order, as the reference builds them
    retain_valid = [i for k in range(10) if k != cls for i in range(N_TEST) if y_te[i] == k]
    split = {"forget_train": ("train", [i for i in range(N_TRAIN) if y_tr[i] == cls]),
             "retain_train": ("train", [i for i in range(N_TRAIN) if y_tr[i] != cls]),
             "forget_valid": ("test", [i for i in range(N_TEST) if y_te[i] == cls]),
             "retain_valid": ("test", retain_valid),
             "test": ("test", list(range(N_TEST)))}
    want = expected(split, p)
    assert want["MIA"] > 0.5, "planted: forget images look like members before unlearning"
    check(record, want)
    assert record["n_forget"] == len(split["forget_train"][1])
    assert record["n_retain"] == len(split["retain_train"][1])


def test_sub_class_record_equals_the_hand_computed_metrics(planted):
    fine = 3
    record, p = planted("forget_sub_class_main.py", "Digits5", ["-superclasses", "5", "-subclasses", "10"],
                        ["-forget_class", str(fine)], 5)
    f_tr, f_te = p["fine_train"], p["fine_test"]
    split = {"forget_train": ("train", [i for i in range(N_TRAIN) if f_tr[i] == fine]),
             "retain_train": ("train", [i for i in range(N_TRAIN) if f_tr[i] != fine]),
             "forget_valid": ("test", [i for i in range(N_TEST) if f_te[i] == fine]),
             # the retained test images of fine class 0, then 1, ..., as the reference builds them
             "retain_valid": ("test", [i for k in range(10) if k != fine for i in range(N_TEST) if f_te[i] == k]),
             "test": ("test", list(range(N_TEST)))}
    # the sub-class retain test set keeps exactly the test images of other fine classes
    assert sorted(split["retain_valid"][1]) == [i for i in range(N_TEST) if f_te[i] != fine]
    check(record, expected(split, p))


def test_random_record_equals_the_hand_computed_metrics(planted):
    perc = 0.1
    record, p = planted("forget_random_main.py", "Digits", ["-classes", "10"], ["-forget_perc", str(perc)], 10)
    # the reference's draw: the seeded default generator after two initialisations of the net
    torch.manual_seed(3)
    Planted(10), Planted(10)
    forget = list(torch.utils.data.random_split(range(N_TRAIN), [perc, 1 - perc])[0].indices)
    assert len(forget) == record["n_forget"]
    rest = sorted(set(range(N_TRAIN)) - set(forget))
    split = {"forget_train": ("train", forget), "retain_train": ("train", rest),
             "forget_valid": ("train", forget),  # Df: the forgotten training images themselves
             "retain_valid": ("test", list(range(N_TEST))),
             "test": ("test", list(range(N_TEST)))}
    want = expected(split, p, df_batch=128)  # the reference's forget loader, batch 128 whatever -b is
    check(record, want)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [test_full_class_record_equals_the_hand_computed_metrics,
                                  test_sub_class_record_equals_the_hand_computed_metrics,
                                  test_random_record_equals_the_hand_computed_metrics],
                         ids=["full", "sub", "random"])
def test_the_planted_evaluation_wiring_holds_on_cuda(case, planted):
    def on_cuda(*args):
        return planted(*args, extra=("-gpu", "-workers", "0"))
    case(on_cuda)
