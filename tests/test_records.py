"""records.py: run identity, strict-JSON record lines, appending under concurrent writers and a
full disk, reading records back, the code version, and the wandb mirror."""
import errno
import json
import os
import subprocess
import sys
import time
import types
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import describe, run_inprocess, run_scripts, run_target

import evaluation
import methods
import models
import records
import report
from cli import UserError
from records import append_record, check_results_path, read_records


def _writer(path, tag, n):
    # Linux writes one O_APPEND write() to a local file in one piece; make every write()
    # short, as on a network file system or after a signal, so that only the lock can keep
    # the lines whole.
    real_write = os.write

    def short_write(fd, data):
        time.sleep(0)
        return real_write(fd, bytes(data[:512]))

    os.write = short_write
    pad = "x" * 5_000
    for i in range(n):
        append_record(path, {"tag": tag, "i": i, "pad": pad})


def test_concurrent_writers_leave_only_whole_lines(tmp_path):
    path = str(tmp_path / "r.jsonl")
    ctx = get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, t, 60)) for t in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = Path(path).read_text().splitlines()
    recs = [json.loads(line) for line in lines]  # every line parses
    assert len(recs) == 180
    for t in "abc":
        assert [r["i"] for r in recs if r["tag"] == t] == list(range(60))


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, {"run": 1})
    with open(path, "a") as f:
        f.write('{"run": 2, "Df": 1')  # a writer killed mid-line
    append_record(path, {"run": 3})
    assert [r["run"] for r in read_records(path)] == [1, 3]
    append_record(path, {"run": 4})
    assert [r["run"] for r in read_records(path)] == [1, 3, 4]


def _bad_loss(model, data, hp, device):
    raise FloatingPointError("finetune epoch 1: loss became nan")


def _huge_outputs(model, data, hp, device):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e30)  # finite weights, infinite logits
    return model


def _nan_weights(model, data, hp, device):
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    return model


@pytest.mark.parametrize("fn, reason", [(_bad_loss, "loss became nan"), (_huge_outputs, "non-finite outputs"),
                                        (_nan_weights, "non-finite weights")])
def test_a_diverged_method_is_recorded_flagged_and_warned(monkeypatch, smallcnn_ckpt, tmp_path, fn, reason):
    monkeypatch.setitem(methods.METHODS, "finetune", methods.Method("finetune", fn))
    results = tmp_path / "r.jsonl"
    proc = run_inprocess(["forget_full_class_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                          "-forget_class", "3", "-method", "finetune", "-weight_path", smallcnn_ckpt,
                          "-results", results, "-retrain_dir", tmp_path])
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr.startswith("warning: finetune diverged") and reason in proc.stderr
    (rec,) = read_records(results)
    assert rec["diverged"] is True and reason in rec["diverged_reason"]
    assert not {"Df", "RetainTestAcc", "MIA", "RelearnSteps"} & set(rec)  # no chance-level numbers
    (row,) = report.summarise([rec])
    assert row["diverged"] == 1 and row["Dr"] == "" and row["Df"] == ""


def test_a_healthy_run_is_recorded_as_not_diverged(smallcnn_ckpt, tmp_path):
    results = tmp_path / "r.jsonl"
    proc = run_inprocess(["forget_full_class_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                          "-forget_class", "3", "-method", "baseline", "-weight_path", smallcnn_ckpt,
                          "-results", results, "-relearn_max_steps", "0", "-retrain_dir", tmp_path])
    assert proc.returncode == 0 and "warning" not in proc.stderr, describe(proc)
    (rec,) = read_records(results)
    assert rec["diverged"] is False and "Df" in rec
    assert "diverged" not in report.summarise([rec])[0]


LAST_BIAS = list(dict(models.SmallCNN(10).named_parameters()))[-1]


def test_check_finite_names_the_first_bad_tensor():
    model = models.SmallCNN(10)
    evaluation.check_finite(model)
    with torch.no_grad():
        dict(model.named_parameters())[LAST_BIAS][0] = float("inf")
    with pytest.raises(evaluation.Diverged, match="non-finite weights in 1 tensor"):
        evaluation.check_finite(model)


