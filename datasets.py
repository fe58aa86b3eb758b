"""The data sets (DATASETS, a row each), the data pipeline's choices (DataHP), forget targets
and the forget/retain splits. Each sample is a triple (image, fine_label_or_empty, model_label).

Behind it: images.py (the transform and the in-memory data set), batching.py (batches
built on the device), cifar_files.py (reading CIFAR batch files safely), pins.py (the Pins
folder).
"""
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from cifar_files import load_cifar10, load_cifar100
from cli import UserError
from hparams import AT_LEAST_ONE, Overrides, hparam
from images import ArrayImages, ImageTransform
from pins import FileImages, load_pins, pins_files


@dataclass(frozen=True)
class DataHP:
    """The data pipeline's choices. The field defaults and the rows of DATA_OVERRIDES give the
    authors' pipeline under -recipe reference (the default) and the corrected one under
    -recipe corrected; each flag overrides one choice."""
    importance_order: str = hparam(
        "shuffled", "SSD/LF-SSD importance batches over the training set: shuffled (a permutation seeded by "
        "-seed), grouped (retained images grouped by class, fine class if the data set has one, then the "
        "forgotten ones) or retain_forget "
        "(retained in split order, then forgotten)", "importance_order",
        choices=("shuffled", "grouped", "retain_forget"))
    retain_test_order: str = hparam(
        "grouped", "order of the retained test images, which sets the batches of the mean-of-batch accuracy: "
        "grouped by class (fine class in sub-class) or in data-set order", "retain_test_order",
        choices=("grouped", "dataset"))
    split_draw: str = hparam(
        "after_two_models", "random setting: draw the forget set from the default generator after two model "
        "initialisations (so -seed forgets the images the authors' code forgets) or from a generator of its own "
        "seeded by -seed", "split_draw", choices=("after_two_models", "own_generator"))
    pins_split: str = hparam(
        "none", "Pins: train and evaluate on the whole folder (none) or on an 80/20 split per person",
        "pins_split", choices=("none", "per_person"))
    loader_batch: Optional[int] = hparam(
        None, "batch of the forget and retain training loaders (the methods' forget and retain batches; in the "
        "random setting also Df's), none: -b", "loader_batch", AT_LEAST_ONE)


DATA_OVERRIDES = Overrides((
    (dict(recipe="reference", setting="subclass"), dict(importance_order="grouped")),
    # the authors' random main builds its forget and retain loaders with batch 128 whatever -b is
    (dict(recipe="reference", setting="random"), dict(importance_order="retain_forget", loader_batch=128)),
    (dict(recipe="corrected"), dict(retain_test_order="dataset", split_draw="own_generator", pins_split="per_person")),
))

# Forget targets: command-line name -> label id, under the authors' names.
CIFAR100_FORGET = {"rocket": 69, "mushroom": 51, "baby": 2, "lamp": 40, "sea": 71}
CIFAR20_FORGET = {"vehicle2": 19, "veg": 4, "people": 14, "electrical_devices": 5, "natural_scenes": 10}


