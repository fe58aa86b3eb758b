"""Data sets as the reference sees them: each sample is a triple
(image, fine_label_or_empty, model_label).

Images are kept as decoded uint8 arrays (or, for Pins, file paths) and turned into
normalised tensors one sample at a time, so no split ever decodes or resizes the whole data
set up front, and a 224×224 ViT input exists only inside the batch being used. Labels are
plain numpy arrays (``targets`` = model labels, ``fine`` = fine labels or None), so forget
and retain splits are computed from them directly.
"""
import math
import os
import pickle
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from cli import UserError
from hparams import AT_LEAST_ONE, Overrides, hp

# CIFAR-100's per-channel training-set mean and standard deviation, to the digits the reference
# uses (it applies them to every data set).
MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
PINS_SIDE = 36  # Pins photos are first resized to 36×36, then cropped or resized to the net's input


@dataclass(frozen=True)
class DataHP:
    """The data pipeline's choices. The field defaults and the rows of DATA_OVERRIDES give the
    reference's behaviour under -recipe reference (the default) and the corrected one under
    -recipe corrected; each flag overrides one choice."""
    importance_order: str = hp(
        "shuffled", "SSD/LF-SSD importance batches over the training set: shuffled (a permutation seeded by "
        "-seed), grouped (retained images grouped by class, fine class if the data set has one, then the "
        "forgotten ones) or retain_forget "
        "(retained in split order, then forgotten)", "importance_order",
        choices=("shuffled", "grouped", "retain_forget"))
    retain_test_order: str = hp(
        "grouped", "order of the retained test images, which sets the batches of the mean-of-batch accuracy: "
        "grouped by class (fine class in sub-class) or in data-set order", "retain_test_order",
        choices=("grouped", "dataset"))
    split_draw: str = hp(
        "after_two_models", "random setting: draw the forget set from the default generator after two model "
        "initialisations (so -seed forgets the reference's images) or from a generator of its own seeded by "
        "-seed", "split_draw", choices=("after_two_models", "own_generator"))
    pins_split: str = hp(
        "none", "Pins: train and evaluate on the whole folder (none) or on an 80/20 split per person",
        "pins_split", choices=("none", "per_person"))
    loader_batch: Optional[int] = hp(
        None, "batch of the forget and retain training loaders (the methods' forget and retain batches; in the "
        "random setting also Df's), none: -b", "loader_batch", AT_LEAST_ONE)


DATA_OVERRIDES = Overrides((
    (dict(recipe="reference", setting="subclass"), dict(importance_order="grouped")),
    # the reference's random main builds its forget and retain loaders with batch 128 whatever -b is
    (dict(recipe="reference", setting="random"), dict(importance_order="retain_forget", loader_batch=128)),
    (dict(recipe="corrected"), dict(retain_test_order="dataset", split_draw="own_generator", pins_split="per_person")),
))

# Forget targets: command-line name -> label id, as the reference names them.
CIFAR100_FORGET = {"rocket": 69, "mushroom": 51, "baby": 2, "lamp": 40, "sea": 71}
CIFAR20_FORGET = {"vehicle2": 19, "veg": 4, "people": 14, "electrical_devices": 5, "natural_scenes": 10}


class ImageTransform:
    """uint8 HWC image -> float CHW tensor: optional augmentation, then the reference's
    ToTensor, Normalize and Resize (bilinear, as torchvision's Resize on tensors).

    ``augment=True`` adds the pretraining augmentation (RandomCrop(32, padding=4),
    RandomHorizontalFlip, RandomRotation(15)); it acts on the uint8 image, as the reference's
    PIL transforms do. A fresh instance is built for every data set.
    """

    def __init__(self, size=32, augment=False):
        self.size = size
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)
        self.augment = None
        if augment:
            from torchvision.transforms import v2

            self.augment = v2.Compose([
                v2.RandomCrop(32, padding=4),
                v2.RandomHorizontalFlip(),
                v2.RandomRotation(15),
            ])

    def __call__(self, img):
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        if self.augment is not None:
            x = self.augment(x)
        return self.normalize(x[None])[0]

    def normalize(self, x):
        """uint8 (B, 3, H, W), on any device -> the model's float input (B, 3, size, size).
        The one definition of the deterministic part: per item above, per batch on the
        device in ``device_batches``."""
        x = (x.float().div_(255) - self.mean.to(x.device)) / self.std.to(x.device)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x


_EMPTY = torch.tensor([])


