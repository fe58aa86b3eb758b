"""Hostile records and outputs: report.py on binary files and lines that are not records (and
without torch), strict-JSON record lines, output paths that cannot be written, and a final
record append that fails (a full disk)."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, describe, run_inprocess

import cli
import records
import report
from cli import UserError
from records import append_record, check_results_path, read_records
from utils import check_writable


def good(method="baseline", seed=0, dr=90.0, df=10.0, **extra):
    return dict(setting="fullclass", dataset="Digits", net="SmallCNN", method=method, forget="3", seed=seed,
                RetainTestAcc=dr, Df=df, MIA=0.5, TestAcc=dr, MethodTime=1.0, **extra)


def _strict(line):
    def refuse(name):
        raise ValueError(f"{name} is not strict JSON")
    return json.loads(line, parse_constant=refuse)


# ---- 4. report.py ------------------------------------------------------------------------------

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


# ---- 5. strict JSON records ----------------------------------------------------------------------

NON_FINITE = {
    "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"),
    "numpy float32 nan": np.float32("nan"), "numpy float64 inf": np.float64("inf"),
    "nested in a list": [1.0, float("nan")], "nested in a dict": {"a": float("-inf"), "b": 2.5},
    "in a tuple": (float("nan"), 3), "numpy array": np.array([np.nan, 1.0]),
    "0-d tensor": torch.tensor(float("inf")),
}


def test_every_record_line_is_strict_json_with_null_for_not_a_number(tmp_path):
    path = tmp_path / "r.jsonl"
    for name, value in NON_FINITE.items():
        append_record(str(path), dict(good(), case=name, value=value, Df=value if name == "nan" else 1.0))
    lines = path.read_text().splitlines()
    assert len(lines) == len(NON_FINITE)
    records = [_strict(line) for line in lines]  # no NaN/Infinity token anywhere
    got = {r["case"]: r["value"] for r in records}
    assert got["nan"] is None and got["inf"] is None and got["-inf"] is None
    assert got["numpy float32 nan"] is None and got["numpy float64 inf"] is None
    assert got["nested in a list"] == [1.0, None] and got["nested in a dict"] == {"a": None, "b": 2.5}
    assert got["in a tuple"] == [None, 3] and got["numpy array"] == [None, 1.0] and got["0-d tensor"] is None
    assert records[0]["Df"] is None


def test_strict_records_keep_finite_values_exactly(tmp_path):
    values = [0.1, 1e-300, 1.7976931348623157e308, -0.0, 3, True, None, "NaN", np.int64(7), np.float32(0.25)]
    path = tmp_path / "r.jsonl"
    append_record(str(path), dict(good(), values=values, path=Path("/x/y")))
    r = _strict(path.read_text())
    assert r["values"] == [0.1, 1e-300, 1.7976931348623157e308, -0.0, 3, True, None, "NaN", 7, 0.25]
    assert r["path"] == "/x/y"


def test_read_records_survives_binary_bytes(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(json.dumps(good()).encode() + b"\n\xff\xfe\0junk\n" + json.dumps(good("jit")).encode() + b"\n")
    assert [r["method"] for r in read_records(str(path))] == ["baseline", "jit"]


# ---- 8. outputs that cannot be written; a final append that fails -------------------------------

def _unwritable(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path / "gone", tmp_path / "broken")
    cases = {
        "empty": ("", "is empty"),
        "blank": ("   ", "is empty"),
        "a directory": (str(tmp_path / "dir"), "is a directory"),
        "a folder path": (str(tmp_path / "new") + "/", "names a folder"),
        "under a file": (str(tmp_path / "file.txt" / "r.jsonl"), "is a file, not a folder"),
        "deep under a file": (str(tmp_path / "file.txt" / "a" / "b" / "r.jsonl"), "is a file, not a folder"),
        "read-only place": ("/proc/r.jsonl", "cannot be written"),
        "a broken link": (str(tmp_path / "broken"), "broken symbolic link"),
    }
    if os.geteuid() != 0:  # root writes through permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        (tmp_path / "ro_file").write_text("")
        os.chmod(tmp_path / "ro_file", 0o444)
        os.chmod(ro, 0o555)
        cases["read-only folder"] = (str(ro / "r.jsonl"), "cannot be written")
        cases["read-only file"] = (str(tmp_path / "ro_file"), "cannot be written")
    return cases


UNWRITABLE = ["empty", "blank", "a directory", "a folder path", "under a file", "deep under a file",
              "read-only place", "a broken link", "read-only folder", "read-only file"]


@pytest.mark.parametrize("case", UNWRITABLE)
def test_check_writable_refuses_in_one_line_naming_the_flag(tmp_path, case):
    cases = _unwritable(tmp_path)
    if case not in cases:
        pytest.skip("running as root: permission bits do not stop writes")
    path, what = cases[case]
    with pytest.raises(UserError) as e:
        check_writable(path, "-results")
    assert str(e.value).startswith("-results") and what in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_check_writable_accepts_new_and_existing_files_and_creates_nothing(tmp_path):
    check_writable(str(tmp_path / "a" / "b" / "r.jsonl"), "-results")
    (tmp_path / "r.jsonl").write_text("")
    check_writable(str(tmp_path / "r.jsonl"), "-results")
    assert sorted(os.listdir(tmp_path)) == ["r.jsonl"]


@pytest.mark.parametrize("case", ["checkpoint", "png", "text", "csv", "UTF-16"])
def test_results_file_that_is_not_json_lines_is_refused(tmp_path, case):
    path = tmp_path / f"results.{case}"
    if case == "checkpoint":
        torch.save({"w": torch.zeros(2)}, path)
    elif case == "png":
        from PIL import Image
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path, format="PNG")
    elif case == "text":
        path.write_text("my notes\n")
    elif case == "csv":
        path.write_text("method,Df\nbaseline,1\n")
    else:
        path.write_bytes(json.dumps(good()).encode("utf-16"))
    before = path.read_bytes()
    with pytest.raises(UserError, match="is not a JSON-lines results file"):
        check_results_path(str(path))
    assert path.read_bytes() == before


def test_results_file_with_records_is_accepted(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n" + json.dumps(good()) + "\n" + '{"torn": ')
    check_results_path(str(path))
    (tmp_path / "empty.jsonl").write_text("")
    check_results_path(str(tmp_path / "empty.jsonl"))


def test_full_disk_record_goes_to_a_fallback_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    written = append_record("/dev/full", good())
    err = capsys.readouterr().err.strip()
    assert written != "/dev/full" and os.path.dirname(written) == str(tmp_path)
    assert err.startswith("warning: cannot append to /dev/full") and written in err and "\n" not in err
    assert _strict(Path(written).read_text())["method"] == "baseline"


def test_failed_append_takes_back_its_partial_line_and_uses_the_fallback(tmp_path, monkeypatch, capsys):
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(good()) + "\n")
    before = results.read_bytes()
    real_write, calls = os.write, []

    def write_then_full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}") != str(results):  # the fallback file: a working disk
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 1:  # half the line fits, then the disk is full
            return real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(records.os, "write", write_then_full)
    written = append_record(str(results), good("jit"))
    monkeypatch.undo()
    assert results.read_bytes() == before  # no torn line left behind
    assert "No space left on device" in capsys.readouterr().err
    assert _strict(Path(written).read_text())["method"] == "jit"


def test_record_nowhere_to_go_is_one_line_carrying_the_record(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "_fallback_paths", lambda path: ["/proc/a.jsonl", str(tmp_path / "f.txt" / "b")])
    (tmp_path / "f.txt").write_text("")
    with pytest.raises(UserError) as e:
        append_record("/dev/full", good(df=12.5))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cannot append to /dev/full")
    assert json.loads(msg.split("the record was: ", 1)[1])["Df"] == 12.5


def test_cli_gives_one_line_for_a_worker_wrapped_user_error():
    wrapped = UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        '  File "x.py", line 1, in f\n    raise UserError("bad")\ncli.UserError: cannot decode image a.jpg')
    assert cli.one_line(wrapped) == "cannot decode image a.jpg"
    assert cli.one_line(UserError("two\nlines")) == "two lines"


def test_report_disk_full_while_writing_is_one_line(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "plot", full)
    path = _file(tmp_path, [json.dumps(good())])
    with pytest.raises(UserError, match="cannot write the report .*No space left on device"):
        report.main([str(path), "-out", str(tmp_path / "rep")])
