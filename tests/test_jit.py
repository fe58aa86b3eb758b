"""JiT (Lipschitz.py): jit_unlearn against a literal, per-perturbation transcription of the
update, its switches, and each main's σ/η/N table."""
import copy

import pytest
import torch
from helpers import Triples
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

import hparams
import Lipschitz
from hparams import by_net
from methods.jit import JIT_OVERRIDES, JitHP

SIGMA = 0.5


ETA = 0.05


N = 5


BATCH = 8


def make_loader(n_items=3 * BATCH + 5, batch_size=BATCH):
    # CIFAR-shaped inputs (3x32x32): every batch's element count is a multiple of 16, so one
    # (N, B, C, H, W) noise draw equals N successive (B, C, H, W) draws, bit for bit on the CPU.
    # Three full batches of 8 and a last batch of 5.
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n_items, 3, 32, 32, generator=g)
    y = torch.randint(0, 5, (n_items,), generator=g)
    return DataLoader(Triples(x, y), batch_size=batch_size, shuffle=False)


def tiny_conv(dropout=False, batchnorm=False):
    torch.manual_seed(7)
    layers = [nn.Conv2d(3, 4, 3, stride=2, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(32, 5))
    return nn.Sequential(*layers)


def oracle_jit(model, loader, sigma, eta, n, zero_grad_every_batch=False):
    """The reference JiT step, written out literally: one forward per perturbation."""
    optimizer = torch.optim.SGD(model.parameters(), lr=eta)
    optimizer.zero_grad()  # once, before the loop: gradients accumulate across batches
    for x, _, _ in loader:
        if zero_grad_every_batch:  # NOT the reference; used to show accumulation matters
            optimizer.zero_grad()
        out = model(x)
        loss = torch.zeros(())
        for _ in range(n):
            x2 = x + torch.randn(x.size()) * sigma
            x2 = torch.clamp(x2, min=x.min(), max=x.max())
            with torch.no_grad():
                out2 = model(x2)
            num = torch.sqrt(((out - out2) ** 2).sum(dim=1))
            den = torch.sqrt(((x.reshape(len(x), -1) - x2.reshape(len(x2), -1)) ** 2).sum(dim=1))
            loss = loss + (num / den).sum()
        loss = loss / n
        loss.backward()
        optimizer.step()
    return model


def run_both(model, loader, chunk_size, seed=0):
    impl, ref = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(seed)
    Lipschitz.jit_unlearn(impl, loader, SIGMA, ETA, n_samples=N, chunk_size=chunk_size, progress=False)
    torch.manual_seed(seed)
    oracle_jit(ref, loader, SIGMA, ETA, N)
    return impl, ref


def assert_state_close(a, b):
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=1e-5, atol=1e-7)


def assert_state_differs(a, b):
    diffs = [(a.state_dict()[k].float() - b.state_dict()[k].float()).abs().max().item()
             for k in a.state_dict()]
    assert max(diffs) > 1e-4, "weights did not move: the comparison would be vacuous"


# (a) all perturbations in one forward; (b) chunk_size=16 with batch 8 -> 2 perturbations per
# forward, so N=5 splits into chunks of 2, 2, 1.
# The plain conv net has NO dropout in train mode on purpose: train-mode dropout masks come
# from the same default generator as the noise, and the batched implementation draws them in a
# different order than the reference's loop, so bit-parity cannot hold with active dropout.
@pytest.mark.parametrize("chunk_size", [4096, 16], ids=["one_chunk", "several_chunks"])
def test_matches_oracle_train_mode_no_dropout(chunk_size):
    model = tiny_conv().train()
    loader = make_loader()
    impl, ref = run_both(model, loader, chunk_size)
    assert_state_differs(impl, model)
    assert_state_close(impl, ref)


def test_small_chunk_really_splits_the_perturbations():
    """Precondition of the 'several_chunks' case: more than one no-grad forward per batch."""
    model = tiny_conv().train()
    loader = make_loader()
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    torch.manual_seed(0)
    Lipschitz.jit_unlearn(model, loader, SIGMA, ETA, n_samples=N, chunk_size=16, progress=False)
    # per batch: 1 clean forward + ceil(5 / 2) = 3 perturbed forwards
    assert len(calls) == 4 * len(loader)
    assert max(calls) == 2 * BATCH


def test_matches_oracle_eval_mode_with_dropout():
    # In eval mode dropout is inert, so it consumes no random numbers: parity holds.
    model = tiny_conv(dropout=True).eval()
    loader = make_loader()
    impl, ref = run_both(model, loader, chunk_size=4096)
    assert_state_differs(impl, model)
    assert_state_close(impl, ref)


