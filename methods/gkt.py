"""Gated knowledge transfer (``gkt``, Chundawat et al. 2023, zero-shot): a generator produces
pseudo data, the teacher's outputs on it are gated, and a student learns from the teacher on the
rest. It uses the trained model and the shape of the forget samples only; the student never sees
a real image.
"""
import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cli import UserError
from hparams import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Overrides, hparam
from methods.noise import full_class_only, input_shape
from registry import register
from utils import check_allocatable, progress_bar

# ---- hyperparameters --------------------------------------------------------------------------
#   paper:     as the paper's authors train it: a freshly initialised student; per pseudo
#              batch of `batch` z's, `n_gen` generator steps then `n_student` student steps;
#              Adam (generator 1e-3, student 2e-3); KL + β·attention transfer, β = 250;
#              generator width 64 (128 and 64 channels).
#   reference: as JiT's authors run gkt: the student is a copy of the model with only its Conv2d
#              weights re-initialised (Xavier uniform); SGD, the generator at lr 0.01 and momentum
#              0.9, the student's lr and momentum driven by OneCycle (max lr 0.1, momentum cycled
#              between 0.85 and 0.95: OneCycle overrides what its optimiser was built with); β = 5 on every Conv2d output (its
#              VGG16 activations) or every encoder layer (ViT); generator width 32 (its
#              generator uses transposed convolutions; here the paper's generator at that width).
# Common: z ~ N(0, I) of dimension 128, gate threshold 0.01 on the teacher's forget-class
# probability, KL temperature 1, gradient norms clipped to 5.


# -gkt_recipe's presets, applied over GktHP's defaults (the paper's values) before GKT_OVERRIDES.
GKT_PRESETS = dict(
    reference=Overrides((
        ({}, dict(batch=128, n_gen=2, n_student=15, pseudo_batches=1000, opt="sgd", g_lr=0.01, s_lr=0.01, beta=5.0,
                  student="conv_xavier", features="convs", gen_width=32, teacher_mode="train")),
        (dict(net="ViT"), dict(batch=8, n_gen=1, n_student=5, pseudo_batches=101)),  # its smaller ViT budget
    )),
    paper=Overrides((
        ({}, dict(vit_forward="full")),
        # ViT: the paper recipe has no convolutional feature maps to compare (the patch embedding
        # is ViT's only one), so β = 0. The paper's batch of 256 would hold a graph through
        # generator, teacher and student of 0.28 GiB per 224-px image (measured on the CPU),
        # about 99 GB at the peak with weights, Adam state and 25% for the allocator: batch 64
        # bounds it near 27 GB.
        (dict(net="ViT"), dict(beta=0.0, batch=64)),
    )),
)


