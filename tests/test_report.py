"""report.py: the table, CSV and plot from records, against planted records whose expected table
is worked out by hand: which retrain a run's Δ columns are measured against, what a row holds
fixed (recipe, the flags that change a result) and what it averages over (seeds, forget targets),
one record per run whatever files are read, bad lines and files, outputs that are not regular
files, and a large σ × η grid condensed to its frontier in the table and the plot."""
import errno
import json
import os
import statistics
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from helpers import REPO, describe, run_inprocess

import report
from cli import UserError

PIPE = dict(importance_order="shuffled", retain_test_order="grouped", split_draw="after_two_models", pins_split="none")


def rec(method, dr, df, mia=0.5, seed=0, forget="3", recipe="reference", pipeline=PIPE, **extra):
    r = dict(setting="fullclass", dataset="Digits", net="SmallCNN", method=method, forget=forget, seed=seed,
             recipe=recipe, pipeline=pipeline, RetainTestAcc=dr, Df=df, MIA=mia, TestAcc=dr, MethodTime=1.0)
    r.update(extra)
    return r


def flagged(method, dr, df, seed=0, recipe="reference", **flags):
    """A record carrying its flags, as the mains write them."""
    args = dict(net="SmallCNN", dataset="Digits", method=method, seed=seed, recipe=recipe, forget_class="3",
                classes=10, b=64, **flags)
    return rec(method, dr, df, seed=seed, recipe=recipe, args=args)


def row_of(rows, method, recipe="reference"):
    (row,) = [r for r in rows if r["method"] == method and r["recipe"] == recipe]
    return row


def test_the_gaps_use_the_last_healthy_retrain_full_of_the_same_target_seed_recipe_and_pipeline():
    run = rec("finetune", 80.0, 10.0, mia=0.30)
    right = rec("retrain_full", 90.0, 2.0, mia=0.20)
    planted = [
        rec("retrain_full", 60.0, 1.0, mia=0.1),               # the same run recorded earlier: replaced
        right,
        rec("retrain", 70.0, 3.0, mia=0.4),                    # retrain_full is preferred to retrain
        rec("retrain_full", 10.0, 50.0, mia=0.9, diverged=True),  # a diverged retrain is no retrain
        rec("retrain_full", 50.0, 4.0, mia=0.6, seed=1),       # another seed
        rec("retrain_full", 40.0, 5.0, mia=0.7, forget="4"),   # another forget target
        rec("retrain_full", 30.0, 6.0, mia=0.8, recipe="corrected"),  # another recipe
        rec("retrain_full", 20.0, 7.0, mia=0.05, pipeline=dict(PIPE, split_draw="own_generator")),  # another split
    ]
    row = row_of(report.summarise([run] + planted), "finetune")
    # 80 - 90, 10 - 2, 0.30 - 0.20
    assert (row["ΔDr"], row["ΔDf"], row["ΔMIA"]) == ("-10.00", "+8.00", "+0.100")


def test_an_ssd_run_with_its_own_batch_order_is_measured_against_the_retrain_of_its_images():
    """importance_order is SSD's own choice, not the data's: a run that changes it forgets the same
    images and is compared with the same retrain; a retain_test_order or loader batch of its own
    scores or trains otherwise and is not."""
    retrain = rec("retrain_full", 90.0, 2.0, mia=0.20)
    ssd = rec("ssd_tuning", 85.0, 4.0, mia=0.30, pipeline=dict(PIPE, importance_order="grouped"))
    assert row_of(report.summarise([ssd, retrain]), "ssd_tuning")["ΔDf"] == "+2.00"
    for other in (dict(retain_test_order="dataset"), dict(loader_batch=128)):
        run = rec("ssd_tuning", 85.0, 4.0, pipeline=dict(PIPE, **other))
        assert row_of(report.summarise([run, retrain]), "ssd_tuning")["ΔDf"] == ""


