"""Baselines that unlearn by training against a teacher or against wrong labels:
``blindspot`` (bad teacher), ``amnesiac`` (random relabelling) and ``scrub`` (SCRUB).

Each keeps the model object and trains it in place as the student; teachers are frozen copies.
"""
import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from cli import UserError
from engine import train_epoch
from hparams import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Overrides, hparam
from registry import register
from utils import progress_bar

# ---- hyperparameters --------------------------------------------------------------------------
# All three are quick on Digits/SmallCNN (a few seconds each on 2 CPU cores), so no data set
# gets a reduced budget here.

@dataclass(frozen=True)
class BlindspotHP:
    retain_frac: float = hparam(0.3, "blindspot: share of retain_train distilled from the competent teacher",
                                "bt_retain_frac", FRACTION)
    epochs: int = hparam(1, "blindspot epochs", "bt_epochs", AT_LEAST_ONE)
    lr: float = hparam(1e-4, "blindspot Adam learning rate", "bt_lr", POSITIVE)
    batch: int = hparam(256, "blindspot batch", "bt_batch", AT_LEAST_ONE)
    temperature: float = hparam(1.0, "blindspot KL temperature", "bt_temperature", POSITIVE)
    teacher: str = hparam("reference", "blindspot's incompetent teacher: reference (the authors': a fresh model of its "
                          "class, which for ViT is the ImageNet-pretrained trunk with a random head) or random (a "
                          "wholly random network, as the paper describes)", "bt_teacher", choices=("reference", "random"))
    vit_weights: str = hparam("google/vit-base-patch16-224", "ViT trunk of -bt_teacher reference: a "
                              "Hugging Face hub name in the local cache, or a local directory", "bt_vit_weights")


BLINDSPOT_OVERRIDES = Overrides((
    (dict(net="ViT"), dict(batch=128)),
    (dict(recipe="corrected"), dict(teacher="random")),
))


def incompetent_teacher(data, hp):
    """The authors' code builds the bad teacher as a fresh instance of its model class, the second
    model it initialises after seeding the default generator with -seed (the first is the net
    its weights are loaded into); ``reference`` draws it the same way, on a forked generator so
    that nothing after it changes. Its ViT class loads the ImageNet-pretrained trunk in its
    constructor, so only the head is random. ``random`` draws a fresh model from the current state."""
    if hp.teacher == "random":
        return data.build_fresh()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(data.seed)
        data.build_fresh()
        if data.net != "ViT":
            return data.build_fresh()
        from models import ViT

        try:
            return ViT(data.num_classes, weights=hp.vit_weights)
        except OSError as e:
            raise UserError(f"blindspot: cannot load the ViT trunk {hp.vit_weights!r} of the reference's incompetent "
                            f"teacher offline ({str(e).splitlines()[0]}); give a local directory with -bt_vit_weights, "
                            f"or use -bt_teacher random") from None


@dataclass(frozen=True)
class AmnesiacHP:
    """Adam, cross-entropy on the relabelled forget set plus retain_train."""
    epochs: int = hparam(3, "amnesiac epochs", "amnesiac_epochs", AT_LEAST_ONE)
    lr: float = hparam(1e-4, "amnesiac Adam learning rate", "amnesiac_lr", POSITIVE)
    batch: int = hparam(128, "amnesiac batch (whatever -b is)", "amnesiac_batch", AT_LEAST_ONE)


@dataclass(frozen=True)
class ScrubHP:
    epochs: int = hparam(3, "SCRUB epochs", "scrub_epochs", AT_LEAST_ONE)
    msteps: int = hparam(2, "SCRUB epochs that start with max-steps on the forget set", "scrub_msteps", NON_NEGATIVE)
    temperature: float = hparam(4.0, "SCRUB KL temperature T (the KL is scaled by T², as SCRUB's DistillKL)",
                                "scrub_temperature", POSITIVE)
    lr: float = hparam(5e-4, "SCRUB SGD learning rate", "scrub_lr", POSITIVE)
    momentum: float = hparam(0.9, "SCRUB SGD momentum", "scrub_momentum", NON_NEGATIVE)
    weight_decay: float = hparam(5e-4, "SCRUB SGD weight decay", "scrub_wd", NON_NEGATIVE)
    alpha: float = hparam(1.0, "SCRUB weight of the retain KL", "scrub_alpha", NON_NEGATIVE)
    gamma: float = hparam(5.0, "SCRUB weight of the retain cross-entropy", "scrub_gamma", NON_NEGATIVE)
    clip: Optional[float] = hparam(None, "SCRUB: clip the student's gradient norm to this before every max- and "
                                   "min-step (none: no clipping, as the SCRUB paper)", "scrub_clip", POSITIVE)


