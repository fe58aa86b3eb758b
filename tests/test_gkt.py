"""gkt (methods/gkt.py): the generator, gate, KL and attention transfer, the student and generator
steps against written-out Adam steps, the give-up rules, and the ViT forward."""
import copy
import dataclasses
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_SHAPE, Triples, hp_for, tiny_conv_net, tiny_unlearn_data
from torch import nn
from torch.utils.data import DataLoader

import hparams
import methods.gkt as bg
import models
from cli import UserError
from methods import UnlearnData


def test_gate_drops_samples_the_teacher_gives_the_forget_class_over_threshold():
    probs = torch.tensor([[0.005, 0.5, 0.495], [0.02, 0.49, 0.49], [0.0099, 0.99, 0.0001], [0.9, 0.05, 0.05]])
    keep = bg.gate(probs.log(), forget_label=0, threshold=0.01)
    assert keep.tolist() == [True, False, True, False]
    assert bg.gate(probs.log(), forget_label=2, threshold=0.01).tolist() == [False, False, True, False]


def test_kl_div_matches_torch_mean_reduction():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    expected = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="sum") / s.numel()
    assert bg.kl_div(s, t, 2.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_attention_loss_is_zero_for_equal_maps_and_ignores_scale():
    f = torch.randn(2, 4, 5, 5)
    assert bg.attention_loss([f], [3 * f]).item() == pytest.approx(0.0, abs=1e-7)
    assert bg.attention_loss([f], [torch.randn(2, 4, 5, 5)]).item() > 0


def test_feature_names_pick_the_last_map_of_each_resolution():
    net = models.SmallCNN(10)
    assert bg.feature_names(net, (3, 32, 32), "stages", torch.device("cpu")) == \
        ["features.1", "features.4", "features.7", "features.8"]
    assert bg.feature_names(net, (3, 32, 32), "convs", torch.device("cpu")) == \
        ["features.0", "features.3", "features.6"]
    blocks = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ModuleList([nn.Identity(), nn.Identity()]))
    assert bg.feature_names(blocks, TINY_SHAPE, "convs", torch.device("cpu")) == ["1.0", "1.1"]


def test_generator_outputs_the_input_shape():
    for shape in [(3, 32, 32), (3, 8, 8), (1, 10, 14)]:
        assert bg.Generator(shape, 16, 4)(torch.randn(5, 16)).shape == (5, *shape)


def test_gkt_student_is_fresh_and_only_ever_sees_generator_output(monkeypatch):
    """The student starts from build_fresh()'s weights, not the model's; every batch it is fed
    is (a gated part of) a generator output and none holds a real forget image; the trained
    student's weights end up in the returned model."""
    generated, fed, start = [], [], {}

    class RecordingGenerator(bg.Generator):
        def forward(self, z):
            x = super().forward(z)
            generated.append(x.detach().clone())
            return x

    real_distill = bg.distill

    def spy_distill(teacher, student, *a, **k):
        start.update({k_: v.clone() for k_, v in student.state_dict().items()})
        student.register_forward_pre_hook(lambda mod, inp: fed.append(inp[0].detach().clone()))
        out = real_distill(teacher, student, *a, **k)
        start["final"] = {k_: v.clone() for k_, v in out.state_dict().items()}
        return out

    monkeypatch.setattr(bg, "Generator", RecordingGenerator)
    monkeypatch.setattr(bg, "distill", spy_distill)
    model = tiny_conv_net(seed=0, forget_bias=-30.0)  # the gate keeps (almost) every pseudo sample
    data = tiny_unlearn_data(dataset="Digits", retain=False)
    teacher_state = {k: v.clone() for k, v in model.state_dict().items()}
    fresh_state = tiny_conv_net(seed=99).state_dict()
    out = bg.gkt(model, data, hp_for("gkt", data, gkt_recipe="paper", gkt_batches=3), torch.device("cpu"))

    assert all(torch.equal(start[k], fresh_state[k]) for k in fresh_state)
    assert any(not torch.equal(start[k], teacher_state[k]) for k in teacher_state)
    assert len(fed) == 3 * (1 + hp_for("gkt", data, gkt_recipe="paper").n_student)  # one generator step + n_student per pseudo batch
    real = torch.stack([x for x, _, _ in data.forget_train.dataset]).flatten(1)
    pool = torch.cat(generated).flatten(1)
    for x in fed:
        x = x.flatten(1)
        exact = "donot_use_mm_for_euclid_dist"
        assert torch.cdist(x, pool, compute_mode=exact).min(1).values.max() < 1e-5  # every row was generated
        assert torch.cdist(x, real, compute_mode=exact).min() > 1.0  # and none is a real forget image
    assert out is model
    assert all(torch.equal(v, start["final"][k]) for k, v in model.state_dict().items())


