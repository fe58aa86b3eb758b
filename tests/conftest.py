"""Shared fixtures: quick pretrained SmallCNN checkpoints on Digits/Digits5, a runner for the
command-line scripts (subprocess, a scratch folder as cwd) and tiny CIFAR files in
torchvision's python-pickle format. Everything is written under pytest's tmp paths."""
import contextlib
import io
import os
import pickle
import runpy
import subprocess
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SCRIPT_TIMEOUT = 300

# CIFAR-100 fine label -> coarse label (the official mapping of the CIFAR-100 files).
CIFAR100_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
])
FORGET_FINE = {"rocket": 69, "mushroom": 51, "baby": 2, "lamp": 40, "sea": 71}


def _env():
    env = dict(os.environ)
    env.update(PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               WANDB_MODE="disabled")
    return env


_WORKDIR = []


def workdir():
    """The working folder of every script a test runs: a scratch folder, so that whatever a
    script writes to its default relative paths (results/, checkpoint/retrained/, ...) never
    lands in the checkout, where a later quickstart would find it."""
    if not _WORKDIR:
        _WORKDIR.append(Path(tempfile.mkdtemp(prefix="jit-tests-cwd-")))
    return _WORKDIR[0]


def run_script(args, timeout=SCRIPT_TIMEOUT):
    """Run ``python <script> <args...>`` (``script`` relative to the repository) in the
    scratch folder; return the CompletedProcess."""
    script, *rest = map(str, args)
    return subprocess.run([sys.executable, str(REPO / script), *rest], cwd=workdir(), env=_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def run_scripts(arg_lists, parallel=1, timeout=SCRIPT_TIMEOUT):
    """Run several independent scripts, ``parallel`` at a time; results in input order.
    (On a 2-core machine running them side by side is no faster: torch already uses both.)"""
    if parallel <= 1:
        return [run_script(a, timeout) for a in arg_lists]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda a: run_script(a, timeout), arg_lists))


def run_inprocess(args):
    """Run ``<script> <args...>`` as ``__main__`` inside this interpreter (no torch import
    cost), cwd = the scratch folder, and report it like a finished process: returncode from
    SystemExit (0 if the script returns), captured stdout/stderr; an exception escaping the
    script is written to stderr as a traceback with returncode 1, as Python would."""
    script, *rest = map(str, args)
    out, err = io.StringIO(), io.StringIO()
    old_argv = sys.argv
    sys.argv = [script, *rest]
    code = 0
    try:
        with contextlib.chdir(workdir()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(REPO / script), run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except Exception:  # noqa: BLE001 - reported like an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = old_argv
    return SimpleNamespace(args=[script, *rest], returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def describe(proc):
    """Short description of a finished process for assertion messages."""
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="session")
def script_runner():
    return run_script


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Pretrain the quickstart SmallCNN on Digits (10 classes) and Digits5 (5 classes) for
    two epochs each, both at once; returns {'Digits': path, 'Digits5': path}."""
    out = tmp_path_factory.mktemp("ckpt")
    paths = {"Digits": out / "smallcnn.pth", "Digits5": out / "smallcnn5.pth"}
    cmds = [["pretrain_model.py", "-net", "SmallCNN", "-dataset", ds, "-classes", n,
             "-epochs", "2", "-out", paths[ds]]
            for ds, n in (("Digits", "10"), ("Digits5", "5"))]
    for cmd, proc in zip(cmds, run_scripts(cmds)):
        if proc.returncode != 0:
            pytest.fail(f"pretraining failed: {' '.join(map(str, cmd))}\n{describe(proc)}")
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="session")
def smallcnn_ckpt(checkpoints):
    """SmallCNN, 10 classes, pretrained on Digits."""
    return checkpoints["Digits"]


@pytest.fixture(scope="session")
def smallcnn5_ckpt(checkpoints):
    """SmallCNN, 5 classes, pretrained on Digits5 (model label = digit // 2)."""
    return checkpoints["Digits5"]


# ---- shared by the baseline tests -----------------------------------------------------------

class Triples(torch.utils.data.Dataset):
    """(image, fine label, model label) like the project's data sets, with a ``targets`` array."""

    def __init__(self, x, y, fine=None):
        self.x, self.targets, self.fine = x, y.numpy(), fine

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        fine = torch.tensor([]) if self.fine is None else int(self.fine[i])
        return self.x[i], fine, int(self.targets[i])


@pytest.fixture
def one_thread(request):
    """The tiny models gain nothing from threads, and on a busy machine every parallel op waits
    for a free core; the end-to-end runs keep torch's own setting."""
    if "end_to_end" in request.node.name:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The three mains on Digits, as (checkpoint 10-way, checkpoint Digits5) -> command head.
MAINS = {
    "full": lambda w, w5: ["forget_full_class_main.py", "-dataset", "Digits", "-classes", "10",
                           "-forget_class", "3", "-weight_path", w],
    "sub": lambda w, w5: ["forget_sub_class_main.py", "-dataset", "Digits5", "-superclasses", "5",
                          "-subclasses", "10", "-forget_class", "3", "-weight_path", w5],
    "random": lambda w, w5: ["forget_random_main.py", "-dataset", "Digits", "-classes", "10",
                             "-forget_perc", "0.05", "-weight_path", w],
}
SETTING = {"full": "fullclass", "sub": "subclass", "random": "random"}


# ---- tiny CIFAR files ---------------------------------------------------------------------

def _dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(root, seed=0):
    """Write tiny CIFAR-10 and CIFAR-100 files under ``root`` in torchvision's python-pickle
    layout; return the arrays written (data as (n, 3072) uint8 rows, CHW row-major).

    CIFAR-10: data_batch_1..5 and test_batch, 10 images each, every class once per file
    (shuffled). CIFAR-100: 200 train images (each fine class once, then 100 more drawn from
    the five forget classes and a few others) and 100 test images (each fine class once,
    shuffled), with the official coarse labels.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    out = {"cifar10": {}, "cifar100": {}}

    c10 = root / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(10, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(10)]
        _dump(c10 / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                           b"filenames": [f"{name}_{i}.png".encode() for i in range(10)]})
        out["cifar10"][name] = (data, np.array(labels))

    c100 = root / "cifar-100-python"
    extra = rng.choice(np.array(list(FORGET_FINE.values()) + [0, 1, 3, 99]), size=100)
    splits = {"train": np.concatenate([rng.permutation(100), extra]), "test": rng.permutation(100)}
    for name, fine in splits.items():
        data = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
        coarse = CIFAR100_COARSE[fine]
        _dump(c100 / name, {b"filenames": [f"{name}_{i}.png".encode() for i in range(len(fine))],
                            b"batch_label": name.encode(),
                            b"fine_labels": [int(v) for v in fine],
                            b"coarse_labels": [int(v) for v in coarse],
                            b"data": data})
        out["cifar100"][name] = (data, fine, coarse)
    return out


@pytest.fixture(scope="session")
def cifar(tmp_path_factory):
    """(root, arrays) of the tiny CIFAR files written by ``write_cifar``."""
    root = tmp_path_factory.mktemp("cifar_data")
    return root, write_cifar(root)