TIMES = {"MethodTime", "EvalTime", "time"}


def test_one_command_one_seed_one_record(smallcnn_ckpt, tmp_path):
    """retrain_full draws a fresh initialisation, the shuffled retain loader's order (2 workers)
    and the random forget split: two processes with the same command write the same record,
    times aside."""
    def cmd(results, seed):
        return ["forget_random_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                "-forget_perc", "0.05", "-method", "retrain_full", "-retrain_epochs", "1", "-weight_path", smallcnn_ckpt, "-seed", seed,
                "-workers", "2", "-relearn_max_steps", "5", "-results", results, "-retrain_dir", tmp_path]

    names = ["a", "b", "other_seed"]
    procs = run_scripts([cmd(tmp_path / f"{n}.jsonl", "1" if n == "other_seed" else "0") for n in names], parallel=3)
    for p in procs:
        assert p.returncode == 0, describe(p)
    a, b, c = (read_records(tmp_path / f"{n}.jsonl")[0] for n in names)
    strip = (lambda r: {k: v for k, v in r.items() if k not in TIMES | {"args"}}
             | {"args": {k: v for k, v in r["args"].items() if k != "results"}})
    assert strip(a) == strip(b)
    metrics = ("RetainTestAcc", "Df", "MIA", "TestAcc", "MIAEntropyAUC")
    assert [a[k] for k in metrics] != [c[k] for k in metrics]  # another seed: another split and order


def test_one_parser_names_each_bad_line_and_reads_not_a_number_as_null(tmp_path):
    data = b'{"a": 1}\n\nnot json\n{"a": NaN}\n\xff\xfe\n{"a": 2'
    assert list(records.parse_lines(data)) == [(1, {"a": 1}, None), (3, None, "not JSON"), (4, {"a": None}, None),
                                               (5, None, "not UTF-8 text"), (6, None, "not JSON")]
    (tmp_path / "r.jsonl").write_bytes(data)
    assert read_records(tmp_path / "r.jsonl") == [{"a": 1}, {"a": None}]


def _run_args(tmp_path, **kw):
    from types import SimpleNamespace

    base = dict(results=str(tmp_path / "r.jsonl"), wandb="disabled", dataset="Digits", net="SmallCNN",
                forget_class="3", seed=0, method="baseline", recipe="reference", split_draw=None, pins_split=None,
                retrain_milestones=None, workers=None, gpu=False)
    return SimpleNamespace(**{**base, **kw})


def test_a_run_of_another_recipe_is_not_the_recorded_run(tmp_path):
    import records

    reference, corrected = _run_args(tmp_path), _run_args(tmp_path, recipe="corrected")
    records.write(reference, dict(setting="fullclass", args=dict(vars(reference)), Df=1.0))
    assert records.recorded(corrected, "fullclass") is None
    assert records.recorded(reference, "fullclass")["Df"] == 1.0
    assert records.run_identity("fullclass", reference) != records.run_identity("fullclass", corrected)
    assert run_target("fullclass", reference) != run_target("fullclass", corrected)


def test_a_run_with_a_tuple_flag_is_its_own_record_read_back(tmp_path):
    # JSON gives a tuple back as a list: the run and its record still have one identity
    import records

    args = _run_args(tmp_path, retrain_milestones=(10, 15))
    records.write(args, dict(setting="fullclass", args=dict(vars(args)), Df=2.0))
    assert records.recorded(args, "fullclass")["Df"] == 2.0
    assert records.recorded(_run_args(tmp_path, retrain_milestones=(10, 16)), "fullclass") is None


