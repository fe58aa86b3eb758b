"""The reference recipe computes what the authors' code computed: each behaviour of that code
(its defects included) against a literal re-implementation of it, and -recipe corrected against
the papers' descriptions."""
import bisect
import copy
import dataclasses
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from helpers import hp_for, run_target, write_cifar
from torch.utils.data import DataLoader, TensorDataset

import datasets
import evaluation
import experiment
import flags
import forget_full_class_main as full_main
import forget_random_main as random_main
import forget_sub_class_main as sub_main
import hparams
import images
import metrics
import models
import pretrain_model
from engine import reference_schedule
from methods import METHODS
from methods import gkt as gk
from methods.distill import incompetent_teacher, scrub
from methods.noise import UnsirHP, retain_test_batch
from registry import UnlearnData

REPO = Path(__file__).resolve().parent.parent


CPU = torch.device("cpu")


def _args(main, argv):
    return flags.parser_for(main.TASK).parse_args(argv)


def _ctx(setting, net="VGG16", dataset="Cifar100"):
    return SimpleNamespace(net=net, dataset=dataset, setting=setting)


class _Triples(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], torch.tensor([]), int(self.y[i])


def _scrub_data(setting):
    g = torch.Generator().manual_seed(0)
    x, y = 4 * torch.randn(40, 3, 4, 4, generator=g), torch.arange(40) % 4
    forget, retain = _Triples(x[y == 0], y[y == 0]), _Triples(x[y != 0], y[y != 0])
    return UnlearnData(forget_train=DataLoader(forget, batch_size=8), retain_train=DataLoader(retain, batch_size=8),
                       full_train=None, num_classes=4, forget_class=0, setting=setting, dataset="Cifar100",
                       net="VGG16", build_fresh=None)


def _literal_scrub(model, data, alpha, gamma, clip):
    """The reference's scrub/train_distill, literally: model_s is the model, model_t a copy, one
    SGD over model_s; per epoch 1..3, max-steps on the forget loader if epoch <= 2, then
    min-steps; DistillKL(T=4) = kl_div(sum)·T²/B; clip_grad_norm_(model_s, clip) if clipping."""
    model_s, model_t = model, copy.deepcopy(model)
    opt = torch.optim.SGD(model_s.parameters(), lr=5e-4, momentum=0.9, weight_decay=5e-4)

    def div(s, t):
        return F.kl_div(F.log_softmax(s / 4, dim=1), F.softmax(t / 4, dim=1), reduction="sum") * 16 / s.shape[0]

    for epoch in range(1, 4):
        for split, loader in ([("maximize", data.forget_train)] if epoch <= 2 else []) + [("minimize", data.retain_train)]:
            model_s.train()
            model_t.eval()
            for x, _, target in loader:
                logit_s = model_s(x)
                with torch.no_grad():
                    logit_t = model_t(x)
                if split == "minimize":
                    loss = gamma * F.cross_entropy(logit_s, target) + alpha * div(logit_s, logit_t)
                else:
                    loss = -div(logit_s, logit_t)
                opt.zero_grad()
                loss.backward()
                if clip:
                    nn.utils.clip_grad_norm_(model_s.parameters(), clip)
                opt.step()
    return model_s


@pytest.mark.parametrize("setting, recipe, alpha, gamma, clip", [
    ("fullclass", "reference", 0.001, 0.99, 1.0),
    ("subclass", "reference", 1.0, 5.0, None),
    ("random", "reference", 1.0, 5.0, None),
    ("fullclass", "corrected", 1.0, 5.0, None),
])
def test_scrub_clips_the_gradient_norm_to_1_in_the_reference_full_class_setting_only(setting, recipe, alpha, gamma,
                                                                                    clip):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 4))
    data = _scrub_data(setting)
    hp = hp_for("scrub", _ctx(setting), recipe=recipe)
    assert hp.clip == clip
    expect = _literal_scrub(copy.deepcopy(net), data, alpha, gamma, clip)
    got = scrub(copy.deepcopy(net), data, hp, CPU)
    for a, b in zip(got.parameters(), expect.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if clip:  # the clip binds here: unclipped, the student ends elsewhere
        free = _literal_scrub(copy.deepcopy(net), data, alpha, gamma, None)
        assert any(not torch.allclose(a, b, atol=1e-5) for a, b in zip(got.parameters(), free.parameters()))


class _DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 8 * 8, 5))

    def forward(self, x):
        return self.head(F.relu(self.conv(x)))


def _literal_gkt_pseudo_batch(z, teacher, student, generator, cfg, forget):
    """The reference's gkt loop for one pseudo batch, literally: the teacher never put in eval
    mode; at every iteration G(z), a gating forward of the teacher, then (generator steps) the
    student and the teacher, or (student steps) the teacher without gradient and the student."""
    feats = {}

    def tap(model, name):
        model.conv.register_forward_hook(lambda m, i, o: feats.__setitem__(name, o))

    tap(teacher, "t")
    tap(student, "s")
    g_opt = torch.optim.SGD(generator.parameters(), lr=0.01, momentum=0.9)
    s_opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    s_cycle = torch.optim.lr_scheduler.OneCycleLR(s_opt, max_lr=0.1, epochs=1, steps_per_epoch=cfg["n_student"])
    student.train()
    generator.train()
    for idx in range(cfg["n_gen"] + cfg["n_student"]):
        x = generator(z)
        preds = teacher(x)
        x = x[F.softmax(preds.detach(), dim=1)[:, forget] <= cfg["threshold"]]
        if idx < cfg["n_gen"]:
            s_logits = student(x)
            t_logits = teacher(x)
            loss = -gk.kl_div(s_logits, t_logits)
            g_opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(generator.parameters(), 5)
            g_opt.step()
        else:
            with torch.no_grad():
                t_logits = teacher(x)
                t_feat = feats["t"]
            s_logits = student(x)
            loss = gk.kl_div(s_logits, t_logits) + cfg["beta"] * gk.attention_loss([feats["s"]], [t_feat])
            s_opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), 5)
            s_opt.step()
            s_cycle.step()
    return student


