"""Retrained models (retrained.py and the mains' use of it): the one store names each by its
target, method and identity, finds only those of a run's own target, never saves over a model,
and runs compare with the model their target's newest retrain saved."""
import errno
import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from helpers import Triples, literal_js, run_inprocess, run_target

import experiment
import models
import records
import retrained
from cli import UserError
from records import read_records
from retrained import RetrainStore


def _full(weights, results, method, *extra):
    return ["forget_full_class_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
            "-forget_class", "3", "-weight_path", weights, "-seed", "0", "-results", results, "-method", method,
            *extra]


def test_runs_compare_with_the_saved_retrained_model(smallcnn_ckpt, tmp_path):
    results, gold = str(tmp_path / "r.jsonl"), str(tmp_path / "gold")
    common = ("-retrain_dir", gold, "-relearn_max_steps", "0")
    assert run_inprocess(_full(smallcnn_ckpt, results, "retrain", "-retrain_epochs", "1", *common)).returncode == 0
    assert run_inprocess(_full(smallcnn_ckpt, results, "baseline", *common)).returncode == 0
    retrain, base = [json.loads(line) for line in open(results)]
    assert retrain["RetrainCheckpoint"].startswith(gold)
    assert base["RetrainReference"] == "retrain"
    assert 0 < base["JSToRetrain"] <= math.log(2) and base["ActDistToRetrain"] > 0
    assert "RelearnSteps" not in base  # -relearn_max_steps 0 skips it


RUN = dict(dataset="Digits", net="SmallCNN", forget_class="3", seed=0, recipe="reference", split_draw=None,
           pins_split=None, method="baseline")


def ident(setting="fullclass", **kw):
    """(identity, target) of a run of ``setting`` with RUN's flags changed by ``kw``."""
    return records.run_identity(setting, {**RUN, **kw}), run_target(setting, {**RUN, **kw})


def target(setting="fullclass", **kw):
    return ident(setting, **kw)[1]


def data_tag(t):
    """The six hex digits naming the data pipeline of target ``t``."""
    return "data" + hashlib.sha1(repr(dict(t)["pipeline"]).encode()).hexdigest()[:6]


def test_names_hold_the_target_method_and_digest(tmp_path):
    store = RetrainStore(str(tmp_path))
    retrain, t = ident(method="retrain_full")
    default = ("(('loader_batch', 'None'), ('pins_split', 'none'), ('retain_test_order', 'grouped'), "
               "('split_draw', 'after_two_models'))")
    tag = "data" + hashlib.sha1(default.encode()).hexdigest()[:6]
    assert store.path(retrain, t) == str(tmp_path / f"fullclass-Digits-SmallCNN-3-seed0-{tag}-retrain_full-"
                                                    f"{retrain.digest()}.pth")
    odd, odd_t = ident(method="retrain", recipe="corrected", split_draw="after_two_models", seed=4)
    assert os.path.basename(store.path(odd, odd_t)) == (
        f"fullclass-Digits-SmallCNN-3-seed4-corrected-{data_tag(odd_t)}-retrain-{odd.digest()}.pth")
    assert data_tag(odd_t) not in (tag, data_tag(target(recipe="corrected")))
    # K retrains of one run: named by their model seed, each its own digest
    k3 = os.path.basename(store.path(retrain, t, 3))
    assert k3 == f"fullclass-Digits-SmallCNN-3-seed0-{tag}-retrain_full-model3-{retrain.digest(3)}.pth"
    assert len({retrain.digest(), retrain.digest(0), retrain.digest(3)}) == 3


@pytest.mark.parametrize("change", [dict(split_draw="own_generator"), dict(pins_split="per_person"),
                                    dict(loader_batch=64), dict(retain_test_order="dataset"),
                                    dict(recipe="corrected"), dict(seed=1), dict(forget_class="4"),
                                    dict(net="AllCNN"), dict(dataset="Digits5")])
def test_a_run_finds_only_a_retrain_of_its_own_target(tmp_path, change):
    """A run with another split choice (or recipe, seed, target, net, data) shares no forget set
    with the retrain on disk: it must not be compared with it, even though it is the only one."""
    store = RetrainStore(str(tmp_path))
    theirs = store.save({}, *ident(method="retrain_full"))
    assert store.find(target(), []) == (theirs, "retrain_full")
    assert store.find(target(**change), []) is None
    ours = store.save({}, *ident(method="retrain_full", **change))
    os.utime(theirs, (2e9, 2e9))  # the other target's file is the newer one
    assert store.find(target(**change), []) == (ours, "retrain_full")
    assert store.find(target(), []) == (theirs, "retrain_full")


