"""sweep.py's choices, against planted points and records whose answers are worked out by hand: the
acceptance criterion at its boundary, the best point per switch combination, the frontier, the
retrain a sweep compares with (its recipe, seed, forget target and data pipeline), and a command
line whose -setting chooses the rest of its flags."""
import dataclasses
from types import SimpleNamespace

import pytest

import sweep
from datasets import DataHP


def point(dr, df, grad="accumulate", **extra):
    return dict(args=dict(jit_grad=grad, jit_reduction="sum", jit_mode="as_loaded"), RetainTestAcc=dr, Df=df, **extra)


# ---- the acceptance criterion -----------------------------------------------------------------

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


# ---- the retrain it compares with ---------------------------------------------------------------

REFERENCE_PIPE = DataHP()
CORRECTED_PIPE = DataHP(retain_test_order="dataset", split_draw="own_generator", pins_split="per_person")


def retrain(df, method="retrain_full", recipe="reference", pipe=REFERENCE_PIPE, seed=0, forget="3", **extra):
    return dict(setting="fullclass", dataset="Digits", net="SmallCNN", method=method, forget=forget, seed=seed,
                recipe=recipe, pipeline=dataclasses.asdict(pipe), RetainTestAcc=90.0, Df=df, **extra)


def find(records, recipe="reference", pipe=REFERENCE_PIPE, seed=0):
    exp = SimpleNamespace(setting="fullclass", forget="3", pipe=pipe)
    args = SimpleNamespace(dataset="Digits", net="SmallCNN", seed=seed, recipe=recipe)
    return sweep.find_retrain(records, exp, args)


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


# ---- the command line -----------------------------------------------------------------------------

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