@pytest.mark.parametrize("chunk_size", [4096, 16], ids=["one_chunk", "several_chunks"])
def test_matches_oracle_train_mode_batchnorm(chunk_size):
    # Train-mode batch norm: batch composition matters, the implementation must fall back to
    # one forward per perturbation; weights and BN running stats must match the oracle.
    model = tiny_conv(batchnorm=True).train()
    loader = make_loader()
    impl, ref = run_both(model, loader, chunk_size)
    assert_state_differs(impl, model)
    for k in ("1.running_mean", "1.running_var", "4.running_mean", "4.running_var"):
        torch.testing.assert_close(impl.state_dict()[k], ref.state_dict()[k], rtol=1e-5, atol=1e-7)
    assert_state_close(impl, ref)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mode_is_left_unchanged(mode):
    model = tiny_conv(dropout=True, batchnorm=True)
    model.train(mode == "train")
    Lipschitz.jit_unlearn(model, make_loader(10, 5), SIGMA, ETA, n_samples=2, progress=False)
    assert all(m.training == (mode == "train") for m in model.modules())


def test_gradients_accumulate_across_batches():
    model = tiny_conv().train()
    loader = make_loader()
    impl, ref = run_both(model, loader, chunk_size=4096)
    no_acc = copy.deepcopy(model)
    torch.manual_seed(0)
    oracle_jit(no_acc, loader, SIGMA, ETA, N, zero_grad_every_batch=True)
    assert_state_close(impl, ref)
    # zeroing the gradients per batch gives a clearly different result
    assert_state_differs(impl, no_acc)


def test_first_step_equals_single_batch_update_and_second_adds_it_again():
    """With two batches the total update is -eta * (2*g1 + g2): the first batch's gradient is
    applied twice. Check it against g1 and g2 measured from the oracle's own noise."""
    model = tiny_conv().train()
    loader = make_loader(2 * BATCH, BATCH)
    impl = copy.deepcopy(model)
    torch.manual_seed(3)
    Lipschitz.jit_unlearn(impl, loader, SIGMA, ETA, n_samples=N, progress=False)

    # g1: gradient of batch 1 at the initial weights; g2: gradient of batch 2 after one step.
    torch.manual_seed(3)
    step1 = copy.deepcopy(model)
    batches = list(loader)
    oracle_jit(step1, [batches[0]], SIGMA, ETA, N)
    g1 = {k: (model.state_dict()[k] - step1.state_dict()[k]) / ETA for k in model.state_dict()}
    step2 = copy.deepcopy(step1)
    oracle_jit(step2, [batches[1]], SIGMA, ETA, N)  # the RNG continues where batch 1 left it
    g2 = {k: (step1.state_dict()[k] - step2.state_dict()[k]) / ETA for k in model.state_dict()}
    expected = {k: model.state_dict()[k] - ETA * (2 * g1[k] + g2[k]) for k in model.state_dict()}
    torch.testing.assert_close(impl.state_dict(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [
    {"sigma": 0.0, "eta": 0.1, "n_samples": 2},
    {"sigma": -1.0, "eta": 0.1, "n_samples": 2},
    {"sigma": 0.5, "eta": 0.0, "n_samples": 2},
    {"sigma": 0.5, "eta": -0.1, "n_samples": 2},
    {"sigma": 0.5, "eta": 0.1, "n_samples": 0},
])
def test_rejects_invalid_hyperparameters(kwargs):
    model = tiny_conv()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError):
        Lipschitz.jit_unlearn(model, make_loader(5, 5), progress=False, **kwargs)
    torch.testing.assert_close(model.state_dict(), before, rtol=0, atol=0)


def oracle_variant(model, loader, sigma, eta, n, grad="accumulate", reduction="sum", mode="as_loaded"):
    """The literal loop again, with the one step each switch names written differently."""
    was_training = model.training
    if mode == "eval":
        model.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=eta)
    optimizer.zero_grad()
    for x, _, _ in loader:
        if grad == "per_batch":
            optimizer.zero_grad()
        out = model(x)
        ratios = []
        for _ in range(n):
            x2 = torch.clamp(x + torch.randn(x.size()) * sigma, min=x.min(), max=x.max())
            with torch.no_grad():
                out2 = model(x2)
            num = torch.sqrt(((out - out2) ** 2).sum(dim=1))
            den = torch.sqrt(((x.reshape(len(x), -1) - x2.reshape(len(x2), -1)) ** 2).sum(dim=1))
            ratios.append(num / den)
        loss = sum(r.sum() for r in ratios) / n
        if reduction == "mean":
            loss = loss / len(x)
        loss.backward()
        optimizer.step()
    model.train(was_training)
    return model


