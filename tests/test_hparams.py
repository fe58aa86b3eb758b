"""The hyperparameter mechanism: declared once per method, resolved defaults -> override rows ->
flags, flags generated from the declarations, every value checked, resolved values recorded."""
import dataclasses
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import hparams
from hparams import AT_LEAST_ONE, POSITIVE, Overrides, hparam

REPO = Path(__file__).resolve().parent.parent


TOY_PRESETS = dict(a=Overrides(), b=Overrides((({}, dict(epochs=9)), (dict(net="ViT"), dict(epochs=11)))))


@dataclass(frozen=True)
class Toy:
    lr: float = hparam(0.1, "toy learning rate", "toy_lr", POSITIVE)
    epochs: int = hparam(3, "toy epochs", "toy_epochs", AT_LEAST_ONE)
    mode: str = hparam("a", "toy mode", "toy_mode", presets=TOY_PRESETS)
    fast: bool = hparam(False, "toy switch", "toy_fast")


TOY_ROWS = Overrides((
    (dict(net="ViT"), dict(lr=0.5)),
    (dict(dataset=("Digits", "Digits5")), dict(epochs=7, lr=0.01)),
    (dict(recipe="corrected"), dict(mode="b")),
))


def test_defaults_then_matching_rows_in_order_then_flags():
    assert hparams.resolve(Toy, TOY_ROWS, dict(net="VGG16", dataset="Cifar10")) == Toy()
    assert hparams.resolve(Toy, TOY_ROWS, dict(net="ViT", dataset="Cifar10")).lr == 0.5
    # a later row wins over an earlier one; a tuple condition matches any of its values
    both = hparams.resolve(Toy, TOY_ROWS, dict(net="ViT", dataset="Digits5"))
    assert (both.lr, both.epochs) == (0.01, 7)
    # a flag wins over every row; None means "not given"
    flagged = hparams.resolve(Toy, TOY_ROWS, dict(net="ViT", dataset="Digits"), dict(toy_lr=0.2, toy_epochs=None))
    assert (flagged.lr, flagged.epochs) == (0.2, 7)


def test_a_field_selects_its_preset_by_flag_else_by_the_rows_else_by_its_default():
    assert hparams.resolve(Toy, TOY_ROWS, {}, dict(toy_mode="b")).epochs == 9
    assert hparams.resolve(Toy, TOY_ROWS, {}, {}).epochs == 3
    corrected = hparams.resolve(Toy, TOY_ROWS, dict(recipe="corrected"))
    assert (corrected.mode, corrected.epochs) == ("b", 9)
    assert hparams.resolve(Toy, TOY_ROWS, dict(recipe="corrected"), dict(toy_mode="a")).epochs == 3
    # a preset's rows match the context too, and the table's rows come after them
    assert hparams.resolve(Toy, TOY_ROWS, dict(net="ViT"), dict(toy_mode="b")).epochs == 11
    assert hparams.resolve(Toy, TOY_ROWS, dict(net="ViT", dataset="Digits"), dict(toy_mode="b")).epochs == 7


def test_a_preset_field_takes_only_its_presets_names():
    with pytest.raises(hparams.InvalidValue, match="-toy_mode must be one of a, b"):
        hparams.resolve(Toy, TOY_ROWS, {}, dict(toy_mode="c"))
    assert [f.metadata["choices"] for f in dataclasses.fields(Toy) if f.name == "mode"] == [("a", "b")]


@pytest.mark.parametrize("when, message", [
    (dict(nett="ViT"), "a row conditions on net, dataset, setting, recipe, not 'nett'"),
    (dict(mode="b"), "not 'mode'"),  # a field selects rows through presets, not through a condition
    (dict(setting="full_class"), "no run has setting 'full_class'"),
    (dict(recipe=("reference", "paper")), "no run has recipe 'paper'"),
])
def test_a_row_on_an_unknown_context_key_or_value_is_an_error_when_built(when, message):
    with pytest.raises(ValueError, match=message):
        Overrides(((when, dict(lr=0.2)),))


@pytest.mark.parametrize("rows, message", [
    (((dict(net="VGG19"), dict(lr=0.2)),), "no run has net 'VGG19'"),
    (((dict(dataset=("Digits", "Cifar1000")), dict(lr=0.2)),), "no run has dataset 'Cifar1000'"),
    (((dict(net="ViT"), dict(learning_rate=0.2)),), r"\['learning_rate'\] are not fields of Toy"),
    (((dict(net="ViT"), dict(epochs=0)),), "-toy_epochs must be >= 1"),
])
def test_check_rows_refuses_unknown_nets_data_sets_fields_and_invalid_values(rows, message):
    with pytest.raises(ValueError, match=message):
        hparams.check_rows(Toy, Overrides(rows), ("VGG16", "ViT"), ("Digits", "Cifar10"))
    hparams.check_rows(Toy, TOY_ROWS, ("VGG16", "ViT"), ("Digits", "Digits5", "Cifar10"))


def test_a_presets_rows_are_checked_too():
    @dataclass(frozen=True)
    class Bad:
        mode: str = hparam("a", "mode", "bad_mode", presets=dict(a=Overrides((({}, dict(speed=2)),))))

    with pytest.raises(ValueError, match=r"\['speed'\] are not fields of Bad"):
        hparams.check_rows(Bad, Overrides(), (), ())


