"""forgetting_quality.py: the competition's score per method against K cached retrains, and its
report section. The end-to-end runs use a random-init SmallCNN on Digits, K = 4, one epoch."""
import contextlib
import dataclasses
import io
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from helpers import REPO

import datasets
import forgetting_quality as fq
import grid
import metrics
import report
from cli import UserError
from models import build_model, input_size
from utils import read_records


def call(argv, cwd):
    """Run the command in this process (no torch import per call); (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        fq.main([str(a) for a in argv])
    return out.getvalue(), err.getvalue()


def base_argv(weights, k=4):
    return [str(a) for a in ("-setting", "fullclass", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                             "-forget_class", "3", "-weight_path", weights, "-K", k, "-retrain_epochs", "1",
                             "-data_root", REPO / "data", "-n_samples", "2")]


# ---- fast: input checks, cache naming, histogram ---------------------------------------------

def test_bad_methods_are_one_line_errors():
    with pytest.raises(UserError, match="unknown method 'nope'"):
        fq.method_list("baseline,nope")
    with pytest.raises(UserError, match="given twice"):
        fq.method_list("finetune,finetune")
    with pytest.raises(UserError, match="empty"):
        fq.method_list("baseline,,finetune")
    assert fq.method_list("baseline, finetune") == ["baseline", "finetune"]


def test_retrain_floor_needs_four_models(tmp_path):
    argv = base_argv("w.pth", k=3) + ["-methods", "baseline,retrain_full"]
    with pytest.raises(UserError, match="needs -K >= 4"):
        call(argv, tmp_path)


def test_cache_name_changes_with_everything_that_changes_a_retrain():
    _, args = fq.parse_args(base_argv("a/w.pth"))
    hp = fq.hparams_of(args, "fullclass", fq.TASKS["fullclass"], "retrain_full")
    name = fq.retrain_path(args, "fullclass", "3", hp, 0)
    assert name == fq.retrain_path(args, "fullclass", "3", hp, 0)
    variants = [fq.retrain_path(args, "fullclass", "3", hp, 1), fq.retrain_path(args, "fullclass", "4", hp, 0),
                fq.retrain_path(args, "random", "3", hp, 0)]
    for flags in (["-retrain_epochs", "2"], ["-retrain_lr", "0.1"], ["-b", "64"], ["-seed", "1"], ["-net", "SmallCNN"]):
        _, other = fq.parse_args(base_argv("a/w.pth") + flags)
        other_hp = fq.hparams_of(other, "fullclass", fq.TASKS["fullclass"], "retrain_full")
        variants.append(fq.retrain_path(other, "fullclass", "3", other_hp, 0))
    _, moved = fq.parse_args(base_argv("b/other.pth"))
    variants.append(fq.retrain_path(moved, "fullclass", "3", hp, 0))
    assert variants[-2] == name  # -net given again with the same value: the same model
    different = variants[:-2] + variants[-1:]
    assert name not in different and len(set(different)) == len(different)
    # the data root and the results file change nothing that is trained
    _, same = fq.parse_args(base_argv("a/w.pth") + ["-data_root", "/elsewhere", "-results", "x.jsonl"])
    assert fq.retrain_path(same, "fullclass", "3", hp, 0) == name


def test_histogram_uses_the_competition_buckets():
    rng = np.random.default_rng(0)
    eps = np.concatenate([rng.uniform(0, 4, 200), [0.0, 0.5, 2.9999, 3.0, 50.0]])
    for k in (16, 8, 3):
        h = fq.histogram(eps, k)
        bound = math.ceil(math.log(k - 1))
        assert h["edges"][-1] == 50.0 and h["edges"][-2] == bound
        # literal oracle: a bucket per 0.5 below the bound, one for the rest
        want = [sum(1 for e in eps if i * 0.5 <= e < (i + 1) * 0.5) for i in range(2 * bound)]
        want.append(sum(1 for e in eps if e >= bound))
        assert h["counts"] == want
        # the buckets' points give F back
        points = [0.5 ** i for i in range(2 * bound)] + [0.0]
        assert np.isclose(np.dot(points, h["counts"]) / len(eps), metrics._bucket_points(eps, k).mean())


def test_final_score_scales_f_by_the_accuracy_ratios():
    rng = np.random.default_rng(1)
    r = [torch.as_tensor(rng.normal(size=20)) for _ in range(4)]
    u = [torch.as_tensor(rng.normal(size=20) + 0.3) for _ in range(4)]
    f, final, eps, accs = fq.score(u, r, [(80.0, 60.0)] * 4, [(100.0, 90.0), (100.0, 70.0)] * 2)
    assert f == metrics.forget_score(np.stack(u), np.stack(r)).score
    assert final == pytest.approx(f * 0.8 * (60 / 80))
    assert accs == dict(RetainTestAccExact=80.0, TestAccExact=60.0, RetrainRetainTestAccExact=100.0,
                        RetrainTestAccExact=80.0)


def test_spread_retrains_are_runs_of_this_command_one_per_missing_model(tmp_path, monkeypatch):
    argv = base_argv("w.pth") + ["-slots", "0,1", "-fq_cache", str(tmp_path)]
    _, args = fq.parse_args(argv)
    paths = [str(tmp_path / f"m{k}.pth") for k in range(4)]
    seen = {}

    def fake_grid(runs, slots, executor=None, job_gpus=0):
        seen.update(runs=runs, slots=slots, executor=executor)
        outcomes = []
        for run in runs:
            k = int(run.cmd[run.cmd.index("-retrain_only") + 1])
            if k != 3:  # the run for seed 3 exits 0 but saves nothing
                open(paths[k], "w").close()
            outcomes.append(grid.Outcome(run, 0, "0", 1.0))
        return outcomes

    monkeypatch.setattr(grid, "run_grid", fake_grid)
    fq.spread(args, [1, 2], paths, argv)
    assert seen["slots"] == ["0", "1"] and seen["executor"] is None
    for run, k in zip(seen["runs"], (1, 2)):
        assert list(run.cmd[:2]) == [sys.executable, fq.SCRIPT] and list(run.cmd[2:-2]) == argv
        assert run.cmd[-2:] == ("-retrain_only", str(k)) and run.gpu_flag == "-gpu"
        assert run.log.startswith(str(tmp_path / "logs"))
    with pytest.raises(UserError, match="1 of 2 retrain run.*seed 3"):
        fq.spread(args, [0, 3], paths, argv)


def test_report_keeps_forgetting_quality_apart_and_survives_odd_histograms(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    ident = dict(setting="fullclass", dataset="Digits", net="SmallCNN")
    rows = [dict(ident, method="finetune", RetainTestAcc=90.0, Df=5.0, MIA=0.5, TestAcc=88.0, MethodTime=1.0)]
    hist = dict(edges=[0, 0.5, 1, 1.5, 2, 50], counts=[1, 2, 3, 4, 5])
    for method, f, h in (("finetune", 0.25, hist), ("scrub", 0.125, dict(edges="x", counts=[1])),
                         ("retrain_full", 0.5, dict(edges=[0, 50], counts=[15]))):
        rows.append(dict(ident, kind=report.FQ_KIND, forget="3",
                         K=6, method=method, F=f, FinalScore=f / 2, EpsHistogram=h, diverged=False))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report.main([str(path), "-out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    main_table, fq_table = out.split("forgetting quality:")[:2]
    assert main_table.count("| finetune") == 1 and "scrub" not in main_table
    assert "| finetune | 0.250 | 0.125 |" in fq_table and "| scrub | 0.125 | 0.062 |" in fq_table
    assert "| retrain_full (floor, K/2) | 0.500 | 0.250 |" in fq_table
    assert os.path.getsize(tmp_path / "rep-eps-fullclass-Digits-SmallCNN-3-K6.png") > 1000
    assert os.path.isfile(tmp_path / "rep.md") and os.path.isfile(tmp_path / "rep-fq.md")


# ---- end to end ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("fq") / "random.pth"
    torch.manual_seed(0)
    torch.save(build_model("SmallCNN", 10).state_dict(), path)
    return str(path)


@pytest.mark.slow
def test_scores_every_method_reuses_and_resumes_its_retrains(tmp_path, random_weights, monkeypatch, one_thread):
    methods = ["baseline", "lipschitz_forgetting", "retrain_full"]
    argv = base_argv(random_weights) + ["-methods", ",".join(methods)]
    out, _ = call(argv + ["-results", "first.jsonl"], tmp_path)
    assert "0 of 4 cached" in out and out.count("retrain ") >= 4
    recs = read_records(tmp_path / "first.jsonl")
    assert [r["method"] for r in recs] == methods
    for r in recs:
        assert r["kind"] == "forgetting_quality" and r["K"] == 4 and not r["diverged"]
        assert 0 <= r["F"] <= 1 and 0 <= r["FinalScore"]
        assert sum(r["EpsHistogram"]["counts"]) == r["n_forget"] > 0
        assert r["RetrainsTrained"] == 4
    assert recs[2]["K_compared"] == 2 and recs[0]["K_compared"] == 4
    assert recs[1]["sigma"] is not None and recs[1]["hparams"]["n_samples"] == 2
    cache = tmp_path / "checkpoint" / "forgetting_quality"
    saved = sorted(p for p in os.listdir(cache) if p.endswith(".pth"))
    assert len(saved) == 4
    # oracle: the retrained models' accuracies and the floor's score, recomputed from the saved
    # files with the data set read directly and the confidence written as log(p / (1 − p))
    train, test = (datasets.load_dataset("Digits", str(REPO / "data"), train=t, size=input_size("SmallCNN"))
                   for t in (True, False))
    forget_x = torch.stack([train[i][0] for i in range(len(train)) if train.targets[i] == 3])
    test_x = torch.stack([test[i][0] for i in range(len(test))])
    test_y = torch.as_tensor(np.asarray(test.targets))
    confs, dr, acc = [], [], []
    model = build_model("SmallCNN", 10).eval()
    for name in saved:  # seed0 .. seed3: the digests differ but the names sort by seed first
        model.load_state_dict(torch.load(cache / name, weights_only=True))
        with torch.no_grad():
            p = torch.softmax(model(forget_x).double(), dim=1)[:, 3]
            pred = model(test_x).argmax(1)
        confs.append(torch.log(p / (1 - p)).numpy())
        acc.append(100 * (pred == test_y).double().mean().item())
        dr.append(100 * (pred == test_y)[test_y != 3].double().mean().item())
    assert recs[0]["n_forget"] == len(forget_x)
    assert recs[0]["RetrainTestAccExact"] == pytest.approx(np.mean(acc))
    assert recs[0]["RetrainRetainTestAccExact"] == pytest.approx(np.mean(dr))
    floor = metrics.forget_score(np.stack(confs[:2]), np.stack(confs[2:]))
    assert recs[2]["F"] == floor.score and recs[2]["EpsHistogram"] == fq.histogram(floor.eps, 2)
    # the K runs of a deterministic method are one model K times: every example is "peaky"
    assert recs[0]["F"] == 0 and recs[0]["EpsHistogram"]["counts"][-1] == len(forget_x)

    # a second call trains only what is missing (one model deleted: an interrupted run) and
    # reuses the rest
    trained = []
    real = fq.train_retrain
    monkeypatch.setattr(fq, "train_retrain",
                        lambda exp, hp, seed, path: trained.append(seed) or real(exp, hp, seed, path))
    os.remove(cache / saved[0])
    # and a method that diverges is recorded as such, without a score
    def diverges(model, data, hp, device):
        raise FloatingPointError(f"loss became nan (seed {data.seed})")
    monkeypatch.setitem(fq.METHODS, "finetune", dataclasses.replace(fq.METHODS["finetune"], fn=diverges))
    out, err = call(argv + ["-results", "second.jsonl", "-methods", "baseline,finetune"], tmp_path)
    assert "3 of 4 cached" in out and "1 to train" in out and len(trained) == 1
    assert sorted(p for p in os.listdir(cache) if p.endswith(".pth")) == saved
    again = read_records(tmp_path / "second.jsonl")
    assert again[1]["diverged"] and "F" not in again[1] and "seed 0: loss became nan (seed 0)" in err
    assert again[0]["RetrainsTrained"] == 1
    # the retrain trained again from its seed is the same model: the same score
    assert again[0]["EpsHistogram"] == recs[0]["EpsHistogram"] and again[0]["F"] == recs[0]["F"]
    json.dumps(again[0], allow_nan=False)  # strict JSON

    # report.py: F and the final score per method, the ε plot per setting
    prefix = tmp_path / "rep"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        report.main([str(tmp_path / "first.jsonl"), "-out", str(prefix)])
    text = buf.getvalue()
    assert "| F |" in text and "| final score |" in text
    for r in recs:
        row = next(line for line in text.splitlines() if f"| {r['method']}" in line)
        assert f"{r['F']:.3f}" in row and f"{r['FinalScore']:.3f}" in row
    plots = [p for p in os.listdir(tmp_path) if p.startswith("rep-eps-") and p.endswith(".png")]
    assert len(plots) == 1 and os.path.getsize(tmp_path / plots[0]) > 1000
    assert (tmp_path / "rep-fq.md").read_text().count("\n") >= 2 + len(methods)