def test_the_target_holds_what_decides_the_forget_set_and_nothing_else(tmp_path):
    import records

    def target(setting="fullclass", **kw):
        return run_target(setting, _run_args(tmp_path, **kw))

    assert target() == (("setting", "fullclass"), ("dataset", "Digits"), ("net", "SmallCNN"), ("forget", "3"),
                        ("seed", "0"), ("recipe", "reference"),
                        ("pipeline", (("loader_batch", "None"), ("pins_split", "none"), ("retain_test_order", "grouped"),
                                      ("split_draw", "after_two_models"))))
    # another method, schedule or output; SSD's own batch order; a split flag set to the value the
    # recipe gives it anyway: the same images, the same target
    assert target(method="retrain_full", retrain_milestones=(1, 2), results="x.jsonl") == target()
    assert target(importance_order="grouped") == target()
    assert target(split_draw="after_two_models") == target()
    assert target(recipe="corrected") == target(recipe="corrected", split_draw="own_generator")
    changed = [target(forget_class="4"), target(dataset="Digits5"), target(net="ViT"), target(seed=1),
               target(recipe="corrected"), target(split_draw="own_generator"), target(pins_split="per_person"),
               target(loader_batch=64), target(retain_test_order="dataset"), target("subclass"),
               target("random", forget_class=None, forget_perc=0.05)]
    assert len(set(changed)) == len(changed) and target() not in changed
    # a record's target is its run's; one without a recipe ran the default one, one without a
    # pipeline (written before it was recorded) has none
    run = dict(vars(_run_args(tmp_path)), setting="fullclass", forget="3")
    record = dict(run, pipeline=dict(dict(target())["pipeline"], importance_order="shuffled"))
    assert records.record_target(record) == target()
    old = {"setting": "random", "dataset": "Digits", "net": "SmallCNN", "forget": 0.05, "seed": 2,
           "args": {"forget_perc": 0.05, "seed": 2, "dataset": "Digits", "net": "SmallCNN"}}
    assert dict(records.record_target(old)) == dict(setting="random", dataset="Digits", net="SmallCNN", forget="0.05",
                                                     seed="2", recipe="reference", pipeline=None)
    assert records.recipe_of(dict(old, args=dict(old["args"], recipe="corrected"))) == "corrected"
    perc = records.run_identity("random", old["args"])
    assert records.record_identity(old) == perc and records.record_identity(["not", "a", "record"]) is None


def git(repo, *cmd):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *cmd],
                          capture_output=True, text=True, check=True).stdout.strip()


def fresh_version(monkeypatch, repo):
    monkeypatch.setattr(records, "_REPO", str(repo))
    monkeypatch.setattr(records, "_VERSION", [])
    return records.code_version()


