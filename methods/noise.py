"""Baselines that unlearn from learnt noise: UNSIR (error-maximising noise plus retain samples)
and emmn (error-minimising/-maximising noise, zero-shot: it uses the trained model and the shape
of the forget samples only).
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from cli import UserError
from engine import train_epoch
from hparams import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Overrides, hparam
from registry import register
from utils import check_allocatable, progress_bar

NOISE_IMAGES = ("reference", "full")


# ---- hyperparameters --------------------------------------------------------------------------

@dataclass(frozen=True)
class LearntNoiseHP:
    """What UNSIR and emmn share: noise images learnt by Adam (the error-maximising ones with a
    penalty on their squared norm), then trained on in ``noise_repeats`` copies. Each of these
    flags serves both methods (a run runs one of them)."""
    noise_lr: float = hparam(0.1, "UNSIR and emmn: Adam learning rate of the learnt noise", "noise_lr", POSITIVE)
    l2: float = hparam(0.1, "UNSIR and emmn: weight l2 of the error-maximising noise's penalty l2·mean_b ‖noise_b‖²",
                       "noise_l2", NON_NEGATIVE)
    noise_repeats: int = hparam(80, "UNSIR and emmn: copies of the learnt noise trained on", "noise_repeats",
                                AT_LEAST_ONE)
    images: str = hparam("reference", "UNSIR and emmn: train on the first C images of each learnt noise batch, C = "
                         "channels (reference: its indexing defect keeps 3 images) or on the whole batch (full, as the "
                         "papers)", "noise_images", choices=NOISE_IMAGES)
    retain_test_batch: str = hparam("noise", "UNSIR and emmn: batches of RetainTestAcc's mean-of-batch accuracy: the "
                                    "noise batch (the authors' code re-binds its retained-test loader to it) or -b",
                                    "noise_retain_test_batch", choices=("noise", "b"))


LEARNT_NOISE_ROWS = ((dict(recipe="corrected"), dict(images="full", retain_test_batch="b")),)


@dataclass(frozen=True)
class UnsirHP(LearntNoiseHP):
    """One batch of error-maximising noise for the forget class; impair on its copies mixed with
    the first ``per_class`` retain samples of each class (fine classes in sub-class); repair on
    those retain samples alone."""
    noise_batch: int = hparam(32, "UNSIR noise images learnt (a fixed size, not -b)", "unsir_noise_size",
                              AT_LEAST_ONE)
    noise_steps: int = hparam(25, "UNSIR Adam steps learning the noise", "unsir_noise_steps", AT_LEAST_ONE)
    per_class: int = hparam(500, "UNSIR retain samples per class", "unsir_per_class", AT_LEAST_ONE)
    impair_batch: int = hparam(32, "UNSIR impair batch", "unsir_impair_batch", AT_LEAST_ONE)
    impair_lr: float = hparam(1e-4, "UNSIR impair Adam learning rate", "unsir_impair_lr", POSITIVE)
    repair_batch: int = hparam(128, "UNSIR repair batch", "unsir_repair_batch", AT_LEAST_ONE)
    repair_lr: float = hparam(1e-4, "UNSIR repair Adam learning rate", "unsir_repair_lr", POSITIVE)


UNSIR_OVERRIDES = Overrides(((dict(setting="subclass"), dict(noise_steps=250)),  # its sub-class script
                             *LEARNT_NOISE_ROWS))


@dataclass(frozen=True)
class EmmnHP(LearntNoiseHP):
    """For every class a batch of noise images: error-maximising for the forget class,
    error-minimising (cross-entropy alone) for each other class; then ``epochs`` of Adam on
    copies of all of them, each labelled with its class."""
    noise_batch: int = hparam(4, "emmn noise images per class", "emmn_noise_size", AT_LEAST_ONE)
    max_steps: int = hparam(25, "emmn steps of the forget class's error-maximising noise", "emmn_max_steps",
                            AT_LEAST_ONE)
    min_steps: int = hparam(30, "emmn steps of each other class's error-minimising noise", "emmn_min_steps",
                            AT_LEAST_ONE)
    batch: int = hparam(4, "emmn training batch", "emmn_batch", AT_LEAST_ONE)
    lr: float = hparam(1e-4, "emmn training Adam learning rate", "emmn_lr", POSITIVE)
    epochs: int = hparam(2, "emmn training epochs", "emmn_epochs", AT_LEAST_ONE)


EMMN_OVERRIDES = Overrides(LEARNT_NOISE_ROWS)


def retain_test_batch(hp):
    """The batch RetainTestAcc is scored in after a learnt-noise method (None: -b). The
    authors' UNSIR and emmn re-bind the retained-test loader to their noise batch (32 and 4)
    before scoring, and a mean of per-batch accuracies depends on the batch."""
    if isinstance(hp, LearntNoiseHP) and hp.retain_test_batch == "noise":
        return hp.noise_batch
    return None


def noise_eval_batches(hp):
    """UNSIR's and emmn's eval_batches (registry.Method): RetainTestAcc in the noise batch, when
    ``retain_test_batch`` gives one."""
    batch = retain_test_batch(hp)
    return {} if batch is None else {"RetainTestAcc": batch}


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


def input_shape(loader):
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


def full_class_only(data, method):
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
    """The first ``per_class`` samples of every class of ``ds`` in data-set order; classes are
    fine classes when ``by_fine``, model classes otherwise."""
    labels = _labels(ds, fine=by_fine)
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    return Subset(ds, np.sort(idx).tolist())


def _shuffled(ds, batch, seed):
    # an epoch's order is one int64 permutation of len(ds), on the CPU
    check_allocatable(len(ds), "-noise_repeats", torch.device("cpu"), itemsize=8)
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
    C images only, C = channels of one image, as the authors' code, which loops over
    ``batch[0].size(0)`` (the channel count of the first image) instead of the batch size."""
    if mode == "reference":
        return noise[: noise[0].size(0)]
    if mode != "full":
        raise ValueError(f"unknown noise batch mode {mode!r}")
    return noise


