"""One run gives one record, whatever the user does: a method named twice, two grids of the same
runs at once, a grid killed with SIGKILL and run again at once. The runs are a stand-in main
that records (method, target, seed) after a pause and, as the mains' -skip_existing, exits at
once when that is recorded: no torch, a run costs a Python start."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import grid
import launch

REPO = Path(__file__).resolve().parent.parent

FAKE_MAIN = """\
import json, os, sys, time
argv = sys.argv[1:]
flag = lambda name: argv[argv.index(name) + 1]
results = flag("-results")
key = {"method": flag("-method"), "forget": flag("-forget_class"), "seed": flag("-seed")}
if os.path.exists(results) and any(json.loads(line) == key for line in open(results)):
    sys.exit(0)
if os.environ.get("FAKE_PIDS"):
    open(os.path.join(os.environ["FAKE_PIDS"], str(os.getpid())), "w").close()
time.sleep(float(os.environ.get("FAKE_SECONDS", "0")))
with open(results, "a") as f:
    f.write(json.dumps(key) + "\\n")
"""


@pytest.fixture
def fake_grid(tmp_path):
    """A grid file of two targets whose main is FAKE_MAIN, and a weight file."""
    main = tmp_path / "fake_main.py"
    main.write_text(FAKE_MAIN)
    (tmp_path / "w.pth").write_bytes(b"")
    (tmp_path / "pids").mkdir()

    def make(methods):
        path = tmp_path / "g.json"
        path.write_text(json.dumps({"main": str(main), "args": "", "methods": methods,
                                    "targets": ["-forget_class 1", "-forget_class 2"]}))
        return path
    return make


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("ONLY_METHODS", "EXTRA_ARGS", "WEIGHT_PATH")}
    env.update(RESULTS=str(tmp_path / "r.jsonl"), FAKE_PIDS=str(tmp_path / "pids"), PYTHONPATH=str(REPO))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _recorded(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted((r["method"], r["forget"]) for r in map(json.loads, lines))


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended, only its parent has not read its status


def test_a_method_named_twice_runs_once(fake_grid, tmp_path, monkeypatch, capsys):
    spec = fake_grid(["baseline"])
    for k, v in _env(tmp_path, ONLY_METHODS="baseline baseline", FAKE_SECONDS=0.3).items():
        monkeypatch.setenv(k, v)
    assert grid.cli([str(spec), "cpu,cpu", "0", str(tmp_path / "w.pth")]) == 0, capsys.readouterr()
    assert _recorded(tmp_path) == [("baseline", "1"), ("baseline", "2")]
    assert "2 runs" in capsys.readouterr().out


def test_one_claim_runs_one_copy_at_a_time_whoever_launches_it(tmp_path):
    """Two launchers given the same run at once: the second waits for the first copy to end,
    then its own copy finds the run recorded."""
    main = tmp_path / "fake_main.py"
    main.write_text(FAKE_MAIN)
    cmd = (sys.executable, str(main), "-results", str(tmp_path / "r.jsonl"), "-method", "baseline",
           "-forget_class", "1", "-seed", "0")
    run = launch.Run(cmd, "baseline 1", claim=str(tmp_path / "claims" / "baseline-1"))
    os.environ["FAKE_SECONDS"] = "0.5"
    lines, outcomes = [], []
    try:
        others = [threading.Thread(target=lambda: outcomes.extend(launch.run_grid([run], echo=lines.append)))
                  for _ in range(2)]
        for t in others:
            t.start()
        for t in others:
            t.join(30)
    finally:
        del os.environ["FAKE_SECONDS"]
    assert [o.ok for o in outcomes] == [True, True]
    assert _recorded(tmp_path) == [("baseline", "1")]
    assert any(line.startswith("== waiting: baseline 1 is running in another process") for line in lines)


@pytest.mark.slow
def test_two_grids_of_the_same_runs_at_once_record_each_run_once(fake_grid, tmp_path):
    spec = fake_grid(["retrain_full", "baseline"])
    cmd = [sys.executable, str(REPO / "grid.py"), str(spec), "cpu,cpu", "0", str(tmp_path / "w.pth")]
    env = _env(tmp_path, FAKE_SECONDS=0.5)
    procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert _recorded(tmp_path) == sorted((m, t) for m in ("retrain_full", "baseline") for t in "12")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
@pytest.mark.parametrize("death_signal", [True, False], ids=["runs-die-with-the-grid", "claims-alone"])
def test_kill_9_of_a_grid_and_an_immediate_rerun_record_each_run_once(fake_grid, tmp_path, death_signal):
    """Without the parent-death signal (other systems), the killed grid's runs go on holding
    their claims, and the rerun waits for them instead of starting them a second time."""
    spec = fake_grid(["baseline", "finetune"])
    argv = [str(spec), "cpu,cpu", "0", str(tmp_path / "w.pth")]
    disable = "" if death_signal else "launch._prctl = lambda: None; "
    code = f"import sys, launch, grid; {disable}sys.exit(grid.cli(sys.argv[1:]))"
    env = _env(tmp_path, FAKE_SECONDS=2)
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pids = tmp_path / "pids"
    deadline = time.time() + 30
    while len(list(pids.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.02)
    started = [int(p.name) for p in pids.iterdir()]
    assert len(started) == 2 and _recorded(tmp_path) == []
    os.kill(proc.pid, signal.SIGKILL)  # the grid alone, as `kill -9 PID` does
    proc.wait(10)
    if death_signal:  # gone well before their 2 s are up, without a record
        deadline = time.time() + 1.5
        while any(map(_alive, started)) and time.time() < deadline:
            time.sleep(0.02)
        assert not any(map(_alive, started)), "a run outlived its grid"
        assert _recorded(tmp_path) == []
    rerun = subprocess.run([sys.executable, str(REPO / "grid.py"), *argv], env=dict(env, FAKE_SECONDS="0"),
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert ("== waiting: " in rerun.stdout) is not death_signal
    assert _recorded(tmp_path) == sorted((m, t) for m in ("baseline", "finetune") for t in "12")