def test_a_run_of_other_flags_finds_the_retrain_of_its_target(tmp_path):
    # which unlearning method ran, and its flags (SSD's batch order too), do not change the forget set
    store = RetrainStore(str(tmp_path))
    path = store.save({}, *ident(method="retrain", epochs=3))
    assert store.find(target(method="lipschitz_forgetting", sigma=0.5), []) == (path, "retrain")
    assert store.find(target(method="ssd", importance_order="grouped"), []) == (path, "retrain")


def test_save_never_replaces_a_model(tmp_path):
    store = RetrainStore(str(tmp_path))
    path = store.save({"w": torch.ones(1)}, *ident(method="retrain_full"))
    assert store.save({"w": torch.zeros(1)}, *ident(method="retrain_full")) == path
    assert torch.load(path, weights_only=True)["w"].item() == 1.0


CPU = torch.device("cpu")


def rows(x, y):
    """A Triples data set (not ArrayImages: evaluation goes through evaluation.loader)."""
    return Triples(torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long))


def softmax_rows(lg):
    out = []
    for row in lg.tolist():
        e = [math.exp(v - max(row)) for v in row]
        out.append([v / sum(e) for v in e])
    return out


def no_warning_about(caught, word):
    return [str(w.message) for w in caught if word in str(w.message)] == []


def retrain_args(tmp_path, **kw):
    base = dict(retrain_dir=str(tmp_path), dataset="Digits", net="Lin", seed=0, method="retrain_full",
                epochs=None, results=str(tmp_path / "r.jsonl"), workers=None, gpu=False)
    return SimpleNamespace(**{**base, **kw})


def identity(args, setting="fullclass", forget="3"):
    """(identity, target) of a run with flags ``args`` and forget target ``forget``."""
    flags = dict(vars(args), forget_class=forget)
    return records.run_identity(setting, flags), run_target(setting, flags)


def find_retrained(args, setting="fullclass", forget="3"):
    return RetrainStore(args.retrain_dir).find(identity(args, setting, forget)[1], read_records(args.results))


def stem(net="Lin", method="retrain_full"):
    """The file name's start of the default target's retrains (the Digits test runs')."""
    return f"fullclass-Digits-{net}-3-seed0-{data_tag(target(net=net))}-{method}"


def test_retrain_checkpoint_name():
    # setting-dataset-net-forget-seedN-method, then the first ten hex digits of the SHA-1 of the
    # run's identity (the setting and every flag that changes the result).
    args = retrain_args(Path("/ck"), seed=7, method="retrain")
    ident, t = identity(args, "subclass", "rocket")
    digest = hashlib.sha1(repr((ident.setting, ident.flags)).encode()).hexdigest()[:10]
    got = RetrainStore(args.retrain_dir).path(ident, t)
    assert got == os.path.join("/ck", f"subclass-Digits-Lin-rocket-seed7-{data_tag(t)}-retrain-{digest}.pth")
    assert len(digest) == 10 and digest != hashlib.sha1(
        repr((None, ident.flags)).encode()).hexdigest()[:10]


def test_find_retrained_takes_the_newest_file_by_time_not_by_name(tmp_path):
    args = retrain_args(tmp_path, method="baseline")
    newer = tmp_path / f"{stem()}-aaaaaaaaaa.pth"
    older = tmp_path / f"{stem()}-zzzzzzzzzz.pth"
    for when, p in ((1, newer), (0, older)):
        torch.save({}, p)
        os.utime(p, (1e9 + when, 1e9 + when))
    assert find_retrained(args) == (str(newer), "retrain_full")