def test_the_gaps_average_each_run_against_its_own_retrain():
    runs = [rec("finetune", 80.0, 10.0, seed=0), rec("finetune", 70.0, 20.0, seed=1),
            rec("finetune", 60.0, 30.0, seed=2)]  # seed 2 has no retrain: left out of the Δ columns
    retrains = [rec("retrain_full", 90.0, 0.0, seed=0), rec("retrain_full", 76.0, 4.0, seed=1)]
    row = row_of(report.summarise(runs + retrains), "finetune")
    # ΔDr over seeds 0 and 1: -10 and -6 -> mean -8, sample std sqrt(8) = 2.83; ΔDf: +10 and +16
    assert row["n"] == 3 and row["ΔDr"] == "-8.00 ± 2.83" and row["ΔDf"] == "+13.00 ± 4.24"
    assert row["Dr"] == "70.00 ± 10.00"


def test_a_run_without_a_matching_retrain_has_no_gap():
    rows = report.summarise([rec("finetune", 80.0, 10.0, recipe="corrected"), rec("retrain_full", 90.0, 2.0)])
    assert row_of(rows, "finetune", "corrected")["ΔDr"] == ""


def test_recipes_are_rows_of_their_own_with_a_recipe_column():
    rows = report.summarise([rec("scrub", 80.0, 5.0), rec("scrub", 60.0, 1.0, recipe="corrected"),
                             rec("scrub", 70.0, 3.0, seed=1)])
    assert row_of(rows, "scrub")["Dr"] == "75.00 ± 7.07" and row_of(rows, "scrub")["n"] == 2
    assert row_of(rows, "scrub", "corrected")["Dr"] == "60.00"
    assert list(rows[0])[:6] == ["setting", "dataset", "net", "recipe", "method", "n"]


def test_records_that_differ_in_a_result_changing_flag_are_rows_of_their_own_named_by_it():
    recs = [flagged("finetune", 80.0, 5.0, finetune_epochs=1), flagged("finetune", 70.0, 5.0, finetune_epochs=5),
            flagged("finetune", 60.0, 5.0, seed=1, finetune_epochs=5),
            flagged("finetune", 50.0, 5.0, finetune_epochs=1, results="elsewhere.jsonl", workers=4)]
    rows = report.summarise(recs)
    by_variant = {r["variant"]: r for r in rows}
    # -results and -workers do not change a result: the last record joins the first's row
    assert set(by_variant) == {"finetune_epochs=1", "finetune_epochs=5"}
    assert by_variant["finetune_epochs=1"]["Dr"] == "65.00 ± 21.21" and by_variant["finetune_epochs=1"]["n"] == 2
    assert by_variant["finetune_epochs=5"]["Dr"] == "65.00 ± 7.07" and by_variant["finetune_epochs=5"]["n"] == 2


def test_a_variant_column_appears_only_when_some_row_needs_one():
    rows = report.summarise([flagged("finetune", 80.0, 5.0), flagged("finetune", 70.0, 5.0, seed=1),
                             flagged("baseline", 99.0, 99.0)])
    assert "variant" not in rows[0] and [r["n"] for r in rows] == [2, 1]


def test_jit_rows_are_named_by_sigma_eta_and_switches_not_a_variant():
    a = flagged("lipschitz_forgetting", 80.0, 5.0, sigma=0.5, eta=0.01, jit_grad=None)
    b = flagged("lipschitz_forgetting", 70.0, 4.0, sigma=0.5, eta=0.01, jit_grad="accumulate")
    c = flagged("lipschitz_forgetting", 60.0, 3.0, sigma=2.0, eta=0.01, jit_grad="per_batch")
    for r in (a, b, c):
        r.update(sigma=r["args"]["sigma"], eta=r["args"]["eta"])
    rows = report.summarise([a, b, c])
    # an unset switch is the parity value: a and b share a row
    assert [(r["method"], r["n"]) for r in rows] == [("JiT σ=0.5, η=0.01", 2), ("JiT σ=2, η=0.01, grad=per_batch", 1)]
    assert "variant" not in rows[0]


