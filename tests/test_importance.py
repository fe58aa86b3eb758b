"""SSD, LF-SSD and Fisher forgetting (methods/importance.py): each against a literal, slow
oracle on a tiny model (per-sample and per-batch loops), plus one end-to-end run per main that
offers the method."""
import copy
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import MAINS, MLP_CLASSES, SETTING, describe, double_mlp, double_samples, hp_for, run_inprocess
from torch.utils.data import DataLoader

import hparams
import methods.importance as bi
from cli import UserError
from methods import METHODS, UnlearnData

C = 5  # classes of the tiny model


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Dropout(0.5),  # importances must not depend on dropout draws (eval mode)
        nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, C),
    )


def triples(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return [(x[i], torch.tensor([]), y[i]) for i in range(n)]


def tiny_data(setting="fullclass", net="Tiny", forget_class=0, seed=0, relabel=None):
    """Forget = the double_samples of class 0 (random setting: the first 10). ``relabel(y)`` replaces
    the labels every loader yields (the images are unchanged)."""
    double_samples = triples(48, seed)
    if setting == "random":
        forget, retain = double_samples[:10], double_samples[10:]
    else:
        forget = [s for s in double_samples if s[2] == 0]
        retain = [s for s in double_samples if s[2] != 0]
    if relabel is not None:
        forget = [(x, f, relabel(y)) for x, f, y in forget]
        retain = [(x, f, relabel(y)) for x, f, y in retain]
    return UnlearnData(
        forget_train=DataLoader(forget, batch_size=4),
        retain_train=DataLoader(retain, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)),
        full_train=DataLoader(forget + retain, batch_size=8),
        num_classes=C, forget_class=None if setting == "random" else forget_class, setting=setting,
        dataset="Tiny", net=net, build_fresh=tiny_model)


def slow_importance(model, loader, loss_of, reduce):
    """Literal per-batch loop: zero the grads, backward the batch loss, add reduce(grad)."""
    model.eval()
    total = [torch.zeros_like(p) for p in model.parameters()]
    n = 0
    for x, _, y in loader:
        model.zero_grad()
        loss_of(model(x), y).backward()
        for t, p in zip(total, model.parameters()):
            t += reduce(p.grad)
        n += 1
    return [t / n for t in total]


CE = (lambda out, y: F.cross_entropy(out, y), torch.square)


LF = (lambda out, y: out.pow(2).sum(dim=1).mean(), torch.abs)


@pytest.mark.parametrize("method,oracle", [("ssd_tuning", CE), ("lfssd_tuning", LF)], ids=["ssd", "lfssd"])
@pytest.mark.parametrize("flags,alpha,lam", [({}, 1.0, 1.0), ({"ssd_alpha": 0.3, "ssd_lambda": 0.5}, 0.3, 0.5)],
                         ids=["fullclass_table", "flags"])
def test_ssd_dampens_exactly_the_selected_weights(method, oracle, flags, alpha, lam):
    model, data = tiny_model(), tiny_data()
    old = copy.deepcopy(model)
    i_f = slow_importance(copy.deepcopy(model), data.forget_train, *oracle)
    i_d = slow_importance(copy.deepcopy(model), data.full_train, *oracle)

    METHODS[method].fn(model, data, hp_for(method, data, **flags), "cpu")

    n_selected = n_damped = n_clamped = 0
    for p_old, p_new, f, d in zip(old.parameters(), model.parameters(), i_f, i_d):
        selected = f > alpha * d
        factor = torch.where(selected, (lam * d / f).clamp(max=1.0), torch.ones_like(f))
        assert torch.equal(p_new != p_old, selected & (factor < 1) & (p_old != 0))
        torch.testing.assert_close(p_new, p_old * factor, rtol=1e-5, atol=0)
        assert (p_new.abs() <= p_old.abs()).all()
        n_selected += int(selected.sum())
        n_damped += int((selected & (factor < 1)).sum())
        n_clamped += int((selected & (factor == 1)).sum())
    total = sum(p.numel() for p in old.parameters())
    assert 0 < n_damped and n_selected < total  # the case is not trivial
    if lam > alpha:
        assert n_clamped > 0  # some selected weights hit the bound min(·, 1) and stay


class Unreadable:
    """A label that fails the test on any use beyond being passed along."""

    def __getattribute__(self, name):
        raise AssertionError(f"LF-SSD read a label (.{name})")

    def __index__(self):
        raise AssertionError("LF-SSD read a label")

    __int__ = __float__ = __len__ = __iter__ = __array__ = __index__


