"""blindspot, amnesiac and SCRUB (methods/distill.py): the behaviour that defines each, on a tiny
model and synthetic data, written-out oracles for their steps, and one end-to-end run per main
that offers the method."""
import copy
import functools
import json
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import MAINS, SETTING, Triples, describe, hp_for, run_inprocess
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import methods.distill as bd
from cli import UserError
from methods import METHODS, UnlearnData

C = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def make_net(seed=None):
    """The tiny model; seeded if ``seed`` is given, else from torch's default generator."""
    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, C))


def make_data(n=96, forget_class=0, seed=1):
    """A learnable 4-class set: class c has a bright c-th quarter of the image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    x = 0.3 * torch.randn(n, 3, 8, 8, generator=g)
    for c in range(C):
        x[y == c, :, 2 * c:2 * c + 2] += 1.0
    train = Triples(x, y)
    forget = Subset(train, torch.nonzero(y == forget_class).flatten().tolist())
    retain = Subset(train, torch.nonzero(y != forget_class).flatten().tolist())
    built = []

    def build_fresh():
        built.append(make_net())
        return built[-1]

    data = UnlearnData(
        forget_train=DataLoader(forget, batch_size=16, shuffle=False),
        retain_train=DataLoader(retain, batch_size=16, shuffle=True),
        full_train=DataLoader(train, batch_size=16, shuffle=False),
        num_classes=C, forget_class=forget_class, setting="fullclass", dataset="Tiny", net="Tiny",
        build_fresh=build_fresh,
    )
    return data, built


@functools.lru_cache(maxsize=1)
def _trained_state():
    data, _ = make_data()
    x, y = torch.cat([b[0] for b in data.full_train]), torch.cat([b[2] for b in data.full_train])
    model = make_net(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.state_dict()


def trained_net():
    """The tiny model fitted to ``make_data()`` (trained once per session, copied per call)."""
    model = make_net(seed=0)
    model.load_state_dict(copy.deepcopy(_trained_state()))
    return model


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a, b))


@torch.no_grad()
def forget_kl(teacher, student, loader, temperature=1.0):
    """KL(teacher ‖ student) over every forget sample, mean over samples, both in eval mode."""
    teacher.eval()
    student.eval()
    x = torch.cat([b[0] for b in loader])
    return bd.distill_kl(student(x), teacher(x), temperature).item()


def test_scrub_trains_the_student_and_never_the_teacher(monkeypatch):
    data, _ = make_data()
    model = trained_net()
    before = params(model)
    pairs, scrub_pair = [], bd.scrub_pair

    def capture(m):
        pairs.append(scrub_pair(m))
        return pairs[-1]

    monkeypatch.setattr(bd, "scrub_pair", capture)
    out = bd.scrub(model, data, hp_for("scrub", data), torch.device("cpu"))
    (student, teacher), = pairs
    assert out is student is model and teacher is not student
    assert not same(params(student), before)
    assert same(params(teacher), before)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_scrub_max_steps_only_in_the_first_msteps_epochs(monkeypatch):
    data, _ = make_data()
    calls = []
    monkeypatch.setattr(bd, "scrub_max_epoch", lambda s, t, loader, *a: calls.append(("max", loader)))
    monkeypatch.setattr(bd, "scrub_min_epoch", lambda s, t, loader, *a: calls.append(("min", loader)))
    bd.scrub(make_net(seed=0), data, hp_for("scrub", data, scrub_epochs=4, scrub_msteps=2), torch.device("cpu"))
    f, r = data.forget_train, data.retain_train
    assert calls == [("max", f), ("min", r), ("max", f), ("min", r), ("min", r), ("min", r)]


def _perturbed_pair(data):
    student, teacher = bd.scrub_pair(trained_net())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student, teacher


@pytest.mark.parametrize("phase", ["max", "min"])
def test_scrub_max_epoch_raises_and_kl_only_min_epoch_lowers_forget_kl_to_the_teacher(phase):
    """The min-step with γ = 0 is the max-step's opposite: the same KL, descended."""
    data, _ = make_data()
    torch.manual_seed(0)
    student, teacher = _perturbed_pair(data)
    T = bd.ScrubHP.temperature
    kl0 = forget_kl(teacher, student, data.forget_train, T)
    opt = torch.optim.SGD(student.parameters(), lr=0.01)
    if phase == "max":
        bd.scrub_max_epoch(student, teacher, data.forget_train, opt, T, "cpu")
    else:
        bd.scrub_min_epoch(student, teacher, data.forget_train, opt, T, 1.0, 0.0, "cpu")
    kl1 = forget_kl(teacher, student, data.forget_train, T)
    assert (kl1 > kl0 > 0) if phase == "max" else (kl1 < kl0)