def fq(method, f, seed=0, recipe="reference", k=6, **flags):
    args = dict(net="SmallCNN", dataset="Digits", seed=seed, recipe=recipe, forget_class="3", K=k, **flags)
    return dict(kind=report.FQ_KIND, setting="fullclass", dataset="Digits", net="SmallCNN", forget="3", seed=seed,
                K=k, method=method, F=f, FinalScore=f / 2, diverged=False, args=args)


def test_the_forgetting_quality_table_keeps_recipes_and_seeds_apart_and_takes_the_newest_rerun(tmp_path):
    recs = [fq("finetune", 0.25), fq("finetune", 0.5, recipe="corrected"), fq("finetune", 0.125, seed=1),
            fq("finetune", 0.375, b=32), fq("finetune", 0.75)]  # the last: a rerun of the first
    rows = report.fq_rows(report.deduplicate(recs))
    got = sorted((r["recipe"], r["seed"], r.get("variant"), r["F"]) for r in rows)
    assert got == [("corrected", 0, "", "0.500"), ("reference", 0, "b=32", "0.375"), ("reference", 0, "b=–", "0.750"),
                   ("reference", 1, "", "0.125")]
    groups = list(report.fq_groups(recs))
    paths = report.fq_plot_paths(str(tmp_path / "rep"), groups)
    assert len(set(paths.values())) == 4
    # a plot's name depends on its own call alone, not on which other calls the files hold
    assert report.fq_plot_paths(str(tmp_path / "rep"), groups[::-1]) == paths


def test_one_forgetting_quality_call_is_one_group_jit_included():
    # every record of a call carries the call's flags, JiT's σ and η among them: JiT's row is in
    # the same table and ε plot as the other methods'
    call = dict(sigma=None, eta=None, jit_mode=None, n_samples=2)
    recs = [fq("baseline", 0.0, **call), fq("lipschitz_forgetting", 0.5, **call), fq("retrain_full", 0.25, **call)]
    groups = report.fq_groups(recs)
    assert len(groups) == 1 and list(next(iter(groups.values()))) == ["baseline", "lipschitz_forgetting",
                                                                     "retrain_full"]
    assert len(report.fq_groups(recs[:2] + [fq("retrain_full", 0.25, **dict(call, n_samples=3))])) == 2


def test_forgetting_quality_plot_names_made_the_same_by_unsafe_characters_are_numbered():
    key = ("fullclass", "Digits", "SmallCNN", "a/b", 6, "reference", 0, None)
    paths = report.fq_plot_paths("rep", [key, key[:3] + ("a_b",) + key[4:]])
    assert sorted(paths.values()) == ["rep-eps-fullclass-Digits-SmallCNN-a_b-K6-s0-2.png",
                                      "rep-eps-fullclass-Digits-SmallCNN-a_b-K6-s0.png"]


def test_a_file_read_twice_counts_once(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (rec("finetune", 80.0, 5.0), rec("finetune", 70.0, 5.0, seed=1))))
    report.main([str(path), str(path), "-out", str(tmp_path / "rep")])
    captured = capsys.readouterr()
    assert "| finetune | 2 | 75.00 ± 7.07 |" in captured.out
    assert "dropped 2 duplicate record(s)" in captured.err


def test_duplicates_are_found_by_run_identity_and_the_last_one_read_is_kept(capsys):
    first = dict(flagged("finetune", 80.0, 5.0, results="a.jsonl"), time="t1")
    again = dict(flagged("finetune", 82.0, 5.0, results="b.jsonl"), time="t2")  # the same run, written again
    other_seed = flagged("finetune", 70.0, 5.0, seed=1)
    fq_twin = dict(first, kind=report.FQ_KIND)  # another kind of record: another run
    same_without_flags = [rec("baseline", 99.0, 99.0), rec("baseline", 99.0, 99.0), rec("baseline", 98.0, 99.0)]
    kept = report.deduplicate([first, other_seed, again, fq_twin] + same_without_flags)
    assert kept == [again, other_seed, fq_twin] + same_without_flags[1:]
    assert "dropped 2 duplicate" in capsys.readouterr().err


