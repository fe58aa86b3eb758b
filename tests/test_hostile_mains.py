"""Bad input to the forget mains: every numeric flag out of range is one line before any work,
splits too small are refused with their sizes, a retrain with other flags never replaces the
retrained model earlier records point at, and a failing wandb mirror is a warning."""
import json
import os
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from helpers import run_inprocess

import experiment
import models
import records
from records import read_records
from retrained import RetrainStore

FULL = ["forget_full_class_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10", "-forget_class", "3"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "random.pth"
    torch.save(models.SmallCNN(10).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("flags, says", [
    (["-method", "lipschitz_forgetting", "-sigma", "inf"], "-sigma must be > 0"),
    (["-method", "lipschitz_forgetting", "-eta", "nan"], "-eta must be > 0"),
    (["-method", "lipschitz_forgetting", "-sigma", "-1"], "-sigma must be > 0"),
    (["-method", "lipschitz_forgetting", "-n_samples", "0"], "-n_samples must be >= 1"),
    (["-method", "retrain_full", "-retrain_epochs", "0"], "-retrain_epochs must be >= 1"),
    (["-method", "retrain_full", "-retrain_epochs", "-1"], "-retrain_epochs must be >= 1"),
    (["-method", "scrub", "-scrub_alpha", "-1"], "-scrub_alpha must be >= 0"),
    (["-method", "blindspot", "-bt_retain_frac", "1.5"], "-bt_retain_frac must be in (0, 1]"),
    (["-method", "gkt", "-gkt_recipe", "other"], "-gkt_recipe"),
    (["-method", "baseline", "-seed", "-1"], "-seed"),
    (["-method", "baseline", "-seed", str(2 ** 32)], "-seed"),
    (["-method", "baseline", "-workers", "-1"], "-workers"),
    (["-method", "baseline", "-b", "0"], "-b"),
    (["-method", "baseline", "-relearn_max_steps", "-2"], "-relearn_max_steps"),
])
def test_out_of_range_flags_are_one_line_before_any_work(flags, says, weights, tmp_path):
    results = tmp_path / "r.jsonl"
    proc = run_inprocess([*FULL, *flags, "-weight_path", weights, "-results", results])
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not results.exists()


@pytest.mark.parametrize("perc", ["0.995", "0.9999"])
def test_a_random_split_leaving_too_few_retained_images_is_refused_with_its_sizes(perc, weights, tmp_path):
    proc = run_inprocess(["forget_random_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                          "-forget_perc", perc, "-method", "finetune", "-weight_path", weights,
                          "-results", tmp_path / "r.jsonl"])
    assert proc.returncode == 2, proc.stderr
    assert "training image(s) to retain" in proc.stderr and "to forget" in proc.stderr
    assert not (tmp_path / "r.jsonl").exists()


def _args(tmp_path, **kw):
    base = dict(retrain_dir=str(tmp_path), dataset="Digits", net="SmallCNN", seed=0, method="retrain_full",
                epochs=None, results=str(tmp_path / "r.jsonl"), workers=None, gpu=False, forget_class="3")
    return SimpleNamespace(**{**base, **kw})


def test_a_retrain_with_other_flags_gets_its_own_file_and_never_replaces_one(tmp_path):
    a, b = _args(tmp_path), _args(tmp_path, epochs=1)
    store = RetrainStore(str(tmp_path))
    pa = store.path(records.run_identity("fullclass", a))
    pb = store.path(records.run_identity("fullclass", b))
    assert pa != pb
    assert pa == store.path(records.run_identity("fullclass", _args(tmp_path, results="other.jsonl", workers=2))
                            )  # flags that change nothing keep the name
    first = models.SmallCNN(10)
    experiment.save_retrained(first, records.run_identity("fullclass", a), store)
    experiment.save_retrained(models.SmallCNN(10), records.run_identity("fullclass", a), store)  # same flags again
    saved = torch.load(pa, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in first.state_dict().items())


def test_runs_compare_with_the_retrained_model_the_newest_record_names(tmp_path):
    args = _args(tmp_path, method="baseline")
    store = RetrainStore(str(tmp_path))

    def find(forget="3"):
        return store.find(records.run_identity("fullclass", vars(args) | {"forget_class": forget}),
                          read_records(args.results))

    older = tmp_path / "fullclass-Digits-SmallCNN-3-seed0-retrain_full-aaaaaaaaaa.pth"
    newer = tmp_path / "fullclass-Digits-SmallCNN-3-seed0-retrain_full-bbbbbbbbbb.pth"
    for when, p in enumerate((older, newer)):
        torch.save(models.SmallCNN(10).state_dict(), p)
        os.utime(p, (1e9 + when, 1e9 + when))
    assert find() == (str(newer), "retrain_full")  # newest file
    (tmp_path / "r.jsonl").write_text(json.dumps({"method": "retrain_full", "RetrainCheckpoint": str(older)}) + "\n")
    assert find() == (str(older), "retrain_full")  # what records name
    assert find("4") is None


def test_a_failing_wandb_mirror_is_one_warning_and_the_record_stays(monkeypatch, capsys, tmp_path):
    def init(**kw):
        raise RuntimeError("api key not configured (no-tty)\nmore detail")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    args = SimpleNamespace(wandb="online", results=str(tmp_path / "r.jsonl"))
    record = dict(setting="fullclass", dataset="Digits", net="SmallCNN", method="baseline", forget="3", seed=0,
                  args={}, Df=1.0)
    path = records.write(args, record)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and "api key not configured" in err[0]
    assert json.loads(open(path).read())["Df"] == 1.0