SWITCHES = [dict(grad="per_batch"), dict(reduction="mean"), dict(mode="eval"),
            dict(grad="per_batch", reduction="mean", mode="eval")]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: "+".join(f"{k}={v}" for k, v in s.items()))
def test_switch_matches_its_oracle_and_differs_from_parity(switch):
    # Dropout in the model makes mode=eval observable; under train-mode dropout no bit-parity
    # is possible, so the oracle comparison uses eval whenever dropout is active.
    model = tiny_conv(dropout=True).eval() if switch.get("mode") != "eval" else tiny_conv(dropout=True).train()
    loader = make_loader()
    impl, ref, parity = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(0)
    Lipschitz.jit_unlearn(impl, loader, SIGMA, ETA, n_samples=N, progress=False, **switch)
    torch.manual_seed(0)
    oracle_variant(ref, loader, SIGMA, ETA, N, **switch)
    assert_state_close(impl, ref)
    assert impl.training == model.training  # the mode is restored
    if switch.get("mode") != "eval":  # against parity on the same (eval-mode) model
        torch.manual_seed(0)
        Lipschitz.jit_unlearn(parity, loader, SIGMA, ETA, n_samples=N, progress=False)
        assert_state_differs(impl, parity)


def test_eval_switch_differs_from_train_mode_with_dropout():
    model = tiny_conv(dropout=True).train()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(0)
    Lipschitz.jit_unlearn(a, make_loader(), SIGMA, ETA, n_samples=N, progress=False, mode="eval")
    torch.manual_seed(0)
    Lipschitz.jit_unlearn(b, make_loader(), SIGMA, ETA, n_samples=N, progress=False)
    assert_state_differs(a, b)


def test_unknown_switch_value_is_rejected():
    with pytest.raises(ValueError):
        Lipschitz.jit_unlearn(tiny_conv(), make_loader(), SIGMA, ETA, n_samples=N, progress=False, grad="sometimes")


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


def run(model, loader, seed=0, **kwargs):
    model = copy.deepcopy(model)
    torch.manual_seed(seed)
    Lipschitz.jit_unlearn(model, loader, SIGMA, ETA, progress=False, **kwargs)
    return model


def test_default_is_25_perturbations():
    model, loader = tiny_conv(), make_loader(2, 2)
    torch.testing.assert_close(run(model, loader).state_dict(), run(model, loader, n_samples=25).state_dict(),
                               rtol=0, atol=0)


def test_one_perturbation_is_allowed_and_is_the_reference_step():
    model, loader = tiny_conv(), make_loader(6, 6)
    ref = copy.deepcopy(model)
    torch.manual_seed(0)
    oracle_jit(ref, loader, SIGMA, ETA, 1)
    torch.testing.assert_close(run(model, loader, n_samples=1).state_dict(), ref.state_dict(), rtol=1e-5, atol=1e-7)


def test_messages():
    with pytest.raises(ValueError, match=r"^sigma and eta must be > 0 and n_samples >= 1$"):
        Lipschitz.jit_unlearn(tiny_conv(), make_loader(5, 5), SIGMA, ETA, n_samples=0, progress=False)
    # a bad mode alone is enough, whatever the other two switches are
    with pytest.raises(ValueError, match=r"^grad in \('accumulate', 'per_batch'\), reduction in \('sum', 'mean'\), "
                                         r"mode in \('as_loaded', 'eval'\)$"):
        Lipschitz.jit_unlearn(tiny_conv(), make_loader(5, 5), SIGMA, ETA, progress=False, mode="train")


def test_loader_without_batch_size_and_cpu_noise():
    # A loader built from a batch sampler has batch_size None; its batches are the same.
    model, plain = tiny_conv(), make_loader(13, 5)
    sampled = DataLoader(plain.dataset, batch_sampler=BatchSampler(SequentialSampler(plain.dataset), 5, False))
    assert sampled.batch_size is None and isinstance(plain.dataset, Triples)
    want = run(model, plain, n_samples=3).state_dict()
    torch.testing.assert_close(run(model, sampled, n_samples=3).state_dict(), want, rtol=1e-5, atol=1e-7)
    # On the CPU the reference's CPU draw is the same draw.
    torch.testing.assert_close(run(model, plain, n_samples=3, cpu_noise=True).state_dict(), want, rtol=0, atol=0)
