"""Baselines that unlearn from synthetic inputs: UNSIR (learnt error-maximising noise plus
retain samples), emmn (error-minimising/-maximising noise, zero-shot) and gkt (gated knowledge
transfer from a generator, zero-shot). emmn and gkt use the trained model and the shape of the
forget samples only; gkt's student never sees a real image.
"""
import copy
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from engine import train_epoch
from methods import register
from utils import UserError, progress_bar

# ---- hyperparameters ----------------------------------------------------------------------
# UNSIR (Tarun et al. 2023), the reference's values: a batch of `noise_batch` images learnt by
# Adam (lr 0.1) on −CE(model(noise), forget class) + l2·mean_b ‖noise_b‖² for 25 steps (250 in
# the reference's sub-class script); impair: 1 epoch, Adam 1e-4, batch 32, on `noise_repeats`
# copies of the noise mixed with the first `per_class` retain samples of each class (fine
# classes in sub-class, as the reference); repair: 1 epoch, Adam 1e-4, batch 128, on those
# retain samples alone.
UNSIR = dict(noise_batch=32, noise_lr=0.1, l2=0.1, noise_repeats=80, per_class=500,
             impair_batch=32, impair_lr=1e-4, repair_batch=128, repair_lr=1e-4)
UNSIR_NOISE_STEPS = {"fullclass": 25, "subclass": 250}
# emmn, the reference's values: for every class a batch of `noise_batch` images, Adam lr 0.1:
# error-maximising for the forget class (25 steps, −CE + 0.1·mean_b ‖noise_b‖²), error-minimising
# for each other class (30 steps, CE alone); then 2 epochs, Adam 1e-4, batch 4, on
# `noise_repeats` copies of all of them, each labelled with its class.
EMMN = dict(noise_batch=4, max_steps=25, min_steps=30, noise_lr=0.1, l2=0.1, noise_repeats=80,
            batch=4, lr=1e-4, epochs=2)
# gkt (Chundawat et al. 2023), two recipes (-gkt_recipe):
#   paper:     the paper's code (ayushkumartarun/zero-shot-unlearning): a freshly initialised
#              student; per pseudo batch of `batch` z's, `n_gen` generator steps then
#              `n_student` student steps; Adam (generator 1e-3, student 2e-3); KL + β·attention
#              transfer, β = 250; generator width 64 (128 and 64 channels).
#   reference: the JiT reference's gkt: the student is a copy of the model with only its Conv2d
#              weights re-initialised (Xavier uniform); SGD lr 0.01, momentum 0.9 for both, the
#              student's lr driven by OneCycle (max 0.1); β = 5 on every Conv2d output (its
#              VGG16 activations) or every encoder layer (ViT); generator width 32 (its
#              generator uses transposed convolutions; here the paper's generator at that width).
# Common: z ~ N(0, I) of dimension 128, gate threshold 0.01 on the teacher's forget-class
# probability, KL temperature 1, gradient norms clipped to 5.
GKT = {
    "paper": dict(batch=256, n_gen=1, n_student=10, pseudo_batches=4000, opt="adam", g_lr=1e-3, s_lr=2e-3,
                  beta=250.0, student="fresh", features="stages", gen_width=64),
    "reference": dict(batch=128, n_gen=2, n_student=15, pseudo_batches=1000, opt="sgd", g_lr=0.01, s_lr=0.01,
                      s_max_lr=0.1, beta=5.0, student="conv_xavier", features="convs", gen_width=32),
}
GKT_COMMON = dict(z_dim=128, threshold=0.01, temperature=1.0, clip=5.0, momentum=0.9)
# ViT: the paper recipe has no convolutional feature maps to compare (the patch embedding is
# ViT's only one), so β = 0; the reference's ViT settings are its smaller budget.
GKT_VIT = {"paper": dict(beta=0.0), "reference": dict(batch=8, n_gen=1, n_student=5, pseudo_batches=101)}
# This project's reduced CPU budget on Digits/Digits5 (not the reference's; either recipe),
# ~10 s with SmallCNN on 2 cores: 100 pseudo batches of 16, 5 student steps each, a narrow
# generator. Expect a weak student (forget digit 3: Dr ~40% against the trained model's ~96%).
GKT_CPU_BUDGET = dict(batch=16, n_student=5, pseudo_batches=100, gen_width=8)
CPU_BUDGET_DATASETS = ("Digits", "Digits5")
GKT_MAX_EMPTY = 100  # consecutive pseudo batches gated out entirely before gkt gives up


