"""Cases added for mutants of methods/distill.py, importance.py, retrain.py and jit.py that the
other tests let survive (docs/testing.md): each pins a behaviour that a one-token change to the
code would alter. Oracles are written out literally (per-sample loops, one backward per class,
per-step learning rates); models are tiny float64 MLPs on the CPU."""
import copy
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import Triples, hp_for
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import hparams
import methods.distill as bd
import methods.importance as bi
import methods.retrain as br
from cli import UserError
from hparams import by_net
from methods.jit import JIT_OVERRIDES, JitHP
from registry import UnlearnData

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
C = 3


def mlp(inputs=4, classes=C, seed=0, hidden=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double()


def samples(n, inputs=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Triples(torch.randn(n, inputs, generator=g, dtype=torch.float64), torch.arange(n) % C)


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


# ---- amnesiac's labels ---------------------------------------------------------------------------

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
    ds = bd.amnesiac_set(forget, Subset(base, [1, 2]), C, torch.Generator().manual_seed(3))
    shift = torch.randint(1, C, (4,), generator=torch.Generator().manual_seed(3))
    want = (torch.tensor([2, 2, 1, 0]) + shift) % C
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
    ds = bd.amnesiac_set(forget, Subset(base, [2]), C, torch.Generator().manual_seed(0))
    assert len(ds) == 3


# ---- loaders, teachers -----------------------------------------------------------------------------

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


# ---- softmax dimensions ------------------------------------------------------------------------------

@pytest.mark.filterwarnings("error:Implicit dimension choice")
def test_kl_objectives_and_fisher_name_the_class_dimension():
    """Every softmax names its class dimension: an implicit one gives the same numbers on [B, C]
    logits but prints torch's deprecation warning on every run."""
    g = torch.Generator().manual_seed(0)
    s, t, u = (torch.randn(4, C, generator=g) for _ in range(3))
    bd.distill_kl(s, t, 2.0)
    bd.blindspot_loss(s, torch.tensor([1, 0, 1, 0]), t, u, 2.0)
    bi.fisher_diagonal(mlp(), DataLoader(samples(2), batch_size=2), C, CPU)


# ---- SCRUB: gradients cleared to None ----------------------------------------------------------------

class Branchy(nn.Module):
    """Logits a(x), plus b(x) only for batches of more than one sample: the last batch of one
    sample leaves b out of the graph."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b = nn.Linear(4, C).double(), nn.Linear(4, C).double()

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


# ---- SSD importance ------------------------------------------------------------------------------------

class WithSpare(nn.Module):
    """An MLP with a parameter its forward never uses."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.spare = nn.Parameter(torch.ones(2, dtype=torch.float64))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("batch", [5, 2], ids=["one_batch", "three_batches"])
def test_importance_is_the_mean_over_batches_of_the_squared_batch_gradient(batch):
    """I = (1/#batches) Σ_batches (∂ CE_batch / ∂θ)², literally per batch; a parameter the
    objective never reaches gets 0 (no error); the objective gets the run's device."""
    model = WithSpare()
    loader = DataLoader(samples(5), batch_size=batch)
    seen = []

    def objective(m, b, device):
        seen.append(device)
        return bi._cross_entropy(m, b, device)

    got = bi.importance(model, loader, objective, torch.square, CPU, "test")
    spare, *params = model.parameters()  # a module's own parameters come before its children's
    assert spare is model.spare
    want = [torch.zeros_like(p) for p in params]
    batches = list(loader)
    for x, _, y in batches:
        logp = torch.log_softmax(model(x), dim=1)
        loss = -sum(logp[i, int(y[i])] for i in range(len(y))) / len(y)
        for w, g in zip(want, torch.autograd.grad(loss, params)):
            w += g.square() / len(batches)
    assert len(got) == 1 + len(params) and seen == [CPU] * len(batches)
    assert torch.equal(got[0], torch.zeros(2, dtype=torch.float64))
    for g, w in zip(got[1:], want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", ["ssd_tuning", "lfssd_tuning"])
def test_ssd_passes_its_device_to_both_importance_passes(monkeypatch, method):
    """Both importances (forget set, then full set) are computed on the run's device."""
    calls = []
    real = bi.importance

    def record(model, loader, objective, reduce, device, desc):
        calls.append((loader, device))
        return real(model, loader, objective, reduce, device, desc)

    monkeypatch.setattr(bi, "importance", record)
    dl = DataLoader(samples(4), batch_size=2)
    full = DataLoader(samples(6, seed=2), batch_size=3)
    data = UnlearnData(forget_train=dl, retain_train=dl, full_train=full, num_classes=C, forget_class=0,
                       setting="fullclass", dataset="Tiny", net="Tiny", build_fresh=mlp)
    device = torch.device("cpu")
    getattr(bi, method)(mlp(), data, hp_for(method, data), device)
    assert calls == [(dl, device), (full, device)]


# ---- Fisher ------------------------------------------------------------------------------------------

def literal_fisher(model, ds):
    """Per sample, per class y: p(y|x)·(∂ log p(y|x)/∂θ)², one backward per class; mean over samples."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(ds)):
        logp = torch.log_softmax(model(ds[i][0][None]), dim=1)[0]
        for y in range(C):
            grads = torch.autograd.grad(logp[y], params, retain_graph=True)
            for t, g in zip(total, grads):
                t += logp[y].exp().detach() * g.square()
    return [t / len(ds) for t in total]


@pytest.mark.parametrize("n, batch, odd_budget", [(1, 1, False), (5, 2, True)],
                         ids=["one_float64_sample", "budget_not_a_multiple"])
def test_fisher_diagonal_of_a_float64_model_matches_the_literal_loop(monkeypatch, n, batch, odd_budget):
    """A float64 model's Fisher equals the literal loop to float64 precision, averaged over the
    samples seen (a single sample included); with a memory budget that is no multiple of the
    parameter count (2 classes per call, the last block partial, one sample per chunk) the chunk
    stays a whole number of samples, which Tensor.split needs."""
    model = mlp().eval()
    ds = samples(n)
    if odd_budget:
        n_params = sum(p.numel() for p in model.parameters())
        monkeypatch.setitem(bi.FISHER_CHUNK_FLOATS, "cpu", 2 * n_params + 1)
    got = bi.fisher_diagonal(model, DataLoader(ds, batch_size=batch), C, CPU)
    want = literal_fisher(model, ds)
    for (name, _), w in zip(model.named_parameters(), want):
        assert got[name].dtype == torch.float64
        torch.testing.assert_close(got[name], w, rtol=1e-10, atol=1e-14)


def test_final_layer_names():
    """The final layer's parameter names: prefixed by its module path, bare when the model is
    itself that Linear; a model without one is refused with a message naming the class count."""
    assert bi.final_layer(mlp(), C) == {"2.weight", "2.bias"}
    assert bi.final_layer(nn.Linear(4, C), C) == {"weight", "bias"}
    with pytest.raises(UserError) as e:
        bi.final_layer(mlp(), 10)
    assert str(e.value) == "FisherForgetting: the model has no final nn.Linear with 10 outputs"
    with pytest.raises(UserError):
        bi.final_layer(nn.Sequential(nn.Flatten(), nn.Tanh()), C)


# ---- retrain --------------------------------------------------------------------------------------------

def retain_data(x, y, batch):
    dl = DataLoader(Triples(x, y), batch_size=batch, shuffle=False)
    return UnlearnData(forget_train=dl, retain_train=dl, full_train=dl, num_classes=C, forget_class=0,
                       setting="fullclass", dataset="Tiny", net="Tiny", build_fresh=mlp)


def test_warmup_schedule_scales_each_step_as_documented():
    """-retrain_schedule warmup (-recipe corrected), 2 batches per epoch, 1 warm-up epoch,
    milestone at epoch 1 with γ = 0.5: the step learning rates are lr·(1/2, 1, 1/2, 1/2), checked
    against torch SGD (momentum, weight decay) driven by hand with those rates."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.arange(8) % C
    data = retain_data(x, y, batch=4)
    hp = hp_for("retrain", data, recipe="corrected", retrain_epochs=2, retrain_milestones=(1,), retrain_gamma=0.5,
                retrain_lr=0.1)
    assert (hp.schedule, hp.warm_epochs) == ("warmup", 1)
    model = mlp(seed=3)
    expected = copy.deepcopy(model)
    opt = torch.optim.SGD(expected.parameters(), lr=0.1, momentum=hp.momentum, weight_decay=hp.weight_decay)
    for lr, (xb, yb) in zip([0.05, 0.1, 0.05, 0.05], [(x[:4], y[:4]), (x[4:], y[4:])] * 2):
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        F.cross_entropy(expected(xb), yb).backward()
        opt.step()
    br.train_on_retain(model, data, hp, CPU, "retrain")
    for p, q in zip(model.parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-14)


def test_retrain_epochs_get_the_device_and_a_numbered_label(monkeypatch):
    """Each epoch trains on the run's device; its label (progress bar and error message) is
    '<method> <epoch>/<epochs>'."""
    calls = []
    monkeypatch.setattr(br, "train_epoch", lambda model, loader, opt, device, sched, desc="train": calls.append((device, desc)))
    data = retain_data(torch.zeros(4, 4, dtype=torch.float64), torch.arange(4) % C, batch=2)
    device = torch.device("cpu")
    br.retrain(mlp(), data, hp_for("retrain", data, retrain_epochs=2), device)
    assert calls == [(device, "retrain 1/2"), (device, "retrain 2/2")]


def test_retrain_that_diverges_names_the_method_and_epoch():
    """A non-finite loss stops the run with '<method> <epoch>/<epochs>: loss became nan'."""
    x = torch.zeros(4, 4, dtype=torch.float64)
    x[0, 0] = float("nan")
    data = retain_data(x, torch.arange(4) % C, batch=2)
    with pytest.raises(FloatingPointError, match=r"^retrain 1/3: loss became nan$"):
        br.retrain(mlp(), data, hp_for("retrain", data, retrain_epochs=3), CPU)


# ---- JiT's table ---------------------------------------------------------------------------------------

def test_jit_table_rows_vgg16_then_one_per_net_then_vit_chunk():
    """A main's JIT table becomes: VGG16's row for every run, one row per other named net, after
    JiT's own table (ViT's chunk); the rows are what -h prints, and resolve picks the net's row,
    VGG16's for a net without one."""
    table = {"ViT": dict(sigma=2.0, eta=0.2, n_samples=6), "VGG16": dict(sigma=3.0, eta=0.3, n_samples=7)}
    assert by_net(table, fallback="VGG16").rows == (({}, table["VGG16"]), (dict(net="ViT"), table["ViT"]))
    rows = JIT_OVERRIDES + by_net(table, fallback="VGG16")
    assert rows.rows == (*JIT_OVERRIDES.rows, ({}, table["VGG16"]), (dict(net="ViT"), table["ViT"]))
    vgg = hparams.resolve(JitHP, rows, dict(net="VGG16"))
    assert (vgg.sigma, vgg.eta, vgg.n_samples) == (3.0, 0.3, 7)
    vit = hparams.resolve(JitHP, rows, dict(net="ViT"))
    assert (vit.sigma, vit.n_samples, vit.chunk) == (2.0, 6, 1024)
    other = hparams.resolve(JitHP, rows, dict(net="SmallCNN"))
    assert (other.sigma, other.eta, other.n_samples) == (3.0, 0.3, 7)