@dataclass(frozen=True)
class GktHP:
    """The paper recipe's values (the field defaults below, but for ``variant``); ``variant``
    names the preset applied over them (the reference recipe's settings unless -recipe corrected)."""
    variant: str = hparam("reference", "gkt preset: reference, the settings of JiT's authors (model copy with "
                          "re-initialised convolutions, SGD + OneCycle, β=5), or paper, the paper's recipe (fresh "
                          "student, Adam, β=250)", "gkt_recipe", presets=GKT_PRESETS)
    batch: int = hparam(256, "gkt pseudo batch size", "gkt_batch", AT_LEAST_ONE)
    n_gen: int = hparam(1, "gkt generator steps per pseudo batch", "gkt_n_gen", AT_LEAST_ONE)
    n_student: int = hparam(10, "gkt student steps per pseudo batch", "gkt_n_student", AT_LEAST_ONE)
    pseudo_batches: int = hparam(4000, "gkt number of pseudo batches", "gkt_batches", AT_LEAST_ONE)
    opt: str = hparam("adam", "gkt optimiser of generator and student", "gkt_opt", choices=("adam", "sgd"))
    g_lr: float = hparam(1e-3, "gkt generator learning rate", "gkt_g_lr", POSITIVE)
    s_lr: float = hparam(2e-3, "gkt student learning rate (adam; under sgd the student's OneCycle sets the rate, "
                         "starting at gkt_s_max_lr/25)", "gkt_s_lr", POSITIVE)
    s_max_lr: float = hparam(0.1, "gkt student OneCycle peak learning rate (sgd only)", "gkt_s_max_lr", POSITIVE)
    beta: float = hparam(250.0, "gkt weight β of attention transfer", "gkt_beta", NON_NEGATIVE)
    student: str = hparam("fresh", "gkt student: freshly built, or a model copy with Xavier-initialised convolutions",
                          "gkt_student", choices=("fresh", "conv_xavier"))
    features: str = hparam("stages", "gkt feature maps for attention transfer", "gkt_features",
                           choices=("stages", "convs"))
    gen_width: int = hparam(64, "gkt generator width", "gkt_gen_width", AT_LEAST_ONE)
    z_dim: int = hparam(128, "gkt dimension of z", "gkt_z_dim", AT_LEAST_ONE)
    threshold: float = hparam(0.01, "gkt gate: pseudo samples whose teacher probability of the forget class exceeds "
                              "this are dropped", "gkt_threshold", POSITIVE)
    temperature: float = hparam(1.0, "gkt KL temperature", "gkt_temperature", POSITIVE)
    clip: float = hparam(5.0, "gkt gradient-norm clip", "gkt_clip", POSITIVE)
    momentum: float = hparam(0.9, "gkt generator SGD momentum (sgd only; the student's OneCycle cycles its momentum "
                             "between 0.85 and 0.95)", "gkt_momentum", NON_NEGATIVE)
    teacher_mode: str = hparam("eval", "gkt teacher mode: eval, or train (the authors' code never puts its teacher in "
                               "eval mode: dropout stays active in the gate and the teacher's logits, drawn anew at "
                               "every generator and student step)", "gkt_teacher_mode", choices=("eval", "train"))
    vit_forward: str = hparam("reference", "gkt with ViT: reference (the authors' forward: every encoder layer "
                              "applied to the embedding output, so the last layer alone reaches the head, for teacher, "
                              "student and the evaluation) or the full forward", "gkt_vit_forward",
                              choices=("reference", "full"))


GKT_OVERRIDES = Overrides((
    (dict(recipe="corrected"), dict(variant="paper")),
    # A reduced CPU budget on Digits/Digits5 (not part of either recipe's protocol),
    # ~10 s with SmallCNN on 2 cores. Expect a weak student (forget digit 3: Dr ~40% against the
    # trained model's ~96%).
    (dict(dataset=("Digits", "Digits5")), dict(batch=16, n_student=5, pseudo_batches=100, gen_width=8)),
))
GKT_MAX_EMPTY = 100  # consecutive pseudo batches gated out entirely before gkt gives up


class Generator(nn.Module):
    """DCGAN-style generator (the paper's): z → Linear → (2w, H/4, W/4) → BN →
    [×2 upsample, 3×3 conv, BN, LeakyReLU 0.2] with 2w then w channels → 3×3 conv to C
    channels → BN. Resized to (H, W) when those are not multiples of 4."""

    def __init__(self, shape, z_dim=128, width=64):
        super().__init__()
        c, h, w = shape
        self.shape, self.z_dim = tuple(shape), z_dim
        self.base = (max(h // 4, 1), max(w // 4, 1))
        self.fc = nn.Linear(z_dim, 2 * width * self.base[0] * self.base[1])
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, width, 3, padding=1),
            nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, c, 3, padding=1), nn.BatchNorm2d(c),
        )

    def forward(self, z):
        x = self.body(self.fc(z).view(len(z), -1, *self.base))
        if tuple(x.shape[-2:]) != self.shape[1:]:
            x = F.interpolate(x, size=self.shape[1:], mode="bilinear", align_corners=False)
        return x


def gate(teacher_logits, forget_label, threshold=0.01):
    """Keep-mask of a pseudo batch: True where the teacher gives the forget class a probability
    of at most ``threshold``; the other samples are dropped."""
    return F.softmax(teacher_logits, dim=1)[:, forget_label] <= threshold