def test_every_table_of_every_task_names_nets_data_sets_and_fields_that_exist():
    """The mains check their tables when they build their Task (at import); this checks every
    table again, and that a misspelt net in a Task's table stops the import."""
    import experiment
    import flags
    import forget_full_class_main
    import forget_random_main
    import forget_sub_class_main

    for main in (forget_full_class_main, forget_sub_class_main, forget_random_main):
        flags.check_tables(main.TASK)
    bad = {"lipschitz_forgetting": hparams.by_net({"VGG16": dict(sigma=1.0), "VIT": dict(sigma=2.0)}, "VGG16")}
    with pytest.raises(ValueError, match="no run has net 'VIT'"):
        experiment.Task("fullclass", 128, None, None, tables=bad)
    with pytest.raises(ValueError, match=r"rows for \['jit'\], which are not methods"):
        experiment.Task("fullclass", 128, None, None, tables={"jit": Overrides()})


@pytest.mark.parametrize("flags, message", [
    (dict(toy_lr=0.0), "-toy_lr must be > 0"), (dict(toy_lr=float("inf")), "-toy_lr must be > 0"),
    (dict(toy_lr=float("nan")), "-toy_lr"), (dict(toy_epochs=0), "-toy_epochs must be >= 1"),
    (dict(toy_mode="c"), "-toy_mode must be one of a, b"),
])
def test_out_of_range_values_are_refused_naming_the_flag(flags, message):
    with pytest.raises(hparams.InvalidValue, match=message):
        hparams.resolve(Toy, TOY_ROWS, {}, flags)


def test_flags_are_generated_with_the_resolved_defaults_in_their_help():
    import argparse

    p = argparse.ArgumentParser(prefix_chars="-")
    hparams.add_flags(p, Toy, TOY_ROWS)
    args = p.parse_args(["-toy_lr", "0.3", "-toy_fast"])
    assert (args.toy_lr, args.toy_epochs, args.toy_fast, args.toy_mode) == (0.3, None, True, None)
    assert p.parse_args(["-toy_fast", "false"]).toy_fast is False
    text = " ".join(p.format_help().split())
    assert "toy learning rate (> 0); default 0.1; 0.5 (net ViT); 0.01 (dataset Digits|Digits5)" in text
    assert "toy epochs (>= 1); default 3; 9 (toy_mode b); 11 (toy_mode b, net ViT); 7 (dataset Digits|Digits5)" in text
    assert "(default: None)" not in text


def test_every_method_flag_is_unique_and_every_default_is_valid():
    """A flag names one declaration: two classes may share it only by inheriting the same field
    (UNSIR's and emmn's learnt noise), and then their tables must give it the same values, since
    -h prints one of them."""
    from methods import METHODS

    owner = {}
    for name, m in METHODS.items():
        if m.hparams is None:
            continue
        hparams.check(m.hparams())
        for f in dataclasses.fields(m.hparams):
            flag = f.metadata["flag"]
            if flag is not None:
                told = hparams._describe(m.hparams, m.overrides or Overrides(), f.name)
                first, first_told = owner.setdefault(flag, (f, told))
                assert first is f, f"-{flag} declared twice"
                assert first_told == told, f"-{flag}: {first_told!r} in one table, {told!r} in another"
        for when, changes in (m.overrides or Overrides()).rows:
            assert set(changes) <= {f.name for f in dataclasses.fields(m.hparams)}, (name, changes)


def test_the_resolved_values_reach_the_record(tmp_path):
    """Through a real main: the record's hparams are the resolved values (table + flag)."""
    import json

    import flags
    import forget_full_class_main as main

    args = flags.parser_for(main.TASK).parse_args(
        ["-net", "ViT", "-dataset", "Cifar10", "-classes", "10", "-forget_class", "3", "-method", "blindspot",
         "-bt_lr", "0.002", "-results", str(tmp_path / "r.jsonl")])
    hp_ = flags.resolve_method(args, main.TASK)
    assert (hp_.batch, hp_.lr, hp_.epochs) == (128, 0.002, 1)  # ViT row, flag, default
    assert json.loads(json.dumps(hparams.as_record(hp_)))["batch"] == 128


MODULES = sorted([p.stem for p in REPO.glob("*.py")] + [f"methods.{p.stem}" for p in (REPO / "methods").glob("*.py")
                                                        if p.stem != "__init__"] + ["methods"])


IMPORT_EACH_FIRST = """
import importlib, os, sys
import numpy, torch, torchvision, sklearn.linear_model, sklearn.model_selection, transformers  # noqa: E401
# (third-party only, loaded once: what is tested is the order of the project's modules)
failed, running = [], {}
for first in sys.argv[1:]:
    if len(running) >= (os.cpu_count() or 1):  # one child per core at a time
        pid, status = os.wait()
        if status != 0:
            failed.append(running[pid])
        del running[pid]
    pid = os.fork()
    if pid == 0:  # a child that has imported nothing of the project yet
        try:
            importlib.import_module(first)
            for m in sys.argv[1:]:
                importlib.import_module(m)
        except BaseException as e:
            print(f"importing {first} first: {type(e).__name__}: {e}", file=sys.stderr)
            os._exit(1)
        os._exit(0)
    running[pid] = first
for pid, first in running.items():
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(first)
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
def test_every_module_imports_first():
    """No import circle: each module imported first, then all the others, in a forked child of
    a process that has imported nothing of the project."""
    proc = subprocess.run([sys.executable, "-c", IMPORT_EACH_FIRST, *MODULES], cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_registry_imports_nothing_of_the_project():
    source = (REPO / "registry.py").read_text()
    imports = [ln for ln in source.splitlines() if ln.startswith(("import ", "from "))]
    assert all(ln.split()[1].split(".")[0] in {"dataclasses", "typing"} for ln in imports), imports