def _digits_split():
    """scikit-learn's bundled 8×8 digits (values 0..16), upsampled once to 32×32 RGB uint8,
    split 80/20 stratified with a fixed seed (the split never depends on -seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images).float().div(16.0)[:, None]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    idx_train, idx_test = train_test_split(
        np.arange(len(d.target)), test_size=0.2, random_state=0, stratify=d.target
    )
    return x, d.target, idx_train, idx_test


def _load_digits(train):
    x, y, itr, ite = _digits_split()
    idx = itr if train else ite
    return x[idx], y[idx]


def _cifar10(root, train, transform, pins_split):
    images, labels, _ = load_cifar10(root, train)
    return ArrayImages(images, labels, transform=transform)


def _cifar100(root, train, transform, pins_split):
    images, fine, _ = load_cifar100(root, train)
    return ArrayImages(images, fine, transform=transform)


def _cifar20(root, train, transform, pins_split):
    images, fine, coarse = load_cifar100(root, train)
    return ArrayImages(images, coarse, fine=fine, transform=transform)


def _digits(root, train, transform, pins_split):
    images, digits = _load_digits(train)
    return ArrayImages(images, digits, transform=transform)


def _digits5(root, train, transform, pins_split):
    """The sub-class analogue of CIFAR-20: pairs of digits (0,1), (2,3), ... as model labels."""
    images, digits = _load_digits(train)
    return ArrayImages(images, digits // 2, fine=digits, transform=transform)


def _pins(root, train, transform, pins_split):
    if pins_split not in ("none", "per_person"):
        raise UserError(f"unknown Pins split {pins_split!r}")
    paths, labels, classes = pins_files(root) if pins_split == "none" else load_pins(root, train)
    return FileImages(paths, labels, transform=transform, classes=classes)


@dataclass(frozen=True)
class DataSet:
    """One data set: how to load a split and what it offers to forget."""
    load: Callable  # (root, train, transform, pins_split) -> ArrayImages; pins_split is Pins's only
    classes: int  # model classes
    forget_names: dict = field(default_factory=dict)  # full-class targets by name
    fine_classes: int = 0  # fine classes inside the model's (sub-class forgetting), 0: none
    fine_names: dict = field(default_factory=dict)  # sub-class targets by name


DATASETS = {
    "Cifar10": DataSet(_cifar10, 10),
    "Cifar100": DataSet(_cifar100, 100, CIFAR100_FORGET),
    "Cifar20": DataSet(_cifar20, 20, CIFAR20_FORGET, fine_classes=100, fine_names=CIFAR100_FORGET),
    "PinsFaceRecognition": DataSet(_pins, 105),
    "Digits": DataSet(_digits, 10),
    "Digits5": DataSet(_digits5, 5, fine_classes=10),
}


def load_dataset(name, root="./data", train=True, size=32, augment=False, pins_split="per_person"):
    """Build one split of a data set. Model labels: CIFAR-20 and Digits5 predict coarse
    labels (the fine label rides in the middle slot); the others predict their own label.
    Pins photos are resized to 36×36 on decoding, then (augmentation) cropped to 32 and resized
    to ``size``, as the authors' transforms do; ``pins_split`` "none" gives the whole folder
    for both train and test, "per_person" an 80/20 split."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name].load(root, train, ImageTransform(size, augment), pins_split)


def fingerprint(ds):
    """A digest of what a loaded data set holds: its labels and its images, or for images read
    from files each file's person folder, name and size. A resumed pretraining compares it with
    the one it started on, so photos added to a folder (which change the steps per epoch and
    the split) or another data folder are seen."""
    h = hashlib.sha256(np.ascontiguousarray(ds.targets).tobytes())
    if ds.fine is not None:
        h.update(np.ascontiguousarray(ds.fine).tobytes())
    if isinstance(ds, FileImages):
        for p in ds.paths:
            h.update(f"{os.path.basename(os.path.dirname(p))}/{os.path.basename(p)}:{os.path.getsize(p)}\n".encode())
    else:
        h.update(np.ascontiguousarray(ds.images).tobytes())
    return h.hexdigest()[:16]


def forget_target_id(dataset, target, subclass=False):
    """Resolve a forget target given on the command line to a label id.

    Full class: a model class of ``dataset``. Sub-class: a fine class inside a coarse data
    set (CIFAR-20: the CIFAR-100 names; Digits5: a digit). Numbers are accepted as ids.
    """
    row = DATASETS[dataset]
    if subclass:
        names, n = row.fine_names, row.fine_classes
        if not n:
            with_fine = " or ".join(k for k, r in DATASETS.items() if r.fine_classes)
            raise UserError(f"sub-class forgetting needs a data set with fine labels ({with_fine}), not {dataset}")
    else:
        names, n = row.forget_names, row.classes
    if target in names:
        return names[target]
    if str(target).isdigit() and int(target) < n:
        return int(target)
    known = ", ".join(list(names) + [f"0..{n - 1}"])
    raise UserError(f"forget class {target!r} is unknown for {dataset}; use one of {known}")