def test_find_retrained_reads_only_the_records_of_retrain_runs(tmp_path):
    # A baseline record names the checkpoint it was compared with; only a retrain run's record
    # says which checkpoint is that run's. Lines that are JSON but not objects are skipped.
    args = retrain_args(tmp_path, method="baseline")
    a = tmp_path / f"{stem()}-aaaaaaaaaa.pth"
    z = tmp_path / f"{stem()}-zzzzzzzzzz.pth"
    for p in (a, z):
        torch.save({}, p)
    lines = [{"method": "retrain_full", "RetrainCheckpoint": str(z)},
             {"method": "baseline", "RetrainCheckpoint": str(a)}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert find_retrained(args) == (str(z), "retrain_full")
    (tmp_path / "r.jsonl").write_text("[1, 2]\n" + (tmp_path / "r.jsonl").read_text() + "3\n")
    assert find_retrained(args) == (str(z), "retrain_full")


def lin_exp(x):
    return SimpleNamespace(setting="fullclass", forget="3", num_classes=3, build_fresh=lambda: nn.Linear(4, 3),
                           subset={"forget_train": rows(x, torch.zeros(len(x)))}, args=SimpleNamespace(net="Lin", amp=False),
                           workers=0, device=CPU)


def test_a_retrain_run_returns_the_checkpoint_it_saved(tmp_path):
    args = retrain_args(tmp_path)
    model = nn.Linear(4, 3)
    got = experiment.save_retrained(model, *identity(args), RetrainStore(args.retrain_dir))
    path = RetrainStore(args.retrain_dir).path(*identity(args))
    assert got == {"RetrainCheckpoint": path}
    assert os.path.basename(path).startswith(stem() + "-")
    saved = torch.load(path, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_a_retrain_run_that_cannot_save_its_model_warns_and_returns_no_checkpoint(tmp_path, monkeypatch, capsys):
    """A full disk at the retrained model's save: one warning on stderr naming the path and the
    cause, and the record gets RetrainCheckpoint None (the run's record is still written)."""
    def full(obj, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(retrained, "atomic_save", full)
    args = retrain_args(tmp_path)
    got = experiment.save_retrained(nn.Linear(4, 3), *identity(args), RetrainStore(args.retrain_dir))
    path = RetrainStore(args.retrain_dir).path(*identity(args))
    assert got == {"RetrainCheckpoint": None}
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"warning: cannot save the retrained model to {path} (No space left on device); other runs "
                   f"cannot compare with it\n")


def test_compare_to_retrained_against_the_hand_computed_divergences(tmp_path):
    g = torch.Generator().manual_seed(3)
    x, forget_lg = torch.randn(5, 4, generator=g), 2 * torch.randn(5, 3, generator=g)
    gold = nn.Linear(4, 3)
    path = tmp_path / f"{stem(method='retrain')}-0123456789.pth"
    torch.save(gold.state_dict(), path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = experiment.compare_with_retrained(forget_lg, lin_exp(x),
                                                find_retrained(retrain_args(tmp_path, method="baseline")))
    assert no_warning_about(caught, "softmax")  # explicit dims over the classes
    assert set(got) == {"JSToRetrain", "ActDistToRetrain", "RetrainReference", "RetrainCheckpoint"}
    assert (got["RetrainReference"], got["RetrainCheckpoint"]) == ("retrain", str(path))
    p, q = softmax_rows(forget_lg), softmax_rows(gold(x).detach())
    assert got["JSToRetrain"] == pytest.approx(literal_js(p, q), rel=1e-5)
    dist = sum(math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b))) for a, b in zip(p, q)) / len(p)
    assert got["ActDistToRetrain"] == pytest.approx(dist, rel=1e-5)


def test_a_retrained_checkpoint_that_does_not_fit_names_the_net_and_classes(tmp_path):
    torch.save(nn.Linear(5, 3).state_dict(), tmp_path / f"{stem()}-0123456789.pth")
    with pytest.raises(UserError, match="does not fit -net Lin with 3 classes: "):
        experiment.compare_with_retrained(torch.zeros(2, 3), lin_exp(torch.zeros(2, 4)),
                                          find_retrained(retrain_args(tmp_path, method="baseline")))


def _args(tmp_path, **kw):
    base = dict(retrain_dir=str(tmp_path), dataset="Digits", net="SmallCNN", seed=0, method="retrain_full",
                epochs=None, results=str(tmp_path / "r.jsonl"), workers=None, gpu=False, forget_class="3")
    return SimpleNamespace(**{**base, **kw})


def test_a_retrain_with_other_flags_gets_its_own_file_and_never_replaces_one(tmp_path):
    a, b = _args(tmp_path), _args(tmp_path, epochs=1)
    store = RetrainStore(str(tmp_path))
    pa = store.path(*identity(a))
    pb = store.path(*identity(b))
    assert pa != pb
    assert pa == store.path(*identity(_args(tmp_path, results="other.jsonl", workers=2)))  # flags that change nothing
    first = models.SmallCNN(10)
    experiment.save_retrained(first, *identity(a), store)
    experiment.save_retrained(models.SmallCNN(10), *identity(a), store)  # same flags again
    saved = torch.load(pa, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in first.state_dict().items())


def test_runs_compare_with_the_retrained_model_the_newest_record_names(tmp_path):
    args = _args(tmp_path, method="baseline")
    store = RetrainStore(str(tmp_path))

    def find(forget="3"):
        return store.find(identity(args, forget=forget)[1], read_records(args.results))

    older = tmp_path / f"{stem('SmallCNN')}-aaaaaaaaaa.pth"
    newer = tmp_path / f"{stem('SmallCNN')}-bbbbbbbbbb.pth"
    for when, p in enumerate((older, newer)):
        torch.save(models.SmallCNN(10).state_dict(), p)
        os.utime(p, (1e9 + when, 1e9 + when))
    assert find() == (str(newer), "retrain_full")  # newest file
    (tmp_path / "r.jsonl").write_text(json.dumps({"method": "retrain_full", "RetrainCheckpoint": str(older)}) + "\n")
    assert find() == (str(older), "retrain_full")  # what records name
    assert find("4") is None
