"""The reference recipe computes what the reference code computed, for the behaviours docs/parity.md
lists in its second round: each against a literal re-implementation of the reference's code, and
-recipe corrected against the papers' descriptions."""
import copy
import dataclasses
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import hp_for, write_cifar
from torch.utils.data import DataLoader, TensorDataset

import evaluation
import experiment
import flags
import forget_full_class_main as full_main
import forget_random_main as random_main
import forget_sub_class_main as sub_main
import metrics
import models
import pretrain_model
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


# ---- 1. SCRUB: full class clips the gradient norm to 1 ------------------------------------------

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


# ---- 2. gkt: the reference's teacher stays in train mode ----------------------------------------

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


# ---- 3. UNSIR and emmn: retained-test accuracy in their noise batch ----------------------------

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
                                                                         hparams=None))
    loader = DataLoader([0], batch_size=forget_batch)
    data = UnlearnData(forget_train=loader, retain_train=loader, full_train=loader, num_classes=1, forget_class=None,
                       setting=setting, dataset="Digits", net="SmallCNN", build_fresh=lambda: None)
    exp = SimpleNamespace(data=data,
                          model=nn.Linear(1, 1), device=CPU, workers=0, subset={"forget_valid": None}, setting=setting,
                          train=None, test=None, split=None)
    args = SimpleNamespace(method="fake", relearn_max_steps=0, seed=0, b=64, amp=False)
    with pytest.raises(_Stop):
        experiment.execute(exp, args, method_hp)
    return seen


def test_a_run_scores_with_the_reference_batches(monkeypatch):
    assert _eval_batches(monkeypatch, "fullclass", hp_for("UNSIR", _ctx("fullclass"))) == {"RetainTestAcc": 32}
    assert _eval_batches(monkeypatch, "fullclass", hp_for("UNSIR", _ctx("fullclass"), recipe="corrected")) == {}
    assert _eval_batches(monkeypatch, "fullclass", UnsirHP(noise_batch=5)) == {"RetainTestAcc": 5}
    # random: Df over the forget loader itself (the reference's forget_valid_dl is its forget_train_dl)
    assert _eval_batches(monkeypatch, "random", None, forget_batch=128) == {"Df": 128}


# ---- 4. the sub-class main's -seed defaults to 42 ----------------------------------------------

def test_sub_class_seed_defaults_to_42_and_the_other_mains_to_0():
    base = ["-net", "VGG16", "-method", "baseline"]
    assert _args(sub_main, base + ["-dataset", "Cifar20", "-superclasses", "20", "-subclasses", "100",
                                   "-forget_class", "rocket"]).seed == 42
    assert _args(full_main, base + ["-dataset", "Cifar100", "-classes", "100", "-forget_class", "rocket"]).seed == 0
    assert _args(random_main, base + ["-dataset", "Cifar10", "-classes", "10", "-forget_perc", "0.1"]).seed == 0


# ---- 5. -epochs is accepted and never read ------------------------------------------------------

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


# ---- 6. the random setting's forget and retain loaders use batch 128 ---------------------------

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


# ---- 7. pretraining: peak 0.1 and the reference's warm-up ------------------------------------

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


# ---- also: the bad teacher is the second model drawn after seeding -------------------------------

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


# ---- 8. the README says which grid scripts are the reference's ---------------------------------

def test_readme_and_parity_say_which_three_grid_scripts_are_the_references():
    readme = (REPO / "README.md").read_text()
    assert "the reference's eight grid scripts" not in readme
    assert "three the reference's, five ours" in readme
    grids = (REPO / "docs" / "parity.md").read_text().split("## Grids")[1]
    for script in ("cifar100_fullclass_exps_vgg.sh", "cifar20_subclass_exps_vgg.sh", "cifar10_random_exps_vgg.sh"):
        assert script in grids.split("No random-setting method")[0]
    assert "label_free_ssd" in grids