@register("UNSIR", hparams=UnsirHP, overrides=UNSIR_OVERRIDES, eval_batches=noise_eval_batches)
def unsir(model, data, hp, device):
    """UNSIR (Tarun et al. 2023): impair with learnt error-maximising noise, then repair.

    - Noise: one batch of ``noise_batch`` images (a fixed size, not -b), ``noise_steps`` Adam
      steps on −CE(model(noise), forget label) + l2·mean_b ‖noise_b‖² (more steps in sub-class).
    - Impair: one epoch of cross-entropy with Adam on ``noise_repeats`` copies of the noise
      (labelled with the forget class) mixed with the first ``per_class`` retain samples of
      each class.
    - Repair: one epoch with a fresh Adam on those retain samples alone.
    - Sub-class: the noise carries the coarse label of the forgotten fine class; the retain
      subset is taken per fine class.
    - Parity: ``images`` reference trains on the first 3 noise images only (the authors'
      indexing defect), full on the whole batch (the corrected recipe).
    - Not replicated: the authors' code learns the noise with the model in train mode and lets the
      noise steps' gradients accumulate in the model; here eval mode and noise-only gradients.
    """
    forget = _forget_model_label(data, "UNSIR")
    shape = input_shape(data.forget_train)
    check_allocatable(4 * hp.noise_batch * math.prod(shape), "-unsir_noise_size", device)  # noise, grad, Adam's 2
    init = torch.randn(hp.noise_batch, *shape).to(device)
    noise = learn_noise(model, init, forget, hp.noise_steps, hp.noise_lr, hp.l2, maximise=True)
    noise = noise_images(noise, hp.images).cpu()

    retain = _Triples(retain_subset(data.retain_train.dataset, hp.per_class, by_fine=data.setting == "subclass"))
    impair = ConcatDataset([_Repeated(noise, [forget] * len(noise), hp.noise_repeats), retain])
    opt = torch.optim.Adam(model.parameters(), lr=hp.impair_lr)
    train_epoch(model, _shuffled(impair, hp.impair_batch, data.seed), opt, device, desc="UNSIR impair")
    opt = torch.optim.Adam(model.parameters(), lr=hp.repair_lr)
    train_epoch(model, _shuffled(retain, hp.repair_batch, data.seed), opt, device, desc="UNSIR repair")
    return model


@register("emmn", hparams=EmmnHP, overrides=EMMN_OVERRIDES, zero_shot=True, eval_batches=noise_eval_batches)
def emmn(model, data, hp, device):
    """Error-minimising/-maximising noise (zero-shot; the emmn of JiT's authors).

    - Forget class: ``noise_batch`` error-maximising noise images, ``max_steps`` Adam steps on
      −CE(model(noise), forget class) + l2·mean_b ‖noise_b‖².
    - Every other class k: ``noise_batch`` error-minimising images, ``min_steps`` Adam steps on
      CE(model(noise), k) alone; labels are the model's own classes.
    - Then ``epochs`` of cross-entropy (one Adam) on ``noise_repeats`` copies of all noise
      images, each labelled with its class. No real image is ever used (data.retain_train is
      None; the forget loader only gives the input shape).
    - Full class only: in sub-class forgetting the forgotten fine class is no model output.
    - Parity: ``images`` reference keeps the first 3 images of each class's batch (the
      authors' indexing defect), full keeps all (the corrected recipe).
    """
    forget = full_class_only(data, "emmn")
    shape = input_shape(data.forget_train)
    check_allocatable(4 * hp.noise_batch * math.prod(shape), "-emmn_noise_size", device)  # noise, grad, Adam's 2
    images, labels = [], []
    # the forget class's noise is drawn first, then the others in class order
    for cls in progress_bar([forget] + [k for k in range(data.num_classes) if k != forget], "emmn noise"):
        init = torch.randn(hp.noise_batch, *shape).to(device)
        if cls == forget:
            noise = learn_noise(model, init, cls, hp.max_steps, hp.noise_lr, hp.l2, maximise=True)
        else:
            noise = learn_noise(model, init, cls, hp.min_steps, hp.noise_lr, 0.0, maximise=False)
        noise = noise_images(noise, hp.images).cpu()
        images.append(noise)
        labels += [cls] * len(noise)
    loader = _shuffled(_Repeated(torch.cat(images), labels, hp.noise_repeats), hp.batch, data.seed)
    opt = torch.optim.Adam(model.parameters(), lr=hp.lr)
    for epoch in range(hp.epochs):
        train_epoch(model, loader, opt, device, desc=f"emmn {epoch + 1}/{hp.epochs}")
    return model
