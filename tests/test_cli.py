"""End-to-end runs of the command-line scripts on Digits, in subprocesses,
plus their one-line errors on bad input. Results and checkpoints live under tmp paths.

Module fixtures run the scripts once; each test then checks one behaviour of the finished
runs. The bad-input cases run in this interpreter (runpy, as __main__: no 3-4 s torch import
per case); a few of them also run as real subprocesses.
"""
import json
import os
import re

import pytest
import torch
from helpers import describe, run_inprocess, run_scripts

import datasets
import forget_full_class_main
import forget_random_main
import forget_sub_class_main
import models
from launch import threads_per_slot

RECORD_KEYS = {"setting", "dataset", "net", "method", "forget", "seed",
               "TestAcc", "RetainTestAcc", "Df", "MIA", "MethodTime", "EvalTime", "TestAccExact",
               "args", "versions", "device", "threads", "time"}
METRICS = ("TestAcc", "RetainTestAcc", "Df", "MIA", "TestAccExact", "RetainTestAccExact", "DfExact")
OVERRIDE = {"sigma": 0.2, "eta": 0.001, "n_samples": 3}
JIT_KEYS = set(OVERRIDE)  # at a record's top level when JiT ran, and only then


def full_cmd(weights, results, method="baseline", *extra):
    """The reference command-line shape of forget_full_class_main.py, on Digits."""
    return ["forget_full_class_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
            "-method", method, "-forget_class", "3", "-weight_path", weights, "-seed", "0",
            "-b", "128", "-warm", "1", "-lr", "0.1", "-results", results, *extra]


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def only_record(path):
    recs = records(path)
    assert len(recs) == 1, recs
    return recs[0]


# ---- full class ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_runs(smallcnn_ckpt, tmp_path_factory):
    """name -> (process, results path) for the happy full-class runs.

    Subprocesses, two at a time: baseline and jit_small (cheap overridden σ, η, N). In this
    interpreter (saves ~4 s of imports each): jit (table defaults), retrain, ``jit_small_again``,
    the same-seed twin of jit_small, and ``skip_first``/``skip_second``, the baseline command
    with -skip_existing twice on one results file (skip_first is also the baseline's twin).
    The twins run with their subprocess's thread count (CPU results depend on it)."""
    d = tmp_path_factory.mktemp("full")
    small = ("-sigma", str(OVERRIDE["sigma"]), "-eta", str(OVERRIDE["eta"]), "-n_samples", str(OVERRIDE["n_samples"]))
    subprocess_plan = {
        "baseline": full_cmd(smallcnn_ckpt, d / "baseline.jsonl"),
        "jit_small": full_cmd(smallcnn_ckpt, d / "jit_small.jsonl", "lipschitz_forgetting", *small),
    }
    inprocess_plan = {
        "jit": full_cmd(smallcnn_ckpt, d / "jit.jsonl", "lipschitz_forgetting"),
        "retrain": full_cmd(smallcnn_ckpt, d / "retrain.jsonl", "retrain", "-retrain_epochs", "1"),
        "jit_small_again": full_cmd(smallcnn_ckpt, d / "jit_small_again.jsonl", "lipschitz_forgetting", *small),
        "skip_first": full_cmd(smallcnn_ckpt, d / "skip.jsonl", "baseline", "-skip_existing"),
        "skip_second": full_cmd(smallcnn_ckpt, d / "skip.jsonl", "baseline", "-skip_existing"),
    }
    out = {}
    for (name, cmd), proc in zip(subprocess_plan.items(), run_scripts(list(subprocess_plan.values()))):
        out[name] = (proc, cmd[cmd.index("-results") + 1])
    for name, cmd in inprocess_plan.items():  # in order: skip_second after skip_first
        threads = threads_per_slot(2) if name in ("jit_small_again", "skip_first") else None
        out[name] = (run_inprocess(cmd, threads), cmd[cmd.index("-results") + 1])
    return out


@pytest.mark.parametrize("name", ["baseline", "jit", "jit_small", "retrain", "skip_first"])
def test_full_class_run_succeeds_and_appends_one_record(full_runs, name):
    proc, results = full_runs[name]
    assert proc.returncode == 0, describe(proc)
    rec = only_record(results)
    missing = RECORD_KEYS - set(rec)
    assert not missing, f"record lacks {sorted(missing)}"
    if rec["method"] == "lipschitz_forgetting":
        assert JIT_KEYS <= set(rec)
    else:
        assert not JIT_KEYS & set(rec) and all(rec["args"][k] is None for k in JIT_KEYS)