def _results(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(rec("finetune", 80.0, 5.0)) + "\n")
    return path


def test_a_fifo_as_output_is_refused_before_any_work(tmp_path):
    path = _results(tmp_path)
    os.mkfifo(tmp_path / "rep.md")
    # a reader holds the FIFO open, so that a report that wrote to it would not hang the test
    reader = os.open(tmp_path / "rep.md", os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(UserError, match=r"^-out .*rep\.md is a named pipe \(FIFO\), not a regular file"):
            report.main([str(path), "-out", str(tmp_path / "rep")])
        assert os.read(reader, 100) == b"" and not (tmp_path / "rep.csv").exists()
    finally:
        os.close(reader)


def test_a_device_as_output_is_refused(tmp_path):
    path = _results(tmp_path)
    os.symlink("/dev/null", tmp_path / "rep.png")
    with pytest.raises(UserError, match=r"^-out .*rep\.png is a character device, not a regular file"):
        report.main([str(path), "-out", str(tmp_path / "rep")])
    assert not (tmp_path / "rep.md").exists()


def test_an_output_that_is_an_input_is_refused(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(json.dumps(rec("finetune", 80.0, 5.0)) + "\n")
    with pytest.raises(UserError, match="is one of the results files read"):
        report.main([str(path), "-out", str(tmp_path / "r")])
    assert json.loads(path.read_text())["method"] == "finetune"


def jit(sigma, eta, dr, df, seed=0):
    return rec("lipschitz_forgetting", dr, df, seed=seed, sigma=sigma, eta=eta)


def test_pick_keeps_a_short_list_and_the_frontier_of_a_long_one():
    assert report.pick([(1.0, 1.0)] * 3, limit=3) == [0, 1, 2]
    # (Dr, Df): 0 and 3 lie on the frontier; 1 is beaten by 0 (lower Dr at higher Df), 2 by 3
    # (the same Df, lower Dr), 5 by 0 (the same Dr, higher Df); 4 has no metrics
    points = [(90.0, 10.0), (80.0, 20.0), (50.0, 5.0), (60.0, 5.0), (None, None), (90.0, 15.0)]
    assert report.pick(points, limit=5) == [0, 3]


def test_pick_spreads_a_long_frontier_evenly_from_least_to_most_forgotten():
    points = [(float(i), float(i)) for i in range(21)]  # every point on the frontier
    assert report.pick(points, limit=5) == [0, 5, 10, 15, 20]


def test_a_large_grid_prints_its_frontier_and_says_how_many_rows_the_csv_holds(tmp_path, capsys):
    grid = [jit(s, e, dr=50.0 + s + e, df=s + 10 * e) for s in range(1, 5) for e in range(1, 5)]
    # one point that beats every other on both counts, one that is beaten by it on both
    grid += [jit(0.5, 0.5, dr=99.0, df=0.0), jit(0.25, 0.25, dr=1.0, df=99.0)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in grid + [rec("baseline", 99.0, 99.0)]))
    report.main([str(path), "-out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    jit_lines = [line for line in out.splitlines() if "| JiT" in line]
    assert jit_lines == [line for line in out.splitlines() if "σ=0.5, η=0.5" in line]
    assert "… 17 more JiT rows (every row: " in out and "| baseline |" in out
    with open(tmp_path / "rep.csv") as f:
        assert sum(1 for _ in f) == 1 + 18 + 1


def test_the_plot_of_a_large_grid_names_only_the_picked_points(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.append(fig))
    grid = [jit(s, e, dr=float(s), df=float(s)) for s in range(1, 31) for e in (0.1, 0.2)]
    report.plot(grid + [rec("baseline", 99.0, 99.0), rec("retrain_full", 90.0, 0.0)], str(tmp_path / "p.png"))
    (ax,) = figures[0].axes
    names = sorted(t.get_text() for t in ax.texts)
    assert len(names) == report.SHOWN_ROWS + 2 and "baseline" in names and "retrain_full" in names
    assert "JiT σ=30, η=0.1" in names and "JiT σ=1, η=0.1" in names  # the frontier's two ends
    assert ax.get_legend().get_texts()[0].get_text() == "JiT (60 rows)"


def good(method="baseline", seed=0, dr=90.0, df=10.0, **extra):
    return dict(setting="fullclass", dataset="Digits", net="SmallCNN", method=method, forget="3", seed=seed,
                RetainTestAcc=dr, Df=df, MIA=0.5, TestAcc=dr, MethodTime=1.0, **extra)


BAD_LINES = {
    "a list": "[1, 2]",
    "a string": '"text"',
    "a number": "42",
    "null": "null",
    "an empty object": "{}",
    "missing keys": '{"method": "baseline", "Df": 1.0}',
    "setting not text": json.dumps(dict(good(), setting=5)),
    "Df not numeric": json.dumps(dict(good(), Df="high")),
    "Dr a boolean": json.dumps(dict(good(), RetainTestAcc=True)),
    "MIA a list": json.dumps(dict(good(), MIA=[0.5])),
    "JS an object": json.dumps(dict(good(), JSToRetrain={"v": 1})),
    "seed a list": json.dumps(dict(good(), seed=[1])),
    "JiT without sigma": json.dumps(good("lipschitz_forgetting", eta=0.1)),
    "JiT sigma as text": json.dumps(good("lipschitz_forgetting", sigma="big", eta=0.1)),
    "args a list": json.dumps(dict(good(), args=[1])),
    "not JSON": "{oops",
    "torn line": json.dumps(good())[:40],
    "deep nesting": "[" * 100000 + "]" * 100000,
}


BAD_BYTES = {"not UTF-8": b'\xff\xfe{"setting": 1}'}


def _file(tmp_path, lines, name="r.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


@pytest.mark.parametrize("case", list(BAD_LINES) + list(BAD_BYTES))
def test_report_skips_a_bad_line_and_counts_it(tmp_path, capsys, case):
    bad = BAD_LINES.get(case) or BAD_BYTES[case]
    path = _file(tmp_path, [json.dumps(good()), bad, json.dumps(good("jit", dr=80.0))])
    records = report.read_file(str(path))
    assert [r["method"] for r in records] == ["baseline", "jit"]
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"skipped 1 bad line(s) in {path}: first at line 2 (") and "\n" not in err, err


def test_report_counts_every_bad_line_and_names_the_first(tmp_path, capsys):
    lines = [json.dumps(good())] + list(BAD_LINES.values()) + list(BAD_BYTES.values()) + [json.dumps(good("jit"))]
    path = _file(tmp_path, lines)
    assert len(report.read_file(str(path))) == 2
    err = capsys.readouterr().err
    assert f"skipped {len(BAD_LINES) + len(BAD_BYTES)} bad line(s) in {path}: first at line 2 " in err


@pytest.mark.slow
def test_report_cli_summarises_around_bad_lines(tmp_path):
    path = _file(tmp_path, [json.dumps(good()), "[1]", '{"method": "x"}', json.dumps(good("jit", dr=70.0))])
    proc = run_inprocess(["report.py", path, "-out", tmp_path / "rep"])
    assert proc.returncode == 0, describe(proc)
    assert proc.stderr.strip() == f"skipped 2 bad line(s) in {path}: first at line 2 (a JSON list, not an object)"
    assert "| baseline |" in proc.stdout and "| jit |" in proc.stdout
    assert (tmp_path / "rep.png").stat().st_size > 0


@pytest.mark.parametrize("case", ["all bad", "only blank", "only a torn line"])
def test_report_file_without_records_is_one_line_naming_it(tmp_path, case):
    lines = {"all bad": list(BAD_LINES.values()), "only blank": ["", "  "],
             "only a torn line": ['{"setting": "fullc']}[case]
    path = _file(tmp_path, lines)
    with pytest.raises(UserError) as e:
        report.main([str(path), "-out", str(tmp_path / "rep")])
    assert f"no records in {path}" in str(e.value) and "\n" not in str(e.value)
    if case == "all bad":
        assert "first at line 1" in str(e.value)


def _binary_files(tmp_path):
    ckpt = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(3)}, ckpt)
    png = tmp_path / "plot.png"
    from PIL import Image
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(json.dumps(good()).encode() + b"\n" + json.dumps(good()).encode() + b"\nab\0cd\n")
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes(json.dumps(good()).encode("utf-16"))
    # the line of the first NUL byte: a PNG's signature holds two newlines before its first NUL
    return {"checkpoint": (ckpt, 1), "png": (png, 3), "NUL on line 3": (mixed, 3), "UTF-16 text": (utf16, 1)}


@pytest.mark.parametrize("case", ["checkpoint", "png", "NUL on line 3", "UTF-16 text"])
def test_report_stops_on_a_binary_file_naming_file_and_line(tmp_path, case):
    path, line = _binary_files(tmp_path)[case]
    with pytest.raises(UserError) as e:
        report.main([str(path), "-out", str(tmp_path / "rep")])
    assert str(e.value) == f"{path} is not a JSON-lines text file (binary data at line {line})"


def test_report_missing_file_and_folder_are_one_line(tmp_path):
    for path, what in ((tmp_path / "nope.jsonl", "not found"), (tmp_path, "is a directory")):
        with pytest.raises(UserError, match=what):
            report.main([str(path), "-out", str(tmp_path / "rep")])


def test_report_reads_nan_and_infinity_of_old_files_as_missing(tmp_path):
    """Files written before records were strict JSON may hold NaN/Infinity tokens."""
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(good(dr=80.0)) + "\n" + json.dumps(good(dr=90.0)).replace("0.5", "NaN") + "\n"
                    + json.dumps(good(dr=70.0, df=2.0)).replace("2.0", "Infinity") + "\n")
    records = report.read_file(str(path))
    assert records[1]["MIA"] is None and records[2]["Df"] is None
    (row,) = report.summarise(records)
    assert row["Dr"].startswith("80.00 ±") and row["MIA"] == "0.500 ± 0.000" and row["Df"].startswith("10.00")
    report.plot(records, str(tmp_path / "p.png"))