def _unsir_args(p):
    p.add_argument("-unsir_noise_batch", choices=["full", "reference"], default="full",
                   help="UNSIR: train on the whole learnt noise batch (full, as the paper) or on its first "
                        "C images only, C = channels (reference: its indexing defect keeps 3 images)")


def _emmn_args(p):
    p.add_argument("-emmn_noise_batch", choices=["full", "reference"], default="full",
                   help="emmn: train on every learnt noise image (full) or on the first C of each class's "
                        "batch, C = channels (reference: the same indexing defect as UNSIR's)")


def _gkt_args(p):
    p.add_argument("-gkt_recipe", choices=list(GKT), default="paper",
                   help="gkt: the paper's recipe (fresh student, Adam, β=250) or the JiT reference's "
                        "(model copy with re-initialised convolutions, SGD + OneCycle, β=5)")
    p.add_argument("-gkt_batches", type=int, default=None,
                   help="gkt: number of pseudo batches (default: the recipe's table; a reduced budget on Digits)")


# ---- data helpers ---------------------------------------------------------------------------
_EMPTY = torch.tensor([])


def _labels(ds, fine=False):
    """Model labels (or fine labels) of every sample of ``ds``, read from the data set's
    ``targets``/``fine`` arrays through Subsets when it has them (no image is loaded), else from
    its (x, fine, y) items. Without fine labels, ``fine=True`` gives the model labels."""
    if isinstance(ds, Subset):
        return _labels(ds.dataset, fine)[np.asarray(ds.indices, dtype=np.int64)]
    arr = getattr(ds, "fine" if fine else "targets", None)
    if arr is not None:
        return np.asarray(arr, dtype=np.int64)
    if fine and getattr(ds, "targets", None) is not None:
        return np.asarray(ds.targets, dtype=np.int64)
    out = []
    for _, f, y in ds:
        use_fine = fine and not (torch.is_tensor(f) and f.numel() == 0)
        out.append(int(f if use_fine else y))
    return np.asarray(out, dtype=np.int64)


def _input_shape(loader):
    """(C, H, W) of the model's inputs, from the first forget sample."""
    return tuple(loader.dataset[0][0].shape)


def _forget_model_label(data, method):
    """The model label the forgotten samples carry: the forget class itself in full-class
    forgetting; in sub-class forgetting the coarse class of the forgotten fine class."""
    if data.forget_class is None:
        raise UserError(f"{method} needs a forget class; it does not apply to random forgetting")
    if data.setting != "subclass":
        return int(data.forget_class)
    labels = np.unique(_labels(data.forget_train.dataset))
    if len(labels) != 1:
        raise UserError(f"{method}: the forget samples carry {len(labels)} model labels, expected one")
    return int(labels[0])


def _full_class_only(data, method):
    if data.forget_class is None:
        raise UserError(f"{method} needs a forget class; it does not apply to random forgetting")
    if data.setting == "subclass":
        raise UserError(f"{method} applies to full-class forgetting only: a forgotten fine class is not one of "
                        f"the model's outputs (the reference offers {method} in full class only)")
    return int(data.forget_class)


