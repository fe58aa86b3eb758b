"""The mains' command line (flags.py): numeric flags checked before any work, every method's
hyperparameters resolved by the one resolver with the Task's rows, nothing written back into the
arguments, and flags of other methods named."""

import pytest
import torch
from helpers import run_inprocess

import flags
import forget_full_class_main as full
import forget_random_main as rnd
import forget_sub_class_main as sub
import models

BASE = {"fullclass": ["-classes", "10", "-forget_class", "3"],
        "subclass": ["-superclasses", "5", "-subclasses", "10", "-forget_class", "3"],
        "random": ["-classes", "10", "-forget_perc", "0.1"]}


def _args(main, *argv, net="VGG16"):
    return flags.parser_for(main.TASK).parse_args(["-net", net, "-dataset", "Digits", *BASE[main.TASK.setting],
                                                   *argv])


@pytest.mark.parametrize("main", [full, sub, rnd])
@pytest.mark.parametrize("net", ["VGG16", "ViT", "SmallCNN"])
def test_jit_takes_its_mains_table_row_for_the_net_and_leaves_the_arguments_alone(main, net):
    args = _args(main, "-method", "lipschitz_forgetting", net=net)
    before = dict(vars(args))
    hp = flags.resolve_method(args, main.TASK)
    row = main.JIT.get(net, main.JIT["VGG16"])
    assert (hp.sigma, hp.eta, hp.n_samples) == (row["sigma"], row["eta"], row["n_samples"])
    assert vars(args) == before  # nothing written back: σ, η, N stay None unless given
    assert (args.sigma, args.eta, args.n_samples) == (None, None, None)


def test_jit_flags_win_over_the_table():
    hp = flags.resolve_method(_args(full, "-method", "lipschitz_forgetting", "-sigma", "2", "-n_samples", "3"),
                              full.TASK)
    assert (hp.sigma, hp.eta, hp.n_samples) == (2.0, full.JIT["VGG16"]["eta"], 3)


def test_the_jit_table_is_jits_alone():
    """Only JiT's resolution sees the main's table; finetune's resolves as before, with no σ."""
    hp = flags.resolve_method(_args(full, "-method", "finetune"), full.TASK)
    assert not hasattr(hp, "sigma") and hp.epochs == 5
    assert flags.resolve_method(_args(full, "-method", "baseline"), full.TASK) is None
    assert set(full.TASK.tables) == {"lipschitz_forgetting"}


@pytest.mark.parametrize("method, where", [("finetune", "finetune takes -finetune_epochs"),
                                           ("retrain", "retrain takes -retrain_epochs"),
                                           ("scrub", "scrub takes -scrub_epochs"),
                                           ("baseline", "baseline has no epochs to set")])
def test_epochs_is_unused_and_the_warning_names_the_methods_own_epochs_flag(capsys, method, where):
    flags.warn_inapplicable(_args(full, "-method", method, "-epochs", "1"))
    assert capsys.readouterr().err == ("warning: -epochs is accepted for parity with the reference and unused, "
                                       f"as there; {where}\n")


def test_each_mains_help_shows_its_own_jit_values():
    text = " ".join(flags.parser_for(sub.TASK).format_help().split())
    assert "default 0.01 (every run); 1.5 (net ViT)" in text


@pytest.mark.parametrize("argv, flag, owners", [
    (["-method", "finetune", "-retrain_epochs", "1"], "-retrain_epochs", "retrain, retrain_full"),
    (["-method", "finetune", "-sigma", "0.5"], "-sigma", "lipschitz_forgetting"),
    (["-method", "baseline", "-gkt_batches", "5"], "-gkt_batches", "gkt"),
    (["-method", "UNSIR", "-emmn_batch", "2"], "-emmn_batch", "emmn"),
])
def test_a_flag_of_other_methods_is_named_in_a_warning(capsys, argv, flag, owners):
    flags.warn_inapplicable(_args(full, *argv))
    method = argv[1]
    assert capsys.readouterr().err == (f"warning: {flag} sets a hyperparameter of {owners}, not of {method}: "
                                       f"this run ignores it\n")


@pytest.mark.parametrize("argv", [
    ["-method", "retrain", "-retrain_epochs", "1"], ["-method", "finetune", "-finetune_epochs", "1"],
    ["-method", "lipschitz_forgetting", "-sigma", "0.5", "-jit_mode", "eval"],
    ["-method", "emmn", "-noise_lr", "0.2"], ["-method", "UNSIR", "-noise_lr", "0.2"],  # a shared field
    ["-method", "lfssd_tuning", "-ssd_alpha", "2"],  # a class shared by two methods
    ["-method", "baseline", "-importance_order", "grouped"],  # the data pipeline serves every method
])
def test_a_flag_of_the_chosen_method_or_of_every_run_is_not_warned_about(capsys, argv):
    flags.warn_inapplicable(_args(full, *argv))
    assert capsys.readouterr().err == ""


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