def test_gkt_reference_runs_a_train_mode_teacher_redrawn_at_every_step_as_the_reference():
    hp = hp_for("gkt", _ctx("fullclass"))
    assert hp.teacher_mode == "train"
    assert hp_for("gkt", _ctx("fullclass"), recipe="corrected").teacher_mode == "eval"
    cfg = dataclasses.asdict(hp) | dict(batch=16, n_gen=2, n_student=3, pseudo_batches=1, threshold=0.9)
    torch.manual_seed(0)
    teacher, student = _DropoutNet(), _DropoutNet()
    generator = gk.Generator((3, 8, 8), cfg["z_dim"], 4)
    states = [copy.deepcopy(m.state_dict()) for m in (teacher, student, generator)]

    torch.manual_seed(1)
    got = copy.deepcopy(gk.distill(teacher, student, generator, 2, cfg, names=["conv"], progress=False))

    for m, s in zip((teacher, student, generator), states):
        m.load_state_dict(s)
    teacher.train()
    torch.manual_seed(1)
    z = torch.randn(cfg["batch"], cfg["z_dim"])
    expect = _literal_gkt_pseudo_batch(z, teacher, copy.deepcopy(student), generator, cfg, 2)
    for a, b in zip(got.parameters(), expect.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method, setting, batch", [("UNSIR", "fullclass", 32), ("UNSIR", "subclass", 32),
                                                     ("emmn", "fullclass", 4)])
def test_unsir_and_emmn_score_the_retained_test_images_in_their_noise_batch(method, setting, batch):
    assert retain_test_batch(hp_for(method, _ctx(setting))) == batch
    assert retain_test_batch(hp_for(method, _ctx(setting), recipe="corrected")) is None
    assert retain_test_batch(hp_for("scrub", _ctx(setting))) is None


