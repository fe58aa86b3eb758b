"""pretrain_model.py's inputs and outputs: numbers out of range and outputs it must not or
cannot write refused in one line, -overwrite, a torchrun batch that does not split, non-finite
weights, and full disks that lose no record and no training state."""
import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, _env, describe, one_line_error, run_inprocess

import pretrain_model
from cli import UserError
from models import SmallCNN
from utils import load_weights

PRETRAIN = ["pretrain_model.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10"]


BAD_FLAGS = [("-epochs", "-1"), ("-epochs", "0"), ("-epochs", "2.5"), ("-workers", "-1"), ("-seed", "-1"),
             ("-seed", str(2**32)), ("-seed", str(2**64)), ("-seed", "1e3"), ("-b", "0"), ("-b", "-64"),
             ("-lr", "nan"), ("-lr", "inf"), ("-lr", "-inf"), ("-lr", "0"), ("-lr", "-0.1"), ("-warm", "-1"),
             ("-classes", "0")]


@pytest.mark.parametrize("flag, value", BAD_FLAGS)
def test_pretrain_refuses_out_of_range_numbers_in_one_line(tmp_path, flag, value):
    out = tmp_path / "m.pth"
    cmd = [*PRETRAIN, "-epochs", "1", "-out", out]
    if flag in cmd:
        cmd[cmd.index(flag) + 1] = value
    else:
        cmd += [flag, value]
    one_line_error(run_inprocess(cmd), f"argument {flag}:")
    assert not out.exists()


def test_pretrain_help_gives_each_numeric_range(capsys):
    with pytest.raises(SystemExit):
        pretrain_model.parse_args(["-h"])
    text = " ".join(capsys.readouterr().out.split())
    for piece in ("-b B global batch size, an integer >= 1", "-warm WARM warm-up epochs, an integer >= 0",
                  "a finite number > 0", "-epochs EPOCHS epochs, an integer >= 1", "an integer in 0..2**32-1",
                  "workers per process, an integer >= 0", "-overwrite"):
        assert piece in text, piece


@pytest.mark.parametrize("what", ["existing checkpoint", "existing training state", "empty", "a folder",
                                  "a folder path", "under a file", "read-only place"])
def test_pretrain_refuses_an_out_it_must_not_or_cannot_write(tmp_path, what):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    out, needle = {
        "existing checkpoint": (tmp_path / "old.pth", "-overwrite"),
        "existing training state": (tmp_path / "run.pth", "-resume"),
        "empty": ("", "empty"),
        "a folder": (tmp_path / "folder", "is a directory"),
        "a folder path": (f"{tmp_path}/new/", "names a folder"),
        "under a file": (tmp_path / "file" / "m.pth", "is a file"),
        "read-only place": ("/proc/m.pth", "cannot be written"),
    }[what]
    (tmp_path / "old.pth").write_bytes(b"earlier work")
    (tmp_path / "run-resume.pth").write_bytes(b"earlier state")
    one_line_error(run_inprocess([*PRETRAIN, "-epochs", "1", "-out", out]), "-out", needle)
    assert (tmp_path / "old.pth").read_bytes() == b"earlier work"
    assert (tmp_path / "run-resume.pth").read_bytes() == b"earlier state"


@pytest.mark.slow
def test_pretrain_overwrite_replaces_an_existing_out(tmp_path):
    out = tmp_path / "old.pth"
    out.write_bytes(b"earlier work")
    proc = run_inprocess([*PRETRAIN, "-epochs", "1", "-out", out, "-overwrite"])
    assert proc.returncode == 0, describe(proc)
    assert set(torch.load(out, weights_only=True)) == set(SmallCNN(10).state_dict())


@pytest.mark.slow
def test_torchrun_batch_that_does_not_split_exits_every_worker_cleanly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *PRETRAIN, "-epochs", "1", "-b", "63", "-out", str(tmp_path / "m.pth")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, describe(proc)
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert errors == ["error: -b 63 does not split evenly over 2 processes: give a multiple of 2"], text[-3000:]
    assert "pretrain_model.py\", line" not in text  # no traceback from a worker, only torchrun's own
    assert "exitcode  : 2" in text and not (tmp_path / "m.pth").exists()


