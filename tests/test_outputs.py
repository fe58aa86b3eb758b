"""Every output a script names is checked before any work: a regular file or a new name in a
writable folder. A named pipe (which blocks the writer until a reader comes) and a device (which
swallows or refuses the record) are refused in one line that names the flag."""
import os
import threading

import pytest
from helpers import describe, run_inprocess

from cli import UserError
from records import check_results_path
from utils import check_writable


def _fifo(tmp_path):
    path = tmp_path / "pipe.jsonl"
    os.mkfifo(path)
    return path


def _error_without_blocking(check, path, flag):
    """The UserError ``check(path, flag)`` raises, from a thread: a check that opens a FIFO for
    writing blocks forever, and the test must fail then, not hang."""
    got = []

    def target():
        try:
            check(str(path), flag)
        except UserError as e:
            got.append(str(e))
        else:
            got.append(None)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), f"checking {path} blocked"
    return got[0]


@pytest.mark.parametrize("check", [check_writable, check_results_path])
@pytest.mark.parametrize("kind, needle", [("fifo", "named pipe"), ("device", "character device")])
def test_a_pipe_or_a_device_is_refused_in_one_line_naming_the_flag(tmp_path, check, kind, needle):
    path = _fifo(tmp_path) if kind == "fifo" else "/dev/null"
    msg = _error_without_blocking(check, path, "-results")
    assert msg is not None, f"{path} accepted as an output"
    assert msg.startswith(f"-results {path}") and needle in msg and "\n" not in msg


def test_a_symbolic_link_to_a_regular_file_is_accepted(tmp_path):
    (tmp_path / "r.jsonl").write_text("")
    os.symlink(tmp_path / "r.jsonl", tmp_path / "link.jsonl")
    assert _error_without_blocking(check_results_path, tmp_path / "link.jsonl", "-results") is None


def _no_fallback_left(folder):
    return not [f for f in os.listdir(folder) if f.startswith("unsaved-record")]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_forget_run_refuses_a_pipe_or_device_as_results_before_any_work(tmp_path, kind):
    results = _fifo(tmp_path) if kind == "fifo" else "/dev/null"
    args = ["forget_full_class_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
            "-forget_class", "3", "-method", "baseline", "-weight_path", tmp_path / "absent.pth",
            "-results", results, "-retrain_dir", tmp_path]
    box = []
    t = threading.Thread(target=lambda: box.append(run_inprocess(args)), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the run blocked on its -results"
    (proc,) = box
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "-results" in lines[0] and "weight" not in lines[0], describe(proc)
    assert _no_fallback_left(tmp_path) and _no_fallback_left(os.getcwd())


@pytest.mark.parametrize("script, flag", [("sweep.py", "-plot"), ("pretrain_model.py", "-out")])
def test_other_outputs_refuse_a_pipe_through_the_same_check(tmp_path, script, flag):
    pipe = _fifo(tmp_path)
    common = ["-net", "SmallCNN", "-dataset", "Digits", "-classes", "10"]
    extra = (["-weight_path", tmp_path / "absent.pth", "-forget_class", "3", "-results", tmp_path / "r.jsonl",
              "-sigmas", "0.5", "-etas", "0.1"]
             if script == "sweep.py" else ["-epochs", "1"])
    box = []
    t = threading.Thread(target=lambda: box.append(run_inprocess([script, *common, *extra, flag, pipe])),
                         daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), f"{script} blocked on {flag}"
    (proc,) = box
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}") and "named pipe" in lines[0], describe(proc)


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