# The authors' full-class main never passes its α = 1, γ = 5 on, so their full-class SCRUB runs
# with the SCRUB function's own defaults, and it alone clips the gradient norm to 1.
SCRUB_OVERRIDES = Overrides(((dict(recipe="reference", setting="fullclass"), dict(alpha=0.001, gamma=0.99, clip=1.0)),))


def _loader_like(loader, dataset, batch, shuffle):
    """A loader over ``dataset`` with the workers and pinning of an existing loader."""
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle, num_workers=loader.num_workers,
                      pin_memory=loader.pin_memory)


def freeze(model):
    """Eval mode, no gradients: a teacher that never changes."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def distill_kl(student_logits, teacher_logits, temperature=1.0):
    """KL(softmax(teacher/T) ‖ softmax(student/T)), summed over classes, mean over the batch."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1), reduction="batchmean")


def _targets(ds):
    """Model labels of a data set: through Subsets down to a ``targets`` array, else by reading
    every sample."""
    if isinstance(ds, Subset):
        return _targets(ds.dataset)[np.asarray(ds.indices)]
    if hasattr(ds, "targets"):
        return np.asarray(ds.targets, dtype=np.int64)
    return np.array([int(ds[i][2]) for i in range(len(ds))], dtype=np.int64)


# ---- blindspot ------------------------------------------------------------------------------

class Tagged(Dataset):
    """(x, tag) pairs: tag 1 marks a forget sample (incompetent teacher), 0 a retain sample."""

    def __init__(self, ds, tag):
        self.ds, self.tag = ds, tag

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i][0], self.tag


def blindspot_set(forget_ds, retain_ds, retain_frac, seed):
    """All forget samples tagged 1, plus a random ``retain_frac`` of the retain samples
    (``int(retain_frac * n)``, drawn with a generator seeded by ``seed``) tagged 0."""
    n = int(retain_frac * len(retain_ds))
    idx = torch.randperm(len(retain_ds), generator=torch.Generator().manual_seed(seed))[:n]
    return ConcatDataset([Tagged(forget_ds, 1), Tagged(Subset(retain_ds, idx.tolist()), 0)])


def blindspot_loss(student_logits, tags, competent_logits, incompetent_logits, temperature=1.0):
    """KL(teacher ‖ student) where each sample's teacher is the incompetent one if tagged 1
    (forget) and the competent one if tagged 0 (retain); mean over the batch."""
    forget = tags.bool()[:, None]
    teacher = torch.where(forget, F.softmax(incompetent_logits / temperature, dim=1),
                          F.softmax(competent_logits / temperature, dim=1))
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), teacher, reduction="batchmean")


