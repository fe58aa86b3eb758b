"""Metrics beyond the reference (JS divergence, activation distance, attack AUC / TPR at 1%
FPR), the retrain comparison and relearn time in records, and sweep.py on Digits."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from helpers import literal_js, run_inprocess

import metrics
import sweep
from datasets import DataHP

P = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]]
Q = [[0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.0, 1.0, 0.0]]


def test_js_divergence_matches_the_textbook_formula():
    assert metrics.js_divergence(torch.tensor(P, dtype=torch.float64), torch.tensor(Q, dtype=torch.float64)) == pytest.approx(literal_js(P, Q), rel=1e-9)


def test_js_divergence_is_symmetric_zero_on_identical_and_bounded_by_log2():
    p, q = torch.tensor(P, dtype=torch.float64), torch.tensor(Q, dtype=torch.float64)
    assert metrics.js_divergence(p, q) == pytest.approx(metrics.js_divergence(q, p), rel=1e-12)
    assert metrics.js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    disjoint = metrics.js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert disjoint == pytest.approx(math.log(2), rel=1e-12)


def test_activation_distance_is_the_mean_row_l2_distance():
    expected = np.mean([np.linalg.norm(np.subtract(a, b)) for a, b in zip(P, Q)])
    assert metrics.activation_distance(torch.tensor(P, dtype=torch.float64), torch.tensor(Q, dtype=torch.float64)) == pytest.approx(expected, rel=1e-9)


def test_attack_on_perfectly_separable_features_has_auc_1_and_full_tpr():
    members, nonmembers = np.linspace(0, 1, 200), np.linspace(5, 6, 300)
    auc, tpr = metrics.membership_attack(members, nonmembers)
    assert auc == pytest.approx(1.0) and tpr == pytest.approx(1.0)


def test_attack_on_identical_distributions_is_near_chance():
    rng = np.random.default_rng(1)
    auc, tpr = metrics.membership_attack(rng.normal(size=2000), rng.normal(size=2000))
    assert abs(auc - 0.5) < 0.05 and tpr < 0.05


def test_tpr_at_fpr_reads_the_roc_curve():
    # negatives 0.1..0.4, positives 0.35, 0.5, 0.6: with no false positive (threshold above
    # 0.4) two of three positives are caught; one false positive (0.4) lets all three through.
    labels = [0, 0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6]
    assert metrics.tpr_at_fpr(labels, scores, 0.01) == pytest.approx(2 / 3)
    assert metrics.tpr_at_fpr(labels, scores, 0.24) == pytest.approx(2 / 3)
    assert metrics.tpr_at_fpr(labels, scores, 0.25) == pytest.approx(1.0)


def test_attack_metrics_use_entropy_and_loss():
    g = torch.Generator().manual_seed(0)
    confident = torch.randn(100, 5, generator=g) * 0.1
    confident[:, 0] += 10  # members: confident and correct (label 0)
    unsure = torch.randn(100, 5, generator=g) * 0.1
    out = metrics.attack_metrics(confident, torch.zeros(100, dtype=torch.long), unsure,
                                 torch.zeros(100, dtype=torch.long))
    assert set(out) == {"MIAEntropyAUC", "MIAEntropyTPR@1%FPR", "MIALossAUC", "MIALossTPR@1%FPR"}
    assert out["MIAEntropyAUC"] > 0.99 and out["MIALossAUC"] > 0.99


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


def test_relearn_steps_are_zero_for_the_unchanged_model(smallcnn_ckpt, tmp_path):
    results = str(tmp_path / "r.jsonl")
    assert run_inprocess(_full(smallcnn_ckpt, results, "baseline", "-retrain_dir", str(tmp_path))).returncode == 0
    assert json.loads(open(results).read())["RelearnSteps"] == 0


# the retrain a sweep of the default recipe on Digits compares with: its forget target, seed,
# recipe and data pipeline
RETRAIN_RECORD = json.dumps(dict(setting="fullclass", dataset="Digits", net="SmallCNN", method="retrain_full",
                                 forget="3", seed=0, recipe="reference", pipeline=dataclasses.asdict(DataHP()),
                                 RetainTestAcc=90.0, Df=0.0)) + "\n"


def test_sweep_records_every_point_and_writes_the_plot(smallcnn_ckpt, tmp_path, capsys):
    results, png = tmp_path / "sweep.jsonl", tmp_path / "sweep.png"
    # A retrain record already in the results file is reused instead of running retrain_full.
    results.write_text(RETRAIN_RECORD)
    argv = ["-net", "SmallCNN", "-dataset", "Digits", "-classes", "10", "-forget_class", "3",
            "-weight_path", smallcnn_ckpt, "-sigmas", "0.5,2", "-etas", "0.001", "-n_samples", "3",
            "-results", str(results), "-plot", str(png), "-retrain_dir", str(tmp_path), "-relearn_max_steps", "0"]
    sweep.main(argv)
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    jit = [r for r in recs if r["method"] == "lipschitz_forgetting"]
    assert sorted(r["sigma"] for r in jit) == [0.5, 2.0] and all(r["eta"] == 0.001 for r in jit)
    assert [r["method"] for r in recs].count("baseline") == 1
    assert png.stat().st_size > 0
    out = capsys.readouterr().out
    assert "target Df ≤ 5.00" in out and "JiT parity:" in out
    # Run again: every point is reused, nothing new is recorded.
    sweep.main(argv)
    assert len(results.read_text().splitlines()) == len(recs)


def test_sweep_restores_the_weights_between_points(smallcnn_ckpt, tmp_path):
    """Two sweeps that share one point give that point identical metrics, whatever ran before."""
    def run(sigmas, name):
        results = tmp_path / f"{name}.jsonl"
        results.write_text(RETRAIN_RECORD)
        sweep.main(["-net", "SmallCNN", "-dataset", "Digits", "-classes", "10", "-forget_class", "3",
                    "-weight_path", smallcnn_ckpt, "-sigmas", sigmas, "-etas", "0.003", "-n_samples", "3",
                    "-results", str(results), "-plot", str(tmp_path / f"{name}.png"),
                    "-retrain_dir", str(tmp_path / name), "-relearn_max_steps", "0"])
        return {r["sigma"]: r for r in map(json.loads, results.read_text().splitlines())
                if r["method"] == "lipschitz_forgetting"}

    alone, after_other = run("1", "a"), run("0.2,1", "b")
    for key in ("RetainTestAcc", "Df", "MIA"):
        assert alone[1.0][key] == after_other[1.0][key]


def test_summary_picks_the_best_dr_under_the_df_target():
    pts = [dict(args={}, Df=3.0, RetainTestAcc=60.0), dict(args={}, Df=4.0, RetainTestAcc=70.0),
           dict(args={}, Df=30.0, RetainTestAcc=95.0)]
    best = sweep.summarise(pts, retrain_df=0.0)
    assert list(best.values())[0]["RetainTestAcc"] == 70.0
    assert list(sweep.summarise(pts, retrain_df=-10.0).values()) == [None]


def test_evaluation_takes_no_argument_bag():
    """evaluation.py computes metrics from models and data: no function takes the command line's
    namespace (a parameter named or annotated as one), and nothing there reads a flag off an
    object (an attribute named as any flag of the forget mains, such as .seed or .retrain_dir)."""
    import ast
    import inspect

    import evaluation
    import forget_full_class_main
    import forget_random_main
    import forget_sub_class_main
    from flags import parser_for

    tree = ast.parse(inspect.getsource(evaluation))
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Lambda))]
    assert len(functions) >= 8
    params = [a for f in functions for a in (*f.args.posonlyargs, *f.args.args, *f.args.kwonlyargs)]
    assert not [a.arg for a in params if a.arg in ("args", "namespace", "opts", "cfg", "config")]
    assert not [a.arg for a in params if a.annotation is not None and "Namespace" in ast.unparse(a.annotation)]
    dests = {a.dest for m in (forget_full_class_main, forget_sub_class_main, forget_random_main)
             for a in parser_for(m.TASK)._actions}
    assert {"seed", "retrain_dir", "results", "net"} <= dests
    read = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert read & dests == set()
    assert "argparse" not in {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                              for a in n.names} | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