class ArrayImages(Dataset):
    """Decoded uint8 images (N, H, W, 3) with model labels and optional fine labels."""

    def __init__(self, images, targets, fine=None, transform=None, classes=None):
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.fine = None if fine is None else np.asarray(fine, dtype=np.int64)
        self.transform = transform
        self.classes = classes

    def __len__(self):
        return len(self.targets)

    def load(self, i):
        return self.images[i]

    def __getitem__(self, i):
        x = self.transform(self.load(i))
        fine = _EMPTY if self.fine is None else int(self.fine[i])
        return x, fine, int(self.targets[i])


class DeviceBatches:
    """(x, fine, y) batches of an ArrayImages (or a Subset of one, nested or not), in order,
    built without a DataLoader: the uint8 images of a batch are gathered from the array, moved
    to ``device`` and only there converted and resized. For ViT that moves 3 KB per CIFAR
    image instead of 600 KB and never holds a 224x224 image in host memory; for every net it
    skips the per-item Python of a DataLoader. The tensors equal those of a DataLoader with
    the same batch size (the transform is shared, and deterministic)."""

    def __init__(self, base, indices, batch_size, device):
        self.base, self.indices, self.batch_size, self.device = base, indices, batch_size, device

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        b = self.base
        for start in range(0, len(self.indices), self.batch_size):
            j = self.indices[start:start + self.batch_size]
            x = torch.from_numpy(np.ascontiguousarray(b.images[j]))
            if self.device.type == "cuda":
                x = x.pin_memory()
            # contiguous NCHW as a DataLoader collates it: a channels-last batch would take other
            # convolution kernels and change the logits in the last bits
            x = b.transform.normalize(x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous())
            fine = _EMPTY.expand(len(j), 0) if b.fine is None else torch.from_numpy(b.fine[j])
            yield x, fine, torch.from_numpy(b.targets[j])


def device_batches(ds, batch_size, device):
    """A DeviceBatches over ``ds``, or None where it does not apply (images decoded from files,
    or a transform with random augmentation): use a DataLoader then."""
    indices = np.arange(len(ds))
    while isinstance(ds, Subset):
        indices = np.asarray(ds.indices)[indices]
        ds = ds.dataset
    if type(ds) is not ArrayImages or not isinstance(ds.transform, ImageTransform) or ds.transform.augment is not None:
        return None
    return DeviceBatches(ds, indices, batch_size, device)


class FileImages(ArrayImages):
    """Images decoded from files on access (Pins: ~17k photos of varying size)."""

    def __init__(self, paths, targets, transform=None, classes=None, side=PINS_SIDE):
        super().__init__(None, targets, None, transform, classes)
        self.paths = list(paths)
        self.side = side

    def load(self, i):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.paths[i]) as im:
                return np.array(im.convert("RGB").resize((self.side, self.side), Image.BILINEAR))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            # a truncated or corrupt file passes the header check and fails only here
            raise UserError(f"cannot decode image {self.paths[i]}: {type(e).__name__}: {_first_line(e)}") from None


def _missing(folder, files, what):
    absent = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if absent:
        raise UserError(
            f"{what} files not found: expected {', '.join(files)} in {folder} "
            f"(torchvision's python-pickle format); missing {', '.join(absent)}"
        )


