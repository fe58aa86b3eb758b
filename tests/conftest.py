"""Fixtures: quick pretrained SmallCNN checkpoints on Digits/Digits5, the tiny CIFAR files, a
thread setting for the tiny models, and the test tiers. Plain helpers are in helpers.py."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers.py
from helpers import REPO, describe, run_script, run_scripts, write_cifar  # noqa: E402

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def script_runner():
    return run_script


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Pretrain the quickstart SmallCNN on Digits (10 classes) and Digits5 (5 classes) for
    two epochs each, both at once (threads_per_slot(2) CPU threads each); returns
    {'Digits': path, 'Digits5': path}. The corrected recipe's schedule (peak -lr 0.1 from the
    first epoch on) trains further in two epochs than the reference's, whose warm-up epoch
    stays below 0.004."""
    out = tmp_path_factory.mktemp("ckpt")
    paths = {"Digits": out / "smallcnn.pth", "Digits5": out / "smallcnn5.pth"}
    cmds = [["pretrain_model.py", "-net", "SmallCNN", "-dataset", ds, "-classes", n,
             "-epochs", "2", "-recipe", "corrected", "-out", paths[ds]]
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


@pytest.fixture(scope="session")
def cifar(tmp_path_factory):
    """(root, arrays) of the tiny CIFAR files written by ``write_cifar``."""
    root = tmp_path_factory.mktemp("cifar_data")
    return root, write_cifar(root)


# ---- tiers ----------------------------------------------------------------------------------
# Tests that pretrain, run a main end to end, start torchrun or a grid, or build ViT at 224 px
# are the slow tier: they are recognised by the fixtures they use (declared here once) or carry
# @pytest.mark.slow themselves. `python -m pytest -q -m "not slow"` runs the fast tier.
SLOW_FIXTURES = {"checkpoints", "smallcnn_ckpt", "smallcnn5_ckpt", "torchrun_ckpt", "e2e_runs", "script_runner"}


# Tests marked gpu run on CUDA (the device path the CPU cannot show) and are skipped where
# there is none, so the CPU suite is the same with or without them.
NO_CUDA = pytest.mark.skip(reason="needs a CUDA GPU")


def pytest_collection_modifyitems(config, items):
    cuda = torch.cuda.is_available()
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if not cuda and item.get_closest_marker("gpu"):
            item.add_marker(NO_CUDA)