class _Repeated(Dataset):
    """``images[j]`` labelled ``labels[j]``, the whole set repeated ``repeats`` times, as
    (x, empty, y) items."""

    def __init__(self, images, labels, repeats):
        self.images, self.labels, self.repeats = images, [int(v) for v in labels], repeats

    def __len__(self):
        return len(self.images) * self.repeats

    def __getitem__(self, i):
        j = i % len(self.images)
        return self.images[j], _EMPTY, self.labels[j]


class _Triples(Dataset):
    """``ds`` as (x, empty, model label) items, so they collate with noise items (sub-class
    data carries an int fine label in the middle slot, noise an empty tensor)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, _, y = self.ds[i]
        return x, _EMPTY, int(y)


def retain_subset(ds, per_class, by_fine=False):
    """The first ``per_class`` samples of every class of ``ds`` in data-set order (as the
    reference); classes are fine classes when ``by_fine``, model classes otherwise."""
    labels = _labels(ds, fine=by_fine)
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    return Subset(ds, np.sort(idx).tolist())


def _shuffled(ds, batch, seed):
    return DataLoader(ds, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed))


# ---- noise ------------------------------------------------------------------------------------

def learn_noise(model, init, label, steps, lr, l2, maximise):
    """Optimise the noise batch ``init`` (B, C, H, W) with Adam against the fixed model:
    error-maximising, loss −CE(model(x), label) + l2·mean_b ‖x_b‖², or error-minimising,
    loss CE + l2·mean_b ‖x_b‖². The model runs in eval mode and receives no gradient."""
    noise = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([noise], lr=lr)
    target = torch.full((len(noise),), int(label), dtype=torch.long, device=noise.device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            ce = F.cross_entropy(model(noise), target)
            loss = (-ce if maximise else ce) + l2 * noise.pow(2).flatten(1).sum(1).mean()
            (noise.grad,) = torch.autograd.grad(loss, [noise])
            opt.step()
    finally:
        model.train(was_training)
    return noise.detach()


def noise_images(noise, mode):
    """The noise images a method trains on. ``full``: the whole batch. ``reference``: the first
    C images only, C = channels of one image, as the reference, which loops over
    ``batch[0].size(0)`` (the channel count of the first image) instead of the batch size."""
    if mode == "reference":
        return noise[: noise[0].size(0)]
    if mode != "full":
        raise ValueError(f"unknown noise batch mode {mode!r}")
    return noise


@register("UNSIR", add_args=_unsir_args)
def unsir(model, data, args, device):
    """UNSIR (Tarun et al. 2023): impair with learnt error-maximising noise, then repair.

    - Noise: one batch of UNSIR["noise_batch"] = 32 images (the reference's fixed size, not
      -b), Adam lr 0.1 on −CE(model(noise), forget label) + 0.1·mean_b ‖noise_b‖², 25 steps
      (250 in sub-class, as the reference's sub-class script).
    - Impair: 1 epoch of cross-entropy, Adam 1e-4, batch 32, on 80 copies of the noise
      (labelled with the forget class) mixed with the first 500 retain samples of each class.
    - Repair: 1 epoch, a fresh Adam 1e-4, batch 128, on those retain samples alone.
    - Sub-class: the noise carries the coarse label of the forgotten fine class; the retain
      subset is taken per fine class (as the reference).
    - Parity: -unsir_noise_batch reference trains on the first 3 noise images only (the
      reference's indexing defect); the default uses the whole batch.
    - Not replicated: the reference learns the noise with the model in train mode and lets the
      noise steps' gradients accumulate in the model; here eval mode and noise-only gradients.
    """
    forget = _forget_model_label(data, "UNSIR")
    mode = getattr(args, "unsir_noise_batch", None) or "full"
    seed = getattr(args, "seed", 0) or 0
    c = UNSIR
    init = torch.randn(c["noise_batch"], *_input_shape(data.forget_train)).to(device)
    steps = UNSIR_NOISE_STEPS["subclass" if data.setting == "subclass" else "fullclass"]
    noise = noise_images(learn_noise(model, init, forget, steps, c["noise_lr"], c["l2"], maximise=True), mode)
    noise = noise.cpu()

    retain = _Triples(retain_subset(data.retain_train.dataset, c["per_class"], by_fine=data.setting == "subclass"))
    impair = ConcatDataset([_Repeated(noise, [forget] * len(noise), c["noise_repeats"]), retain])
    opt = torch.optim.Adam(model.parameters(), lr=c["impair_lr"])
    train_epoch(model, _shuffled(impair, c["impair_batch"], seed), opt, device, desc="UNSIR impair")
    opt = torch.optim.Adam(model.parameters(), lr=c["repair_lr"])
    train_epoch(model, _shuffled(retain, c["repair_batch"], seed), opt, device, desc="UNSIR repair")
    return model


@register("emmn", zero_shot=True, add_args=_emmn_args)
def emmn(model, data, args, device):
    """Error-minimising/-maximising noise (zero-shot; the reference's emmn).

    - Forget class: an error-maximising noise batch, Adam lr 0.1, 25 steps on
      −CE(model(noise), forget class) + 0.1·mean_b ‖noise_b‖².
    - Every other class k: an error-minimising noise batch, Adam lr 0.1, 30 steps on
      CE(model(noise), k) alone. Four images per class; labels are the model's own classes.
    - Then 2 epochs of cross-entropy (one Adam, lr 1e-4, batch 4) on 80 copies of all noise
      images, each labelled with its class. No real image is ever used (data.retain_train is
      None; the forget loader only gives the input shape).
    - Full class only: in sub-class forgetting the forgotten fine class is no model output.
    - Parity: -emmn_noise_batch reference keeps the first 3 images of each class's batch (the
      reference's indexing defect); the default keeps all.
    """
    forget = _full_class_only(data, "emmn")
    mode = getattr(args, "emmn_noise_batch", None) or "full"
    seed = getattr(args, "seed", 0) or 0
    c = EMMN
    shape = _input_shape(data.forget_train)
    images, labels = [], []
    # the reference draws the forget class's noise first, then the others in class order
    for cls in progress_bar([forget] + [k for k in range(data.num_classes) if k != forget], "emmn noise"):
        init = torch.randn(c["noise_batch"], *shape).to(device)
        if cls == forget:
            noise = learn_noise(model, init, cls, c["max_steps"], c["noise_lr"], c["l2"], maximise=True)
        else:
            noise = learn_noise(model, init, cls, c["min_steps"], c["noise_lr"], 0.0, maximise=False)
        noise = noise_images(noise, mode).cpu()
        images.append(noise)
        labels += [cls] * len(noise)
    loader = _shuffled(_Repeated(torch.cat(images), labels, c["noise_repeats"]), c["batch"], seed)
    opt = torch.optim.Adam(model.parameters(), lr=c["lr"])
    for epoch in range(c["epochs"]):
        train_epoch(model, loader, opt, device, desc=f"emmn {epoch + 1}/{c['epochs']}")
    return model


# ---- gkt ------------------------------------------------------------------------------------

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
    the ReLU before each pooling. ``convs`` (the reference): the blocks of a ModuleList (a
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


def gkt_config(data, args):
    """The gkt settings of this run: the recipe's table, its ViT row, this project's CPU
    budget on Digits, then -gkt_batches."""
    recipe = getattr(args, "gkt_recipe", None) or "paper"
    cfg = dict(GKT_COMMON, **GKT[recipe], recipe=recipe)
    if data.net == "ViT":
        cfg.update(GKT_VIT[recipe])
    if data.dataset in CPU_BUDGET_DATASETS:
        cfg.update(GKT_CPU_BUDGET)
    batches = getattr(args, "gkt_batches", None)
    if batches is not None:
        if batches < 1:
            raise UserError(f"-gkt_batches must be >= 1 (got {batches})")
        cfg["pseudo_batches"] = batches
    return cfg


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
    g_opt, s_opt, sched = opts
    t_taps, s_taps = taps
    temp = cfg["temperature"]
    for _ in range(cfg["n_gen"]):
        x = generator(z)
        t_logits = teacher(x)
        keep = gate(t_logits.detach(), forget_label, cfg["threshold"])
        if not keep.any():
            return False
        loss = -kl_div(student(x[keep]), t_logits[keep], temp)
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(generator.parameters(), cfg["clip"])
        g_opt.step()
    # The generator is fixed during the student steps, so G(z) and the teacher's outputs are
    # the same at each of them (the paper's code recomputes them every step).
    with torch.no_grad():
        x = generator(z)
        t_logits, t_feats = t_taps(x)
        keep = gate(t_logits, forget_label, cfg["threshold"])
        if not keep.any():
            return False
        x, t_logits, t_feats = x[keep], t_logits[keep], [f[keep] for f in t_feats]
    for _ in range(cfg["n_student"]):
        s_logits, s_feats = s_taps(x)
        loss = kl_div(s_logits, t_logits, temp)
        if cfg["beta"] > 0:
            loss = loss + cfg["beta"] * attention_loss(s_feats, t_feats)
        s_opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), cfg["clip"])
        s_opt.step()
        if sched is not None:
            sched.step()
    return True


def distill(teacher, student, generator, forget_label, cfg, names=(), progress=True):
    """Adversarial zero-shot distillation of ``teacher`` into ``student`` on the generator's
    gated pseudo data. It takes no data at all: the student only ever sees generator output.
    The teacher is frozen and in eval mode; student and generator train. When the gate drops
    GKT_MAX_EMPTY pseudo batches in a row it stops: with a warning if the student has trained,
    with a UserError if it never could. Returns the student."""
    device = next(generator.parameters()).device
    opts = _optimisers(student, generator, cfg)
    teacher_mode, grad_flags = teacher.training, [p.requires_grad for p in teacher.parameters()]
    teacher.eval().requires_grad_(False)
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


def _make_student(model, data, cfg, device):
    if cfg["student"] == "fresh":
        return data.build_fresh().to(device)
    student = copy.deepcopy(model)
    for m in student.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
    return student.requires_grad_(True)


@register("gkt", zero_shot=True, add_args=_gkt_args)
def gkt(model, data, args, device):
    """Gated knowledge transfer (Chundawat et al. 2023, zero-shot).

    - A generator maps z ~ N(0, I), dim 128, to images of the model's input shape (read from
      the first forget sample: the only use of forget data).
    - Gate: pseudo samples the teacher (the trained model, frozen, eval mode) gives the forget
      class a probability > 0.01 are dropped.
    - Per pseudo batch: generator step(s) maximising KL(teacher ‖ student), then student steps
      minimising KL (temperature 1, 'mean' over all elements) + β·attention transfer on the
      feature maps picked by ``feature_names``; gradient norms clipped to 5.
    - paper recipe (default): a freshly built student, Adam 1e-3/2e-3, 1+10 steps, batch 256,
      4,000 pseudo batches, β = 250 (0 for ViT). The paper's learning-rate halving on plateaus
      of a real-data validation loss is left out: a zero-shot method has no real data.
    - reference recipe (-gkt_recipe reference): the JiT reference's settings (see GKT).
    - Digits/Digits5: this project's reduced CPU budget (GKT_CPU_BUDGET).
    - The student's weights are copied into ``model``, which is returned.
    """
    forget = _full_class_only(data, "gkt")
    cfg = gkt_config(data, args)
    shape = _input_shape(data.forget_train)
    student = _make_student(model, data, cfg, device)
    generator = Generator(shape, cfg["z_dim"], cfg["gen_width"]).to(device)
    names = feature_names(model, shape, cfg["features"], device) if cfg["beta"] > 0 else []
    distill(model, student, generator, forget, cfg, names)
    model.load_state_dict(student.state_dict())
    return model