def test_lfssd_never_touches_labels():
    data = tiny_data()
    unlabelled = [(x, f, Unreadable()) for x, f, _ in data.forget_train], \
                 [(x, f, Unreadable()) for x, f, _ in data.full_train]
    blind = tiny_model()
    METHODS["lfssd_tuning"].fn(blind, replace(data, forget_train=unlabelled[0], full_train=unlabelled[1]),
                               hp_for("lfssd_tuning", data), "cpu")
    model = tiny_model()
    METHODS["lfssd_tuning"].fn(model, data, hp_for("lfssd_tuning", data), "cpu")
    for p, q in zip(blind.parameters(), model.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), tiny_model().parameters()))


def test_lfssd_result_does_not_depend_on_labels():
    """Same images, labels replaced by garbage (out of range: cross-entropy would fail)."""
    results = []
    for relabel in (None, lambda y: torch.tensor(10 ** 6), lambda y: torch.tensor(-3)):
        model = tiny_model()
        METHODS["lfssd_tuning"].fn(model, tiny_data(relabel=relabel), hp_for("lfssd_tuning", tiny_data(relabel=relabel)), "cpu")
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@pytest.mark.parametrize("setting,net,expected", [
    ("fullclass", "VGG16", (1, 1)), ("fullclass", "ViT", (1, 1)), ("fullclass", "SmallCNN", (1, 1)),
    ("subclass", "VGG16", (5, 6)), ("subclass", "ViT", (10, 1)), ("subclass", "ResNet18", (5, 6)),
    ("random", "VGG16", (10, 4)), ("random", "ViT", (3.5, 1)), ("random", "SmallCNN", (10, 4)),
])
def test_ssd_defaults_follow_the_setting_table(setting, net, expected):
    data = SimpleNamespace(setting=setting, net=net)

    def pair(**flags):
        h = hp_for("ssd_tuning", data, **flags)
        return h.alpha, h.lam

    assert pair() == expected
    assert pair(ssd_alpha=2.5) == (2.5, expected[1])
    assert pair(ssd_lambda=0.5) == (expected[0], 0.5)


@pytest.mark.parametrize("flag", ["ssd_alpha", "ssd_lambda"])
def test_negative_ssd_flag_is_a_user_error(flag):
    with pytest.raises(hparams.InvalidValue, match=f"-{flag}"):
        hp_for("ssd_tuning", SimpleNamespace(setting="random", net="VGG16"), **{flag: -1.0})


def slow_fisher(model, double_samples):
    """Literal: for each sample and each class y, p(y|x)·(∂ log p(y|x)/∂θ)², mean over double_samples."""
    model.eval()
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for x, _, _ in double_samples:
        logp = F.log_softmax(model(x.unsqueeze(0)), dim=-1)[0]
        for y in range(C):
            grads = torch.autograd.grad(logp[y], params, retain_graph=True)
            for t, g in zip(total, grads):
                t += logp[y].exp().detach() * g.square()
    return [t / len(double_samples) for t in total]


@pytest.mark.parametrize("budget", [None, 2], ids=["one_call", "blocks_of_2_classes"])
def test_fisher_diagonal_matches_per_sample_per_class_loop(budget, monkeypatch):
    model = tiny_model().eval()
    double_samples = triples(13, seed=1)
    if budget is not None:  # force 2 classes and 1 sample per vmapped call
        n_params = sum(p.numel() for p in model.parameters())
        monkeypatch.setitem(bi.FISHER_CHUNK_FLOATS, "cpu", budget * n_params)
    fast = bi.fisher_diagonal(model, DataLoader(double_samples, batch_size=5), C, "cpu")
    slow = slow_fisher(model, double_samples)
    for (name, _), s in zip(model.named_parameters(), slow):
        torch.testing.assert_close(fast[name], s, rtol=1e-4, atol=1e-9)


def literal_mean_var(name, p, fisher, setting, forget_class, alpha):
    """The reference's get_mean_var written out element by element for the tiny model."""
    final = name.startswith("7.")  # nn.Sequential index of the last Linear
    var = torch.empty_like(p)
    flat_f = fisher.reshape(p.shape[0], -1) if p.ndim > 1 else fisher.reshape(-1, 1)
    cap = 1e2 if final else 1e3
    elementwise = alpha * torch.tensor([[min(1 / (float(v) + 1e-8), 1e3, cap) for v in row] for row in flat_f])
    if p.ndim > 1:  # average over dim 1 for every (row, trailing index)
        e = elementwise.reshape(p.shape)
        for i in range(p.shape[0]):
            for j in range(p.shape[1]):
                var[i, j] = e[i].mean(dim=0)
    else:
        var = elementwise.reshape(p.shape).clone()
    mu = p.detach().clone()
    if final and setting == "fullclass":
        mu[forget_class] = 0
        var[forget_class] = 1e-4
    if (final and setting == "fullclass") or p.ndim == 1:
        var = var * 10
    return mu, var