def test_code_version_of_a_clean_and_a_dirty_checkout(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "untracked.txt").write_text("not part of the version\n")
    assert fresh_version(monkeypatch, tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert fresh_version(monkeypatch, tmp_path) == {"commit": head, "dirty": True}
    # cached: later edits do not change what this process reports
    git(tmp_path, "commit", "-q", "-am", "two")
    assert records.code_version() == {"commit": head, "dirty": True}


def test_code_version_outside_git_and_without_git(tmp_path, monkeypatch):
    assert fresh_version(monkeypatch, tmp_path) == {"commit": None, "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert fresh_version(monkeypatch, tmp_path) == {"commit": None, "dirty": None}


class FakeWandb:
    def __init__(self, fail=None):
        self.calls, self.fail = [], fail

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        if self.fail:
            raise self.fail
        return self

    def log(self, data):
        self.calls.append(("log", data))

    def finish(self):
        self.calls.append(("finish",))


RECORD = {"setting": "fullclass", "dataset": "Digits", "net": "SmallCNN", "method": "jit", "forget": "3",
          "seed": 1, "args": {"lr": 0.1}, "TestAcc": 90.5, "Epochs": 2, "ok": True, "note": "x"}


def test_mirror_to_wandb_sends_the_record(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    records.mirror_to_wandb(SimpleNamespace(wandb="offline"), RECORD, "r.jsonl")
    assert fake.calls == [("init", {"project": "jit-unlearning", "mode": "offline", "config": {"lr": 0.1},
                                    "name": "fullclass-Digits-SmallCNN-jit-3-s1"}),
                          ("log", {"seed": 1, "TestAcc": 90.5, "Epochs": 2}),  # numbers, not booleans
                          ("finish",)]
    fake.calls.clear()
    records.mirror_to_wandb(SimpleNamespace(wandb="disabled"), RECORD, "r.jsonl")
    assert fake.calls == []


def test_mirror_to_wandb_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(UserError, match=r"^-wandb online/offline needs the wandb package \(pip install wandb\)$"):
        records.mirror_to_wandb(SimpleNamespace(wandb="online"), RECORD, "r.jsonl")


@pytest.mark.parametrize("error,line", [(RuntimeError("no key\nmore"), "RuntimeError: no key"),
                                        (ValueError(), "ValueError: ")])
def test_a_failing_mirror_is_one_warning_naming_the_file(monkeypatch, tmp_path, capsys, error, line):
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail=error))
    path = records.write(SimpleNamespace(wandb="online", results=str(tmp_path / "r.jsonl")), dict(RECORD))
    err = capsys.readouterr().err
    assert err == f"warning: the record is in {path}, but mirroring it to wandb failed: {line}\n"
    assert str(tmp_path) in str(path)


def test_code_version_of_a_repository_without_commits(tmp_path, monkeypatch):
    # git status works there but HEAD does not resolve: no version rather than half of one
    git(tmp_path, "init", "-q")
    assert fresh_version(monkeypatch, tmp_path) == {"commit": None, "dirty": None}


def test_recorded_finds_the_same_run_only(tmp_path):
    results = tmp_path / "r.jsonl"
    args = SimpleNamespace(results=str(results), seed=1, lr=0.1, workers=4, wandb="disabled")
    same = {"setting": "fullclass", "args": {"seed": 1, "lr": "0.1", "workers": 0, "gpu": True}, "TestAcc": 1.0}
    with open(results, "w") as f:
        f.write('["not a record"]\n{"setting": "fullclass", "args": "not a dict"}\n{"setting": "fullclass"}\n')
        f.write('{"setting": "fullclass", "args": {"seed": 2, "lr": 0.1}}\n')   # another seed
        f.write('{"setting": "subclass", "args": {"seed": 1, "lr": 0.1}}\n')    # another setting
    assert records.recorded(args, "fullclass") is None
    records.write(SimpleNamespace(results=str(results), wandb="disabled"), same)
    # flags that do not change the result (workers, gpu, results, wandb) are no part of the identity;
    # values compare as text
    assert records.recorded(args, "fullclass") == same
    assert records.recorded(args, "subclass") == {"setting": "subclass", "args": {"seed": 1, "lr": 0.1}}
    assert records.recorded(SimpleNamespace(results=str(tmp_path / "none.jsonl"), seed=1), "fullclass") is None


def good(method="baseline", seed=0, dr=90.0, df=10.0, **extra):
    return dict(setting="fullclass", dataset="Digits", net="SmallCNN", method=method, forget="3", seed=seed,
                RetainTestAcc=dr, Df=df, MIA=0.5, TestAcc=dr, MethodTime=1.0, **extra)


def _strict(line):
    def refuse(name):
        raise ValueError(f"{name} is not strict JSON")
    return json.loads(line, parse_constant=refuse)


NON_FINITE = {
    "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"),
    "numpy float32 nan": np.float32("nan"), "numpy float64 inf": np.float64("inf"),
    "nested in a list": [1.0, float("nan")], "nested in a dict": {"a": float("-inf"), "b": 2.5},
    "in a tuple": (float("nan"), 3), "numpy array": np.array([np.nan, 1.0]),
    "0-d tensor": torch.tensor(float("inf")),
}