def test_gkt_reference_recipe_starts_from_the_model_with_convs_reinitialised(monkeypatch):
    start = {}
    real_distill = bg.distill

    def spy_distill(teacher, student, generator, forget_label, cfg, names=(), progress=True):
        start.update(state={k: v.clone() for k, v in student.state_dict().items()}, cfg=cfg, names=names)
        return real_distill(teacher, student, generator, forget_label, cfg, names, progress)

    monkeypatch.setattr(bg, "distill", spy_distill)
    model = tiny_conv_net(seed=0, forget_bias=-30.0)
    teacher_state = {k: v.clone() for k, v in model.state_dict().items()}
    data = tiny_unlearn_data(dataset="Digits", retain=False)
    bg.gkt(model, data, hp_for("gkt", data, gkt_batches=1), torch.device("cpu"))  # the default recipe
    state, cfg = start["state"], start["cfg"]
    assert not torch.equal(state["0.weight"], teacher_state["0.weight"])  # conv weights re-initialised
    assert torch.equal(state["0.bias"], teacher_state["0.bias"])  # everything else copied
    assert torch.equal(state["6.weight"], teacher_state["6.weight"])
    assert cfg["beta"] == 5.0 and cfg["n_gen"] == 2 and cfg["opt"] == "sgd"
    assert start["names"] == ["0", "3"]


def test_gkt_refuses_when_the_gate_drops_everything(monkeypatch):
    """A teacher that gives the forget class > 0.01 on every pseudo sample leaves the student
    nothing to learn from: a one-line UserError, not a silently untrained student."""
    monkeypatch.setattr(bg, "GKT_MAX_EMPTY", 3)
    model = tiny_conv_net(seed=0, forget_bias=30.0)
    with pytest.raises(UserError, match="gate leaves nothing"):
        data = tiny_unlearn_data(dataset="Digits", retain=False)
        bg.gkt(model, data, hp_for("gkt", data, gkt_batches=2), torch.device("cpu"))


def test_gkt_config_tables():
    def cfg(net, dataset, **flags):
        return hp_for("gkt", SimpleNamespace(net=net, dataset=dataset, setting="fullclass"), **flags)

    full = cfg("VGG16", "Cifar100", recipe="corrected")
    assert (full.batch, full.n_gen, full.n_student, full.pseudo_batches) == (256, 1, 10, 4000)
    assert (full.g_lr, full.s_lr, full.beta, full.threshold) == (1e-3, 2e-3, 250.0, 0.01)
    assert cfg("ViT", "Cifar100", recipe="corrected").beta == 0.0
    assert cfg("ViT", "Cifar100").pseudo_batches == 101
    assert cfg("VGG16", "Cifar100").beta == 5.0
    assert cfg("VGG16", "Cifar100", gkt_recipe="paper").pseudo_batches == 4000
    assert cfg("SmallCNN", "Digits").pseudo_batches == 100
    with pytest.raises(hparams.InvalidValue, match="-gkt_batches"):
        cfg("SmallCNN", "Digits", gkt_batches=0)


pytestmark = pytest.mark.usefixtures("one_thread")


