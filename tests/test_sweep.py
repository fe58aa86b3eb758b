"""sweep.py: bad value lists and outputs refused before any work, points recorded and reused, and
its choices against planted points and records worked out by hand: the acceptance criterion at
its boundary, the best point per switch combination, the frontier, the retrain a sweep compares
with (its recipe, seed, forget target and data pipeline), and a command line whose -setting
chooses the rest of its flags."""
import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from helpers import describe, one_line_error, run_inprocess

import report
import sweep
from cli import UserError
from datasets import DataHP
from models import SmallCNN

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


def point(dr, df, grad="accumulate", **extra):
    return dict(args=dict(jit_grad=grad, jit_reduction="sum", jit_mode="as_loaded"), RetainTestAcc=dr, Df=df, **extra)


def test_the_target_is_twice_retrain_s_df_plus_five_points():
    assert sweep.criterion(0.0) == 5.0 and sweep.criterion(1.5) == 8.0 and sweep.criterion(10.0) == 25.0


def test_a_point_exactly_at_the_target_is_accepted_and_one_just_above_is_not():
    at, above = point(60.0, 8.0), point(99.0, 8.0 + 1e-9)
    (best,) = sweep.summarise([above, at], retrain_df=1.5).values()
    assert best is at
    assert list(sweep.summarise([above], retrain_df=1.5).values()) == [None]


def test_the_best_point_is_the_highest_dr_under_the_target_per_switch_combination():
    pts = [point(60.0, 3.0), point(70.0, 4.0), point(95.0, 30.0), point(70.0, 1.0),  # a tie keeps the first
           point(50.0, 0.0, grad="per_batch"), point(80.0, 6.0, grad="per_batch")]
    best = sweep.summarise(pts, retrain_df=0.0)
    assert best[("accumulate", "sum", "as_loaded")] is pts[1]
    assert best[("per_batch", "sum", "as_loaded")] is pts[4]
    assert list(best) == [("accumulate", "sum", "as_loaded"), ("per_batch", "sum", "as_loaded")]


def test_the_frontier_holds_the_points_no_other_beats_on_both_axes():
    a, b, c, d, e = (point(50.0, 0.0), point(40.0, 0.0), point(70.0, 5.0), point(60.0, 6.0), point(90.0, 20.0))
    # b: a has the same Df and a higher Dr; d: c has a lower Df and a higher Dr
    assert sweep.frontier([e, d, c, b, a]) == [a, c, e]
    f = point(90.0, 25.0)  # the same Dr as e at a higher Df: beaten
    assert sweep.frontier([f, e]) == [e]


REFERENCE_PIPE = DataHP()


CORRECTED_PIPE = DataHP(retain_test_order="dataset", split_draw="own_generator", pins_split="per_person")


def retrain(df, method="retrain_full", recipe="reference", pipe=REFERENCE_PIPE, seed=0, forget="3", **extra):
    return dict(setting="fullclass", dataset="Digits", net="SmallCNN", method=method, forget=forget, seed=seed,
                recipe=recipe, pipeline=dataclasses.asdict(pipe), RetainTestAcc=90.0, Df=df, **extra)


def find(records, recipe="reference", pipe=REFERENCE_PIPE, seed=0):
    args = SimpleNamespace(dataset="Digits", net="SmallCNN", seed=seed, recipe=recipe)
    return sweep.find_retrain(records, SimpleNamespace(args=args, setting="fullclass", forget="3", pipe=pipe))


def test_a_corrected_sweep_never_takes_the_reference_retrain():
    ref = retrain(1.0)
    assert find([ref], "corrected", CORRECTED_PIPE) is None
    cor = retrain(7.0, recipe="corrected", pipe=CORRECTED_PIPE)
    assert find([ref, cor], "corrected", CORRECTED_PIPE) is cor and find([cor, ref]) is ref


@pytest.mark.parametrize("other", [dict(seed=1), dict(forget="4"), dict(pipe=DataHP(split_draw="own_generator")),
                                   dict(diverged=True)])