@pytest.mark.parametrize("where, value", [("features.0.weight", float("nan")), ("fc.bias", float("inf")),
                                          ("classifier.1.weight", float("-inf")), ("fc.weight", float("nan"))])
def test_non_finite_weights_are_refused_naming_the_file(tmp_path, where, value):
    state = SmallCNN(10).state_dict()
    state[where].view(-1)[3] = value
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(UserError) as e:
        load_weights(SmallCNN(10), str(path), "SmallCNN", 10)
    msg = str(e.value)
    assert str(path) in msg and where in msg and "NaN or inf" in msg and "\n" not in msg


def test_resume_state_with_non_finite_weights_is_refused(tmp_path):
    model = SmallCNN(10).state_dict()
    model["fc.bias"][0] = float("nan")
    path = tmp_path / "m-resume.pth"
    torch.save(dict(format=pretrain_model.RESUME_FORMAT, model=model, args={}), path)
    args = pretrain_model.parse_args(["-net", "SmallCNN", "-dataset", "Digits", "-classes", "10"])
    with pytest.raises(UserError, match="NaN or inf"):
        pretrain_model.load_resume_state(str(path), args, 30)


def test_pretrain_workers_zero_and_seed_bounds_are_accepted():
    args = pretrain_model.parse_args([*PRETRAIN[1:], "-workers", "0", "-seed", str(2**32 - 1), "-warm", "0"])
    assert (args.workers, args.seed, args.warm) == (0, 2**32 - 1, 0)
    assert os.path.basename(pretrain_model.resume_path("a/b.pth")) == "b-resume.pth"


@pytest.mark.parametrize("epoch, state_exists", [(1, False), (3, True)])
def test_pretrain_disk_full_at_a_save_is_one_line_saying_what_is_kept(tmp_path, monkeypatch, epoch, state_exists):
    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pretrain_model, "atomic_save", full)
    state = tmp_path / "m-resume.pth"
    if state_exists:
        state.write_bytes(b"saved after epoch 2")
    with pytest.raises(UserError) as e:
        pretrain_model.save({}, str(tmp_path / "m.pth"), str(state), epoch)
    msg = str(e.value)
    assert msg.startswith(f"cannot save {tmp_path / 'm.pth'} after epoch {epoch}: No space left on device")
    assert (f"-resume {state}" in msg) == state_exists and ("nothing was saved" in msg) != state_exists


def test_torch_saves_failed_write_is_an_oserror(tmp_path, monkeypatch):
    """torch.save's zip writer reports a failed write as a RuntimeError; atomic_save turns it
    into an OSError (ENOSPC when the folder has no space left), which the callers report in
    one line, and leaves no temporary file behind."""
    import utils

    def failing(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"x")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OSError) as e:
        utils.atomic_save({}, str(tmp_path / "m.pth"))
    assert e.value.errno in (errno.EIO, errno.ENOSPC) and "unexpected pos" in str(e.value)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KB tmpfs filled to the last byte (needs root and mount; skipped elsewhere)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        fd = os.open(mnt / "fill", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_a_real_full_disk_loses_no_record_and_no_pretraining_state(full_disk, tmp_path):
    weights = tmp_path / "w.pth"
    torch.save(SmallCNN(10).state_dict(), weights)
    proc = run_inprocess(["forget_full_class_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                          "-forget_class", "3", "-method", "baseline", "-weight_path", weights,
                          "-results", full_disk / "r.jsonl", "-retrain_dir", tmp_path / "rd", "-relearn_max_steps",
                          "0"])
    assert proc.returncode == 0, proc.stderr
    assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    kept = proc.stderr.split("the record was written to ", 1)[1].split(" instead", 1)[0]
    assert json.loads(open(kept).read())["method"] == "baseline"
    os.remove(kept)

    proc = run_inprocess(["pretrain_model.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
                          "-epochs", "1", "-out", full_disk / "m.pth"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"cannot save {full_disk / 'm.pth'} after epoch 1: No space left on device" in proc.stderr