@pytest.mark.parametrize("name,method", [("baseline", "baseline"), ("jit", "lipschitz_forgetting"),
                                         ("retrain", "retrain")])
def test_full_class_record_describes_the_run(full_runs, name, method):
    proc, results = full_runs[name]
    assert proc.returncode == 0, describe(proc)
    rec = only_record(results)
    assert (rec["setting"], rec["dataset"], rec["net"], rec["method"], str(rec["forget"]), rec["seed"]) == \
        ("fullclass", "Digits", "SmallCNN", method, "3", 0)
    for k in METRICS:
        assert isinstance(rec[k], float)
    assert 0 <= rec["MIA"] <= 1
    assert rec["MethodTime"] >= 0 and rec["EvalTime"] >= 0


def test_full_class_record_counts_forget_samples(full_runs):
    proc, results = full_runs["baseline"]
    assert proc.returncode == 0, describe(proc)
    train = datasets.load_dataset("Digits", train=True)
    assert only_record(results)["n_forget"] == int((train.targets == 3).sum())


def test_jit_hyperparameters_default_to_the_main_table(full_runs):
    proc, results = full_runs["jit"]
    assert proc.returncode == 0, describe(proc)
    rec = only_record(results)
    top = forget_full_class_main.JIT["VGG16"]  # SmallCNN has no row of its own: VGG16's applies
    assert "SmallCNN" not in forget_full_class_main.JIT
    assert (rec["sigma"], rec["eta"], rec["n_samples"]) == (top["sigma"], top["eta"], top["n_samples"])


def test_jit_hyperparameter_flags_override_the_table(full_runs):
    proc, results = full_runs["jit_small"]
    assert proc.returncode == 0, describe(proc)
    rec = only_record(results)
    assert (rec["sigma"], rec["eta"], rec["n_samples"]) == \
        (OVERRIDE["sigma"], OVERRIDE["eta"], OVERRIDE["n_samples"])
    assert (rec["args"]["sigma"], rec["args"]["eta"], rec["args"]["n_samples"]) == \
        (OVERRIDE["sigma"], OVERRIDE["eta"], OVERRIDE["n_samples"])


@pytest.mark.parametrize("first,second", [("baseline", "skip_first"), ("jit_small", "jit_small_again")])
def test_same_seed_gives_identical_metrics(full_runs, first, second):
    (p1, r1), (p2, r2) = full_runs[first], full_runs[second]
    assert p1.returncode == 0, describe(p1)
    assert p2.returncode == 0, describe(p2)
    a, b = only_record(r1), only_record(r2)
    assert {k: a[k] for k in METRICS} == {k: b[k] for k in METRICS}


# ---- -skip_existing -----------------------------------------------------------------------

def test_skip_existing_leaves_one_record(full_runs):
    (first, results), (second, _) = full_runs["skip_first"], full_runs["skip_second"]
    assert first.returncode == 0, describe(first)
    assert second.returncode == 0, describe(second)
    assert len(records(results)) == 1


# ---- sub-class and random -----------------------------------------------------------------

