"""Generated CIFAR-10 / CIFAR-100 files in torchvision's python-pickle layout, so that the
CIFAR code paths run (in tests, in gpu_check.sh) without the real data sets.

    python tools/fake_cifar.py ROOT -dataset cifar100 -train_per_class 100 -test_per_class 20 -learnable

writes ROOT/cifar-100-python/{train,test} (ROOT/cifar-10-batches-py/data_batch_1..5 and
test_batch for cifar10). The CIFAR-100 coarse labels follow the official fine -> coarse map,
so CIFAR-20 and sub-class forgetting see the super-classes the real files have.
"""
import argparse
import os
import pickle

import numpy as np

# CIFAR-100 fine label -> coarse label, as in the official files.
CIFAR100_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
])
CLASSES = {"cifar10": 10, "cifar100": 100}
FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


def _counts(per_class, n_classes):
    counts = np.broadcast_to(np.asarray(per_class, dtype=np.int64), (n_classes,)).copy()
    if (counts < 0).any():
        raise ValueError("images per class must be >= 0")
    return counts


def _images(labels, n_classes, rng, learnable):
    if not learnable:
        return rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    # every pixel of an image drawn around its class's grey level: a network can learn it
    means = labels[:, None] * (250.0 / n_classes)
    return np.clip(rng.normal(means, 40.0, (len(labels), 3072)), 0, 255).astype(np.uint8)


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of the real (Python 2) files


def write_cifar(root, dataset="cifar100", train_per_class=5, test_per_class=1, *, seed=0, learnable=False):
    """Write generated ``dataset`` files ("cifar10" or "cifar100") under ``root``.

    ``train_per_class`` / ``test_per_class``: the images of each class, one number for all
    classes or one count per class (10 or 100 of them). CIFAR-10's training images are spread
    over its five batch files class by class (5 per class: every class once in each file).
    Labels are shuffled within each file. ``learnable``: pixels around a class-dependent grey
    level instead of uniform noise. The same arguments write the same bytes.

    Returns {file name: arrays}: (data, labels) for CIFAR-10 and (data, fine, coarse) for
    CIFAR-100, data as (n, 3072) uint8 rows (CHW, row-major) as in the files.
    """
    if dataset not in CLASSES:
        raise ValueError(f"dataset must be one of {sorted(CLASSES)}, not {dataset!r}")
    n_classes = CLASSES[dataset]
    train, test = _counts(train_per_class, n_classes), _counts(test_per_class, n_classes)
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, FOLDER[dataset])
    os.makedirs(folder, exist_ok=True)
    if dataset == "cifar10":
        shares = [[] for _ in CIFAR10_TRAIN_FILES]
        for c, n in enumerate(train):
            for k, part in enumerate(np.array_split(np.full(n, c), len(CIFAR10_TRAIN_FILES))):
                shares[k].append(part)
        splits = {name: np.concatenate(parts) for name, parts in zip(CIFAR10_TRAIN_FILES, shares)}
        splits["test_batch"] = np.repeat(np.arange(n_classes), test)
    else:
        splits = {"train": np.repeat(np.arange(n_classes), train), "test": np.repeat(np.arange(n_classes), test)}
    written = {}
    for name, labels in splits.items():
        labels = rng.permutation(labels)
        data = _images(labels, n_classes, rng, learnable)
        obj = {b"batch_label": name.encode(), b"data": data,
               b"filenames": [f"{name}_{i}.png".encode() for i in range(len(labels))]}
        if dataset == "cifar10":
            obj[b"labels"] = [int(v) for v in labels]
            written[name] = (data, labels)
        else:
            coarse = CIFAR100_COARSE[labels]
            obj[b"fine_labels"] = [int(v) for v in labels]
            obj[b"coarse_labels"] = [int(v) for v in coarse]
            written[name] = (data, labels, coarse)
        _dump(os.path.join(folder, name), obj)
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="folder the data set folder is written into (the mains' -data_root)")
    p.add_argument("-dataset", choices=sorted(CLASSES), default="cifar100")
    p.add_argument("-train_per_class", type=int, default=5)
    p.add_argument("-test_per_class", type=int, default=1)
    p.add_argument("-seed", type=int, default=0)
    p.add_argument("-learnable", action="store_true", help="class-dependent grey levels instead of uniform noise")
    args = p.parse_args(argv)
    if args.train_per_class < 0 or args.test_per_class < 0:
        p.error("images per class must be >= 0")
    write_cifar(args.root, args.dataset, args.train_per_class, args.test_per_class, seed=args.seed,
                learnable=args.learnable)


if __name__ == "__main__":
    main()