@pytest.fixture
def tiny_fisher():
    model = tiny_model().eval()
    double_samples = [s for s in triples(48, 0) if s[2] != 0]
    return {name: f for (name, _), f in zip(model.named_parameters(), slow_fisher(model, double_samples))}


@pytest.mark.parametrize("setting", ["fullclass", "subclass", "random"])
def test_fisher_noise_follows_the_variance_formula(setting, tiny_fisher, monkeypatch):
    """With the Fisher fixed, re-seeding and redrawing ε (per parameter, in parameters()
    order) reproduces the update w_new = mu + sqrt(var)·ε exactly."""
    monkeypatch.setattr(bi, "fisher_diagonal", lambda *a, **k: tiny_fisher)
    model = tiny_model()
    old = copy.deepcopy(model)
    torch.manual_seed(123)
    METHODS["FisherForgetting"].fn(model, tiny_data(setting=setting), hp_for("FisherForgetting", tiny_data(setting=setting), fisher_alpha=3e-4), "cpu")
    torch.manual_seed(123)
    for (name, p_old), p_new in zip(old.named_parameters(), model.parameters()):
        mu, var = literal_mean_var(name, p_old, tiny_fisher[name], setting, 0, 3e-4)
        torch.testing.assert_close(p_new, mu + var.sqrt() * torch.randn_like(p_old), rtol=1e-5, atol=1e-7)


def test_fisher_noise_variance_over_many_seeds(tiny_fisher, monkeypatch):
    """(w_new − mu)² averaged over seeds approaches the formula's variance, per parameter."""
    monkeypatch.setattr(bi, "fisher_diagonal", lambda *a, **k: tiny_fisher)
    data, base = tiny_data(), tiny_model()
    expected = {n: literal_mean_var(n, p, tiny_fisher[n], "fullclass", 0, 3e-4) for n, p in base.named_parameters()}
    sq = {n: torch.zeros_like(p) for n, p in base.named_parameters()}
    seeds = 300
    for s in range(seeds):
        model = copy.deepcopy(base)
        torch.manual_seed(s)
        METHODS["FisherForgetting"].fn(model, data, hp_for("FisherForgetting", data, fisher_alpha=3e-4), "cpu")
        for n, p in model.named_parameters():
            sq[n] += (p.detach() - expected[n][0]).square()
    for n, (_, var) in expected.items():
        assert (sq[n] / seeds / var).mean().item() == pytest.approx(1.0, abs=0.1), n


@pytest.mark.parametrize("setting,zeroed", [("fullclass", True), ("subclass", False), ("random", False)])
def test_forget_class_row_is_zeroed_only_in_full_class(setting, zeroed):
    model = tiny_model()
    with torch.no_grad():
        model[7].weight[0] = 5.0
        model[7].bias[0] = 5.0
    torch.manual_seed(0)
    METHODS["FisherForgetting"].fn(model, tiny_data(setting=setting), hp_for("FisherForgetting", tiny_data(setting=setting)), "cpu")
    row = torch.cat([model[7].weight[0], model[7].bias[:1]]).detach()
    if zeroed:  # mean 0, std sqrt(1e-4 · 10)
        assert row.abs().max() < 0.2
    else:  # the old weights plus noise of std <= sqrt(1e-6 · 1e2 · 10)
        assert (row - 5.0).abs().max() < 0.2


def test_fisher_alpha_must_be_non_negative():
    with pytest.raises(hparams.InvalidValue, match="-fisher_alpha must be >= 0"):
        hp_for("FisherForgetting", tiny_data(), fisher_alpha=-1.0)


def test_fisher_budget_uses_a_seeded_subset_of_retain(monkeypatch):
    seen = []

    def record(model, loader, num_classes, device):
        seen.append(torch.cat([x for x, _, _ in loader]))
        return {n: torch.ones_like(p) for n, p in model.named_parameters()}

    monkeypatch.setattr(bi, "fisher_diagonal", record)
    for seed in (0, 0, 1):
        data = replace(tiny_data(), seed=seed)
        METHODS["FisherForgetting"].fn(tiny_model(), data, hp_for("FisherForgetting", data, fisher_samples=7), "cpu")
    assert [len(s) for s in seen] == [7, 7, 7]
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])


CASES = [(m, main) for m in ("ssd_tuning", "lfssd_tuning", "FisherForgetting") for main in MAINS]