@pytest.fixture(scope="module")
def other_runs(smallcnn_ckpt, smallcnn5_ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("other")
    plan = {
        "sub": ["forget_sub_class_main.py", "-net", "SmallCNN", "-dataset", "Digits5", "-superclasses", "5",
                "-subclasses", "10", "-method", "baseline", "-forget_class", "3",
                "-weight_path", smallcnn5_ckpt, "-results", d / "sub.jsonl"],
        "random": ["forget_random_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                   "-method", "lipschitz_forgetting", "-forget_perc", "0.05",
                   "-weight_path", smallcnn_ckpt, "-results", d / "random.jsonl"],
    }
    return {name: (run_inprocess(cmd), cmd[cmd.index("-results") + 1]) for name, cmd in plan.items()}


def test_sub_class_run_records_subclass_setting(other_runs):
    proc, results = other_runs["sub"]
    assert proc.returncode == 0, describe(proc)
    rec = only_record(results)
    assert not RECORD_KEYS - set(rec)
    assert (rec["setting"], rec["dataset"], rec["method"]) == ("subclass", "Digits5", "baseline")


def test_sub_class_run_forgets_the_fine_class(other_runs):
    proc, results = other_runs["sub"]
    assert proc.returncode == 0, describe(proc)
    rec = only_record(results)
    train = datasets.load_dataset("Digits5", train=True)
    assert rec["n_forget"] == int((train.fine == 3).sum())
    assert rec["n_forget"] < int((train.targets == 1).sum())  # only half of super-class {2, 3}


def test_random_run_forgets_the_requested_fraction(other_runs):
    proc, results = other_runs["random"]
    assert proc.returncode == 0, describe(proc)
    rec = only_record(results)
    assert not RECORD_KEYS - set(rec)
    assert len(datasets.load_dataset("Digits", train=True)) == 1437
    assert rec["setting"] == "random"
    # random_split's arithmetic, as the reference: floor(71.85) plus the image rounding leaves over
    assert rec["n_forget"] == 72
    assert rec["n_retain"] == 1437 - 72


@pytest.mark.parametrize("run, main", [("sub", forget_sub_class_main), ("random", forget_random_main)])
def test_jit_defaults_come_from_each_main_table(other_runs, run, main):
    """The random run is JiT's: its σ, η, N are its main's table row. The sub-class run is a
    baseline, which holds none of them (the sub-class table's row is checked in-process)."""
    proc, results = other_runs[run]
    assert proc.returncode == 0, describe(proc)
    rec = only_record(results)
    top = main.JIT["VGG16"]
    if rec["method"] == "lipschitz_forgetting":
        assert (rec["sigma"], rec["eta"], rec["n_samples"]) == (top["sigma"], top["eta"], top["n_samples"])
    else:
        assert not JIT_KEYS & set(rec)


# ---- pretrain_model.py --------------------------------------------------------------------

@pytest.mark.parametrize("which,classes", [("Digits", 10), ("Digits5", 5)])
def test_pretrained_checkpoint_is_plain_state_dict(checkpoints, which, classes):
    path = checkpoints[which]
    assert os.path.isfile(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    models.SmallCNN(classes).load_state_dict(state, strict=True)


# ---- bad input: one line on stderr, non-zero exit -----------------------------------------

class _Evil:
    """Unpickling this would call open(marker, 'w'): a loader that runs code creates the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    garbage = d / "garbage.pth"
    garbage.write_bytes(bytes((i * 97 + 13) % 256 for i in range(4096)))
    evil = d / "evil.pth"
    marker = d / "code_ran"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": _Evil(str(marker))}, evil)
    empty = d / "empty_data_root"
    empty.mkdir()
    return {"dir": d, "garbage": str(garbage), "evil": str(evil), "marker": marker, "empty": str(empty)}


def _bad_cases(w, w5, f, results):
    def full(weights=w, forget="3", extra=(), dataset=("Digits", "10")):
        return ["forget_full_class_main.py", "-net", "SmallCNN", "-dataset", dataset[0], "-classes", dataset[1],
                "-method", "lipschitz_forgetting", "-forget_class", forget, "-weight_path", weights,
                "-results", results, *extra]

    def rand(perc):
        return ["forget_random_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                "-method", "baseline", "-forget_perc", perc, "-weight_path", w, "-results", results]

    cases = {
        "missing_weights": full(weights=os.path.join(f["dir"], "nope.pth")),
        "garbage_weights": full(weights=f["garbage"]),
        "pickled_object": full(weights=f["evil"]),
        "wrong_classes": full(weights=w5),
        "forget_name_unknown": full(forget="rocket"),
        "forget_id_out_of_range": full(forget="10"),
        "forget_perc_zero": rand("0"),
        "forget_perc_above_one": rand("1.5"),
        "sigma_zero": full(extra=("-sigma", "0")),
        "eta_negative": full(extra=("-eta", "-1")),
        "n_samples_zero": full(extra=("-n_samples", "0")),
        "missing_data": full(forget="rocket", dataset=("Cifar100", "100"), extra=("-data_root", f["empty"])),
        "unknown_net": ["forget_full_class_main.py", "-net", "ResNet9000", "-dataset", "Digits", "-classes", "10",
                        "-method", "baseline", "-forget_class", "3", "-weight_path", w, "-results", results],
        "pretrain_wrong_classes": ["pretrain_model.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "7",
                                   "-epochs", "1", "-out", os.path.join(f["dir"], "never.pth")],
    }
    if not torch.cuda.is_available():
        cases["gpu_without_cuda"] = full(extra=("-gpu",))
    return cases


BAD_CASES = ["missing_weights", "garbage_weights", "pickled_object", "wrong_classes", "forget_name_unknown",
             "forget_id_out_of_range", "forget_perc_zero", "forget_perc_above_one", "sigma_zero", "eta_negative",
             "n_samples_zero", "missing_data", "unknown_net", "pretrain_wrong_classes", "gpu_without_cuda"]


SUBPROCESS_CASES = ["unknown_net", "pickled_object"]


@pytest.fixture(scope="module")
def bad_runs(smallcnn_ckpt, smallcnn5_ckpt, bad_files):
    """({case: result in-process}, {case: subprocess result}, results path)."""
    results = os.path.join(bad_files["dir"], "results.jsonl")
    cases = _bad_cases(smallcnn_ckpt, smallcnn5_ckpt, bad_files, results)
    inproc = {name: run_inprocess(cmd) for name, cmd in cases.items()}
    sub = dict(zip(SUBPROCESS_CASES, run_scripts([cases[c] for c in SUBPROCESS_CASES])))
    return inproc, sub, results


def _one_line_error(proc):
    assert proc.returncode != 0, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, describe(proc)
    assert "error:" in lines[0], describe(proc)
    return lines[0]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_with_one_line(bad_runs, case):
    runs = bad_runs[0]
    if case not in runs:
        pytest.skip("CUDA is available here: -gpu is a valid request")
    _one_line_error(runs[case])


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_fails_with_one_line_as_a_process(bad_runs, case):
    _one_line_error(bad_runs[1][case])


def test_bad_input_appends_no_record(bad_runs):
    results = bad_runs[2]
    assert not os.path.exists(results) or records(results) == []


def test_missing_weight_file_is_named(bad_runs, bad_files):
    line = _one_line_error(bad_runs[0]["missing_weights"])
    assert os.path.join(bad_files["dir"], "nope.pth") in line


@pytest.mark.parametrize("mode", [0, 1], ids=["inprocess", "subprocess"])
def test_pickled_object_is_refused_without_running_code(bad_runs, bad_files, mode):
    line = _one_line_error(bad_runs[mode]["pickled_object"])
    assert "refus" in line.lower()
    assert not bad_files["marker"].exists()


def test_refusal_message_is_plain_text(bad_runs):
    """The one-line error must not carry terminal escape sequences (from torch's message)."""
    line = _one_line_error(bad_runs[0]["pickled_object"])
    assert "\x1b" not in line, repr(line)


def test_garbage_weight_file_is_not_called_code(bad_runs):
    """Random bytes are an unreadable/corrupt checkpoint, not a pickle that 'could run code'."""
    line = _one_line_error(bad_runs[0]["garbage_weights"])
    assert "could run code" not in line and "refus" not in line.lower(), line


def test_wrong_class_count_says_it_does_not_fit(bad_runs):
    line = _one_line_error(bad_runs[0]["wrong_classes"])
    assert "does not fit" in line and "10" in line


def test_missing_data_names_folder_and_files(bad_runs, bad_files):
    line = _one_line_error(bad_runs[0]["missing_data"])
    folder = os.path.join(bad_files["empty"], "cifar-100-python")
    assert folder in line
    rest = line.replace(folder, "")  # the tmp path itself contains 'test'
    assert re.search(r"\btrain\b", rest) and re.search(r"\btest\b", rest), line


@pytest.mark.parametrize("case,flag", [("sigma_zero", "-sigma"), ("eta_negative", "-eta"),
                                       ("n_samples_zero", "-n_samples"), ("forget_perc_zero", "-forget_perc"),
                                       ("forget_perc_above_one", "-forget_perc")])
def test_bad_hyperparameter_message_names_the_flag(bad_runs, case, flag):
    assert flag in _one_line_error(bad_runs[0][case])


@pytest.mark.parametrize("case,target", [("forget_name_unknown", "rocket"), ("forget_id_out_of_range", "10")])
def test_unknown_forget_class_message_names_it(bad_runs, case, target):
    assert repr(target) in _one_line_error(bad_runs[0][case])