def kl_div(student_logits, teacher_logits, temperature=1.0):
    """KL(teacher ‖ student) of the temperature-softened distributions, averaged over every
    (sample, class) element — F.kl_div's 'mean' reduction, as the paper's code (β is tuned
    against this scale)."""
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits / temperature, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).mean()


def attention_map(f):
    """Attention map of features (B, C, ...): squared activations averaged over dim 1,
    flattened, L2-normalised per sample (Zagoruyko & Komodakis 2017)."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student_feats, teacher_feats):
    """Σ over feature pairs of the mean squared difference of their attention maps."""
    return sum((attention_map(s) - attention_map(t)).pow(2).mean() for s, t in zip(student_feats, teacher_feats))


def feature_names(model, shape, rule, device):
    """Names of the modules whose outputs the attention term compares.

    ``stages``: for each spatial resolution, the last module (in execution order) to output a
    4-D map of that resolution (1×1 maps excluded) — the output of each stage of a CNN, such as
    the ReLU before each pooling. ``convs`` (the reference recipe's): the blocks of a ModuleList (a
    transformer's encoder layers) if the model has one, else every Conv2d."""
    modules = list(model.named_modules())
    if rule == "convs":
        blocks = [f"{n}.{i}" for n, m in modules if isinstance(m, nn.ModuleList) for i in range(len(m))]
        return blocks or [n for n, m in modules if isinstance(m, nn.Conv2d)]
    if rule != "stages":
        raise ValueError(f"unknown feature rule {rule!r}")
    seen = []

    def record(name):
        return lambda module, inputs, output: seen.append((name, output))

    hooks = [m.register_forward_hook(record(n)) for n, m in modules if n]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *shape, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    runs = []  # [resolution, name of the last module producing it]
    for name, out in seen:
        if torch.is_tensor(out) and out.dim() == 4:
            hw = tuple(out.shape[-2:])
            if runs and runs[-1][0] == hw:
                runs[-1][1] = name
            else:
                runs.append([hw, name])
    return [name for hw, name in runs if hw != (1, 1)]


class _Taps:
    """Forward hooks on the named modules; ``taps(x)`` returns (logits, [their outputs])."""

    def __init__(self, model, names):
        self.model, self.feats, self.active = model, [], False
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook) for n in names]

    def _hook(self, module, inputs, output):
        if self.active:
            self.feats.append(output[0] if isinstance(output, (tuple, list)) else output)

    def __call__(self, x):
        self.active, self.feats = True, []
        try:
            logits = self.model(x)
        finally:
            self.active = False
        feats, self.feats = self.feats, []
        return logits, feats

    def close(self):
        for h in self.handles:
            h.remove()


def _optimisers(student, generator, cfg):
    if cfg["opt"] == "adam":
        return (torch.optim.Adam(generator.parameters(), lr=cfg["g_lr"]),
                torch.optim.Adam(student.parameters(), lr=cfg["s_lr"]), None)
    g_opt = torch.optim.SGD(generator.parameters(), lr=cfg["g_lr"], momentum=cfg["momentum"])
    s_opt = torch.optim.SGD(student.parameters(), lr=cfg["s_lr"], momentum=cfg["momentum"])
    sched = torch.optim.lr_scheduler.OneCycleLR(s_opt, max_lr=cfg["s_max_lr"],
                                                total_steps=cfg["pseudo_batches"] * cfg["n_student"])
    return g_opt, s_opt, sched