def test_evaluate_split_batches_each_named_accuracy_as_asked():
    """RetainTestAcc in batches of 3 is the literal mean of the per-batch accuracies of 3."""
    y = torch.tensor([0, 1, 1, 0, 1, 1, 1])
    logits = F.one_hot(torch.tensor([0, 1, 0, 0, 0, 1, 1]), 2).float()
    model = nn.Identity()
    test = TensorDataset(logits, torch.zeros(7), y)
    split = {"retain_valid": ("test", list(range(7))), "forget_valid": ("test", [0, 1]),
             "retain_train": ("test", [2, 3, 4]), "forget_train": ("test", [5, 6])}
    correct = (logits.argmax(1) == y).float()
    literal = float(np.mean([correct[i:i + 3].mean() * 100 for i in range(0, 7, 3)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the membership attack's fit on seven points
        out, _ = evaluation.evaluate_split(model, test, test, split, 7, 0, CPU, batches={"RetainTestAcc": 3})
    assert out["RetainTestAcc"] == pytest.approx(literal)
    assert out["RetainTestAcc"] != pytest.approx(metrics.batch_mean_accuracy(correct.numpy(), 7))
    assert out["TestAcc"] == pytest.approx(metrics.batch_mean_accuracy(correct.numpy(), 7))


class _Stop(Exception):
    pass


def _eval_batches(monkeypatch, setting, method_hp, forget_batch=128):
    """The ``batches`` execute() hands to evaluate_split for a run of a method with ``method_hp``."""
    seen = {}

    def fake_evaluate_split(*a, batches=None, **k):
        seen.update(batches or {})
        raise _Stop

    monkeypatch.setattr(experiment, "evaluate_split", fake_evaluate_split)
    monkeypatch.setitem(experiment.METHODS, "fake", SimpleNamespace(fn=lambda m, d, h, dev: m, zero_shot=False,
                                                                         hparams=None,
                                                                         eval_batches=METHODS["UNSIR"].eval_batches))
    loader = DataLoader([0], batch_size=forget_batch)
    data = UnlearnData(forget_train=loader, retain_train=loader, full_train=loader, num_classes=1, forget_class=None,
                       setting=setting, dataset="Digits", net="SmallCNN", build_fresh=lambda: None)
    args = SimpleNamespace(method="fake", relearn_max_steps=0, seed=0, b=64, amp=False, dataset="Digits", net="SmallCNN")
    exp = SimpleNamespace(data=data, args=args, forget=None, pipe=datasets.DataHP(),
                          model=nn.Linear(1, 1), device=CPU, workers=0, subset={"forget_valid": None}, setting=setting,
                          train=None, test=None, split=None)
    with pytest.raises(_Stop):
        experiment.execute(exp, args, method_hp)
    return seen


def test_a_run_scores_with_the_reference_batches(monkeypatch):
    assert _eval_batches(monkeypatch, "fullclass", hp_for("UNSIR", _ctx("fullclass"))) == {"RetainTestAcc": 32}
    assert _eval_batches(monkeypatch, "fullclass", hp_for("UNSIR", _ctx("fullclass"), recipe="corrected")) == {}
    assert _eval_batches(monkeypatch, "fullclass", UnsirHP(noise_batch=5)) == {"RetainTestAcc": 5}
    # random: Df over the forget loader itself (the reference's forget_valid_dl is its forget_train_dl)
    assert _eval_batches(monkeypatch, "random", None, forget_batch=128) == {"Df": 128}


def test_sub_class_seed_defaults_to_42_and_the_other_mains_to_0():
    base = ["-net", "VGG16", "-method", "baseline"]
    assert _args(sub_main, base + ["-dataset", "Cifar20", "-superclasses", "20", "-subclasses", "100",
                                   "-forget_class", "rocket"]).seed == 42
    assert _args(full_main, base + ["-dataset", "Cifar100", "-classes", "100", "-forget_class", "rocket"]).seed == 0
    assert _args(random_main, base + ["-dataset", "Cifar10", "-classes", "10", "-forget_perc", "0.1"]).seed == 0


@pytest.mark.parametrize("method", ["retrain", "retrain_full"])
def test_epochs_is_accepted_and_unused_and_the_retrains_take_retrain_epochs(method, capsys, tmp_path):
    base = ["-net", "VGG16", "-dataset", "Cifar100", "-classes", "100", "-forget_class", "rocket", "-method", method]
    plain = flags.resolve_method(_args(full_main, base), full_main.TASK)
    given = flags.resolve_method(_args(full_main, base + ["-epochs", "3"]), full_main.TASK)
    assert plain.epochs == given.epochs == 200
    own = flags.resolve_method(_args(full_main, base + ["-retrain_epochs", "3"]), full_main.TASK)
    assert own.epochs == 3
    with pytest.raises(SystemExit):
        experiment.main(full_main.TASK, base + ["-epochs", "3", "-weight_path", str(tmp_path / "none.pth"),
                                                "-results", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert "-epochs is accepted for parity with the reference and unused" in err and "weight file not found" in err


def test_random_setting_loaders_take_batch_128_whatever_b_is(tmp_path):
    write_cifar(tmp_path)
    weights = tmp_path / "w.pth"
    torch.save(models.build_model("SmallCNN", 10).state_dict(), weights)
    argv = ["-net", "SmallCNN", "-dataset", "Cifar10", "-classes", "10", "-forget_perc", "0.2", "-method",
            "baseline", "-b", "16", "-weight_path", str(weights), "-data_root", str(tmp_path)]
    for recipe, loaders in (("reference", 128), ("corrected", 16)):
        args = _args(random_main, argv + ["-recipe", recipe])
        exp = experiment.prepare(args, "random", *random_main.TASK.split(args))
        assert exp.data.forget_train.batch_size == exp.data.retain_train.batch_size == loaders
        assert exp.data.full_train.batch_size == 16  # the importance batches stay -b, as the reference's
    args = _args(full_main, ["-net", "SmallCNN", "-dataset", "Cifar10", "-classes", "10", "-forget_class", "3",
                             "-method", "baseline", "-b", "16", "-weight_path", str(weights),
                             "-data_root", str(tmp_path)])
    assert experiment.prepare(args, "fullclass", *full_main.TASK.split(args)).data.forget_train.batch_size == 16


class _LiteralWarmUpLR(torch.optim.lr_scheduler.LRScheduler):
    """The reference's WarmUpLR: lr = base · last_epoch / (total_iters + 1e-8)."""

    def __init__(self, optimizer, total_iters):
        self.total_iters = total_iters
        super().__init__(optimizer)

    def get_lr(self):
        return [b * self.last_epoch / (self.total_iters + 1e-8) for b in self.base_lrs]


def _reference_pretrain_lrs(epochs, T, lr, warm):
    """The rate of every batch of the reference's pretrain_model.py, literally: SGD(lr=-lr),
    MultiStepLR built and never stepped, OneCycleLR(max_lr=0.1), WarmUpLR(T·warm); per batch
    the step, then onecycle.step(), then warmup.step() while epoch <= warm (epochs from 1)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9, weight_decay=5e-4)
    torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60, 120, 160], gamma=0.2)
    onecycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, steps_per_epoch=T, epochs=epochs,
                                                   anneal_strategy="cos")
    warmup = _LiteralWarmUpLR(opt, T * warm)
    lrs = []
    for epoch in range(1, epochs + 1):
        for _ in range(T):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            onecycle.step()
            if epoch <= warm:
                warmup.step()
    return lrs


def _pretrain_lrs(recipe, epochs, T, lr, warm):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9, weight_decay=5e-4)
    _, sched = pretrain_model.lr_schedule(opt, SimpleNamespace(recipe=recipe, lr=lr, warm=warm), epochs, T)
    lrs = []
    for _ in range(epochs * T):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("epochs, T, lr, warm", [(8, 5, 0.1, 1), (8, 5, 0.05, 1), (6, 3, 0.3, 2), (4, 4, 0.1, 0)])
def test_reference_pretraining_rates_equal_the_literal_reference_schedulers(epochs, T, lr, warm):
    expect = _reference_pretrain_lrs(epochs, T, lr, warm)
    np.testing.assert_allclose(_pretrain_lrs("reference", epochs, T, lr, warm), expect, rtol=1e-12, atol=0)
    assert expect[0] == 0.0
    if warm:
        assert expect[T * warm] == pytest.approx(0.1 / 25)  # the warm-up ends at one-cycle's initial rate


def test_corrected_pretraining_peaks_at_lr():
    lrs = _pretrain_lrs("corrected", 8, 5, 0.05, 1)
    assert max(lrs) == pytest.approx(0.05)


def test_reference_bad_teacher_is_the_second_model_initialised_after_seeding():
    data = SimpleNamespace(net="SmallCNN", num_classes=10, seed=7, build_fresh=lambda: models.build_model("SmallCNN", 10))
    torch.manual_seed(7)
    data.build_fresh()  # the net the weights are loaded into
    expect = data.build_fresh().state_dict()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    got = incompetent_teacher(data, hp_for("blindspot", _ctx("fullclass", net="SmallCNN")))
    assert all(torch.equal(v, expect[k]) for k, v in got.state_dict().items())
    assert torch.equal(torch.get_rng_state(), before)  # nothing after it draws differently
    torch.manual_seed(123)
    fresh = data.build_fresh().state_dict()
    torch.manual_seed(123)
    got = incompetent_teacher(data, hp_for("blindspot", _ctx("fullclass", net="SmallCNN"), recipe="corrected"))
    assert all(torch.equal(v, fresh[k]) for k, v in got.state_dict().items())


def test_readme_and_parity_say_which_three_grid_scripts_are_the_references():
    readme = (REPO / "README.md").read_text()
    assert "the reference's eight grid scripts" not in readme
    assert "three the reference's, five ours" in readme
    grids = (REPO / "docs" / "parity.md").read_text().split("## Grids")[1]
    for script in ("cifar100_fullclass_exps_vgg.sh", "cifar20_subclass_exps_vgg.sh", "cifar10_random_exps_vgg.sh"):
        assert script in grids.split("No random-setting method")[0]
    assert "label_free_ssd" in grids


def _weights(tmp_path, net, classes):
    path = tmp_path / f"{net}-{classes}.pth"
    if not path.exists():
        torch.save(models.build_model(net, classes).state_dict(), path)
    return ["-weight_path", str(path)]


def test_recipe_defaults_to_the_reference_and_selects_every_choice():
    import forget_full_class_main as full

    base = ["-net", "VGG16", "-dataset", "Cifar100", "-classes", "100", "-forget_class", "rocket"]
    ref = _args(full, base + ["-method", "scrub"])
    cor = _args(full, base + ["-method", "scrub", "-recipe", "corrected"])
    assert ref.recipe == "reference"
    pr, pc = flags.resolve_data(ref, "fullclass"), flags.resolve_data(cor, "fullclass")
    assert (pr.importance_order, pr.retain_test_order, pr.split_draw, pr.pins_split) ==\
        ("shuffled", "grouped", "after_two_models", "none")
    assert (pc.importance_order, pc.retain_test_order, pc.split_draw, pc.pins_split) ==\
        ("shuffled", "dataset", "own_generator", "per_person")
    # a single flag overrides one choice of the recipe
    one = _args(full, base + ["-method", "scrub", "-recipe", "corrected", "-retain_test_order", "grouped"])
    assert flags.resolve_data(one, "fullclass").retain_test_order == "grouped"
    for m in ("UNSIR", "emmn", "gkt", "retrain", "scrub"):
        r = flags.resolve_method(_args(full, base + ["-method", m]), full.TASK)
        c = flags.resolve_method(_args(full, base + ["-method", m, "-recipe", "corrected"]), full.TASK)
        assert r != c, m


@pytest.mark.parametrize("method, field, reference, corrected", [
    ("UNSIR", "images", "reference", "full"),
    ("emmn", "images", "reference", "full"),
    ("gkt", "variant", "reference", "paper"),
    ("retrain", "schedule", "reference", "warmup"),
    ("retrain_full", "schedule", "reference", "warmup"),
])
def test_each_method_choice_follows_the_recipe(method, field, reference, corrected):
    class D:
        net, dataset, setting = "VGG16", "Cifar100", "fullclass"

    assert getattr(hp_for(method, D), field) == reference
    assert getattr(hp_for(method, D, recipe="corrected"), field) == corrected


def test_gkt_variant_flag_wins_over_the_recipe_and_selects_its_rows():
    class D:
        net, dataset, setting = "VGG16", "Cifar100", "fullclass"

    paper = hp_for("gkt", D, gkt_recipe="paper")
    assert (paper.variant, paper.opt, paper.beta, paper.pseudo_batches) == ("paper", "adam", 250.0, 4000)
    ref = hp_for("gkt", D, recipe="corrected", gkt_recipe="reference")
    assert (ref.variant, ref.opt, ref.beta, ref.pseudo_batches) == ("reference", "sgd", 5.0, 1000)


@pytest.mark.parametrize("setting, recipe, alpha, gamma", [
    ("fullclass", "reference", 0.001, 0.99),  # the SCRUB function's defaults: the main never passes α, γ
    ("fullclass", "corrected", 1.0, 5.0),
    ("subclass", "reference", 1.0, 5.0),
    ("random", "reference", 1.0, 5.0),
])
def test_scrub_alpha_gamma_per_setting_and_recipe(setting, recipe, alpha, gamma):
    class D:
        net, dataset = "VGG16", "Cifar20"

    D.setting = setting
    hp = hp_for("scrub", D, recipe=recipe)
    assert (hp.alpha, hp.gamma) == (alpha, gamma)


def _reference_lrs(epochs, T, base, milestones, gamma=0.2):
    """The learning rate of every batch of the reference's fit_one_cycle, literally: MultiStepLR
    built first, then WarmUpLR; WarmUpLR.step() after every batch of epochs 0 and 1;
    MultiStepLR.step(epoch) at the start of every later epoch."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    train_scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
    warmup = _LiteralWarmUpLR(opt, T)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MultiStepLR.step(epoch) is deprecated, and what the reference calls
        for epoch in range(epochs):
            if epoch > 1:
                train_scheduler.step(epoch)
            for _ in range(T):
                lrs.append(opt.param_groups[0]["lr"])
                opt.step()
                if epoch <= 1:
                    warmup.step()
    return lrs


@pytest.mark.parametrize("epochs, T, milestones", [(8, 5, (7,)), (9, 3, (8,)), (20, 4, (8, 12, 16)), (6, 1, (2, 3))])
def test_reference_retrain_schedule_equals_the_literal_reference_schedulers(epochs, T, milestones):
    expect = _reference_lrs(epochs, T, 0.01, milestones)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = reference_schedule(opt, T, milestones, 0.2)
    got = []
    for _ in range(epochs * T):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=0)
    assert got[0] == 0.0
    if T > 1:
        assert max(got[T:2 * T]) > 1.5 * 0.01  # epoch 1 rises to about twice the base rate


def test_retrain_steps_at_the_reference_rates(monkeypatch):
    """The retrain method itself runs at those rates: the rate each SGD step used, read inside
    train_epoch's optimiser, equals the literal schedule."""
    from methods import retrain as rt

    seen = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    xs = torch.randn(12, 3, 4, 4)
    ds = [(xs[i], torch.tensor([]), i % 2) for i in range(12)]
    loader = torch.utils.data.DataLoader(ds, batch_size=4)

    class Data:
        retain_train = loader

    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    hp = hparams.resolve(rt.RetrainHP, rt.RETRAIN_OVERRIDES, dict(recipe="reference"),
                         dict(retrain_epochs=5, retrain_milestones=(3, 4)))
    rt.train_on_retain(net, Data, hp, torch.device("cpu"), "t")
    got = list(seen)
    monkeypatch.undo()
    np.testing.assert_allclose(got, _reference_lrs(5, 3, hp.lr, (3, 4)), rtol=1e-12)


def test_vit_retrain_uses_its_own_milestones():
    for dataset, epochs, ms in (("Cifar10", 8, (7,)), ("Cifar100", 8, (7,)), ("Cifar20", 9, (8,))):
        class D:
            net, setting = "ViT", "fullclass"

        D.dataset = dataset
        hp = hp_for("retrain", D)
        assert (hp.epochs, hp.milestones) == (epochs, ms)
        assert bisect.bisect_right(ms, epochs - 1) == 1  # the last epoch runs at lr·γ


def _tiny(n=40, classes=4, fine=None):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, classes, n)
    return images.ArrayImages(np.zeros((n, 2, 2, 3), np.uint8), targets,
                                fine=None if fine is None else rng.integers(0, fine, n))


def test_importance_order_reference_per_setting():
    train = _tiny(fine=8)
    split = datasets.split_sub_class(train, train, 3)
    retain, forget = split["retain_train"][1], split["forget_train"][1]
    grouped = datasets.importance_order(split, "grouped", 0, train.fine)
    # literal: the reference's per-fine-class lists of retained images, in class order, then forget
    assert list(grouped) == [i for c in range(8) if c != 3 for i in range(40) if train.fine[i] == c] + list(forget)
    assert list(datasets.importance_order(split, "retain_forget", 0, train.fine)) ==\
        list(retain) + list(forget)
    shuffled = datasets.importance_order(split, "shuffled", 7, train.fine)
    assert sorted(shuffled) == list(range(40)) and list(shuffled) != sorted(shuffled)
    assert list(shuffled) == list(datasets.importance_order(split, "shuffled", 7, train.fine))
    assert list(shuffled) != list(datasets.importance_order(split, "shuffled", 8, train.fine))


@pytest.mark.parametrize("setting, recipe, order", [
    ("fullclass", "reference", "shuffled"), ("subclass", "reference", "grouped"),
    ("random", "reference", "retain_forget"),
    ("fullclass", "corrected", "shuffled"), ("subclass", "corrected", "shuffled"), ("random", "corrected", "shuffled"),
])
def test_importance_order_per_setting_and_recipe(setting, recipe, order):
    ctx = dict(net="VGG16", dataset="Cifar20", setting=setting, recipe=recipe)
    assert hparams.resolve(datasets.DataHP, datasets.DATA_OVERRIDES, ctx).importance_order == order


def test_ssd_importance_batches_reach_the_method_in_the_reference_order(tmp_path, monkeypatch):
    """The sub-class main under the reference recipe hands SSD the retained images grouped by
    fine class, then the forgotten ones (its ConcatDataset of per-class lists)."""
    import forget_sub_class_main as sub
    import registry

    root = tmp_path / "data"
    write_cifar(root)
    seen = {}

    def spy(model, data, hp, device):
        seen["order"] = torch.cat([f for _, f, _ in data.full_train]).tolist()
        return model

    monkeypatch.setitem(METHODS, "ssd_tuning", registry.Method("ssd_tuning", spy, METHODS["ssd_tuning"].hparams,
                                                               METHODS["ssd_tuning"].overrides))
    for recipe in ("reference", "corrected"):
        args = _args(sub, ["-net", "SmallCNN", "-dataset", "Cifar20", "-superclasses", "20", "-subclasses", "100",
                           "-forget_class", "rocket", "-method", "ssd_tuning", "-data_root", str(root),
                           "-results", str(tmp_path / "r.jsonl"), "-relearn_max_steps", "0", "-recipe", recipe,
                           "-retrain_dir", str(tmp_path), *_weights(tmp_path, "SmallCNN", 20)])
        rec = experiment.execute(experiment.prepare(args, sub.TASK.setting, *sub.split(args)), args,
                                 flags.resolve_method(args, sub.TASK))
        fine = seen["order"]
        n_forget = rec["n_forget"]
        if recipe == "reference":
            assert fine[:-n_forget] == sorted(fine[:-n_forget]) and set(fine[-n_forget:]) == {69}
            assert rec["recipe"] == "reference" and rec["pipeline"]["importance_order"] == "grouped"
        else:
            assert fine[:-n_forget] != sorted(fine[:-n_forget]) or 69 in fine[:-n_forget]
            assert rec["recipe"] == "corrected" and rec["pipeline"]["importance_order"] == "shuffled"


def _reference_forget(seed, n, perc, build):
    """The reference's forget_random_main, literally: seed, build the net and the bad teacher,
    then random_split with fractions from the default generator."""
    torch.manual_seed(seed)
    build()
    build()
    forget, _ = torch.utils.data.random_split(range(n), [perc, 1 - perc])
    return list(forget.indices)


def _random_exp(tmp_path, net, seed, recipe, perc=0.2):
    import forget_random_main as rnd

    root = tmp_path / "data"
    if not root.exists():
        write_cifar(root)
    args = _args(rnd, ["-net", net, "-dataset", "Cifar10", "-classes", "10", "-forget_perc", str(perc),
                       "-method", "baseline", "-data_root", str(root), "-seed", str(seed), "-recipe", recipe,
                       "-results", str(tmp_path / "r.jsonl"), "-retrain_dir", str(tmp_path),
                       *_weights(tmp_path, net, 10)])
    return experiment.prepare(args, rnd.TASK.setting, *rnd.split(args))


@pytest.mark.parametrize("seed", [0, 3])
def test_random_split_forgets_the_reference_images_for_the_same_seed(tmp_path, seed):
    exp = _random_exp(tmp_path, "SmallCNN", seed, "reference")
    expect = _reference_forget(seed, 50, 0.2, lambda: models.SmallCNN(10))
    assert list(exp.split["forget_train"][1]) == expect
    # corrected: a generator of its own, the same for every architecture
    own = _random_exp(tmp_path, "SmallCNN", seed, "corrected")
    g = torch.Generator().manual_seed(seed)
    assert list(own.split["forget_train"][1]) == list(torch.utils.data.random_split(range(50), [0.2, 0.8], g)[0].indices)


@pytest.mark.slow
def test_random_split_with_vgg16_matches_the_reference_literal_vgg11_plus_head(tmp_path):
    exp = _random_exp(tmp_path, "VGG16", 1, "reference")

    def reference_vgg16():
        torchvision.models.vgg11()
        nn.Linear(1000, 10)

    assert list(exp.split["forget_train"][1]) == _reference_forget(1, 50, 0.2, reference_vgg16)


def _pins(root, people=3, each=5):
    folder = root / "105_classes_pins_dataset"
    rng = np.random.default_rng(0)
    for p in range(people):
        (folder / f"pins_{p}").mkdir(parents=True)
        for i in range(each):
            from PIL import Image

            Image.fromarray(rng.integers(0, 256, (60, 50, 3), dtype=np.uint8)).save(folder / f"pins_{p}" / f"{i}.png")
    return folder


@pytest.mark.parametrize("size", [32, 224])
def test_pins_images_are_resized_to_36_then_to_the_net_input(tmp_path, size):
    from PIL import Image
    from torchvision import transforms

    folder = _pins(tmp_path)
    ds = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, size=size, pins_split="none")
    x = ds[0][0]
    # the reference's unlearning transform, literally
    ref = transforms.Compose([transforms.Resize((36, 36)), transforms.ToTensor(),
                              transforms.Normalize(images.MEAN, images.STD), transforms.Resize((size, size))])
    with Image.open(ds.paths[0]) as im:
        expect = ref(im.convert("RGB"))
    assert ds.paths[0].startswith(str(folder))
    torch.testing.assert_close(x, expect, atol=2e-2, rtol=0)  # PIL's and torch's 36×36 rounding differ slightly


def test_pins_augmentation_crops_the_36_pixel_image_to_32_before_resizing(tmp_path):
    _pins(tmp_path)
    ds = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, size=224, augment=True,
                               pins_split="none")
    assert ds.load(0).shape == (36, 36, 3)
    assert ds[0][0].shape == (3, 224, 224)
    ds.transform.size = 32  # without the final resize the crop is 32×32: the crop acts on the 36-pixel image
    assert ds[0][0].shape == (3, 32, 32)


def test_pins_reference_recipe_trains_and_evaluates_on_the_whole_folder(tmp_path):
    _pins(tmp_path, people=3, each=5)
    tr = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, pins_split="none")
    te = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=False, pins_split="none")
    assert list(tr.paths) == list(te.paths) and len(tr) == 15
    ctr = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True, pins_split="per_person")
    cte = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=False, pins_split="per_person")
    assert not set(ctr.paths) & set(cte.paths) and len(ctr) + len(cte) == 15


