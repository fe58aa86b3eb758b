"""Hostile and broken data files: CIFAR pickles that carry code or are not CIFAR, Pins folders
too small to split or holding files that are not images. Each is refused in one line that
names the file, and nothing in a refused file runs.

(Records, report.py and writable outputs: test_hostile_records.py; the flags of sweep.py and
pretrain_model.py: test_hostile_scripts.py.)"""
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch
from helpers import describe, run_inprocess, run_script, write_cifar
from PIL import Image

import cifar_files
import datasets
from cli import UserError, one_line

# ---- 1. CIFAR files that carry code -----------------------------------------------------------


class Payload:
    """Unpickling this calls ``fn(*args)``: each payload below would create the marker file."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    m = str(marker)
    return {
        "os.system": Payload(os.system, f"touch {m}"),
        "subprocess.call": Payload(subprocess.call, ["touch", m]),
        "builtins.open": Payload(open, m, "w"),
        "builtins.exec": Payload(exec, f"open({m!r}, 'w').close()"),
        "builtins.eval": Payload(eval, f"open({m!r}, 'w')"),
    }


def _cifar10_batch(n=10, labels=None, data=None):
    rng = np.random.default_rng(1)
    return {b"batch_label": b"x",
            b"labels": list(range(n)) if labels is None else labels,
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8) if data is None else data}


def _write(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


PLACES = {
    "as the file": lambda p: p,
    "as a dict value": lambda p: {**_cifar10_batch(), b"extra": p},
    "inside the labels": lambda p: _cifar10_batch(labels=[0, 1, 2, p, 4, 5, 6, 7, 8, 9]),
    "as a dict key": lambda p: {p: 1, **_cifar10_batch()},
}


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("payload", ["os.system", "subprocess.call", "builtins.open", "builtins.exec",
                                     "builtins.eval"])
def test_cifar_file_carrying_code_is_refused_and_nothing_runs(tmp_path, payload, place, protocol):
    write_cifar(tmp_path)
    marker = tmp_path / "code_ran"
    target = tmp_path / "cifar-10-batches-py" / "test_batch"
    _write(target, PLACES[place](_payloads(marker)[payload]), protocol)
    with pytest.raises(UserError) as e:
        datasets.load_dataset("Cifar10", str(tmp_path), train=False)
    msg = str(e.value)
    assert "refusing" in msg and str(target) in msg and "\n" not in msg, msg
    assert not marker.exists()


def test_cifar100_file_carrying_code_is_refused(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "code_ran"
    target = tmp_path / "cifar-100-python" / "train"
    _write(target, {b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0],
                    b"coarse_labels": Payload(os.system, f"touch {marker}")})
    for name in ("Cifar100", "Cifar20"):
        with pytest.raises(UserError, match="refusing .*train"):
            datasets.load_dataset(name, str(tmp_path), train=True)
    assert not marker.exists()


@pytest.mark.slow
def test_cifar_payload_is_refused_by_a_script_in_one_line(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "code_ran"
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        _write(tmp_path / "cifar-10-batches-py" / name, Payload(os.system, f"touch {marker}"))
    proc = run_script(["pretrain_model.py", "-net", "SmallCNN", "-dataset", "Cifar10", "-classes", "10",
                       "-epochs", "1", "-data_root", tmp_path, "-out", tmp_path / "m.pth"])
    assert proc.returncode == 2, describe(proc)
    assert proc.stderr.strip().count("\n") == 0 and "refusing" in proc.stderr, describe(proc)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("str_keys", [False, True])
def test_genuine_cifar_files_still_load(tmp_path, protocol, str_keys):
    """What numpy arrays (numpy 1 or 2 paths), dtypes, scalars and bytes pickle as, in every
    protocol, passes the restricted unpickler."""
    arrays = write_cifar(tmp_path)
    data, labels = arrays["cifar10"]["test_batch"]
    batch = {b"batch_label": b"test", b"labels": [np.int64(v) for v in labels], b"data": data,
             b"filenames": [b"a.png"] * len(labels)}
    if str_keys:
        batch = {k.decode(): v for k, v in batch.items()}
    _write(tmp_path / "cifar-10-batches-py" / "test_batch", batch, protocol)
    ds = datasets.load_dataset("Cifar10", str(tmp_path), train=False)
    assert np.array_equal(ds.targets, labels)
    assert np.array_equal(ds.images, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def test_conftest_cifar_files_load_through_the_restricted_unpickler(cifar):
    root, arrays = cifar
    for name in ("Cifar10", "Cifar100", "Cifar20"):
        assert len(datasets.load_dataset(name, str(root), train=True)) > 0
    data, fine, coarse = arrays["cifar100"]["test"]
    ds = datasets.load_dataset("Cifar20", str(root), train=False)
    assert np.array_equal(ds.fine, fine) and np.array_equal(ds.targets, coarse)


def test_numpy_1_module_paths_are_allowed():
    """Files written by numpy 1 name numpy.core.multiarray, not numpy._core."""
    up = cifar_files.CifarUnpickler.ALLOWED
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        assert (module, "_reconstruct") in up and (module, "scalar") in up
    assert ("numpy", "ndarray") in up and ("numpy", "dtype") in up
    assert not {m for m, _ in up} & {"os", "posix", "subprocess", "builtins", "sys", "importlib"}


# ---- 2. pickles that load but are not CIFAR ---------------------------------------------------

NOT_CIFAR10 = {
    "a list": [1, 2, 3],
    "a string": "hello",
    "None": None,
    "no data key": {b"labels": list(range(10))},
    "no labels key": {b"data": np.zeros((10, 3072), np.uint8)},
    "data wrong width": _cifar10_batch(data=np.zeros((10, 1024), np.uint8)),
    "data as images": _cifar10_batch(data=np.zeros((10, 3, 32, 32), np.uint8)),
    "data float": _cifar10_batch(data=np.zeros((10, 3072), np.float32)),
    "data as bytes": _cifar10_batch(data=b"\0" * 30720),
    "data as a list": _cifar10_batch(data=[[0] * 3072] * 10),
    "labels too few": _cifar10_batch(labels=list(range(9))),
    "labels too many": _cifar10_batch(labels=list(range(10)) + [0]),
    "labels as text": _cifar10_batch(labels=[b"cat"] * 10),
    "labels as floats": _cifar10_batch(labels=[0.5] * 10),
    "labels nested": _cifar10_batch(labels=[[0, 1]] * 10),
    "labels ragged": _cifar10_batch(labels=[[0], [0, 1]] + [0] * 8),
    "label 10": _cifar10_batch(labels=[10] + list(range(9))),
    "label -1": _cifar10_batch(labels=[-1] + list(range(9))),
    "labels a dict": _cifar10_batch(labels={0: 1}),
}
BROKEN_BYTES = {
    "empty file": b"",
    "truncated pickle": pickle.dumps(_cifar10_batch(), protocol=2)[:500],
    "random bytes": bytes((i * 97 + 13) % 256 for i in range(4096)),
    "text file": b"data,labels\n1,2\n",
}


@pytest.mark.parametrize("case", list(NOT_CIFAR10) + list(BROKEN_BYTES))
def test_pickle_that_is_not_cifar_is_refused_naming_the_file(tmp_path, case):
    write_cifar(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    if case in BROKEN_BYTES:
        target.write_bytes(BROKEN_BYTES[case])
    else:
        _write(target, NOT_CIFAR10[case])
    with pytest.raises(UserError) as e:
        datasets.load_dataset("Cifar10", str(tmp_path), train=True)
    msg = str(e.value)
    assert str(target) in msg and "\n" not in msg, msg
    assert "refusing" not in msg  # broken, not dangerous


@pytest.mark.parametrize("case", ["no coarse labels", "fine label 100", "coarse label 20", "labels mismatch"])
def test_cifar100_file_that_is_not_cifar100_is_refused(tmp_path, case):
    write_cifar(tmp_path)
    n = 4
    d = {b"data": np.zeros((n, 3072), np.uint8), b"fine_labels": [0] * n, b"coarse_labels": [4] * n}
    if case == "no coarse labels":
        del d[b"coarse_labels"]
    elif case == "fine label 100":
        d[b"fine_labels"] = [100] * n
    elif case == "coarse label 20":
        d[b"coarse_labels"] = [20] * n
    else:
        d[b"fine_labels"] = [0] * (n - 1)
    target = tmp_path / "cifar-100-python" / "test"
    _write(target, d)
    with pytest.raises(UserError, match=str(target)):
        datasets.load_dataset("Cifar20", str(tmp_path), train=False)


@pytest.mark.slow
def test_not_cifar_file_gives_one_line_from_a_script(tmp_path):
    write_cifar(tmp_path)
    _write(tmp_path / "cifar-10-batches-py" / "data_batch_1", [1, 2, 3])
    proc = run_inprocess(["pretrain_model.py", "-net", "SmallCNN", "-dataset", "Cifar10", "-classes", "10",
                          "-epochs", "1", "-data_root", tmp_path, "-out", tmp_path / "m.pth"])
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data_batch_1" in lines[0] and "not a CIFAR batch" in lines[0], describe(proc)
    assert not (tmp_path / "m.pth").exists()


# ---- 3. Pins folders too small to split, files that are not images ---------------------------

def _pins(root, counts, size=(20, 16)):
    folder = root / "105_classes_pins_dataset"
    rng = np.random.default_rng(0)
    for person, n in counts.items():
        (folder / person).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / person / f"{i}.jpg")
    return folder


@pytest.mark.parametrize("counts, expect", [
    ({"pins_A": 1}, "pins_A has a single image"),
    ({"pins_A": 10, "pins_B": 1, "pins_C": 10}, "pins_B has a single image"),
    ({"pins_A": 1, "pins_B": 1}, "single image"),
    ({f"pins_{i}": 2 for i in range(5)}, "10 images of 5 people"),
    ({"pins_A": 2, "pins_B": 2}, "4 images of 2 people"),
])
def test_pins_too_small_to_split_is_one_line(tmp_path, counts, expect):
    folder = _pins(tmp_path, counts)
    for train in (True, False):
        with pytest.raises(UserError) as e:
            datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=train)
        assert expect in str(e.value) and str(folder) in str(e.value), str(e.value)


def test_pins_smallest_splittable_folder_loads(tmp_path):
    """The size the message asks for is enough (scikit-learn agrees)."""
    _pins(tmp_path, {"pins_A": 2, "pins_B": 2})
    with pytest.raises(UserError, match=r"needs at least (\d+) images") as e:
        datasets.load_dataset("PinsFaceRecognition", str(tmp_path))
    need = int(str(e.value).rsplit("at least ", 1)[1].split()[0])
    _pins(tmp_path, {"pins_A": need - need // 2, "pins_B": need // 2})
    train = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True)
    test = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=False)
    assert set(train.targets) == set(test.targets) == {0, 1}


UNREADABLE = {
    "text named .jpg": b"not an image at all\n",
    "empty .png": b"",
    "random bytes .jpeg": bytes((i * 31 + 7) % 256 for i in range(2000)),
    "html named .webp": b"<html><body>404</body></html>",
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_pins_file_that_is_not_an_image_is_named(tmp_path, case):
    folder = _pins(tmp_path, {"pins_A": 10, "pins_B": 10})
    bad = folder / "pins_B" / ("bad" + os.path.splitext(case)[1])
    bad.write_bytes(UNREADABLE[case])
    with pytest.raises(UserError) as e:
        datasets.load_dataset("PinsFaceRecognition", str(tmp_path))
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def _truncated_pins(tmp_path):
    folder = _pins(tmp_path, {"pins_A": 10, "pins_B": 10}, size=(64, 64))
    for i in range(10):  # cut every image of pins_B: the header is read, the pixels are not there
        p = folder / "pins_B" / f"{i}.jpg"
        data = p.read_bytes()
        p.write_bytes(data[:len(data) * 2 // 3])
    return folder


def test_pins_truncated_image_is_named_when_decoded(tmp_path):
    folder = _truncated_pins(tmp_path)
    ds = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True)
    bad = next(i for i, p in enumerate(ds.paths) if "pins_B" in p)
    with pytest.raises(UserError) as e:
        ds[bad]
    assert "cannot decode image" in str(e.value) and ds.paths[bad] in str(e.value)
    assert str(folder) in str(e.value)


def test_pins_truncated_image_in_a_loader_worker_is_one_line(tmp_path):
    """A UserError raised in a DataLoader worker comes back with the worker's traceback in its
    message; cli's one_line keeps the original message."""
    _truncated_pins(tmp_path)
    ds = datasets.load_dataset("PinsFaceRecognition", str(tmp_path), train=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    with pytest.raises(UserError) as e:
        list(loader)
    assert "Traceback" in str(e.value)  # what cli receives
    line = one_line(e.value)
    assert line.startswith("cannot decode image ") and "pins_B" in line and "\n" not in line, line