def _pseudo_batch(z, teacher, student, generator, taps, forget_label, cfg, opts):
    """One pseudo batch: ``n_gen`` generator steps maximising the student–teacher KL, then
    ``n_student`` student steps minimising KL + β·attention on the gated batch G(z). Returns
    False (nothing trained further) when the gate drops every sample."""
    if cfg["teacher_mode"] == "train":
        return _pseudo_batch_train_teacher(z, teacher, student, generator, taps, forget_label, cfg, opts)
    g_opt, s_opt, sched = opts
    t_taps, s_taps = taps
    temp = cfg["temperature"]
    for _ in range(cfg["n_gen"]):
        x = generator(z)
        t_logits = teacher(x)
        keep = gate(t_logits.detach(), forget_label, cfg["threshold"])
        if not keep.any():
            return False
        _generator_step(-kl_div(student(x[keep]), t_logits[keep], temp), generator, g_opt, cfg)
    # The generator is fixed during the student steps and the teacher is deterministic in eval
    # mode, so G(z), the gate and the teacher's outputs are the same at each of them.
    with torch.no_grad():
        x = generator(z)
        t_logits, t_feats = t_taps(x)
        keep = gate(t_logits, forget_label, cfg["threshold"])
        if not keep.any():
            return False
        x, t_logits, t_feats = x[keep], t_logits[keep], [f[keep] for f in t_feats]
    for _ in range(cfg["n_student"]):
        _student_step(s_taps(x), t_logits, t_feats, student, s_opt, sched, cfg)
    return True


def _pseudo_batch_train_teacher(z, teacher, student, generator, taps, forget_label, cfg, opts):
    """``_pseudo_batch`` with the teacher in train mode, with the authors' order of forwards:
    every step gates on a teacher forward of its own, then (generator step) runs the student and
    the teacher again, or (student step) the teacher again and then the student, so each of
    these forwards draws its own dropout masks."""
    g_opt, s_opt, sched = opts
    t_taps, s_taps = taps
    temp = cfg["temperature"]
    for _ in range(cfg["n_gen"]):
        x = generator(z)
        with torch.no_grad():
            keep = gate(teacher(x), forget_label, cfg["threshold"])
        if not keep.any():
            return False
        x = x[keep]
        s_logits = student(x)
        _generator_step(-kl_div(s_logits, teacher(x), temp), generator, g_opt, cfg)
    with torch.no_grad():
        x = generator(z)
    for _ in range(cfg["n_student"]):
        with torch.no_grad():
            keep = gate(teacher(x), forget_label, cfg["threshold"])
            if not keep.any():
                return False
            t_logits, t_feats = t_taps(x[keep])
        _student_step(s_taps(x[keep]), t_logits, t_feats, student, s_opt, sched, cfg)
    return True


def _generator_step(loss, generator, g_opt, cfg):
    g_opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(generator.parameters(), cfg["clip"])
    g_opt.step()


def _student_step(student_out, t_logits, t_feats, student, s_opt, sched, cfg):
    s_logits, s_feats = student_out
    loss = kl_div(s_logits, t_logits, cfg["temperature"])
    if cfg["beta"] > 0:
        loss = loss + cfg["beta"] * attention_loss(s_feats, t_feats)
    s_opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(student.parameters(), cfg["clip"])
    s_opt.step()
    if sched is not None:
        sched.step()


def distill(teacher, student, generator, forget_label, cfg, names=(), progress=True):
    """Adversarial zero-shot distillation of ``teacher`` into ``student`` on the generator's
    gated pseudo data. It takes no data at all: the student only ever sees generator output.
    The teacher is frozen, in the mode ``teacher_mode`` gives; student and generator train. When the gate drops
    GKT_MAX_EMPTY pseudo batches in a row it stops: with a warning if the student has trained,
    with a UserError if it never could. Returns the student."""
    device = next(generator.parameters()).device
    opts = _optimisers(student, generator, cfg)
    teacher_mode, grad_flags = teacher.training, [p.requires_grad for p in teacher.parameters()]
    teacher.train(cfg["teacher_mode"] == "train").requires_grad_(False)
    student.train()
    generator.train()
    taps = (_Taps(teacher, names), _Taps(student, names))
    try:
        empty, trained = 0, 0
        for _ in progress_bar(range(cfg["pseudo_batches"]), "gkt", progress):
            while not _pseudo_batch(torch.randn(cfg["batch"], generator.z_dim).to(device),
                                    teacher, student, generator, taps, forget_label, cfg, opts):
                empty += 1
                if empty < GKT_MAX_EMPTY:
                    continue
                if not trained:
                    raise UserError(f"gkt: the teacher gives the forget class a probability above "
                                    f"{cfg['threshold']} on every pseudo sample of {empty} batches in a row, so "
                                    f"the gate leaves nothing to learn from (an under-trained teacher?)")
                warnings.warn(f"gkt: the gate dropped {empty} pseudo batches in a row; stopping after "
                              f"{trained} of {cfg['pseudo_batches']} pseudo batches")
                return student
            empty, trained = 0, trained + 1
    finally:
        for t in taps:
            t.close()
        teacher.train(teacher_mode)
        for p, flag in zip(teacher.parameters(), grad_flags):
            p.requires_grad_(flag)
    return student