def test_report_gap_ignores_a_retrain_record_without_the_metric():
    recs = [good("retrain_full"), good("jit", dr=80.0)]
    recs[0]["MIA"] = None
    rows = {r["method"]: r for r in report.summarise(recs)}
    assert rows["jit"]["ΔDr"] == "-10.00" and rows["jit"]["ΔMIA"] == ""


@pytest.mark.parametrize("out, what", [("", "empty"), ("  ", "empty"), ("folder/", "names a folder"),
                                       ("FILE/rep", "is a file, not a folder"),
                                       ("/proc/no-such-place/rep", "cannot be written")])
def test_report_refuses_an_output_it_cannot_write_before_reading(tmp_path, out, what):
    (tmp_path / "f.txt").write_text("x")
    out = out.replace("FILE", str(tmp_path / "f.txt"))
    with pytest.raises(UserError) as e:
        report.main([str(tmp_path / "does-not-exist.jsonl"), "-out", out])  # -out is checked first
    assert what in str(e.value) and "-out" in str(e.value)


def test_report_refuses_an_output_prefix_that_is_a_folder_with_the_suffix(tmp_path):
    (tmp_path / "rep.csv").mkdir()
    path = _file(tmp_path, [json.dumps(good())])
    with pytest.raises(UserError, match="rep.csv is a directory"):
        report.main([str(path), "-out", str(tmp_path / "rep")])
    assert not (tmp_path / "rep.md").exists()