def test_every_record_line_is_strict_json_with_null_for_not_a_number(tmp_path):
    path = tmp_path / "r.jsonl"
    for name, value in NON_FINITE.items():
        append_record(str(path), dict(good(), case=name, value=value, Df=value if name == "nan" else 1.0))
    lines = path.read_text().splitlines()
    assert len(lines) == len(NON_FINITE)
    records = [_strict(line) for line in lines]  # no NaN/Infinity token anywhere
    got = {r["case"]: r["value"] for r in records}
    assert got["nan"] is None and got["inf"] is None and got["-inf"] is None
    assert got["numpy float32 nan"] is None and got["numpy float64 inf"] is None
    assert got["nested in a list"] == [1.0, None] and got["nested in a dict"] == {"a": None, "b": 2.5}
    assert got["in a tuple"] == [None, 3] and got["numpy array"] == [None, 1.0] and got["0-d tensor"] is None
    assert records[0]["Df"] is None


def test_strict_records_keep_finite_values_exactly(tmp_path):
    values = [0.1, 1e-300, 1.7976931348623157e308, -0.0, 3, True, None, "NaN", np.int64(7), np.float32(0.25)]
    path = tmp_path / "r.jsonl"
    append_record(str(path), dict(good(), values=values, path=Path("/x/y")))
    r = _strict(path.read_text())
    assert r["values"] == [0.1, 1e-300, 1.7976931348623157e308, -0.0, 3, True, None, "NaN", 7, 0.25]
    assert r["path"] == "/x/y"


def test_read_records_survives_binary_bytes(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(json.dumps(good()).encode() + b"\n\xff\xfe\0junk\n" + json.dumps(good("jit")).encode() + b"\n")
    assert [r["method"] for r in read_records(str(path))] == ["baseline", "jit"]


@pytest.mark.parametrize("case", ["checkpoint", "png", "text", "csv", "UTF-16"])
def test_results_file_that_is_not_json_lines_is_refused(tmp_path, case):
    path = tmp_path / f"results.{case}"
    if case == "checkpoint":
        torch.save({"w": torch.zeros(2)}, path)
    elif case == "png":
        from PIL import Image
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path, format="PNG")
    elif case == "text":
        path.write_text("my notes\n")
    elif case == "csv":
        path.write_text("method,Df\nbaseline,1\n")
    else:
        path.write_bytes(json.dumps(good()).encode("utf-16"))
    before = path.read_bytes()
    with pytest.raises(UserError, match="is not a JSON-lines results file"):
        check_results_path(str(path))
    assert path.read_bytes() == before


def test_results_file_with_records_is_accepted(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n" + json.dumps(good()) + "\n" + '{"torn": ')
    check_results_path(str(path))
    (tmp_path / "empty.jsonl").write_text("")
    check_results_path(str(tmp_path / "empty.jsonl"))


def test_full_disk_record_goes_to_a_fallback_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    written = append_record("/dev/full", good())
    err = capsys.readouterr().err.strip()
    assert written != "/dev/full" and os.path.dirname(written) == str(tmp_path)
    assert err.startswith("warning: cannot append to /dev/full") and written in err and "\n" not in err
    assert _strict(Path(written).read_text())["method"] == "baseline"


def test_failed_append_takes_back_its_partial_line_and_uses_the_fallback(tmp_path, monkeypatch, capsys):
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(good()) + "\n")
    before = results.read_bytes()
    real_write, calls = os.write, []

    def write_then_full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}") != str(results):  # the fallback file: a working disk
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 1:  # half the line fits, then the disk is full
            return real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(records.os, "write", write_then_full)
    written = append_record(str(results), good("jit"))
    monkeypatch.undo()
    assert results.read_bytes() == before  # no torn line left behind
    assert "No space left on device" in capsys.readouterr().err
    assert _strict(Path(written).read_text())["method"] == "jit"


def test_record_nowhere_to_go_is_one_line_carrying_the_record(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "_fallback_paths", lambda path: ["/proc/a.jsonl", str(tmp_path / "f.txt" / "b")])
    (tmp_path / "f.txt").write_text("")
    with pytest.raises(UserError) as e:
        append_record("/dev/full", good(df=12.5))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cannot append to /dev/full")
    assert json.loads(msg.split("the record was: ", 1)[1])["Df"] == 12.5


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