@pytest.fixture(scope="module")
def e2e_runs(smallcnn_ckpt, smallcnn5_ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("importance")
    out = {}
    for method, main in CASES:
        results = d / f"{method}-{main}.jsonl"
        cmd = [*MAINS[main](smallcnn_ckpt, smallcnn5_ckpt), "-net", "SmallCNN", "-method", method,
               "-seed", "0", "-results", str(results)]
        out[method, main] = (run_inprocess(cmd), results)
    return out


@pytest.mark.parametrize("method,main", CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_method_runs_end_to_end_and_writes_a_record(e2e_runs, method, main):
    proc, results = e2e_runs[method, main]
    assert proc.returncode == 0, describe(proc)
    lines = results.read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert (rec["method"], rec["setting"]) == (method, SETTING[main])
    assert 0 <= rec["TestAcc"] <= 100 and 0 <= rec["MIA"] <= 1 and rec["MethodTime"] > 0
    if method == "FisherForgetting":
        assert rec["hparams"]["alpha"] == bi.FisherHP.alpha
    else:  # the resolved α, λ of the setting's table (SmallCNN: the default row) are recorded
        want = hp_for(method, SimpleNamespace(setting=SETTING[main], net="SmallCNN"))
        assert (rec["hparams"]["alpha"], rec["hparams"]["lam"]) == (want.alpha, want.lam)


CPU = torch.device("cpu")


class WithSpare(nn.Module):
    """An MLP with a parameter its forward never uses."""

    def __init__(self):
        super().__init__()
        self.net = double_mlp()
        self.spare = nn.Parameter(torch.ones(2, dtype=torch.float64))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("batch", [5, 2], ids=["one_batch", "three_batches"])
def test_importance_is_the_mean_over_batches_of_the_squared_batch_gradient(batch):
    """I = (1/#batches) Σ_batches (∂ CE_batch / ∂θ)², literally per batch; a parameter the
    objective never reaches gets 0 (no error); the objective gets the run's device."""
    model = WithSpare()
    loader = DataLoader(double_samples(5), batch_size=batch)
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
    dl = DataLoader(double_samples(4), batch_size=2)
    full = DataLoader(double_samples(6, seed=2), batch_size=3)
    data = UnlearnData(forget_train=dl, retain_train=dl, full_train=full, num_classes=MLP_CLASSES, forget_class=0,
                       setting="fullclass", dataset="Tiny", net="Tiny", build_fresh=double_mlp)
    device = torch.device("cpu")
    getattr(bi, method)(double_mlp(), data, hp_for(method, data), device)
    assert calls == [(dl, device), (full, device)]


def literal_fisher(model, ds):
    """Per sample, per class y: p(y|x)·(∂ log p(y|x)/∂θ)², one backward per class; mean over double_samples."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(ds)):
        logp = torch.log_softmax(model(ds[i][0][None]), dim=1)[0]
        for y in range(MLP_CLASSES):
            grads = torch.autograd.grad(logp[y], params, retain_graph=True)
            for t, g in zip(total, grads):
                t += logp[y].exp().detach() * g.square()
    return [t / len(ds) for t in total]


@pytest.mark.parametrize("n, batch, odd_budget", [(1, 1, False), (5, 2, True)],
                         ids=["one_float64_sample", "budget_not_a_multiple"])
def test_fisher_diagonal_of_a_float64_model_matches_the_literal_loop(monkeypatch, n, batch, odd_budget):
    """A float64 model's Fisher equals the literal loop to float64 precision, averaged over the
    double_samples seen (a single sample included); with a memory budget that is no multiple of the
    parameter count (2 classes per call, the last block partial, one sample per chunk) the chunk
    stays a whole number of double_samples, which Tensor.split needs."""
    model = double_mlp().eval()
    ds = double_samples(n)
    if odd_budget:
        n_params = sum(p.numel() for p in model.parameters())
        monkeypatch.setitem(bi.FISHER_CHUNK_FLOATS, "cpu", 2 * n_params + 1)
    got = bi.fisher_diagonal(model, DataLoader(ds, batch_size=batch), MLP_CLASSES, CPU)
    want = literal_fisher(model, ds)
    for (name, _), w in zip(model.named_parameters(), want):
        assert got[name].dtype == torch.float64
        torch.testing.assert_close(got[name], w, rtol=1e-10, atol=1e-14)


def test_final_layer_names():
    """The final layer's parameter names: prefixed by its module path, bare when the model is
    itself that Linear; a model without one is refused with a message naming the class count."""
    assert bi.final_layer(double_mlp(), MLP_CLASSES) == {"2.weight", "2.bias"}
    assert bi.final_layer(nn.Linear(4, MLP_CLASSES), MLP_CLASSES) == {"weight", "bias"}
    with pytest.raises(UserError) as e:
        bi.final_layer(double_mlp(), 10)
    assert str(e.value) == "FisherForgetting: the model has no final nn.Linear with 10 outputs"
    with pytest.raises(UserError):
        bi.final_layer(nn.Sequential(nn.Flatten(), nn.Tanh()), MLP_CLASSES)