def test_distill_kl_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, C, generator=g), torch.randn(5, C, generator=g)
    T = 4.0
    p, q = F.softmax(t / T, 1), F.softmax(s / T, 1)
    expected = (p * (p.log() - q.log())).sum(1).mean()
    assert bd.distill_kl(s, t, T).item() == pytest.approx(expected.item(), rel=1e-5)


def test_blindspot_incompetent_teacher_is_a_fresh_frozen_model():
    data, built = make_data()
    model = trained_net()
    torch.manual_seed(5)
    bd.blindspot(model, data, hp_for("blindspot", data, recipe="corrected"), torch.device("cpu"))
    teacher, = built
    torch.manual_seed(5)
    fresh = params(data.build_fresh())
    assert same(params(teacher), fresh)  # randomly initialised, and unchanged by the run
    assert not same(params(teacher), params(model))
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_blindspot_moves_the_student_toward_the_incompetent_teacher_on_forget_samples():
    data, built = make_data()
    model = trained_net()
    original = copy.deepcopy(model)
    bd.blindspot(model, data, hp_for("blindspot", data, recipe="corrected", bt_epochs=3), torch.device("cpu"))
    bad, = built
    assert forget_kl(bad, model, data.forget_train) < forget_kl(bad, original, data.forget_train)


def test_blindspot_loss_matches_each_sample_to_its_teacher():
    g = torch.Generator().manual_seed(0)
    s, good, bad = (torch.randn(6, C, generator=g) for _ in range(3))
    tags = torch.tensor([1, 0, 0, 1, 1, 0])
    expected = sum(F.kl_div(F.log_softmax(s[i:i + 1], 1), F.softmax((bad if tags[i] else good)[i:i + 1], 1),
                            reduction="sum") for i in range(6)) / 6
    assert bd.blindspot_loss(s, tags, good, bad).item() == pytest.approx(expected.item(), rel=1e-5)


def test_blindspot_set_is_all_forget_samples_and_a_seeded_30_percent_of_retain():
    data, _ = make_data()
    forget, retain = data.forget_train.dataset, data.retain_train.dataset
    ds = bd.blindspot_set(forget, retain, 0.3, seed=3)
    tags = [ds[i][1] for i in range(len(ds))]
    assert tags.count(1) == len(forget) and tags.count(0) == int(0.3 * len(retain))
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.equal(xs[:len(forget)], torch.stack([forget[i][0] for i in range(len(forget))]))
    picked = xs[len(forget):]
    assert len(torch.unique(picked.flatten(1), dim=0)) == len(picked)  # no retain sample twice
    again = bd.blindspot_set(forget, retain, 0.3, seed=3)
    assert torch.equal(picked, torch.stack([again[i][0] for i in range(len(forget), len(again))]))


@pytest.mark.parametrize("classes", [2, 5, 20])
def test_random_other_labels_never_keep_the_true_label_and_reach_every_other(classes):
    true = torch.arange(20000) % classes
    new = bd.random_other_labels(true, classes, torch.Generator().manual_seed(0))
    assert not (new == true).any()
    assert new.min() >= 0 and new.max() < classes
    for c in range(classes):
        counts = torch.bincount(new[true == c], minlength=classes).float()
        others = torch.cat([counts[:c], counts[c + 1:]])
        assert counts[c] == 0 and (others > 0).all()
        assert (others / others.sum() - 1 / (classes - 1)).abs().max() < 0.05  # uniform