def test_report_retrain_names_are_the_method_registry_s():
    from methods import METHODS, RETRAIN_METHODS

    assert report.RETRAIN_METHODS is RETRAIN_METHODS and set(RETRAIN_METHODS) <= set(METHODS)


@pytest.mark.slow
def test_report_imports_and_runs_without_torch(tmp_path):
    path = _file(tmp_path, [json.dumps(good()), json.dumps(good("retrain_full", dr=85.0, df=0.0)), "[bad]"])
    code = ("import sys\n"
            "for m in ('torch', 'torchvision', 'transformers'): sys.modules[m] = None\n"
            "import report\n"
            "report.main(sys.argv[1:])\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'torch' and sys.modules[m] is not None]\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path), "-out", str(tmp_path / "rep")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, describe(proc)
    assert "| retrain_full |" in proc.stdout and "skipped 1 bad line(s)" in proc.stderr
    assert (tmp_path / "rep.md").exists()


def test_report_disk_full_while_writing_is_one_line(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "plot", full)
    path = _file(tmp_path, [json.dumps(good())])
    with pytest.raises(UserError, match="cannot write the report .*No space left on device"):
        report.main([str(path), "-out", str(tmp_path / "rep")])




def _record(method, seed, dr, df, mia=0.5, t=1.0, dataset="Digits"):
    return dict(setting="fullclass", dataset=dataset, net="SmallCNN", method=method, seed=seed,
                RetainTestAcc=dr, Df=df, MIA=mia, TestAcc=dr, MethodTime=t)


def test_report_mean_and_std_over_seeds_match_a_recomputation():
    recs = [_record("jit", 0, 90.0, 10.0, 0.2), _record("jit", 1, 80.0, 30.0, 0.4),
            _record("jit", 2, 85.0, 20.0, 0.9), _record("baseline", 0, 95.0, 96.0)]
    rows = {r["method"]: r for r in report.summarise(recs)}
    dr = [90.0, 80.0, 85.0]
    mia = [0.2, 0.4, 0.9]
    assert rows["jit"]["n"] == 3
    assert rows["jit"]["Dr"] == f"{statistics.mean(dr):.2f} ± {statistics.stdev(dr):.2f}"
    assert rows["jit"]["MIA"] == f"{statistics.mean(mia):.3f} ± {statistics.stdev(mia):.3f}"
    assert rows["baseline"]["Df"] == "96.00"  # a single run shows no ± term


def test_report_keeps_settings_apart():
    rows = report.summarise([_record("jit", 0, 90.0, 10.0), _record("jit", 0, 50.0, 5.0, dataset="Cifar10")])
    assert [(r["dataset"], r["Dr"]) for r in rows] == [("Digits", "90.00"), ("Cifar10", "50.00")]


def test_report_cli_prints_a_markdown_table(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(_record(m, 0, 90.0, 1.0)) for m in ("baseline", "jit")) + "\n")
    proc = subprocess.run(["python", str(REPO / "report.py"), str(path)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0
    assert lines[0].startswith("| setting | dataset | net | recipe | method | n | Dr | Df | MIA")
    assert len(lines) == 5 and lines[-1].startswith("report: ")
    for ext in (".md", ".csv", ".png"):
        assert (tmp_path / f"r-report{ext}").stat().st_size > 0


def test_report_cli_rejects_an_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    proc = subprocess.run(["python", str(REPO / "report.py"), str(tmp_path / "empty.jsonl")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no records" in proc.stderr


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_pipe_or_a_device_given_as_a_results_file_is_refused_without_reading(tmp_path, kind):
    # opening a named pipe for reading blocks until a writer comes: the check comes first
    path = tmp_path / "r.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    box = []
    t = threading.Thread(target=lambda: box.append(pytest.raises(UserError, report.read_file, str(path))),
                         daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), f"report.py blocked on a {kind}"
    assert "not a regular file" in str(box[0].value)