def test_a_retrain_of_another_seed_target_or_split_or_a_diverged_one_is_not_taken(other):
    assert find([retrain(2.0, **other)]) is None


def test_retrain_full_is_preferred_and_the_last_one_recorded_taken():
    first, last, plain = retrain(1.0), retrain(2.0), retrain(3.0, method="retrain")
    assert find([first, last, plain]) is last and find([plain]) is plain


HEAD = ["-net", "SmallCNN", "-dataset", "Digits", "-sigmas", "1", "-etas", "0.1"]


def test_setting_chooses_the_task_and_its_flags_wherever_it_stands():
    task, args = sweep.parse_args(HEAD + ["-classes", "10", "-forget_class", "3"])
    assert task.setting == "fullclass" and args.setting == "fullclass" and args.classes == 10
    task, args = sweep.parse_args(HEAD + ["-superclasses", "5", "-subclasses", "10", "-forget_class", "3",
                                          "-setting", "subclass", "-recipe", "corrected"])
    assert task.setting == "subclass" and (args.superclasses, args.subclasses) == (5, 10)
    assert args.recipe == "corrected" and args.method == "lipschitz_forgetting"
    task, args = sweep.parse_args(["-setting", "random"] + HEAD + ["-classes", "10", "-forget_perc", "0.1"])
    assert task.setting == "random" and args.forget_perc == 0.1


def test_a_flag_of_another_setting_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.parse_args(HEAD + ["-setting", "subclass", "-classes", "10", "-forget_class", "3"])
    assert e.value.code == 2 and "-superclasses" in capsys.readouterr().err


def test_help_lists_setting_once(capsys):
    with pytest.raises(SystemExit):
        sweep.parse_args(["-setting", "subclass", "-h"])
    text = capsys.readouterr().out
    assert text.count("-setting {fullclass,subclass,random}") == 2  # the usage line and the option
    assert "-superclasses" in text and "-sigmas" in text




BAD_LISTS = ["1,,2", ",1", "1,", "", " ", "1, ,2", "inf", "-inf", "1,inf", "nan", "0.5,nan", "0", "-1",
             "0.1,-0.2", "1e-400", "abc", "1;2", "1,1", "1,1.0", "0x1"]


@pytest.mark.parametrize("text", BAD_LISTS)
def test_sweep_refuses_a_bad_value_list(text):
    with pytest.raises(UserError) as e:
        sweep.float_list(text, "-sigmas")
    assert str(e.value).startswith("-sigmas ") and "\n" not in str(e.value)


def test_sweep_value_lists_that_are_fine():
    assert sweep.float_list("0.1, 1,2e-3", "-etas") == [0.1, 1.0, 0.002]
    assert sweep.float_list("5", "-etas") == [5.0]


def _sweep_cmd(tmp_path, weights, *extra, sigmas="0.5", etas="0.001"):
    return ["sweep.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10", "-forget_class", "3",
            "-weight_path", weights, "-sigmas", sigmas, "-etas", etas, "-n_samples", "3",
            "-results", tmp_path / "s.jsonl", "-plot", tmp_path / "s.png", "-retrain_dir", tmp_path,
            "-relearn_max_steps", "0", *extra]


@pytest.fixture
def dummy_weights(tmp_path):
    """A file that exists: every refusal below comes before the weights are read."""
    path = tmp_path / "w.pth"
    torch.save(SmallCNN(10).state_dict(), path)
    return path


@pytest.mark.parametrize("flag, value, needle", [
    ("-sigmas", "1,,2", "item 2 of 3 is empty"), ("-sigmas", "inf", "finite"), ("-etas", "nan", "finite"),
    ("-etas", "-0.1", "> 0"), ("-sigmas", "0", "> 0"), ("-sigmas", "2,2", "twice"),
])
def test_sweep_script_refuses_bad_lists_in_one_line_before_any_work(tmp_path, dummy_weights, flag, value, needle):
    kw = {"sigmas": value} if flag == "-sigmas" else {"etas": value}
    proc = run_inprocess(_sweep_cmd(tmp_path, dummy_weights, **kw))
    one_line_error(proc, flag, needle)
    assert not (tmp_path / "s.jsonl").exists() and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("what", ["results is a folder", "results is a checkpoint", "results is empty",
                                  "plot is a folder", "plot is empty", "plot under a file", "seed -1",
                                  "seed 2**32"])
