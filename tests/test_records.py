"""Records: concurrent writers leave whole lines, divergence is flagged in the record, and the
same command with the same seed writes the same record."""
import json
import os
import time
from multiprocessing import get_context
from pathlib import Path

import pytest
import torch
from helpers import describe, run_inprocess, run_scripts

import evaluation
import methods
import models
import records
import report
from records import append_record, read_records

# ---- records -------------------------------------------------------------------------------

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


# ---- divergence ----------------------------------------------------------------------------

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


# ---- reproducibility -----------------------------------------------------------------------

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


# ---- run identity ------------------------------------------------------------------------------

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
    assert records.run_identity("fullclass", reference).target() != records.run_identity("fullclass", corrected).target()


def test_a_run_with_a_tuple_flag_is_its_own_record_read_back(tmp_path):
    # JSON gives a tuple back as a list: the run and its record still have one identity
    import records

    args = _run_args(tmp_path, retrain_milestones=(10, 15))
    records.write(args, dict(setting="fullclass", args=dict(vars(args)), Df=2.0))
    assert records.recorded(args, "fullclass")["Df"] == 2.0
    assert records.recorded(_run_args(tmp_path, retrain_milestones=(10, 16)), "fullclass") is None


def test_the_target_holds_what_decides_the_forget_set_and_nothing_else(tmp_path):
    import records

    def target(**kw):
        return records.run_identity("fullclass", _run_args(tmp_path, **kw)).target()

    assert target() == (("setting", "fullclass"), ("forget", "3"), ("dataset", "Digits"), ("net", "SmallCNN"),
                        ("seed", "0"), ("recipe", "reference"), ("split_draw", None), ("pins_split", None))
    # another method, another schedule, another output: the same target
    assert target(method="retrain_full", retrain_milestones=(1, 2), results="x.jsonl") == target()
    changed = [target(forget_class="4"), target(dataset="Digits5"), target(net="ViT"), target(seed=1),
               target(recipe="corrected"), target(split_draw="own_generator"), target(pins_split="per_person"),
               records.run_identity("random", _run_args(tmp_path)).target()]
    assert len(set(changed)) == len(changed) and target() not in changed
    # a random run's target is its forget fraction; a record without a recipe ran the default one
    perc = records.run_identity("random", {"forget_perc": 0.05, "seed": 2, "dataset": "Digits", "net": "SmallCNN"})
    assert dict(perc.target())["forget"] == "0.05" and dict(perc.target())["recipe"] == "reference"
    old = {"setting": "random", "args": {"forget_perc": 0.05, "seed": 2, "dataset": "Digits", "net": "SmallCNN"}}
    assert records.record_identity(old) == perc and records.record_identity(["not", "a", "record"]) is None