# ---- splits: computed from label arrays only. Each returns {split name: (source, indices)}
# with source "train" or "test", the set the indices point into.

def _by_label(indices, labels):
    """``indices`` ordered by ``labels[indices]``, keeping data-set order within a label."""
    return indices[np.argsort(labels[indices], kind="stable")]


def split_full_class(train, test, cls, grouped=True):
    """Forget every training image of class ``cls``. ``grouped``: the retain test images are
    ordered by class, as the authors' code builds them from per-class lists (this fixes the batches
    over which its mean-of-batch accuracy is taken); else in data-set order."""
    retain_valid = np.flatnonzero(test.targets != cls)
    return dict(forget_train=("train", np.flatnonzero(train.targets == cls)),
                retain_train=("train", np.flatnonzero(train.targets != cls)),
                forget_valid=("test", np.flatnonzero(test.targets == cls)),
                retain_valid=("test", _by_label(retain_valid, test.targets) if grouped else retain_valid))


def split_sub_class(train, test, fine_cls, grouped=True):
    """Forget every training image of one fine class; the model keeps predicting coarse labels.
    ``grouped``: the retain test images are ordered by fine class (as ``split_full_class``)."""
    if train.fine is None:
        raise UserError("sub-class forgetting needs fine labels (use Cifar20 or Digits5)")
    retain_valid = np.flatnonzero(test.fine != fine_cls)
    return dict(forget_train=("train", np.flatnonzero(train.fine == fine_cls)),
                retain_train=("train", np.flatnonzero(train.fine != fine_cls)),
                forget_valid=("test", np.flatnonzero(test.fine == fine_cls)),
                retain_valid=("test", _by_label(retain_valid, test.fine) if grouped else retain_valid))


def split_random(train, test, forget_perc, generator):
    """Forget a random fraction of the training set, drawn as the authors' code draws it:
    ``torch.utils.data.random_split`` with fractions (forget_perc, 1 - forget_perc), so the
    forget set has floor(n·p) images plus the one left over by rounding (83 of CIFAR-10's
    50,000 at 0.00165), from ``generator``. Df is measured on the forgotten samples, Dr on the
    whole test set."""
    n = len(train)
    with warnings.catch_warnings():  # an empty retain side is refused, with its sizes, by the caller
        warnings.simplefilter("ignore")
        forget, retain = torch.utils.data.random_split(range(n), [forget_perc, 1 - forget_perc], generator=generator)
    forget_train, retain_train = np.asarray(forget.indices, dtype=np.int64), np.asarray(retain.indices, dtype=np.int64)
    if len(forget_train) < 1:
        raise UserError(f"-forget_perc {forget_perc} selects no sample out of {n}")
    return dict(forget_train=("train", forget_train), retain_train=("train", retain_train),
                forget_valid=("train", forget_train), retain_valid=("test", np.arange(len(test))))


def importance_order(split, order, seed, group_labels):
    """Training-set indices in the order SSD/LF-SSD's importance batches take them: ``shuffled``
    (the whole set permuted by a generator seeded by ``seed``), ``grouped`` (retained images
    ordered by ``group_labels``, then the forgotten ones) or ``retain_forget``."""
    retain, forget = split["retain_train"][1], split["forget_train"][1]
    if order == "shuffled":
        return np.concatenate([retain, forget])[torch.randperm(len(retain) + len(forget),
                                                              generator=torch.Generator().manual_seed(seed)).numpy()]
    if order == "grouped":
        retain = _by_label(retain, group_labels)
    elif order != "retain_forget":
        raise ValueError(f"unknown importance order {order!r}")
    return np.concatenate([retain, forget])