@register("blindspot", hparams=BlindspotHP, overrides=BLINDSPOT_OVERRIDES)
def blindspot(model, data, hp, device):
    """Bad teacher (Chundawat et al. 2023): the model, as the student, distils from a randomly
    initialised incompetent teacher on forget samples and from the original model on retain samples.
    Objective: KL(teacher softmax ‖ student softmax) at T = 1, each sample matched to its teacher.
    Data: all of forget_train plus a random 30% of retain_train (seeded by -seed), shuffled, batch 256 (128 for ViT).
    Adam lr 1e-4, 1 epoch; the student in train mode, both teachers frozen in eval mode.
    The incompetent teacher: see ``incompetent_teacher``.
    KL is the per-sample sum over classes, mean over the batch (the authors' code averages over classes too, a 1/C
    scale that Adam cancels).
    """
    incompetent = freeze(incompetent_teacher(data, hp)).to(device)
    competent = freeze(copy.deepcopy(model)).to(device)
    ds = blindspot_set(data.forget_train.dataset, data.retain_train.dataset, hp.retain_frac, data.seed)
    loader = _loader_like(data.retain_train, ds, hp.batch, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr)
    model.train()
    for epoch in range(hp.epochs):
        for x, tags in progress_bar(loader, f"blindspot {epoch + 1}/{hp.epochs}"):
            x, tags = x.to(device, non_blocking=True), tags.to(device)
            with torch.no_grad():
                good, bad = competent(x), incompetent(x)
            loss = blindspot_loss(model(x), tags, good, bad, hp.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


# ---- amnesiac -------------------------------------------------------------------------------

def random_other_labels(labels, num_classes, generator=None):
    """For every label y a class drawn uniformly from the other ``num_classes - 1`` classes."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + shift) % num_classes


class Relabelled(Dataset):
    """``ds`` with its model labels replaced by ``labels`` (the fine-label slot is kept)."""

    def __init__(self, ds, labels):
        self.ds, self.labels = ds, torch.as_tensor(labels, dtype=torch.long)

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, fine, _ = self.ds[i]
        return x, fine, int(self.labels[i])


def amnesiac_set(forget_ds, retain_ds, num_classes, generator=None):
    """Forget samples relabelled with random other classes, followed by the retain samples as they are."""
    labels = random_other_labels(_targets(forget_ds), num_classes, generator)
    return ConcatDataset([Relabelled(forget_ds, labels), retain_ds])


@register("amnesiac", hparams=AmnesiacHP)
def amnesiac(model, data, hp, device):
    """Amnesiac unlearning (Graves et al. 2021): cross-entropy training on forget samples relabelled
    with a random other class, mixed with retain_train.
    Relabelling: uniform over the classes other than the sample's own model label (in sub-class
    forgetting that is the coarse label), drawn with a generator seeded by -seed.
    Data: the relabelled forget set plus all of retain_train, shuffled, batch 128 (whatever -b is).
    Adam lr 1e-4, 3 epochs, train mode.
    """
    if data.num_classes < 2:
        raise UserError("amnesiac needs at least two classes to relabel into")
    ds = amnesiac_set(data.forget_train.dataset, data.retain_train.dataset, data.num_classes,
                      torch.Generator().manual_seed(data.seed))
    loader = _loader_like(data.retain_train, ds, hp.batch, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr)
    for epoch in range(hp.epochs):
        train_epoch(model, loader, opt, device, desc=f"amnesiac {epoch + 1}/{hp.epochs}")
    return model


# ---- SCRUB ----------------------------------------------------------------------------------

def scrub_pair(model):
    """(student, teacher): the student is ``model`` itself, trained in place; the teacher a
    frozen copy of the original."""
    return model, freeze(copy.deepcopy(model))


def _step(student, opt, loss, clip):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(student.parameters(), clip)
    opt.step()


def scrub_max_epoch(student, teacher, loader, opt, temperature, device, clip=None):
    """One pass of max-steps: ascend T²·KL(teacher ‖ student) on the forget samples, the
    student's gradient norm clipped to ``clip`` (None: unclipped)."""
    student.train()
    for x, _, _ in progress_bar(loader, "scrub max"):
        x = x.to(device, non_blocking=True)
        with torch.no_grad():
            t = teacher(x)
        _step(student, opt, -distill_kl(student(x), t, temperature) * temperature ** 2, clip)


def scrub_min_epoch(student, teacher, loader, opt, temperature, alpha, gamma, device, clip=None):
    """One pass of min-steps on the retain samples: γ·CE + α·T²·KL(teacher ‖ student), the
    student's gradient norm clipped to ``clip`` (None: unclipped)."""
    student.train()
    for x, _, y in progress_bar(loader, "scrub min"):
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device)
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        _step(student, opt, gamma * F.cross_entropy(s, y) + alpha * distill_kl(s, t, temperature) * temperature ** 2,
              clip)


@register("scrub", hparams=ScrubHP, overrides=SCRUB_OVERRIDES)
def scrub(model, data, hp, device):
    """SCRUB (Kurmanji et al. 2023): the model (student) moves away from a frozen copy of itself
    (teacher) on forget samples while staying close to it, and correct, on retain samples.
    Per epoch: if epoch <= msteps (2), max-steps on forget_train: maximise T²·KL(teacher ‖ student);
    then min-steps on retain_train: γ·CE + α·T²·KL(teacher ‖ student), T = 4, α = 1, γ = 5; 3 epochs.
    One SGD optimiser (lr 5e-4, momentum 0.9, wd 5e-4) over the student's parameters serves both
    phases (the authors' code holds the student it scores); the teacher never changes.
    Loaders are the main's: forget_train unshuffled, retain_train shuffled.
    The student trains in train mode, the teacher is in eval mode; no lr decay (SCRUB's
    decay epochs lie beyond epoch 3). Gradient norm clipped to 1 under the reference recipe in
    full-class forgetting only (SCRUB_OVERRIDES); unclipped otherwise, as the SCRUB paper.
    """
    student, teacher = scrub_pair(model)
    teacher.to(device)
    opt = torch.optim.SGD(student.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    for epoch in range(1, hp.epochs + 1):
        if epoch <= hp.msteps:
            scrub_max_epoch(student, teacher, data.forget_train, opt, hp.temperature, device, hp.clip)
        scrub_min_epoch(student, teacher, data.retain_train, opt, hp.temperature, hp.alpha, hp.gamma, device, hp.clip)
    return student
