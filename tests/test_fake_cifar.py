"""tools/fake_cifar.py: generated CIFAR files that the project's loaders read as the real ones."""
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import datasets
from tools.fake_cifar import CIFAR100_COARSE, write_cifar

REPO = Path(__file__).resolve().parent.parent


def test_the_coarse_map_pairs_the_papers_forget_classes_with_their_super_classes():
    # the paper's sub-class targets each sit in the super-class of the same position
    coarse = [int(CIFAR100_COARSE[fine]) for fine in datasets.CIFAR100_FORGET.values()]
    assert coarse == list(datasets.CIFAR20_FORGET.values())
    assert np.bincount(CIFAR100_COARSE).tolist() == [5] * 20  # five fine classes per super-class


def test_cifar100_files_load_with_the_official_coarse_labels(tmp_path):
    counts = np.ones(100, dtype=int)
    counts[69] = 4  # per-class counts: more images of one class
    written = write_cifar(tmp_path, "cifar100", train_per_class=counts, test_per_class=2, seed=3)
    data, fine, coarse = written["train"]
    assert len(fine) == 103 and np.bincount(fine).tolist() == counts.tolist()
    assert (coarse == CIFAR100_COARSE[fine]).all()
    train100 = datasets.load_dataset("Cifar100", str(tmp_path), train=True)
    test20 = datasets.load_dataset("Cifar20", str(tmp_path), train=False)
    assert train100.targets.tolist() == fine.tolist()
    assert len(test20) == 200 and test20.targets.tolist() == CIFAR100_COARSE[written["test"][1]].tolist()
    assert tuple(train100[0][0].shape) == (3, 32, 32)


def test_cifar10_spreads_every_class_over_the_five_batches(tmp_path):
    written = write_cifar(tmp_path, "cifar10", train_per_class=5, test_per_class=1)
    for i in range(1, 6):
        data, labels = written[f"data_batch_{i}"]
        assert sorted(labels.tolist()) == list(range(10)) and data.shape == (10, 3072) and data.dtype == np.uint8
    assert len(datasets.load_dataset("Cifar10", str(tmp_path), train=True)) == 50
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        assert pickle.load(f, encoding="bytes")[b"labels"] == written["test_batch"][1].tolist()


def test_the_same_arguments_write_the_same_bytes_and_learnable_images_carry_their_class(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write_cifar(root, "cifar100", 3, 1, seed=5, learnable=True)
    assert (a / "cifar-100-python" / "train").read_bytes() == (b / "cifar-100-python" / "train").read_bytes()
    data, fine, _ = write_cifar(tmp_path / "c", "cifar100", 5, 1, learnable=True)["train"]
    means = data.mean(axis=1)
    assert np.corrcoef(means, fine)[0, 1] > 0.95  # grey level rises with the class


def test_the_cli_writes_what_the_function_writes(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "fake_cifar.py"), str(tmp_path / "cli"), "-dataset",
                           "cifar100", "-train_per_class", "2", "-test_per_class", "1", "-learnable", "-seed", "4"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    write_cifar(tmp_path / "fn", "cifar100", 2, 1, seed=4, learnable=True)
    for name in ("train", "test"):
        assert (tmp_path / "cli" / "cifar-100-python" / name).read_bytes() == \
            (tmp_path / "fn" / "cifar-100-python" / name).read_bytes()


def test_bad_counts_are_refused():
    with pytest.raises(ValueError):
        write_cifar("/nonexistent", "cifar100", train_per_class=-1)
    with pytest.raises(ValueError):
        write_cifar("/nonexistent", "svhn")
