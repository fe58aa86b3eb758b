"""CIFAR-10 and CIFAR-100 batch files (torchvision's python-pickle format), read by an
unpickler that builds only what such a file holds, and checked to be what they claim."""
import os
import pickle

import numpy as np

from cli import UserError


def _missing(folder, files, what):
    absent = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if absent:
        raise UserError(
            f"{what} files not found: expected {', '.join(files)} in {folder} "
            f"(torchvision's python-pickle format); missing {', '.join(absent)}"
        )


class _Refused(pickle.UnpicklingError):
    pass


class CifarUnpickler(pickle.Unpickler):
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
            return CifarUnpickler(f, encoding="bytes").load()
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


def load_cifar10(root, train):
    folder = os.path.join(root, "cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    _missing(folder, [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "CIFAR-10")
    batches = [_cifar_batch(os.path.join(folder, n), {b"labels": 10}) for n in names]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1][0] for b in batches])
    return images, labels, None


def load_cifar100(root, train):
    folder = os.path.join(root, "cifar-100-python")
    _missing(folder, ["train", "test"], "CIFAR-100")
    images, (fine, coarse) = _cifar_batch(os.path.join(folder, "train" if train else "test"),
                                          {b"fine_labels": 100, b"coarse_labels": 20})
    return images, fine, coarse