def test_amnesiac_set_relabels_forget_and_keeps_retain_unchanged():
    """Labels are model labels: with a fine label in the middle slot (sub-class), the model
    label is what gets replaced, and the fine label rides along."""
    g = torch.Generator().manual_seed(0)
    fine = torch.randint(0, 2 * C, (64,), generator=g)
    base = Triples(torch.randn(64, 3, 8, 8, generator=g), fine // 2, fine=fine)
    forget = Subset(base, torch.nonzero(fine == 3).flatten().tolist())
    retain = Subset(base, torch.nonzero(fine != 3).flatten().tolist())
    ds = bd.amnesiac_set(forget, retain, C, torch.Generator().manual_seed(1))
    assert len(ds) == len(forget) + len(retain)
    for i in range(len(forget)):
        (x, f, y), (x0, f0, y0) = ds[i], forget[i]
        assert torch.equal(x, x0) and f == f0 == 3 and y0 == 1 and y != y0 and 0 <= y < C
    for i in range(len(retain)):
        got, want = ds[len(forget) + i], retain[i]
        assert torch.equal(got[0], want[0]) and got[1:] == want[1:]


def test_amnesiac_trains_away_from_the_true_labels_of_forget_samples():
    data, _ = make_data()
    model = trained_net()
    x = torch.cat([b[0] for b in data.forget_train])
    y = torch.full((len(x),), data.forget_class)
    with torch.no_grad():
        before = F.cross_entropy(model.eval()(x), y)
    bd.amnesiac(model, data, hp_for("amnesiac", data, amnesiac_epochs=5), torch.device("cpu"))
    with torch.no_grad():
        assert F.cross_entropy(model.eval()(x), y) > before


# One epoch each keeps the nine runs short; blindspot's table budget is one epoch already, and
# SCRUB's single epoch still has both a max and a min phase.
SHORT = {"blindspot": [], "amnesiac": ["-amnesiac_epochs", "1"], "scrub": ["-scrub_epochs", "1", "-scrub_msteps", "1"]}


@pytest.mark.parametrize("method", ["blindspot", "amnesiac", "scrub"])
@pytest.mark.parametrize("main", list(MAINS))
def test_method_runs_end_to_end(main, method, smallcnn_ckpt, smallcnn5_ckpt, tmp_path):
    assert method in METHODS
    results = tmp_path / "r.jsonl"
    cmd = [*MAINS[main](smallcnn_ckpt, smallcnn5_ckpt), "-net", "SmallCNN", "-method", method,
           "-seed", "0", "-results", str(results), *SHORT[method]]
    proc = run_inprocess(cmd)
    assert proc.returncode == 0, describe(proc)
    rec, = [json.loads(line) for line in results.read_text().splitlines()]
    assert (rec["method"], rec["setting"]) == (method, SETTING[main])
    assert 0 <= rec["MIA"] <= 1 and rec["MethodTime"] > 0
    assert all(rec["args"][flag.lstrip("-")] == int(v) for flag, v in zip(SHORT[method][::2], SHORT[method][1::2]))


CPU = torch.device("cpu")


MLP_CLASSES = 3


def samples(n, inputs=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Triples(torch.randn(n, inputs, generator=g, dtype=torch.float64), torch.arange(n) % MLP_CLASSES)


class NoTargets(Dataset):
    """(x, fine, y) triples with no ``targets`` array: labels can only be read from the items."""

    def __init__(self, labels):
        self.labels = list(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.full((2,), float(i)), torch.tensor([]), self.labels[i]


class UnreadableItems(Dataset):
    """A ``targets`` array whose items must not be read (reading one fails the test)."""

    def __init__(self, labels):
        self.targets = np.asarray(labels)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        raise AssertionError("a sample was read although the data set has a targets array")


def test_random_other_labels_add_a_shift_in_1_to_c_minus_1_drawn_from_the_generator():
    """The relabelling is (y + s) mod C with s = torch.randint(1, C) from the given generator:
    a run's labels are fixed by -seed (y − s would be as uniform but other labels)."""
    y = torch.arange(40) % 5
    got = bd.random_other_labels(y.numpy(), 5, torch.Generator().manual_seed(7))
    shift = torch.randint(1, 5, (40,), generator=torch.Generator().manual_seed(7))
    assert got.dtype == torch.long
    assert torch.equal(got, (y + shift) % 5)


def test_amnesiac_set_reads_labels_from_the_items_when_there_is_no_targets_array():
    """A data set without ``targets`` (through a Subset) has its model labels read from slot 2 of
    every item; the relabelled set then holds (y + s) mod C for those labels."""
    labels = [2, 0, 1, 1, 2, 0, 2]
    base = NoTargets(labels)
    forget = Subset(base, [6, 0, 3, 5])
    assert bd._targets(forget).tolist() == [2, 2, 1, 0]
    assert bd._targets(forget).dtype == np.int64
    ds = bd.amnesiac_set(forget, Subset(base, [1, 2]), MLP_CLASSES, torch.Generator().manual_seed(3))
    shift = torch.randint(1, MLP_CLASSES, (4,), generator=torch.Generator().manual_seed(3))
    want = (torch.tensor([2, 2, 1, 0]) + shift) % MLP_CLASSES
    assert [ds[i][2] for i in range(4)] == want.tolist()
    assert [ds[i][2] for i in (4, 5)] == [0, 1]  # the retain part as it is
    assert bd._targets(NoTargets([])).tolist() == []


def test_targets_come_from_the_targets_array_without_reading_a_sample():
    """Where the data set has ``targets`` (the project's ArrayImages), the labels come from that
    array through the Subsets: reading every sample would run the image transform on the whole
    forget set (and, with augmentation, draw from the global generator)."""
    base = UnreadableItems(np.array([1, 0, 2, 2, 1], dtype=np.int64))
    forget = Subset(Subset(base, [4, 3, 1]), [2, 0])
    assert bd._targets(forget).tolist() == [0, 1]
    ds = bd.amnesiac_set(forget, Subset(base, [2]), MLP_CLASSES, torch.Generator().manual_seed(0))
    assert len(ds) == 3


def test_loader_like_shuffles_only_when_asked():
    """blindspot and amnesiac shuffle their combined set (the reference's loaders do); the order
    over 64 samples is then not the identity, and every sample comes once."""
    src = DataLoader(NoTargets(range(4)), batch_size=2)
    ds = NoTargets([0] * 64)
    torch.manual_seed(0)
    order = torch.cat([b[0][:, 0] for b in bd._loader_like(src, ds, 8, shuffle=True)]).long().tolist()
    assert sorted(order) == list(range(64)) and order != list(range(64))
    plain = torch.cat([b[0][:, 0] for b in bd._loader_like(src, ds, 8, shuffle=False)]).long().tolist()
    assert plain == list(range(64))


def test_incompetent_teacher_for_vit_is_a_fresh_vit_with_the_runs_classes(monkeypatch):
    """The reference's ViT bad teacher: the ViT class built with the run's number of classes and
    -bt_vit_weights; an OSError while loading becomes a one-line UserError that quotes the
    error's first line."""
    import models

    built = []

    def fake_vit(num_classes=100, weights=None):
        built.append((num_classes, weights))
        return "teacher"

    monkeypatch.setattr(models, "ViT", fake_vit)
    data = types.SimpleNamespace(net="ViT", num_classes=7, seed=0, build_fresh=lambda: None)
    hp = hp_for("blindspot", data, bt_vit_weights="/some/dir")
    assert bd.incompetent_teacher(data, hp) == "teacher"
    assert built == [(7, "/some/dir")]

    def offline(num_classes=100, weights=None):
        raise OSError("We couldn't connect to the hub\nsecond line")

    monkeypatch.setattr(models, "ViT", offline)
    with pytest.raises(UserError) as e:
        bd.incompetent_teacher(data, hp)
    assert str(e.value) == (
        "blindspot: cannot load the ViT trunk '/some/dir' of the reference's incompetent teacher offline "
        "(We couldn't connect to the hub); give a local directory with -bt_vit_weights, or use -bt_teacher random")


class Branchy(nn.Module):
    """Logits a(x), plus b(x) only for batches of more than one sample: the last batch of one
    sample leaves b out of the graph."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b = nn.Linear(4, MLP_CLASSES).double(), nn.Linear(4, MLP_CLASSES).double()

    def forward(self, x):
        out = self.a(x)
        return out + self.b(x) if len(x) > 1 else out


def _perturbed(model, seed):
    teacher = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return bd.freeze(teacher)


@pytest.mark.parametrize("phase", ["max", "min"])
def test_scrub_step_leaves_parameters_its_batch_does_not_reach(phase):
    """Gradients are cleared to None (torch's zero_grad default, as the reference's
    optimizer.zero_grad()): a parameter the loss of a batch does not reach takes no SGD step in
    that batch: no weight decay, no momentum. Zeroed gradients would move it anyway."""
    ds = samples(3)
    student = Branchy(0)
    teacher = _perturbed(student, 1)

    def run(loader):
        m = copy.deepcopy(student)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
        if phase == "max":
            bd.scrub_max_epoch(m, teacher, loader, opt, 2.0, CPU)
        else:
            bd.scrub_min_epoch(m, teacher, loader, opt, 2.0, 0.7, 3.0, CPU)
        return m

    both = run(DataLoader(ds, batch_size=2))            # batches of 2 (reaches b) and 1 (does not)
    first = run(DataLoader(Subset(ds, [0, 1]), batch_size=2))
    assert not torch.equal(both.a.weight, first.a.weight)  # the second step moved a
    assert torch.equal(both.b.weight, first.b.weight) and torch.equal(both.b.bias, first.b.bias)