class ReferenceViTForward(nn.Module):
    """A ViT run as the authors' gkt runs it: their ViT forward with ``return_activations``
    passes the embedding output to every encoder layer (not the previous layer's output), so
    the head sees the final layer norm of the last layer applied to the embeddings; 11 of
    ViT-B's 12 layers only feed the attention-transfer term. Wraps the model (same parameters)."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        base = self.vit.base
        embedded = base.embeddings(x)
        h = embedded
        for layer in base.layers:
            h = layer(embedded)
            h = h[0] if isinstance(h, tuple) else h
        return self.vit.final(base.layernorm(h)[:, 0])


def _is_vit(model):
    return hasattr(model, "base") and hasattr(model.base, "layers") and hasattr(model, "final")


def _make_student(model, data, cfg, device):
    if cfg["student"] == "fresh":
        return data.build_fresh().to(device)
    student = copy.deepcopy(model)
    for m in student.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
    return student.requires_grad_(True)


@register("gkt", hparams=GktHP, overrides=GKT_OVERRIDES, zero_shot=True)
def gkt(model, data, hp, device):
    """Gated knowledge transfer (Chundawat et al. 2023, zero-shot).

    - A generator maps z ~ N(0, I), dim 128, to images of the model's input shape (read from
      the first forget sample: the only use of forget data).
    - Gate: pseudo samples the teacher (the trained model, frozen) gives the forget class a
      probability > 0.01 are dropped. The teacher runs in eval mode, or under the reference
      variant in train mode (dropout active, redrawn at every step).
    - Per pseudo batch: generator step(s) maximising KL(teacher ‖ student), then student steps
      minimising KL (temperature 1, 'mean' over all elements) + β·attention transfer on the
      feature maps picked by ``feature_names``; gradient norms clipped to 5.
    - paper recipe (-recipe corrected, or -gkt_recipe paper): a freshly built student, Adam 1e-3/2e-3, 1+10 steps, batch 256,
      4,000 pseudo batches, β = 250 (0 for ViT). The paper's learning-rate halving on plateaus
      of a real-data validation loss is left out: a zero-shot method has no real data.
    - reference recipe (the default, -recipe reference): the settings of JiT's authors (GKT_PRESETS).
    - Digits/Digits5: a reduced CPU budget (GKT_OVERRIDES).
    - ViT under the reference variant: teacher, student and the returned model run
      ReferenceViTForward; -gkt_vit_forward full gives the real forward.
    - The student's weights are copied into ``model``, which is returned.
    """
    forget = full_class_only(data, "gkt")
    cfg = dataclasses.asdict(hp)
    shape = input_shape(data.forget_train)
    student = _make_student(model, data, cfg, device)
    wrap = ReferenceViTForward if cfg["vit_forward"] == "reference" and _is_vit(model) else (lambda m: m)
    teacher, pupil = wrap(model), wrap(student)
    # the generator's first layer and its widest activation (2w channels at full size)
    check_allocatable(2 * cfg["gen_width"] * math.prod(shape[1:]) * (cfg["batch"] + cfg["z_dim"] // 16),
                      "-gkt_batch, -gkt_z_dim and -gkt_gen_width", device)
    generator = Generator(shape, cfg["z_dim"], cfg["gen_width"]).to(device)
    names = feature_names(teacher, shape, cfg["features"], device) if cfg["beta"] > 0 else []
    distill(teacher, pupil, generator, forget, cfg, names)
    model.load_state_dict(student.state_dict())
    return wrap(model)  # under ReferenceViTForward, evaluation runs that forward too