class _Refused(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler for CIFAR batch files that builds only what they hold (dicts, lists,
    bytes, str, numbers and numpy arrays) and refuses every other global, so a file carrying
    a ``__reduce__`` payload is refused before anything of it runs. The allowed names are
    what numpy arrays, dtypes and scalars pickle as (numpy 1 and 2 module paths, protocols
    0 to 5) and ``_codecs.encode``, which protocols 0-2 use for Python 3 bytes."""

    ALLOWED = frozenset(
        [(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")]
        + [(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")]
        + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
    )

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise _Refused("a persistent id")


def _unpickle(path):
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise UserError(f"refusing {path}: it references {e}, which no CIFAR file holds, and loading it "
                        f"could run code") from None
    except Exception as e:  # corrupt or truncated file
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"cannot read {path}: not a CIFAR batch file ({type(e).__name__}: {first})") from None


def _describe(v):
    if isinstance(v, np.ndarray):
        return f"a {v.dtype} array of shape {v.shape}"
    return f"a {type(v).__name__}"


def _cifar_batch(path, label_keys):
    """Load one CIFAR batch file and check it is one: a dict with ``data``, an (n, 3072)
    uint8 array, and, for each ``label_keys`` entry (key -> number of classes), n integer
    labels in range. Returns (images (n, 32, 32, 3), [labels per key])."""
    d = _unpickle(path)
    what = f"{path} is not a CIFAR batch file"
    if not isinstance(d, dict):
        raise UserError(f"{what}: it holds {_describe(d)}, not a dict")
    # torchvision's files are Python 2 pickles (bytes keys); accept str keys as well
    d = {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}
    missing = [k.decode() for k in (b"data", *label_keys) if k not in d]
    if missing:
        raise UserError(f"{what}: no {', '.join(repr(m) for m in missing)} entry")
    data = d[b"data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise UserError(f"{what}: 'data' should be a uint8 array of shape (n, 3072), it is {_describe(data)}")
    labels = []
    for key, classes in label_keys.items():
        raw = d[key]
        try:
            y = np.asarray(raw)
        except Exception:  # noqa: BLE001 - e.g. ragged nested lists
            y = None
        if y is None or y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
            raise UserError(f"{what}: {key.decode()!r} should be a list of integer labels, it is {_describe(raw)}")
        if len(y) != len(data):
            raise UserError(f"{what}: {len(y)} {key.decode()!r} for {len(data)} images")
        if y.size and (y.min() < 0 or y.max() >= classes):
            raise UserError(f"{what}: {key.decode()!r} holds labels outside 0..{classes - 1} "
                            f"(min {y.min()}, max {y.max()})")
        labels.append(y.astype(np.int64))
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _load_cifar10(root, train):
    folder = os.path.join(root, "cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    _missing(folder, [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "CIFAR-10")
    batches = [_cifar_batch(os.path.join(folder, n), {b"labels": 10}) for n in names]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1][0] for b in batches])
    return images, labels, None


def _load_cifar100(root, train):
    folder = os.path.join(root, "cifar-100-python")
    _missing(folder, ["train", "test"], "CIFAR-100")
    images, (fine, coarse) = _cifar_batch(os.path.join(folder, "train" if train else "test"),
                                          {b"fine_labels": 100, b"coarse_labels": 20})
    return images, fine, coarse


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


def _pins_files(root):
    """(paths, labels, class names) of the Pins ImageFolder. Every image file's header is
    opened here (cheap: no pixel is decoded), so a file that is not an image is named now,
    not by a DataLoader halfway through a run."""
    from PIL import Image, UnidentifiedImageError

    folder = os.path.join(root, "105_classes_pins_dataset")
    if not os.path.isdir(folder):
        raise UserError(f"Pins data not found: expected an ImageFolder at {folder} (one sub-folder per person)")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    paths, labels = [], []
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
    for c, name in enumerate(classes):
        sub = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(sub) if f.lower().endswith(exts) and os.path.isfile(os.path.join(sub, f)))
        paths += [os.path.join(sub, f) for f in files]
        labels += [c] * len(files)
    if not paths:
        raise UserError(f"Pins data not found: no images under {folder}")
    for p in paths:
        try:
            with Image.open(p):
                pass
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UserError(f"cannot read Pins image {p}: {type(e).__name__}: {_first_line(e)}") from None
    return np.array(paths), np.array(labels), classes


def _first_line(e):
    return str(e).splitlines()[0] if str(e) else ""


def _load_pins(root, train):
    """Pins has no official split: 80/20 per class with a fixed seed. Every person needs at
    least two images, and there must be at least as many test (and train) images as people,
    for the split to put each person on both sides."""
    from sklearn.model_selection import train_test_split

    paths, labels, classes = _pins_files(root)
    folder = os.path.join(root, "105_classes_pins_dataset")
    counts = np.bincount(labels, minlength=len(classes))
    single = [classes[c] for c in np.flatnonzero(counts == 1)]
    if single:
        raise UserError(f"Pins person folder {os.path.join(folder, single[0])} has a single image "
                        f"({len(single)} such folder(s)): the 80/20 split per person needs at least 2 each")
    people, n = int((counts > 0).sum()), len(labels)

    def both_sides(n):  # scikit-learn's own test-size arithmetic
        n_test = math.ceil(0.2 * n)
        return min(n_test, n - n_test) >= people

    if not both_sides(n):
        need = next(m for m in range(n, 10 * people + 10) if both_sides(m))
        raise UserError(f"Pins data at {folder} has {n} images of {people} people: an 80/20 split with every "
                        f"person on both sides needs at least {need} images")
    try:
        itr, ite = train_test_split(np.arange(n), test_size=0.2, random_state=0, stratify=labels)
    except ValueError as e:
        raise UserError(f"cannot split the Pins data at {folder}: {_first_line(e)}") from None
    idx = itr if train else ite
    return paths[idx], labels[idx], classes


# name -> number of model classes
DATASETS = {
    "Cifar10": 10,
    "Cifar100": 100,
    "Cifar20": 20,
    "PinsFaceRecognition": 105,
    "Digits": 10,
    "Digits5": 5,
}


def load_dataset(name, root="./data", train=True, size=32, augment=False, pins_split="per_person"):
    """Build one split of a data set. Model labels: CIFAR-20 and Digits5 predict coarse
    labels (the fine label rides in the middle slot); the others predict their own label.
    Pins photos are resized to 36×36 on decoding, then (augmentation) cropped to 32 and resized
    to ``size``, as the reference's transforms do; ``pins_split`` "none" gives the whole folder
    for both train and test (the reference), "per_person" an 80/20 split."""
    transform = ImageTransform(size, augment)
    if name == "Cifar10":
        images, labels, _ = _load_cifar10(root, train)
        return ArrayImages(images, labels, transform=transform)
    if name == "Cifar100":
        images, fine, _ = _load_cifar100(root, train)
        return ArrayImages(images, fine, transform=transform)
    if name == "Cifar20":
        images, fine, coarse = _load_cifar100(root, train)
        return ArrayImages(images, coarse, fine=fine, transform=transform)
    if name == "Digits":
        images, digits = _load_digits(train)
        return ArrayImages(images, digits, transform=transform)
    if name == "Digits5":  # the sub-class analogue of CIFAR-20: pairs (0,1), (2,3), ...
        images, digits = _load_digits(train)
        return ArrayImages(images, digits // 2, fine=digits, transform=transform)
    if name == "PinsFaceRecognition":
        if pins_split not in ("none", "per_person"):
            raise UserError(f"unknown Pins split {pins_split!r}")
        paths, labels, classes = _pins_files(root) if pins_split == "none" else _load_pins(root, train)
        return FileImages(paths, labels, transform=transform, classes=classes)
    raise UserError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def forget_target_id(dataset, target, subclass=False):
    """Resolve a forget target given on the command line to a label id.

    Full class: a model class of ``dataset``. Sub-class: a fine class inside a coarse data
    set (CIFAR-20: the CIFAR-100 names; Digits5: a digit). Numbers are accepted as ids.
    """
    if subclass:
        names = {"Cifar20": CIFAR100_FORGET, "Digits5": {}}.get(dataset)
        n = {"Cifar20": 100, "Digits5": 10}.get(dataset)
        if names is None:
            raise UserError(f"sub-class forgetting needs a data set with fine labels (Cifar20 or Digits5), not {dataset}")
    else:
        names = {"Cifar100": CIFAR100_FORGET, "Cifar20": CIFAR20_FORGET}.get(dataset, {})
        n = DATASETS[dataset]
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
    ordered by class, as the reference builds them from per-class lists (this fixes the batches
    over which its mean-of-batch accuracy is taken); else in data-set order."""
    retain_valid = np.flatnonzero(test.targets != cls)
    return dict(forget_train=("train", np.flatnonzero(train.targets == cls)),
                retain_train=("train", np.flatnonzero(train.targets != cls)),
                forget_valid=("test", np.flatnonzero(test.targets == cls)),
                retain_valid=("test", _by_label(retain_valid, test.targets) if grouped else retain_valid))


def split_sub_class(train, test, fine_cls, grouped=True):
    """Forget every training image of one fine class; the model keeps predicting coarse labels.
    ``grouped``: the retain test images are ordered by fine class, as the reference builds them."""
    if train.fine is None:
        raise UserError("sub-class forgetting needs fine labels (use Cifar20 or Digits5)")
    retain_valid = np.flatnonzero(test.fine != fine_cls)
    return dict(forget_train=("train", np.flatnonzero(train.fine == fine_cls)),
                retain_train=("train", np.flatnonzero(train.fine != fine_cls)),
                forget_valid=("test", np.flatnonzero(test.fine == fine_cls)),
                retain_valid=("test", _by_label(retain_valid, test.fine) if grouped else retain_valid))


def split_random(train, test, forget_perc, generator):
    """Forget a random fraction of the training set, drawn as the reference draws it:
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
