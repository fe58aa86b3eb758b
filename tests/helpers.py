"""Helpers shared by the tests (imported as ``from helpers import ...``; fixtures live in
conftest.py): running the scripts in a scratch folder, small data sets, tiny CIFAR files in
torchvision's format, and resolving a method's hyperparameters for a direct call."""
import contextlib
import io
import math
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from launch import threads_per_slot  # noqa: E402
from tools import fake_cifar  # noqa: E402
from tools.fake_cifar import CIFAR100_COARSE  # noqa: E402,F401  (re-exported to the tests)

SCRIPT_TIMEOUT = 300

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


def run_script(args, timeout=SCRIPT_TIMEOUT, threads=None):
    """Run ``python <script> <args...>`` (``script`` relative to the repository) in the
    scratch folder, with ``threads`` CPU threads (None: torch's default); return the
    CompletedProcess."""
    script, *rest = map(str, args)
    env = _env()
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run([sys.executable, str(REPO / script), *rest], cwd=workdir(), env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def run_scripts(arg_lists, parallel=2, timeout=SCRIPT_TIMEOUT):
    """Run several independent scripts, ``parallel`` at a time, the cores shared out among them
    as grid.py shares them among its CPU slots (threads_per_slot(parallel) each: CPU results
    depend on the thread count); results in input order."""
    if parallel <= 1:
        return [run_script(a, timeout) for a in arg_lists]
    threads = threads_per_slot(parallel)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda a: run_script(a, timeout, threads), arg_lists))