def up2(x):
    """Nearest-neighbour ×2 upsampling: every pixel repeated along both spatial axes."""
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def bilinear(x, size):
    """Bilinear resize with half-pixel centres (align_corners=False), written out per axis:
    source coordinate (i + ½)·in/out − ½, clamped at 0, between pixel ⌊s⌋ and the next one."""
    def axis(n_in, n_out):
        rows = []
        for i in range(n_out):
            s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = int(s)
            i1 = min(i0 + 1, n_in - 1)
            w = torch.zeros(n_in, dtype=x.dtype)
            w[i0] += 1 - (s - i0)
            w[i1] += s - i0
            rows.append(w)
        return torch.stack(rows)  # (out, in)
    ah, aw = axis(x.shape[2], size[0]), axis(x.shape[3], size[1])
    return torch.einsum("oh,bchw,pw->bcop", ah, x, aw)


def batch_norm(x, bn_):
    """Train-mode batch norm: per channel, the batch's mean and biased variance, ε = 1e-5."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * bn_.weight.view(1, -1, 1, 1) + bn_.bias.view(1, -1, 1, 1)


def leaky(x):
    return torch.where(x > 0, x, 0.2 * x)


def literal_generator(gen, z, shape, width):
    """The docstring's generator with ``gen``'s parameters: z → Linear → (2w, H/4, W/4) → BN →
    [×2, 3×3 conv, BN, LeakyReLU 0.2] with 2w then w channels → 3×3 conv to TINY_CLASSES → BN → bilinear
    resize to (H, W) when needed. Its convolutions and norms, in module order, must have the
    listed shapes."""
    c, h, w = shape
    base = (max(h // 4, 1), max(w // 4, 1))
    convs = [m for m in gen.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in gen.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [tuple(m.weight.shape) for m in convs] == [(2 * width, 2 * width, 3, 3), (width, 2 * width, 3, 3),
                                                      (c, width, 3, 3)]
    assert [m.num_features for m in norms] == [2 * width, 2 * width, width, c]
    x = (z @ gen.fc.weight.T + gen.fc.bias).view(len(z), 2 * width, *base)
    x = batch_norm(x, norms[0])
    x = leaky(batch_norm(F.conv2d(up2(x), convs[0].weight, convs[0].bias, padding=1), norms[1]))
    x = leaky(batch_norm(F.conv2d(up2(x), convs[1].weight, convs[1].bias, padding=1), norms[2]))
    x = batch_norm(F.conv2d(x, convs[2].weight, convs[2].bias, padding=1), norms[3])
    if tuple(x.shape[-2:]) != (h, w):
        x = bilinear(x, (h, w))
    return x


@pytest.mark.parametrize("shape", [(2, 8, 12), (1, 10, 6), (1, 2, 3)], ids=["multiple-of-4", "resized", "tiny"])
def test_generator_is_the_docstrings_dcgan_layer_by_layer(shape):
    """Oracle: the docstring's layers written out (nearest ×2, 3×3 convolutions with padding 1,
    train-mode batch norm, LeakyReLU 0.2, bilinear resize with half-pixel centres) give the
    generator's output; the linear layer maps z to 2w·max(H/4, 1)·max(W/4, 1) values (H ≠ W
    here, and H/4 < 1 in the tiny case)."""
    c, h, w = shape
    width, z_dim = 3, 5
    torch.manual_seed(0)
    gen = bg.Generator(shape, z_dim=z_dim, width=width).double()
    assert (gen.fc.in_features, gen.fc.out_features) == (z_dim, 2 * width * max(h // 4, 1) * max(w // 4, 1))
    z = torch.randn(4, z_dim, dtype=torch.float64)
    with torch.no_grad():
        got = gen.train()(z)
        expected = literal_generator(gen, z, shape, width)
    assert got.shape == (4, *shape)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_generator_defaults_are_the_papers_z_dim_128_and_width_64():
    """Called without sizes, the generator is the paper's: z of dimension 128 and width 64
    (128 then 64 channels), as the header of methods/gkt.py states."""
    gen = bg.Generator((3, 32, 32))
    assert gen.z_dim == 128 and gen.fc.in_features == 128
    assert gen.fc.out_features == 128 * 8 * 8
    assert [tuple(m.weight.shape) for m in gen.modules() if isinstance(m, nn.Conv2d)] ==\
        [(128, 128, 3, 3), (64, 128, 3, 3), (3, 64, 3, 3)]


def test_gate_keeps_a_sample_whose_forget_probability_equals_the_threshold():
    """"At most ``threshold``": a sample exactly at the threshold is kept, and no warning is
    raised (an implicit softmax dimension would print torch's deprecation warning)."""
    logits = torch.tensor([[0.3, 1.2, -0.4], [2.0, 0.0, 0.1], [-1.0, 0.5, 0.5]])
    p0 = torch.softmax(logits, dim=1)[:, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keep = bg.gate(logits, 0, threshold=p0[0].item())
    assert keep.tolist() == [True, False, True]  # p0 = [t, > t, < t]
    assert p0[1] > p0[0] > p0[2]


def test_kl_div_defaults_to_temperature_1_and_warns_nothing():
    """kl_div(s, t) without a temperature is the literal element mean at T = 1, and it prints no
    warning (softmax over an implicit dimension would)."""
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    total = 0.0
    for b in range(3):
        zs, zt = [math.exp(v) for v in s[b].tolist()], [math.exp(v) for v in t[b].tolist()]
        for k in range(4):
            pt, ps = zt[k] / sum(zt), zs[k] / sum(zs)
            total += pt * (math.log(pt) - math.log(ps))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = bg.kl_div(s, t).item()
    assert got == pytest.approx(total / 12, rel=1e-12)


def test_feature_names_drop_only_1x1_maps():
    """``stages`` leaves out 1×1 maps only: a 2×1 map (and a 1×2 one) is a stage of its own."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(),      # 4×4
                        nn.AvgPool2d((2, 4)),                           # 2×1
                        nn.AdaptiveAvgPool2d(1),                        # 1×1
                        nn.Flatten(), nn.Linear(2, 3))
    assert bg.feature_names(net, (1, 4, 4), "stages", torch.device("cpu")) == ["1", "2"]
    wide = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AvgPool2d((4, 2)), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(2, 3))
    assert bg.feature_names(wide, (1, 4, 4), "stages", torch.device("cpu")) == ["0", "1"]


def test_feature_names_unknown_rule_message():
    with pytest.raises(ValueError, match="^unknown feature rule 'blocks'$"):
        bg.feature_names(nn.Linear(2, 2), (2,), "blocks", torch.device("cpu"))


class TupleOut(nn.Module):
    """A block that returns (hidden, extra) like a transformer layer."""

    def forward(self, x):
        return x + 1, x * 100


def test_taps_return_each_named_output_and_the_first_element_of_a_tuple():
    """taps(x) returns the logits and, in execution order, the named modules' outputs; a module
    that returns a tuple contributes its first element."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.blk = model, TupleOut()

        def forward(self, x):
            return self.blk(self.lin(x))[0]

    taps = bg._Taps(Net(), ["lin", "blk"])
    x = torch.randn(2, 3)
    logits, feats = taps(x)
    hidden = model(x)
    torch.testing.assert_close(logits, hidden + 1)
    assert len(feats) == 2
    torch.testing.assert_close(feats[0], hidden)
    torch.testing.assert_close(feats[1], hidden + 1)
    taps.close()


def test_taps_hold_nothing_from_forwards_outside_a_call():
    """Only taps(x) records: forwards of the model before the first call and between calls
    (the generator steps run the student directly) leave no tensor held by the taps, which would
    otherwise keep their autograd graphs alive."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    taps = bg._Taps(model, ["0"])
    model(torch.randn(2, 3))
    assert taps.feats == []
    _, feats = taps(torch.randn(2, 3))
    assert len(feats) == 1
    model(torch.randn(2, 3))
    assert taps.feats == []
    taps.close()


def test_optimisers_take_their_settings_from_the_config():
    """Adam: the generator's and the student's learning rates from the config (here not the
    paper's values). SGD: the generator's lr and momentum from the config, and the student's
    rate driven by OneCycle with the configured peak over pseudo_batches × n_student steps."""
    gen, student = nn.Linear(2, 2), nn.Linear(2, 2)
    cfg = dict(opt="adam", g_lr=0.05, s_lr=0.07, momentum=0.5, s_max_lr=0.3, pseudo_batches=6, n_student=4)
    g_opt, s_opt, sched = bg._optimisers(student, gen, cfg)
    assert isinstance(g_opt, torch.optim.Adam) and isinstance(s_opt, torch.optim.Adam) and sched is None
    assert (g_opt.param_groups[0]["lr"], s_opt.param_groups[0]["lr"]) == (0.05, 0.07)
    g_opt, s_opt, sched = bg._optimisers(student, gen, dict(cfg, opt="sgd"))
    assert isinstance(g_opt, torch.optim.SGD) and isinstance(s_opt, torch.optim.SGD)
    assert (g_opt.param_groups[0]["lr"], g_opt.param_groups[0]["momentum"]) == (0.05, 0.5)
    assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR)
    assert sched.total_steps == 24 and s_opt.param_groups[0]["max_lr"] == 0.3
    assert s_opt.param_groups[0]["lr"] == pytest.approx(0.3 / 25)  # OneCycle's start: peak / 25


SMALL_SHAPE = (1, 4, 4)


Z_DIM = 6


def conv_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))


def case(seed=0):
    torch.manual_seed(100 + seed)
    gen = bg.Generator(SMALL_SHAPE, z_dim=Z_DIM, width=2)
    teacher = conv_net(10 + seed).eval().requires_grad_(False)
    return gen, teacher, conv_net(20 + seed)


def cfg_for(**over):
    """The paper recipe (Adam), one pseudo batch of 8; ``over`` applied after validation."""
    cfg = dataclasses.asdict(hp_for("gkt", gkt_recipe="paper", gkt_batch=8, gkt_batches=1))
    cfg.update(over)
    return cfg


def written_kl(s, t, temp):
    """(1/(B·TINY_CLASSES)) Σ_b Σ_k p_t (log p_t − log p_s) at temperature ``temp``."""
    lt, ls = torch.log_softmax(t / temp, dim=1), torch.log_softmax(s / temp, dim=1)
    return (lt.exp() * (lt - ls)).sum() / t.numel()


def written_attention(a, b):
    """Mean squared difference of the per-sample L2-normalised channel means of squares."""
    def amap(f):
        m = (f ** 2).mean(dim=1).flatten(1)
        return m / m.norm(dim=1, keepdim=True)
    return ((amap(a) - amap(b)) ** 2).mean()


def first_z(cfg, seed):
    torch.manual_seed(seed)
    return torch.randn(cfg["batch"], Z_DIM)


def test_student_step_is_adam_on_kl_at_the_temperature_plus_beta_attention_on_the_gate():
    """No generator step, one student step with threshold 1 (every sample passes), temperature 2
    and β = 0.5: the student moves as one Adam step (clipped at 5) on KL_T + 0.5·attention of the
    conv outputs, written out here."""
    cfg = cfg_for(n_gen=0, n_student=1, threshold=1.0, temperature=2.0, beta=0.5)
    gen, teacher, student = case()
    z = first_z(cfg, 3)
    with torch.no_grad():
        x = copy.deepcopy(gen).train()(z)
    expected = copy.deepcopy(student)
    opt = torch.optim.Adam(expected.parameters(), lr=cfg["s_lr"])
    t_feat, s_feat = teacher[0](x), expected[0](x)
    loss = written_kl(expected[1:](s_feat), teacher[1:](t_feat), 2.0) + 0.5 * written_attention(s_feat, t_feat)
    loss.backward()
    nn.utils.clip_grad_norm_(expected.parameters(), cfg["clip"])
    opt.step()

    torch.manual_seed(3)
    bg.distill(teacher, student, gen, 0, cfg, names=["0"], progress=False)
    for p, q in zip(student.parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_generator_step_is_adam_ascending_kl_at_the_temperature_on_the_gate():
    """One generator step, no student step, threshold 1 and temperature 2: the generator moves
    as one Adam step (clipped at 5) on −KL_T(teacher ‖ student) over G(z), written out here."""
    cfg = cfg_for(n_gen=1, n_student=0, threshold=1.0, temperature=2.0, beta=0.0)
    gen, teacher, student = case(1)
    z = first_z(cfg, 5)
    expected = copy.deepcopy(gen).train()
    opt = torch.optim.Adam(expected.parameters(), lr=cfg["g_lr"])
    x = expected(z)
    (-written_kl(student(x), teacher(x), 2.0)).backward()
    nn.utils.clip_grad_norm_(expected.parameters(), cfg["clip"])
    opt.step()

    torch.manual_seed(5)
    bg.distill(teacher, student, gen, 0, cfg, progress=False)
    for p, q in zip(gen.parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_distill_leaves_the_teacher_without_gradients(monkeypatch):
    """The teacher is frozen during distillation: after it, none of its parameters holds a
    gradient (the generator's loss runs through the teacher) and its flags and mode are back."""
    cfg = cfg_for(n_gen=1, n_student=1, threshold=1.0)
    gen, teacher, student = case(2)
    teacher.train().requires_grad_(True)
    torch.manual_seed(0)
    bg.distill(teacher, student, gen, 0, cfg, progress=False)
    assert all(p.grad is None for p in teacher.parameters())
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())


def test_a_student_phase_the_gate_empties_counts_as_an_empty_batch(monkeypatch):
    """With no generator step the student phase's gate decides alone: a teacher sure of the
    forget class on every pseudo sample empties it on every batch, so gkt gives up with its
    UserError rather than counting the batches as trained."""
    monkeypatch.setattr(bg, "GKT_MAX_EMPTY", 3)
    real, calls = bg._pseudo_batch, []

    def guarded(*a, **k):  # a miscounting loop fails here instead of hanging
        calls.append(1)
        if len(calls) > 30:
            raise RuntimeError("runaway loop")
        return real(*a, **k)

    monkeypatch.setattr(bg, "_pseudo_batch", guarded)
    gen, teacher, student = case(3)
    with torch.no_grad():
        teacher[-1].bias[0] = 50.0
    with pytest.raises(UserError, match="gate leaves nothing"):
        bg.distill(teacher, student, gen, 0, cfg_for(n_gen=0, n_student=1), progress=False)
    assert len(calls) == 3


def scripted(monkeypatch, outcomes, limit):
    """Replace _pseudo_batch by a script of outcomes (then False forever); record the calls and
    stop a runaway loop with an error instead of hanging."""
    calls = []

    def fake(z, *a, **k):
        calls.append(tuple(z.shape))
        if len(calls) > limit:
            raise RuntimeError("runaway loop")
        return outcomes[len(calls) - 1] if len(calls) <= len(outcomes) else False

    monkeypatch.setattr(bg, "_pseudo_batch", fake)
    return calls


def test_distill_gives_up_after_exactly_max_empty_batches_with_a_usererror(monkeypatch):
    """A gate that never lets anything through: exactly GKT_MAX_EMPTY pseudo batches (each of
    ``batch`` z's of the generator's dimension) are tried, then the UserError names the threshold
    and that count."""
    monkeypatch.setattr(bg, "GKT_MAX_EMPTY", 3)
    calls = scripted(monkeypatch, [], limit=30)
    gen, teacher, student = case()
    with pytest.raises(UserError, match=r"above 0\.25 on every pseudo sample of 3 batches in a row"):
        bg.distill(teacher, student, gen, 0, cfg_for(threshold=0.25, pseudo_batches=5), progress=False)
    assert calls == [(8, Z_DIM)] * 3


def test_distill_stops_with_a_warning_once_a_trained_student_meets_max_empty_batches(monkeypatch):
    """Empty, empty, trained, then empty forever (GKT_MAX_EMPTY = 3): the count restarts at 0
    after the trained batch, so 6 batches are tried; the warning says 3 were dropped and 1 of
    the 5 pseudo batches was trained, and the student is returned."""
    monkeypatch.setattr(bg, "GKT_MAX_EMPTY", 3)
    calls = scripted(monkeypatch, [False, False, True], limit=30)
    gen, teacher, student = case()
    with pytest.warns(UserWarning) as record:
        out = bg.distill(teacher, student, gen, 0, cfg_for(pseudo_batches=5), progress=False)
    assert out is student
    assert len(calls) == 6
    assert [str(w.message) for w in record] == [
        "gkt: the gate dropped 3 pseudo batches in a row; stopping after 1 of 5 pseudo batches"]


def test_distill_progress_bar_follows_the_progress_flag(monkeypatch):
    """distill shows a labelled progress bar by default and none with progress=False."""
    bars = []

    def spy(iterable, desc, enabled=True):
        bars.append((desc, enabled))
        return iterable

    monkeypatch.setattr(bg, "progress_bar", spy)
    scripted(monkeypatch, [True] * 4, limit=10)
    gen, teacher, student = case()
    bg.distill(teacher, student, gen, 0, cfg_for(pseudo_batches=2))
    bg.distill(teacher, student, gen, 0, cfg_for(pseudo_batches=2), progress=False)
    assert [e for _, e in bars] == [True, False]
    assert all(isinstance(d, str) and d for d, _ in bars)


class FakeLayer(nn.Module):
    """A transformer layer that returns (hidden, attention), as Hugging Face's layers may."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, h):
        out = torch.tanh(self.lin(h))
        return out, 7.0 * out


def fake_vit(n_layers, d=4, classes=3):
    torch.manual_seed(0)
    vit = nn.Module()
    vit.base = nn.Module()
    vit.base.embeddings = nn.Linear(2, d)
    vit.base.layers = nn.ModuleList([FakeLayer(d) for _ in range(n_layers)])
    vit.base.layernorm = nn.LayerNorm(d)
    vit.final = nn.Linear(d, classes)
    return vit


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_reference_vit_forward_feeds_the_embeddings_to_every_layer_and_the_last_to_the_head(n_layers):
    """Oracle: head(layernorm(last_layer(embeddings)[0])[:, 0]); with no layer the head sees
    the normalised embeddings themselves."""
    vit = fake_vit(n_layers)
    x = torch.randn(2, 5, 2)
    e = vit.base.embeddings(x)
    h = vit.base.layers[-1](e)[0] if n_layers else e
    expected = vit.final(vit.base.layernorm(h)[:, 0])
    torch.testing.assert_close(bg.ReferenceViTForward(vit)(x), expected)


def tiny_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, *SMALL_SHAPE, generator=g)
    y = torch.zeros(6, dtype=torch.long)
    return UnlearnData(forget_train=DataLoader(Triples(x, y), batch_size=4), retain_train=None, full_train=None,
                       num_classes=3, forget_class=0, setting="fullclass", dataset="Digits", net="tiny",
                       build_fresh=lambda: conv_net(99))


def test_gkt_does_not_wrap_a_cnn_that_merely_has_a_final_attribute():
    """Only a model with base.layers and final is run with the reference's ViT forward: a CNN
    with a ``final`` attribute (and no ``base``) is distilled as itself and returned as itself."""
    model = conv_net(0)
    model.final = "a CNN's own attribute"
    with torch.no_grad():
        model[-1].bias[0] = -30.0  # the gate keeps every pseudo sample
    data = tiny_data()
    out = bg.gkt(model, data, hp_for("gkt", data, gkt_batches=1), torch.device("cpu"))
    assert out is model