def test_normalisation_uses_the_reference_constants_to_every_digit():
    assert images.MEAN == (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
    assert images.STD == (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
    img = np.full((32, 32, 3), 200, np.uint8)
    x = images.ImageTransform(32)(img)
    expect = (200 / 255 - torch.tensor(images.MEAN, dtype=torch.float64)) / torch.tensor(images.STD,
                                                                                           dtype=torch.float64)
    torch.testing.assert_close(x[:, 0, 0].double(), expect, atol=1e-6, rtol=0)


@pytest.mark.parametrize("recipe, grouped", [("reference", True), ("corrected", False)])
def test_sub_class_retain_test_order_follows_the_recipe(tmp_path, recipe, grouped):
    import forget_sub_class_main as sub

    root = tmp_path / "data"
    write_cifar(root)
    args = _args(sub, ["-net", "SmallCNN", "-dataset", "Cifar20", "-superclasses", "20", "-subclasses", "100",
                       "-forget_class", "rocket", "-method", "baseline", "-data_root", str(root), "-recipe", recipe,
                       "-results", str(tmp_path / "r.jsonl"), "-retrain_dir", str(tmp_path),
                       *_weights(tmp_path, "SmallCNN", 20)])
    exp = experiment.prepare(args, sub.TASK.setting, *sub.split(args))
    idx = exp.split["retain_valid"][1]
    fine = exp.test.fine[idx]
    assert (list(fine) == sorted(fine)) is grouped
    assert sorted(idx) == [i for i in range(len(exp.test)) if exp.test.fine[i] != 69]


class _RefBasicBlock(nn.Module):
    """The reference's resnet.py BasicBlock, written out."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.residual_function = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True), nn.Conv2d(cout, cout, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        return nn.ReLU(inplace=True)(self.residual_function(x) + self.shortcut(x))


class _RefResNet18(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.in_channels = 64
        self.conv1 = nn.Sequential(nn.Conv2d(3, 64, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(64),
                                   nn.ReLU(inplace=True))
        self.conv2_x = self._layer(64, 1)
        self.conv3_x = self._layer(128, 2)
        self.conv4_x = self._layer(256, 2)
        self.conv5_x = self._layer(512, 2)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def _layer(self, cout, stride):
        layers = []
        for s in (stride, 1):
            layers.append(_RefBasicBlock(self.in_channels, cout, s))
            self.in_channels = cout
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv5_x(self.conv4_x(self.conv3_x(self.conv2_x(self.conv1(x)))))
        return self.fc(self.avg_pool(x).view(x.size(0), -1))


class _RefConv(nn.Sequential):
    def __init__(self, cin, cout, kernel_size=3, stride=1, padding=None):
        padding = (kernel_size - 1) // 2 if padding is None else padding
        super().__init__(nn.Conv2d(cin, cout, kernel_size=kernel_size, stride=stride, padding=padding, bias=False),
                         nn.BatchNorm2d(cout, affine=True), nn.ReLU())


class _Identity(nn.Module):
    def forward(self, x):
        return x


class _Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class _RefAllCNN(nn.Module):
    """The reference's AllCNN (filters_percentage 1, batch norm, no dropout), written out."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            _RefConv(3, 96), _RefConv(96, 96), _RefConv(96, 192, stride=2, padding=1), _Identity(),
            _RefConv(192, 192), _RefConv(192, 192), _RefConv(192, 192, stride=2, padding=1), _Identity(),
            _RefConv(192, 192), _RefConv(192, 192, kernel_size=1), nn.AvgPool2d(8), _Flatten())
        self.classifier = nn.Sequential(nn.Linear(192, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.mark.parametrize("name, reference", [("ResNet18", _RefResNet18), ("AllCNN", _RefAllCNN)])
def test_reference_checkpoints_load_strict_and_give_the_same_logits(name, reference):
    torch.manual_seed(0)
    ref = reference(10)
    # non-trivial batch-norm statistics, so a misplaced buffer would show in the logits
    ref.train()
    with torch.no_grad():
        ref(torch.randn(8, 3, 32, 32))
    ref.eval()
    ours = models.build_model(name, 10)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    # the same initialisation order: a seeded build draws the same weights (the random split's draw
    # depends on it)
    torch.manual_seed(5)
    a = reference(10).state_dict()
    torch.manual_seed(5)
    b = models.build_model(name, 10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_epoch_stops_when_another_process_reports_a_non_finite_loss():
    """all_finite is asked before any backward: a process whose own loss is finite stops at the
    same step as the one whose loss is not, and takes no optimiser step there."""
    from engine import train_epoch

    net = nn.Linear(4, 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ds = [(torch.randn(4), torch.tensor([]), 0) for _ in range(4)]
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    asked = []

    def all_finite(mine):
        asked.append(mine)
        return False  # another process's loss became NaN

    with pytest.raises(FloatingPointError, match="another process"):
        train_epoch(net, loader, torch.optim.SGD(net.parameters(), lr=0.1), torch.device("cpu"),
                    progress=False, all_finite=all_finite)
    assert asked == [True]
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def _ddp_worker(rank, store, out, nan_rank):
    import torch.distributed as dist

    from engine import train_epoch

    dist.init_process_group("gloo", init_method=f"file://{store}", world_size=2, rank=rank)
    torch.manual_seed(0)
    net = torch.nn.parallel.DistributedDataParallel(nn.Linear(4, 2))
    xs = torch.randn(6, 4)
    if rank == nan_rank:
        xs[4] = float("nan")  # the third batch of this process
    loader = torch.utils.data.DataLoader([(xs[i], torch.tensor([]), i % 2) for i in range(6)], batch_size=2)

    def all_finite(finite):
        t = torch.tensor([0.0 if finite else 1.0])
        dist.all_reduce(t)
        return t.item() == 0

    try:
        train_epoch(net, loader, torch.optim.SGD(net.parameters(), lr=0.1), torch.device("cpu"), progress=False,
                    all_finite=all_finite)
        msg = "finished"
    except FloatingPointError as e:
        msg = str(e)
    (out / f"rank{rank}").write_text(msg)
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_non_finite_loss_on_one_torchrun_process_stops_every_process(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_ddp_worker, args=(r, tmp_path / "store", tmp_path, 1)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p.is_alive() for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert alive == [False, False], "a process was left waiting in a collective"
    assert "another process" in (tmp_path / "rank0").read_text()
    assert "loss became nan" in (tmp_path / "rank1").read_text()


def test_fisher_per_sample_gradients_run_attention_on_the_math_kernel(monkeypatch):
    """Under vmap, scaled_dot_product_attention must use the math kernel (the fused CUDA kernels
    lack batching rules or fall back to a per-example loop)."""
    from methods.importance import fisher_diagonal

    seen = []

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(4, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            seen.append((torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
                         torch.backends.cuda.math_sdp_enabled()))
            h = self.q(x.flatten(1)).view(x.shape[0], 1, 1, 4)
            return self.head(torch.nn.functional.scaled_dot_product_attention(h, h, h).flatten(1))

    ds = [(torch.randn(1, 2, 2), torch.tensor([]), 0) for _ in range(3)]
    fisher_diagonal(Attn(), torch.utils.data.DataLoader(ds, batch_size=3), 3, "cpu")
    assert seen and all(s == (False, False, True) for s in seen)


def test_gkt_with_vit_runs_the_reference_forward_under_the_reference_variant(monkeypatch):
    """The reference's ViT forward applies every encoder layer to the embedding output; gkt's
    reference variant distils and returns the model run that way, the paper variant the real
    forward."""
    from transformers import ViTConfig

    from methods import gkt as bg

    cfg = ViTConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, image_size=8,
                    patch_size=4)
    torch.manual_seed(0)
    vit = models.ViT(num_classes=3, config=cfg).eval()
    x = torch.randn(2, 3, 8, 8)
    emb = vit.base.embeddings(x)
    literal = vit.final(vit.base.layernorm(vit.base.layers[-1](emb))[:, 0])  # the last layer on the embeddings
    wrapped = bg.ReferenceViTForward(vit)
    torch.testing.assert_close(wrapped(x), literal)
    assert not torch.allclose(wrapped(x), vit(x))

    seen = {}

    def spy(teacher, student, generator, forget_label, cfg, names=(), progress=True):
        seen.update(teacher=teacher, student=student, names=list(names))
        return student

    monkeypatch.setattr(bg, "distill", spy)

    class Data:
        forget_class, setting, net, dataset = 0, "fullclass", "ViT", "Cifar10"
        forget_train = torch.utils.data.DataLoader([(torch.zeros(3, 8, 8), torch.tensor([]), 0)], batch_size=1)

        @staticmethod
        def build_fresh():
            return models.ViT(num_classes=3, config=cfg)

    out = bg.gkt(vit, Data, hp_for("gkt", Data, gkt_batches=1), torch.device("cpu"))
    assert isinstance(seen["teacher"], bg.ReferenceViTForward) and isinstance(out, bg.ReferenceViTForward)
    assert seen["names"] == [f"vit.base.layers.{i}" for i in range(3)]  # every encoder layer, as its activations
    out = bg.gkt(vit, Data, hp_for("gkt", Data, gkt_recipe="paper", gkt_batches=1), torch.device("cpu"))
    assert out is vit and not isinstance(seen["teacher"], bg.ReferenceViTForward)


def test_blindspot_reference_teacher_for_vit_is_the_pretrained_trunk_with_a_random_head(tmp_path):
    from transformers import ViTConfig, ViTModel

    from cli import UserError
    from methods.distill import incompetent_teacher

    cfg = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=8,
                    patch_size=4)
    torch.manual_seed(1)
    trunk = ViTModel(cfg)
    trunk.save_pretrained(tmp_path / "trunk")

    class Data:
        net, num_classes, dataset, setting, seed = "ViT", 3, "Cifar10", "fullclass", 0

        @staticmethod
        def build_fresh():
            return models.ViT(num_classes=3, config=cfg)

    ref = incompetent_teacher(Data, hp_for("blindspot", Data, bt_vit_weights=str(tmp_path / "trunk")))
    assert all(torch.equal(v, trunk.state_dict()[k]) for k, v in ref.base.state_dict().items())
    rnd = incompetent_teacher(Data, hp_for("blindspot", Data, recipe="corrected"))
    assert not torch.equal(rnd.base.embeddings.patch_embeddings.projection.weight,
                           trunk.embeddings.patch_embeddings.projection.weight)
    with pytest.raises(UserError, match="-bt_teacher random"):
        incompetent_teacher(Data, hp_for("blindspot", Data, bt_vit_weights=str(tmp_path / "missing")))


GIB = 2 ** 30


def _saved_bytes(fn):
    """Bytes of the tensors autograd saves for the backward of ``fn()``: the graph's memory."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


@pytest.mark.slow
def test_gkt_vit_peak_memory_estimate_stays_under_40_gb():
    """The generator step holds the largest graph (generator, teacher and student at once, the
    teacher's because the loss reaches the generator through it). Bytes per 224-px ViT-B/16
    image, measured on the CPU from batches of 1 and 2, times the configured batch, plus
    parameters, gradients and Adam moments, with 25% for the allocator, must stay under 40 GB."""
    from methods import gkt as bg

    torch.manual_seed(0)
    teacher = models.ViT(10).eval().requires_grad_(False)
    student = models.ViT(10).train()
    hp = hp_for("gkt", type("D", (), dict(net="ViT", dataset="Cifar100", setting="fullclass")), recipe="corrected")
    gen = bg.Generator((3, 224, 224), hp.z_dim, hp.gen_width)

    def step(b):
        x = gen(torch.randn(b, hp.z_dim))
        return -bg.kl_div(student(x), teacher(x), 1.0)

    one, two = _saved_bytes(lambda: step(1)), _saved_bytes(lambda: step(2))
    per_image = two - one
    n_params = sum(p.numel() for m in (teacher, student, gen) for p in m.parameters())
    n_trained = sum(p.numel() for m in (student, gen) for p in m.parameters())
    fixed = 4 * (n_params + 3 * n_trained)  # weights; gradients and two Adam moments of what trains
    peak = 1.25 * (fixed + hp.batch * per_image)
    print(f"gkt ViT: {per_image / GIB:.3f} GiB per image, batch {hp.batch}: about {peak / 1e9:.1f} GB "
          f"(the paper's 256: {1.25 * (fixed + 256 * per_image) / 1e9:.0f} GB)")
    assert 0.2 * GIB < per_image < 0.5 * GIB
    assert peak <= 40e9


def test_report_keeps_the_recipes_apart():
    import report

    ref = dict(setting="fullclass", dataset="Digits", net="SmallCNN", method="scrub", forget="3", seed=0,
               recipe="reference")
    cor = dict(ref, recipe="corrected")
    old = {k: v for k, v in ref.items() if k != "recipe"}  # written before -recipe existed
    assert report.label(ref) == "scrub" and report.label(cor) == "scrub [corrected]"
    assert report.record_target(ref) != report.record_target(cor) and report.record_target(ref) == report.record_target(old)


def test_jit_starts_from_the_generator_reseeded_by_seed_not_the_references_consumed_state(tmp_path, monkeypatch):
    """docs/parity.md states it: a method starts from the default generator seeded by -seed
    (the reference's has been used by two model initialisations and its loaders by then), so
    JiT's noise equals the reference's draws only for the same generator state."""
    import forget_full_class_main as full
    import registry

    seen = {}

    def spy(model, data, hp, device):
        seen["state"] = torch.get_rng_state()
        return model

    monkeypatch.setitem(METHODS, "lipschitz_forgetting",
                        registry.Method("lipschitz_forgetting", spy, METHODS["lipschitz_forgetting"].hparams,
                                        zero_shot=True))
    args = _args(full, ["-net", "SmallCNN", "-dataset", "Digits", "-classes", "10", "-forget_class", "3",
                        "-method", "lipschitz_forgetting", "-seed", "7", "-relearn_max_steps", "0",
                        "-results", str(tmp_path / "r.jsonl"), "-retrain_dir", str(tmp_path),
                        *_weights(tmp_path, "SmallCNN", 10)])
    experiment.execute(experiment.prepare(args, full.TASK.setting, *full.split(args)), args,
                       flags.resolve_method(args, full.TASK))
    torch.manual_seed(7)
    assert torch.equal(seen["state"], torch.get_rng_state())
    # the reference's state at that point: two initialisations and a loader iterator later
    models.SmallCNN(10), models.SmallCNN(10)
    assert not torch.equal(seen["state"], torch.get_rng_state())


def test_a_run_is_compared_only_with_a_retrain_of_its_own_recipe(tmp_path):
    """A corrected run must not pick up the reference recipe's retrained model (nor the other way
    round), even when it is the only one on disk."""
    import records
    from retrained import RetrainStore

    store = RetrainStore(str(tmp_path))

    def flags(recipe):
        return dict(dataset="Digits", net="SmallCNN", seed=0, method="retrain_full", recipe=recipe, forget_class="3")

    def ident(recipe):
        return records.run_identity("fullclass", flags(recipe)), run_target("fullclass", flags(recipe))

    ref = store.path(*ident("reference"))
    open(ref, "wb").close()
    assert store.find(ident("corrected")[1], []) is None
    assert store.find(ident("reference")[1], []) == (ref, "retrain_full")
    cor = store.path(*ident("corrected"))
    open(cor, "wb").close()
    os.utime(ref, (2e9, 2e9))  # the reference file is the newer one
    assert store.find(ident("corrected")[1], []) == (cor, "retrain_full")
    assert "corrected" in os.path.basename(cor) and "corrected" not in os.path.basename(ref)
