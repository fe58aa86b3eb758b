"""The CIFAR files (cifar_files.py): genuine files load through the restricted unpickler; files
that carry code or are not CIFAR are refused in one line that names the file, and nothing runs."""
import os
import pickle
import subprocess

import numpy as np
import pytest
from helpers import describe, run_inprocess, run_script, write_cifar

import cifar_files
import datasets
from cli import UserError


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
