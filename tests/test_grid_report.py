"""Grid scripts (usage, resume by skipping recorded runs) and the report table."""
import json
import os
import pickle
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import workdir

import report
from models import VGG16

REPO = Path(__file__).resolve().parent.parent
GRIDS = sorted(p.name for p in REPO.glob("*_exps_*.sh"))


def _grid(script, *args, env=None):
    e = dict(os.environ, HF_HUB_OFFLINE="1")
    e.update(env or {})
    return subprocess.run(["bash", str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=600, cwd=workdir())


def test_every_paper_grid_is_there():
    for name in ["cifar100_fullclass_exps_vgg.sh", "cifar100_fullclass_exps_vit.sh",
                 "cifar20_fullclass_exps_vgg.sh", "cifar20_subclass_exps_vgg.sh",
                 "cifar20_subclass_exps_vit.sh", "cifar10_random_exps_vgg.sh"]:
        assert name in GRIDS
        assert os.access(REPO / name, os.X_OK)


@pytest.mark.parametrize("script", GRIDS)
@pytest.mark.parametrize("args", [(), ("0",), ("gpu0", "1", "w.pth"), ("0", "seed", "w.pth"), ("0", "1", "a", "b")])
def test_grid_rejects_bad_arguments_with_usage(script, args):
    proc = _grid(script, *args, env={"WEIGHT_PATH": ""})
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage:")


def test_grid_names_a_missing_weight_file(tmp_path):
    proc = _grid("cifar10_random_exps_vgg.sh", "cpu", "0", tmp_path / "nope.pth")
    assert proc.returncode == 2 and "weight file not found" in proc.stderr


@pytest.fixture(scope="module")
def cifar10_1000(tmp_path_factory):
    """CIFAR-10 files with 1,000 training images (so forget_perc 0.00165 selects one) and a
    VGG16 state dict with random weights."""
    root = tmp_path_factory.mktemp("c10")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 200) for i in range(1, 6)] + [("test_batch", 50)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": [int(v) for v in rng.integers(0, 10, n)]}, f)
    torch.manual_seed(0)
    weights = root / "vgg16.pth"
    torch.save(VGG16(10).state_dict(), weights)
    return root, weights


def test_grid_resumes_and_records_each_run_once(cifar10_1000, tmp_path):
    root, weights = cifar10_1000
    results = tmp_path / "r.jsonl"
    env = {"RESULTS": str(results), "EXTRA_ARGS": f"-data_root {root}"}
    first = _grid("cifar10_random_exps_vgg.sh", "cpu", "0", weights, env=dict(env, ONLY_METHODS="baseline"))
    assert first.returncode == 0, first.stderr[-2000:]
    # A second pass over more methods: the recorded baseline is skipped, the rest runs.
    second = _grid("cifar10_random_exps_vgg.sh", "cpu", "0", env=dict(
        env, ONLY_METHODS="baseline lipschitz_forgetting not_a_method", WEIGHT_PATH=str(weights)))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "skip:" in second.stdout and "not implemented yet, skipped: not_a_method" in second.stdout
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["method"] for r in records) == ["baseline", "lipschitz_forgetting"]
    assert all(r["net"] == "VGG16" and r["dataset"] == "Cifar10" and r["n_forget"] == 1 for r in records)
    assert all(r["forget"] == 0.00165 and r["seed"] == 0 for r in records)


def _record(method, seed, dr, df, mia=0.5, t=1.0, dataset="Digits"):
    return dict(setting="fullclass", dataset=dataset, net="SmallCNN", method=method, seed=seed,
                RetainTestAcc=dr, Df=df, MIA=mia, TestAcc=dr, MethodTime=t)


def test_report_mean_and_std_over_seeds_match_a_recomputation():
    recs = [_record("jit", 0, 90.0, 10.0, 0.2), _record("jit", 1, 80.0, 30.0, 0.4),
            _record("jit", 2, 85.0, 20.0, 0.9), _record("baseline", 0, 95.0, 96.0)]
    rows = {r["method"]: r for r in report.summarise(recs)}
    dr = [90.0, 80.0, 85.0]
    mia = [0.2, 0.4, 0.9]
    assert rows["jit"]["n"] == 3
    assert rows["jit"]["Dr"] == f"{statistics.mean(dr):.2f} ± {statistics.stdev(dr):.2f}"
    assert rows["jit"]["MIA"] == f"{statistics.mean(mia):.3f} ± {statistics.stdev(mia):.3f}"
    assert rows["baseline"]["Df"] == "96.00"  # a single run shows no ± term


def test_report_keeps_settings_apart():
    rows = report.summarise([_record("jit", 0, 90.0, 10.0), _record("jit", 0, 50.0, 5.0, dataset="Cifar10")])
    assert [(r["dataset"], r["Dr"]) for r in rows] == [("Digits", "90.00"), ("Cifar10", "50.00")]


def test_report_cli_prints_a_markdown_table(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(_record(m, 0, 90.0, 1.0)) for m in ("baseline", "jit")) + "\n")
    proc = subprocess.run(["python", str(REPO / "report.py"), str(path)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0
    assert lines[0].startswith("| setting | dataset | net | method | n | Dr | Df | MIA")
    assert len(lines) == 5 and lines[-1].startswith("report: ")
    for ext in (".md", ".csv", ".png"):
        assert (tmp_path / f"r-report{ext}").stat().st_size > 0


def test_report_cli_rejects_an_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    proc = subprocess.run(["python", str(REPO / "report.py"), str(tmp_path / "empty.jsonl")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no records" in proc.stderr
