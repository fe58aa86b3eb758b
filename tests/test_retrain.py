"""baseline, retrain, retrain_full and finetune (methods/retrain.py) and the training loop they
share (engine.py): re-initialisation, the warm-up schedule, devices and labels, divergence, and
an end-to-end run in every main."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import MAINS, SETTING, Triples, hp_for, run_inprocess
from torch import nn
from torch.utils.data import DataLoader

import methods
import methods.retrain as br
from methods import METHODS, UnlearnData
from models import SmallCNN


def _data(build_fresh):
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    dl = DataLoader(Triples(x, y), batch_size=8)
    return UnlearnData(forget_train=dl, retain_train=dl, full_train=dl, num_classes=4, forget_class=0,
                       setting="fullclass", dataset="Digits", net="SmallCNN", build_fresh=build_fresh)


@pytest.mark.parametrize("name, reset_everything", [("retrain_full", True), ("retrain", False)])
def test_retrain_reinitialises_before_training(monkeypatch, name, reset_everything):
    """retrain_full: every parameter tensor is the fresh build's before training starts;
    retrain (the reference's): only the top-level ``fc`` head is reset, the trunk is kept."""
    torch.manual_seed(0)
    trained = SmallCNN(4)
    original = {k: v.clone() for k, v in trained.state_dict().items()}
    torch.manual_seed(1)
    fresh = SmallCNN(4)
    seen = {}
    monkeypatch.setattr(methods.retrain, "train_on_retain",
                        lambda model, *a, **k: seen.update({k2: v.clone() for k2, v in model.state_dict().items()}))
    METHODS[name].fn(trained, _data(lambda: fresh), hp_for(name), torch.device("cpu"))
    for key, before in original.items():
        changed = not torch.equal(seen[key], before)
        if reset_everything:
            assert changed and torch.equal(seen[key], fresh.state_dict()[key]), key
        else:
            assert changed == key.startswith("fc."), key


@pytest.mark.parametrize("main", list(MAINS))
@pytest.mark.parametrize("method", ["finetune", "retrain_full", "lipschitz_forgetting"])
def test_basic_method_end_to_end_in_every_main(smallcnn_ckpt, smallcnn5_ckpt, tmp_path, main, method):
    results = tmp_path / "r.jsonl"
    cmd = [*MAINS[main](smallcnn_ckpt, smallcnn5_ckpt), "-net", "SmallCNN", "-method", method, "-retrain_epochs", "1",
           "-finetune_epochs", "1", "-n_samples", "3", "-results", str(results), "-retrain_dir", str(tmp_path), "-relearn_max_steps", "5"]
    proc = run_inprocess(cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (rec,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert (rec["method"], rec["setting"]) == (method, SETTING[main])


CPU = torch.device("cpu")


C = 3


def mlp(inputs=4, classes=C, seed=0, hidden=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double()


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
