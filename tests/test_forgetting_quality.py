"""forgetting_quality.py: the competition's score per method against K cached retrains, and its
report section. The end-to-end runs use a random-init SmallCNN on Digits, K = 6, one epoch."""
import contextlib
import dataclasses
import io
import json
import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import REPO

import datasets
import forgetting_quality as fq
import launch
import metrics
import report
from cli import UserError
from experiment import forget_target
from flags import resolve_data
from models import build_model, input_size
from records import read_records


def call(argv, cwd):
    """Run the command in this process (no torch import per call); (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        fq.main([str(a) for a in argv])
    return out.getvalue(), err.getvalue()


def base_argv(weights, k=6):
    return [str(a) for a in ("fullclass", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
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


def test_retrain_floor_needs_two_sides_the_score_can_resolve(tmp_path):
    argv = base_argv("w.pth", k=5) + ["-methods", "baseline,retrain_full"]
    with pytest.raises(UserError, match="needs -K >= 6"):
        call(argv, tmp_path)


def test_the_smallest_k_is_the_first_at_which_a_bucket_earns_points():
    # Points go to ε buckets below ceil(log(K − 1)): none at K = 2 (log 1 = 0), two at K = 3.
    assert fq.K_SIDE == 3
    rng = np.random.default_rng(0)
    for _ in range(5):
        u, r = rng.normal(size=(2, 30)), rng.normal(size=(2, 30))
        assert metrics.forget_score(u, r).score == 0 and metrics.forget_score(u, u).score == 0
    same = rng.normal(size=(3, 30))
    assert metrics.forget_score(same, same).score == 1.0


@pytest.mark.parametrize("k", ["2", "-1", "1025", "1000000000"])
def test_a_k_the_score_cannot_use_or_the_work_cannot_finish_is_one_line_before_any_work(k, tmp_path, monkeypatch,
                                                                                          capsys):
    def no_work(*a, **kw):
        raise AssertionError("work started")

    monkeypatch.setattr(fq, "prepare", no_work)
    argv = base_argv("w.pth")
    argv[argv.index("-K") + 1] = k
    with pytest.raises(SystemExit) as e, contextlib.chdir(tmp_path):
        fq.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "-K" in err and "3..1024" in err
    assert os.listdir(tmp_path) == []


def test_help_states_the_smallest_useful_k():
    for text in (fq.parser().format_help(), fq.parser()._subparsers._group_actions[0].choices["random"].format_help()):
        flat = " ".join(text.split())
        assert "3..1024" in flat and "needs K >= 6" in flat and "fewer than 3 models a side the score is 0" in flat


def test_a_k_that_scores_methods_but_not_the_floor(tmp_path, monkeypatch):
    # K = 3 .. 5 scores a method (3 models a side) but leaves the floor's halves below 3
    monkeypatch.setattr(fq, "prepare", lambda *a: (_ for _ in ()).throw(UserError("prepared")))
    for k in (3, 5):
        with pytest.raises(UserError, match="prepared"):
            call(base_argv("w.pth", k=k) + ["-methods", "baseline"], tmp_path)
        with pytest.raises(UserError, match=f"-K {k}: .*needs -K >= 6"):
            call(base_argv("w.pth", k=k), tmp_path)


def retrain_key(args, setting="fullclass"):
    """forgetting_quality's (identity, target) of the K retrains of a run with ``args``, on the data
    pipeline the flags resolve to (what prepare gives it)."""
    hp = fq.hparams_of(args, setting, fq.TASKS["fullclass"], "retrain_full")
    exp = SimpleNamespace(args=args, setting=setting, forget=forget_target(args), pipe=resolve_data(args, setting))
    return fq.retrain_identity(exp, hp)


def test_cache_name_changes_with_everything_that_changes_a_retrain():
    def path(argv, k=0, setting="fullclass", **changes):
        _, args = fq.parse_args(argv)
        vars(args).update(changes)
        return fq.RetrainStore("cache").path(*retrain_key(args, setting), k)

    argv = base_argv("a/w.pth")
    name = path(argv)
    assert name == path(argv)
    variants = [path(argv, 1), path(argv, forget_class="4"), path(argv, setting="random")]
    for flags in (["-retrain_epochs", "2"], ["-retrain_lr", "0.1"], ["-b", "64"], ["-seed", "1"], ["-recipe", "corrected"],
                  ["-split_draw", "own_generator"], ["-pins_split", "per_person"], ["-net", "SmallCNN"]):
        variants.append(path(argv + flags))
    variants.append(path(base_argv("b/other.pth")))
    assert variants[-2] == name  # -net given again with the same value: the same model
    different = variants[:-2] + variants[-1:]
    assert name not in different and len(set(different)) == len(different)
    # the data root and the results file change nothing that is trained
    assert path(argv + ["-data_root", "/elsewhere", "-results", "x.jsonl"]) == name
    # the name says the recipe, and its data tag the data pipeline
    def tag(p):
        return os.path.basename(p).split("-")[5]

    assert "-corrected-" in variants[7] and tag(variants[8]).startswith("data") and tag(variants[8]) != tag(name)


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
            outcomes.append(launch.Outcome(run, 0, "0", 1.0))
        return outcomes

    monkeypatch.setattr(launch, "run_grid", fake_grid)
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


# ---- planted runs: which models each side of the score holds -------------------------------

LOG9 = math.log(9)  # a model whose logits are 0 but for class 3 has confidence logit_3 − log 9 on class 3


def plant(model, value):
    """Make ``model`` output the logits (0, ..., 0, value at class 3, 0, ...) for every image."""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.fc.bias[3] = value
    return model


def decode(confs):
    """The planted value of each model from its forget-set confidences (one per example, all equal)."""
    values = []
    for c in confs:
        c = np.asarray(c, dtype=np.float64)
        assert len(c) > 0 and np.all(c == c[0])
        values.append(round(float(c[0]) + LOG9, 6))
    return values


@pytest.fixture
def planted(monkeypatch, random_weights):
    """retrain_full and finetune replaced by planted runs: the retrain with seed s outputs value
    1 + s, the finetune run with seed s value 20 + s; each call is logged with the seed it saw,
    the state of torch's and the retain loader's generators, and whether it started from the
    original weights. score() is wrapped to log the two sides it is given; outputs() reads the
    planted value off the model, as the confidence on every forget example, Dr and Test / 2."""
    initial = torch.load(random_weights, weights_only=True)
    calls, sides = [], []

    def run(name, offset):
        def fn(model, data, hp, device):
            calls.append(dict(method=name, seed=data.seed, torch_seed=torch.initial_seed(),
                              loader_seed=data.retain_train.generator.initial_seed(),
                              original=all(torch.equal(v, initial[k]) for k, v in model.state_dict().items()),
                              hp=hp))
            return plant(model, offset + data.seed)
        return fn

    monkeypatch.setitem(fq.METHODS, "retrain_full", dataclasses.replace(fq.METHODS["retrain_full"],
                                                                         fn=run("retrain_full", 1)))
    monkeypatch.setitem(fq.METHODS, "finetune", dataclasses.replace(fq.METHODS["finetune"], fn=run("finetune", 20)))
    real = fq.score

    def score(confs_u, confs_r, acc_u, acc_r):
        sides.append((decode(confs_u), decode(confs_r), acc_u, acc_r))
        return real(confs_u, confs_r, acc_u, acc_r)

    def outputs(model, exp):  # no forward pass: the planted value is the model's confidence and accuracies
        value = model.fc.bias[3].item()
        return [torch.full((len(exp.subset["forget_train"]),), value - LOG9, dtype=torch.float64), value, 2 * value]

    monkeypatch.setattr(fq, "score", score)
    monkeypatch.setattr(fq, "outputs", outputs)
    return SimpleNamespace(calls=calls, sides=sides)


def test_each_side_of_the_score_holds_the_models_it_should(tmp_path, planted, random_weights):
    argv = base_argv(random_weights) + ["-methods", "finetune,retrain_full", "-results", "r.jsonl"]
    call(argv, tmp_path)
    retrains = [c for c in planted.calls if c["method"] == "retrain_full"]
    runs = [c for c in planted.calls if c["method"] == "finetune"]
    # K = 6 retrains with seeds 0..5, each from its own seed
    assert [c["seed"] for c in retrains] == list(range(6))
    assert [c["torch_seed"] for c in retrains] == list(range(6))
    # K = 6 finetune runs, run k with seed k in every generator, each from the original weights
    assert [c["seed"] for c in runs] == list(range(6))
    assert [(c["torch_seed"], c["loader_seed"]) for c in runs] == [(k, k) for k in range(6)]
    assert all(c["original"] for c in runs)
    assert runs[0]["hp"] == fq.hparams_of(fq.parse_args(argv)[1], "fullclass", fq.TASKS["fullclass"], "finetune")
    assert retrains[0]["hp"].epochs == 1 and retrains[0]["hp"] != runs[0]["hp"]
    (method_u, method_r, _, _), (floor_u, floor_r, _, _) = planted.sides
    # the method's six models, in seed order, against all six retrains
    assert method_u == [20.0 + k for k in range(6)] and method_r == [1.0 + k for k in range(6)]
    # the floor: retrains 0..2 against retrains 3..5, two disjoint halves of K / 2
    assert floor_u == [1.0, 2.0, 3.0] and floor_r == [4.0, 5.0, 6.0]
    # with an odd K the last retrain sits out
    assert fq.floor_halves(7) == ([0, 1, 2], [3, 4, 5])
    recs = read_records(tmp_path / "r.jsonl")
    assert [(r["method"], r["K_compared"]) for r in recs] == [("finetune", 6), ("retrain_full", 3)]
    # buckets up to ceil(log(K_compared − 1)): 2 for K = 6, 1 for the floor's 3
    assert [r["EpsHistogram"]["edges"] for r in recs] == [[0, 0.5, 1.0, 1.5, 2.0, 50.0], [0, 0.5, 1.0, 50.0]]
    # every side is separated by a threshold (FPR = FNR = 0): ε = ∞, capped to 50, no points
    assert [r["F"] for r in recs] == [0.0, 0.0] and all(r["EpsMedian"] == 50.0 for r in recs)
    # each side's accuracies are its models' means, the final score F times their ratios
    assert [(r["RetainTestAccExact"], r["RetrainRetainTestAccExact"], r["TestAccExact"]) for r in recs] == [
        (22.5, 3.5, 45.0), (2.0, 5.0, 4.0)]
    # the records carry the recipe and the split choices that made them
    assert recs[0]["recipe"] == "reference" and recs[0]["pipeline"]["split_draw"] == "after_two_models"


def test_a_spread_out_retrain_trains_its_own_seed_into_the_file_the_scoring_reads(tmp_path, planted, random_weights):
    argv = base_argv(random_weights)
    call(argv + ["-retrain_only", "4"], tmp_path)
    assert [(c["method"], c["seed"], c["torch_seed"]) for c in planted.calls] == [("retrain_full", 4, 4)]
    _, args = fq.parse_args(argv)
    path = tmp_path / fq.RetrainStore(args.fq_cache).path(*retrain_key(args), 4)
    model = build_model("SmallCNN", 10)
    model.load_state_dict(torch.load(path, weights_only=True))
    assert model.fc.bias[3].item() == 5.0  # planted value 1 + seed
    call(argv + ["-retrain_only", "4"], tmp_path)  # already there: nothing to train
    assert len(planted.calls) == 1
    # the scoring call trains only the five others and reads this one
    out, _ = call(argv + ["-methods", "retrain_full", "-results", "r.jsonl"], tmp_path)
    assert "1 of 6 cached in checkpoint/forgetting_quality, 5 to train" in out
    assert sorted(c["seed"] for c in planted.calls[1:]) == [0, 1, 2, 3, 5]
    assert planted.sides[0][:2] == ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])


# ---- end to end ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("fq") / "random.pth"
    torch.manual_seed(0)
    torch.save(build_model("SmallCNN", 10).state_dict(), path)
    return str(path)


@pytest.mark.slow
def test_scores_every_method_reuses_and_resumes_its_retrains(tmp_path, random_weights, monkeypatch):
    methods = ["baseline", "lipschitz_forgetting", "retrain_full"]
    argv = base_argv(random_weights) + ["-methods", ",".join(methods)]
    out, _ = call(argv + ["-results", "first.jsonl"], tmp_path)
    assert "0 of 6 cached" in out and out.count("retrain ") >= 6
    recs = read_records(tmp_path / "first.jsonl")
    assert [r["method"] for r in recs] == methods
    for r in recs:
        assert r["kind"] == "forgetting_quality" and r["K"] == 6 and not r["diverged"]
        assert 0 <= r["F"] <= 1 and 0 <= r["FinalScore"]
        assert sum(r["EpsHistogram"]["counts"]) == r["n_forget"] > 0
        assert r["RetrainsTrained"] == 6
    assert recs[2]["K_compared"] == 3 and recs[0]["K_compared"] == 6
    assert recs[1]["sigma"] is not None and recs[1]["hparams"]["n_samples"] == 2
    cache = tmp_path / "checkpoint" / "forgetting_quality"
    saved = sorted(p for p in os.listdir(cache) if p.endswith(".pth"))
    assert len(saved) == 6
    # oracle: the retrained models' accuracies and the floor's score, recomputed from the saved
    # files with the data set read directly and the confidence written as log(p / (1 − p))
    train, test = (datasets.load_dataset("Digits", str(REPO / "data"), train=t, size=input_size("SmallCNN"))
                   for t in (True, False))
    forget_x = torch.stack([train[i][0] for i in range(len(train)) if train.targets[i] == 3])
    test_x = torch.stack([test[i][0] for i in range(len(test))])
    test_y = torch.as_tensor(np.asarray(test.targets))
    confs, dr, acc = [], [], []
    model = build_model("SmallCNN", 10).eval()
    for name in saved:  # model0 .. model5: the digests differ but the names sort by model seed first
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
    floor = metrics.forget_score(np.stack(confs[:3]), np.stack(confs[3:]))
    assert recs[2]["F"] == floor.score and recs[2]["EpsHistogram"] == fq.histogram(floor.eps, 3)
    # the K runs of a deterministic method are one model K times: every example is "peaky"
    assert recs[0]["F"] == 0 and recs[0]["EpsHistogram"]["counts"][-1] == len(forget_x)

    # a second call trains only what is missing (one model deleted: an interrupted run) and
    # reuses the rest
    trained = []
    real = fq.train_retrain
    monkeypatch.setattr(fq, "train_retrain",
                        lambda exp, hp, seed, *store: trained.append(seed) or real(exp, hp, seed, *store))
    os.remove(cache / saved[0])
    # and a method that diverges is recorded as such, without a score
    def diverges(model, data, hp, device):
        raise FloatingPointError(f"loss became nan (seed {data.seed})")
    monkeypatch.setitem(fq.METHODS, "finetune", dataclasses.replace(fq.METHODS["finetune"], fn=diverges))
    out, err = call(argv + ["-results", "second.jsonl", "-methods", "baseline,finetune"], tmp_path)
    assert "5 of 6 cached" in out and "1 to train" in out and len(trained) == 1
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