def test_sweep_refuses_unwritable_outputs_and_bad_seeds_before_any_work(tmp_path, dummy_weights, what):
    (tmp_path / "folder").mkdir()
    extra, flag = {
        "results is a folder": (("-results", tmp_path / "folder"), "-results"),
        "results is a checkpoint": (("-results", dummy_weights), "-results"),
        "results is empty": (("-results", ""), "-results"),
        "plot is a folder": (("-plot", tmp_path / "folder"), "-plot"),
        "plot is empty": (("-plot", ""), "-plot"),
        "plot under a file": (("-plot", dummy_weights / "p.png"), "-plot"),
        "seed -1": (("-seed", "-1"), "-seed"),
        "seed 2**32": (("-seed", str(2**32)), "-seed"),
    }[what]
    before = dummy_weights.read_bytes()
    one_line_error(run_inprocess(_sweep_cmd(tmp_path, dummy_weights, *extra)), flag)
    assert dummy_weights.read_bytes() == before and not (tmp_path / "s.jsonl").exists()


def _rec(setting="fullclass", **args):
    base = dict(net="SmallCNN", dataset="Digits", method="lipschitz_forgetting", sigma=0.5, eta=0.001, seed=0)
    return {"setting": setting, "method": "lipschitz_forgetting", "args": dict(base, **args)}


def test_sweep_point_identity_ignores_the_grid_and_the_plot():
    import argparse

    want = argparse.Namespace(**_rec()["args"])
    old_sweep = _rec(sigmas="0.5", etas="0.001", plot="a.png", all_switches=False, setting="fullclass")
    assert sweep.find_point([old_sweep], "fullclass", want) is old_sweep
    assert sweep.find_point([_rec()], "fullclass", want) is not None  # a main's record with the same flags
    others = [_rec(sigma=2.0), _rec(eta=0.01), _rec(seed=1), _rec("subclass"), [1], {"args": [1]}, "x",
              {"setting": "fullclass"}]
    assert sweep.find_point(others, "fullclass", want) is None


@pytest.mark.slow
def test_widening_the_grid_runs_only_the_new_points(smallcnn_ckpt, tmp_path):
    results = tmp_path / "s.jsonl"
    results.write_text(json.dumps(dict(setting="fullclass", dataset="Digits", net="SmallCNN", method="retrain_full",
                                       forget="3", seed=0, recipe="reference", pipeline=dataclasses.asdict(DataHP()),
                                       RetainTestAcc=90.0, Df=0.0)) + "\n")
    first = run_inprocess(_sweep_cmd(tmp_path, smallcnn_ckpt))
    assert first.returncode == 0, describe(first)
    wider = _sweep_cmd(tmp_path, smallcnn_ckpt, sigmas="0.5,2", etas="0.001,0.01")
    wider[wider.index("-plot") + 1] = tmp_path / "wider.png"
    second = run_inprocess(wider)
    assert second.returncode == 0, describe(second)
    assert "reused: baseline" in second.stdout and "reused: lipschitz_forgetting σ=0.5 η=0.001" in second.stdout
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    methods = [r["method"] for r in recs]
    assert methods.count("baseline") == 1 and methods.count("retrain_full") == 1
    points = sorted((r["sigma"], r["eta"]) for r in recs if r["method"] == "lipschitz_forgetting")
    assert points == [(0.5, 0.001), (0.5, 0.01), (2.0, 0.001), (2.0, 0.01)]
    assert all("sigmas" not in r.get("args", {}) for r in recs)
    assert {row["n"] for row in report.summarise(recs)} == {1}
    third = run_inprocess(wider)  # nothing left to run
    assert third.returncode == 0 and len(results.read_text().splitlines()) == len(recs), describe(third)