def run_inprocess(args, threads=None):
    """Run ``<script> <args...>`` as ``__main__`` inside this interpreter (no torch import
    cost), cwd = the scratch folder, and report it like a finished process: returncode from
    SystemExit (0 if the script returns), captured stdout/stderr; an exception escaping the
    script is written to stderr as a traceback with returncode 1, as Python would.
    ``threads``: torch's CPU threads meanwhile (None: as they are), e.g. to match a twin run
    by ``run_scripts``."""
    script, *rest = map(str, args)
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_threads = sys.argv, torch.get_num_threads()
    sys.argv = [script, *rest]
    if threads is not None:
        torch.set_num_threads(threads)
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
        torch.set_num_threads(old_threads)
    return SimpleNamespace(args=[script, *rest], returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def describe(proc):
    """Short description of a finished process for assertion messages."""
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"


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

def write_cifar(root, seed=0):
    """Write tiny CIFAR-10 and CIFAR-100 files under ``root`` with the project's generator
    (tools/fake_cifar.py, which gpu_check.sh uses too); return the arrays written, as
    {"cifar10": {file: (data, labels)}, "cifar100": {file: (data, fine, coarse)}}.

    CIFAR-10: data_batch_1..5 and test_batch, 10 images each, every class once per file.
    CIFAR-100: 200 train images (every fine class once, each of the five forget classes and
    the classes 0, 1, 3, 99 eleven more times, 99 once more) and 100 test images (every
    fine class once), with the official coarse labels.
    """
    train = np.ones(100, dtype=np.int64)
    train[list(FORGET_FINE.values()) + [0, 1, 3, 99]] += 11
    train[99] += 1
    assert train.sum() == 200
    return {"cifar10": fake_cifar.write_cifar(root, "cifar10", 5, 1, seed=seed),
            "cifar100": fake_cifar.write_cifar(root, "cifar100", train, 1, seed=seed + 1)}


# ---- tiny models ------------------------------------------------------------------------------

def identity_linear(n=3):
    """A linear model whose logits are its inputs."""
    m = torch.nn.Linear(n, n)
    with torch.no_grad():
        m.weight.copy_(torch.eye(n))
        m.bias.zero_()
    return m


# ---- oracles -------------------------------------------------------------------------------------

def literal_js(p, q):
    """Textbook JS divergence, one row at a time, in nats."""
    total = 0.0
    for pr, qr in zip(p, q):
        m = [(a + b) / 2 for a, b in zip(pr, qr)]
        kl_p = sum(a * math.log(a / c) for a, c in zip(pr, m) if a > 0)
        kl_q = sum(b * math.log(b / c) for b, c in zip(qr, m) if b > 0)
        total += 0.5 * kl_p + 0.5 * kl_q
    return total / len(p)



# ---- methods called directly ------------------------------------------------------------------

def hp_for(method, data=None, recipe="reference", **flags):
    """The resolved hyperparameters of ``method`` for ``data``'s net, data set and setting (any
    missing: no override row matches) under ``recipe``, with ``flags`` given by flag name
    (e.g. scrub_epochs=4)."""
    import hparams
    from methods import METHODS

    m = METHODS[method]
    context = {k: getattr(data, k) for k in ("net", "dataset", "setting") if data is not None and hasattr(data, k)}
    context["recipe"] = recipe
    return hparams.resolve(m.hparams, m.overrides or hparams.Overrides(), context, flags)


def one_line_error(proc, *needles):
    """The one error line of a finished script that refused its input (exit 2, no traceback),
    after checking that it holds each of ``needles``."""
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, describe(proc)
    for n in needles:
        assert str(n) in lines[0], describe(proc)
    return lines[0]


# ---- tiny models and data for the methods' oracles ---------------------------------------------

TINY_CLASSES = 3
TINY_SHAPE = (3, 8, 8)


def tiny_conv_net(seed=0, forget_bias=None):
    """A tiny conv net on 3×8×8 with two spatial stages (8×8 and 4×4)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 4 * 4, TINY_CLASSES))
    if forget_bias is not None:  # make the net give the forget class (0) almost no probability
        with torch.no_grad():
            net[-1].bias[0] = forget_bias
    return net


def tiny_unlearn_data(n=30, forget_class=0, setting="fullclass", dataset="tiny", retain=True, build_fresh=None):
    """UnlearnData over n random 3×8×8 images of TINY_CLASSES classes; the forget class's
    images are bright (easy to recognise)."""
    from torch.utils.data import DataLoader

    from registry import UnlearnData

    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, *TINY_SHAPE, generator=g)
    y = torch.arange(n) % TINY_CLASSES
    forget = Triples(x[y == forget_class] + 5.0, y[y == forget_class])
    keep = Triples(x[y != forget_class], y[y != forget_class])
    return UnlearnData(
        forget_train=DataLoader(forget, batch_size=8),
        retain_train=DataLoader(keep, batch_size=8, shuffle=True) if retain else None,
        full_train=None, num_classes=TINY_CLASSES, forget_class=forget_class, setting=setting, dataset=dataset,
        net="tiny", build_fresh=build_fresh or (lambda: tiny_conv_net(seed=99)))


MLP_CLASSES = 3


def double_mlp(inputs=4, classes=MLP_CLASSES, seed=0, hidden=5):
    """A float64 two-layer perceptron, for oracles compared to the last bits."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.Tanh(),
                               torch.nn.Linear(hidden, classes)).double()


def double_samples(n, inputs=4, seed=1):
    """n float64 samples for double_mlp, labels cycling through its classes."""
    g = torch.Generator().manual_seed(seed)
    return Triples(torch.randn(n, inputs, generator=g, dtype=torch.float64), torch.arange(n) % MLP_CLASSES)



def run_target(setting, args):
    """The target (records.record_target) of a run of ``setting`` with flags ``args`` (a
    namespace or a dict): the record fields experiment.target_fields gives a run, on the data
    pipeline its flags resolve to."""
    import argparse

    import experiment
    import flags
    import records

    a = argparse.Namespace(**(dict(args) if isinstance(args, dict) else vars(args)))
    exp = SimpleNamespace(args=a, setting=setting, forget=experiment.forget_target(a),
                          pipe=flags.resolve_data(a, setting))
    return records.record_target(experiment.target_fields(exp))
