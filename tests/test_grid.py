"""The grid command (grid.py), its runner (launch.py), its eight wrappers and submit_pretrain.py:
usage, the grid table, input refused before any run, local slots (stages in order, failures
listed, INT/TERM stop the runs in flight, resume after a kill records each run once),
submitit's local executor and a SLURM submission against submitit's own mock of sbatch."""
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import grid
import launch
from cli import UserError

REPO = Path(__file__).resolve().parent.parent
WRAPPERS = sorted(p.name for p in REPO.glob("*_exps_*.sh"))
DIGITS = {"about": "a test grid", "main": "forget_full_class_main.py",
          "args": "-net SmallCNN -dataset Digits -classes 10 -b 64", "targets": ["-forget_class 1", "-forget_class 2"],
          "methods": ["baseline", "retrain_full", "lipschitz_forgetting"]}


def _env(**extra):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               WANDB_MODE="disabled", PYTHON=sys.executable)
    for k in ("RESULTS", "ONLY_METHODS", "EXTRA_ARGS", "WEIGHT_PATH"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _describe(proc):
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"


def _records(path):
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _grid_file(tmp_path, **fields):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(dict(DIGITS, **fields)))
    return path


def _grid_cmd(*args):
    return [sys.executable, str(REPO / "grid.py"), *map(str, args)]


def _processes_mentioning(text):
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:  # the process ended meanwhile
            pass
    return found


# ---- the table and its wrappers ----------------------------------------------------------------

def test_every_paper_grid_has_its_two_line_wrapper():
    assert len(grid.GRIDS) == 8
    for name in grid.GRIDS:
        setting, net = name.rsplit("_", 1)
        wrapper = REPO / f"{setting}_exps_{net}.sh"
        assert os.access(wrapper, os.X_OK), wrapper
        lines = wrapper.read_text().splitlines()
        assert len(lines) == 2 and lines[0] == "#!/usr/bin/env bash"
        assert f'grid.py" {name} "$@"' in lines[1]
    assert len(WRAPPERS) == 8


def test_the_table_names_registered_methods_and_every_retrain_method():
    from methods import METHODS, RETRAIN_METHODS

    for g in grid.GRIDS.values():
        assert set(g.methods) <= set(METHODS)
        assert (REPO / g.main).is_file()
        assert set(RETRAIN_METHODS) <= set(g.methods)


def test_runs_put_the_retrains_first_with_the_reference_command(tmp_path):
    g = grid.GRIDS["cifar100_fullclass_vgg"]
    runs = grid.grid_runs(g, 3, "w.pth", "out/r.jsonl", g.methods, ["-data_root", "/d"])
    assert len(runs) == 5 * 12
    stages = [r.stage for r in runs]
    assert stages == sorted(stages) and stages.count(0) == 5 * 2
    assert {r.name.split()[0] for r in runs if r.stage == 0} == {"retrain", "retrain_full"}
    first = runs[0]
    assert first.cmd == (sys.executable, str(REPO / "forget_full_class_main.py"), "-net", "VGG16", "-dataset", "Cifar100",
                         "-classes", "100", "-b", "128", "-method", "retrain", "-forget_class", "rocket", "-data_root",
                         "/d", "-weight_path", "w.pth", "-seed", "3", "-results", "out/r.jsonl", "-skip_existing")
    assert first.log == "out/r-logs/forget_full_class_main-retrain_-forget_class_rocket-seed3.log"
    assert first.gpu_flag == "-gpu"
    assert all(r.log is None for r in grid.grid_runs(g, 3, "w.pth", "r.jsonl", g.methods, console=True))


BAD_ARGS = [(), ("0",), ("gpu0", "1", "w.pth"), ("0", "seed", "w.pth"), ("0", "1", "a", "b")]


# every wrapper once (each forwards the same way), every kind of bad arguments at least once
@pytest.mark.parametrize("script, args", zip(WRAPPERS, BAD_ARGS * 2))
def test_a_wrapper_rejects_bad_arguments_with_usage(script, args):
    proc = subprocess.run(["bash", str(REPO / script), *args], env=_env(WEIGHT_PATH=""), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, _describe(proc)
    assert proc.stderr.startswith("usage:") and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("slots", ["0,", ",1", "0,,1", "gpu0,1", "cpu;cpu"])
def test_a_malformed_device_list_gets_the_usage(slots):
    proc = subprocess.run(_grid_cmd("cifar10_random_vgg", slots, "0", "w.pth"), env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("usage:"), _describe(proc)


def test_a_missing_weight_file_is_named(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "cifar10_random_exps_vgg.sh"), "cpu", "0", str(tmp_path / "nope.pth")],
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr == f"error: weight file not found: {tmp_path / 'nope.pth'}\n"


def _cli(monkeypatch, tmp_path, *args, **env):
    for k in ("RESULTS", "ONLY_METHODS", "EXTRA_ARGS", "WEIGHT_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RESULTS", str(tmp_path / "r.jsonl"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return grid.cli([str(a) for a in args])


def test_an_unknown_method_in_only_methods_stops_the_grid_before_any_run(monkeypatch, tmp_path, capsys):
    (tmp_path / "w.pth").write_bytes(b"")
    rc = _cli(monkeypatch, tmp_path, "cifar10_random_vgg", "cpu,cpu", "0", tmp_path / "w.pth",
              ONLY_METHODS="baseline not_a_method")
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: unknown method(s) in ONLY_METHODS: not_a_method;") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth"]  # no record, no log


@pytest.mark.parametrize("fields, message", [({"methods": ["baseline", "nope"]}, "in grid"),
                                             ({"main": None}, "cannot read grid"), ({"targets": 3}, "cannot read grid"),
                                             ({"targets": [["-forget_class", "1"]]}, "hold strings")])
def test_a_bad_grid_file_is_refused_in_one_line(monkeypatch, tmp_path, capsys, fields, message):
    (tmp_path / "w.pth").write_bytes(b"")
    spec = dict(DIGITS, **fields)
    if fields.get("main", "") is None:
        del spec["main"]
    (tmp_path / "g.json").write_text(json.dumps(spec))
    assert _cli(monkeypatch, tmp_path, tmp_path / "g.json", "cpu", "0", tmp_path / "w.pth") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("flags, message", [(["-executor", "local", "-detach"], "-detach needs -slurm"),
                                            (["-executor", "local", "-partition", "p"], "-partition and -slurm_extra"),
                                            (["-slurm", "-slurm_extra", "account"], "KEY=VALUE")])
def test_launch_flags_that_do_not_fit_are_refused(monkeypatch, tmp_path, capsys, flags, message):
    pytest.importorskip("submitit")
    (tmp_path / "w.pth").write_bytes(b"")
    assert _cli(monkeypatch, tmp_path, "cifar10_random_vgg", "0", tmp_path / "w.pth", *flags) == 2
    assert message in capsys.readouterr().err


# ---- input refused before any run ---------------------------------------------------------------

def _stub_grid(tmp_path, **fields):
    """A grid file whose main exits at once (a run that costs a Python start), and a weight file."""
    (tmp_path / "stub.py").write_text("import sys; sys.exit(0)\n")
    (tmp_path / "w.pth").write_bytes(b"")
    return _grid_file(tmp_path, **{"main": str(tmp_path / "stub.py"), "targets": ["-forget_class 1"],
                                   "methods": ["baseline", "retrain_full"], **fields})


def _refused(capsys, rc, *words):
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert all(w in err for w in words), err


@pytest.mark.parametrize("seed", ["²", "١", "4294967296", "9" * 5000])
def test_a_seed_that_is_not_written_in_0_to_9_within_the_seed_range_gets_the_usage(monkeypatch, tmp_path, capsys,
                                                                                 seed):
    """str.isdigit and int() accept other scripts' digits ('²' then fails in int()) and any
    length (5,000 digits fail in int())."""
    spec = _stub_grid(tmp_path)
    with pytest.raises(SystemExit) as stop:
        _cli(monkeypatch, tmp_path, spec, "cpu", seed, tmp_path / "w.pth")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("usage:") and "SEED must be a whole number in 0..4294967295" in err
    assert err.count("\n") == 1 and not (tmp_path / "r.jsonl").exists()


def test_slurm_on_a_machine_without_slurm_names_the_flag_and_the_local_alternative(monkeypatch, tmp_path, capsys):
    pytest.importorskip("submitit")
    (tmp_path / "w.pth").write_bytes(b"")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here
    rc = _cli(monkeypatch, tmp_path, "cifar10_random_vgg", "0", tmp_path / "w.pth", "-slurm")
    _refused(capsys, rc, "-slurm needs SLURM", "no srun", "drop -slurm", "cpu")


@pytest.mark.parametrize("extra, flag", [("-method retrain", "-method"), ("-forget_class=2", "-forget_class"),
                                         ("-meth retrain", "-meth"), ("-seed 3", "-seed"), ("-b 32", "-b"),
                                         ("-data_root /d -gpu", "-gpu")])
def test_extra_args_cannot_set_a_flag_the_grid_sets(monkeypatch, tmp_path, capsys, extra, flag):
    """Every target or method would become the same run: the mains take a flag's last value
    and accept abbreviations."""
    rc = _cli(monkeypatch, tmp_path, _stub_grid(tmp_path), "cpu", "0", tmp_path / "w.pth", EXTRA_ARGS=extra)
    _refused(capsys, rc, f"EXTRA_ARGS sets {flag},")
    assert not (tmp_path / "r-logs").exists()


def test_results_that_is_not_a_regular_file_is_refused(monkeypatch, tmp_path, capsys):
    spec = _stub_grid(tmp_path)
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    for results in (tmp_path / "folder", tmp_path / "fifo", "/dev/null"):
        _refused(capsys, _cli(monkeypatch, tmp_path, spec, "cpu", "0", tmp_path / "w.pth", RESULTS=str(results)),
                 f"RESULTS {results} is not a regular file")
    _refused(capsys, _cli(monkeypatch, tmp_path, spec, "cpu", "0", tmp_path / "w.pth", RESULTS="a\nb.jsonl"),
             "control character")


def test_a_weight_file_that_is_not_a_regular_file_is_refused(monkeypatch, tmp_path, capsys):
    spec = _stub_grid(tmp_path)
    os.mkfifo(tmp_path / "fifo")  # every run would block opening it
    for weights in (tmp_path, tmp_path / "fifo"):
        _refused(capsys, _cli(monkeypatch, tmp_path, spec, "cpu", "0", weights), f"weight file {weights} is not a "
                                                                                 "regular file")


def test_more_slots_than_the_cores_can_drive_are_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    spec = _stub_grid(tmp_path)
    assert launch.parse_slots("0,0,cpu,cpu") == ["0", "0", "cpu", "cpu"]
    _refused(capsys, _cli(monkeypatch, tmp_path, spec, "cpu,cpu,0,0,1", "0", tmp_path / "w.pth"),
             "5 slots", "at most 4 runs side by side")


def test_a_grid_that_cannot_finish_or_has_no_runs_is_refused(monkeypatch, tmp_path, capsys):
    spec = _stub_grid(tmp_path)
    monkeypatch.setattr(grid, "MAX_RUNS", 1)
    _refused(capsys, _cli(monkeypatch, tmp_path, spec, "cpu", "0", tmp_path / "w.pth"), "has 2 runs; at most 1")
    spec.write_text(json.dumps(json.loads(spec.read_text())) + " " * grid.MAX_GRID_FILE_BYTES)
    _refused(capsys, _cli(monkeypatch, tmp_path, spec, "cpu", "0", tmp_path / "w.pth"), "over 1 MiB")
    for fields, message in (({"targets": []}, "has no runs"), ({"main": "no_such_main.py"}, "is not a file")):
        spec = _stub_grid(tmp_path, **fields)
        _refused(capsys, _cli(monkeypatch, tmp_path, spec, "cpu", "0", tmp_path / "w.pth"), message)
    assert not (tmp_path / "r-logs").exists()


@pytest.mark.parametrize("flags", [["-slurm_extra", "comment=x\nrm -rf ~"], ["-partition", "gpu\necho"],
                                   ["-slurm_extra", "a b=1"]])
def test_a_line_break_cannot_reach_the_sbatch_script(monkeypatch, tmp_path, capsys, flags):
    pytest.importorskip("submitit")
    from submitit.slurm.test_slurm import mocked_slurm

    with mocked_slurm():
        rc = _cli(monkeypatch, tmp_path, _stub_grid(tmp_path), "4", tmp_path / "w.pth", "-slurm", "-detach", *flags)
    _refused(capsys, rc)
    assert not (tmp_path / "r-submitit").exists()


def test_a_submission_sbatch_refuses_stops_the_grid_in_one_line_and_cancels_the_jobs_before_it(
        monkeypatch, tmp_path, capsys):
    pytest.importorskip("submitit")
    from submitit.slurm.test_slurm import mocked_slurm

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "scancel").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'cancelled'}\n")
    (tmp_path / "bin" / "scancel").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with mocked_slurm() as mock:
        accept = mock.sbatch

        def sbatch(args):
            if mock.job_count > 12:  # the first job is queued, the second refused
                raise subprocess.CalledProcessError(1, "sbatch", b"sbatch: error: invalid partition specified: nope")
            return accept(args)
        monkeypatch.setattr(mock, "sbatch", sbatch)
        rc = _cli(monkeypatch, tmp_path, _stub_grid(tmp_path), "4", tmp_path / "w.pth", "-slurm", "-partition", "nope")
    _refused(capsys, rc, "submitting baseline -forget_class 1 failed", "cancelled")
    assert (tmp_path / "cancelled").read_text().split() == ["12"]


def test_a_run_that_cannot_start_is_a_failed_run(tmp_path):
    lines = []
    outcomes = launch.run_grid([launch.Run((str(tmp_path / "no-such-program"),), "gone"),
                                launch.Run(("true",), "fine")], echo=lines.append)
    assert [(o.run.name, o.ok) for o in outcomes] == [("gone", False), ("fine", True)]
    assert outcomes[0].note.startswith("cannot start: ") and any("failed (cannot start: " in line for line in lines)


# ---- run_grid on local slots (tiny Python commands) ------------------------------------------

def _py(code, *args):
    return (sys.executable, "-c", code, *args)


STAMP = "import sys, time; time.sleep(float(sys.argv[2])); open(sys.argv[1], 'a').write(f'{time.time()}\\n')"


def test_run_grid_finishes_a_stage_before_the_next_and_goes_on_after_a_failure(tmp_path):
    first = [launch.Run(_py(STAMP, tmp_path / f"a{i}", "0.3"), f"a{i}", str(tmp_path / f"a{i}.log")) for i in range(3)]
    broken = launch.Run(_py("import sys; print('broken'); sys.exit(3)"), "broken", str(tmp_path / "logs" / "b.log"))
    later = [launch.Run(_py(STAMP, tmp_path / f"b{i}", "0"), f"b{i}", str(tmp_path / f"b{i}.log"), stage=1)
             for i in range(2)]
    lines = []
    outcomes = launch.run_grid(later + [broken] + first, slots=["cpu", "cpu"], echo=lines.append)
    assert len(outcomes) == 6 and [o.ok for o in outcomes].count(False) == 1
    bad = next(o for o in outcomes if not o.ok)
    assert bad.run is broken and bad.returncode == 3
    assert (tmp_path / "logs" / "b.log").read_text() == "broken\n"
    ends = [float((tmp_path / f"a{i}").read_text()) for i in range(3)]
    starts = [float((tmp_path / f"b{i}").read_text()) for i in range(2)]
    assert min(starts) > max(ends)
    assert [line.split("]")[0] for line in lines] == [f"== [{i}/6" for i in range(1, 7)]
    assert any(line.startswith("== [") and "failed (exit 3): broken on cpu" in line and "b.log" in line
               for line in lines)


def test_a_gpu_slot_gets_its_device_and_the_gpu_flag(tmp_path):
    show = "import os, sys; print(os.environ.get('CUDA_VISIBLE_DEVICES'), sys.argv[1:])"
    runs = [launch.Run(_py(show, "x"), "gpu", str(tmp_path / "gpu.log")),
            launch.Run(_py(show, "x"), "cpu", str(tmp_path / "cpu.log"), stage=1)]
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    assert all(o.ok for o in launch.run_grid(runs[:1], slots=["7"], echo=lambda line: None))
    assert all(o.ok for o in launch.run_grid(runs[1:], slots=["cpu"], echo=lambda line: None))
    assert (tmp_path / "gpu.log").read_text() == "7 ['x', '-gpu']\n"
    assert (tmp_path / "cpu.log").read_text() == "None ['x']\n"



def test_gpu_slots_count_within_the_gpus_this_process_was_given(tmp_path, monkeypatch):
    """Under CUDA_VISIBLE_DEVICES=5,7 (a SLURM allocation, say) slot 1 is GPU 7, and a slot 2
    does not exist."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    show = "import os, sys; open(sys.argv[1], 'w').write(os.environ['CUDA_VISIBLE_DEVICES'])"
    runs = [launch.Run(_py(show, tmp_path / "seen"), "gpu", str(tmp_path / "gpu.log"))]
    assert all(o.ok for o in launch.run_grid(runs, slots=launch.parse_slots("1"), echo=lambda line: None))
    assert (tmp_path / "seen").read_text() == "7"
    with pytest.raises(UserError, match="GPU slot 2: CUDA_VISIBLE_DEVICES='5,7' gives this process 2 GPU"):
        launch.parse_slots("0,2")


def test_runs_side_by_side_share_the_cores_out_and_a_users_thread_setting_wins(tmp_path, monkeypatch):
    """Two slots on 4 cores: 2 threads each; one slot: torch's default (no setting); the
    user's OMP_NUM_THREADS is passed on as it is."""
    show = "import os, sys; open(sys.argv[1], 'w').write(str(os.environ.get('OMP_NUM_THREADS')))"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # slots 0-2 name the machine's GPUs

    def threads_seen(slots, n=2):
        runs = [launch.Run(_py(show, tmp_path / f"t{i}"), f"t{i}", str(tmp_path / f"t{i}.log")) for i in range(n)]
        assert all(o.ok for o in launch.run_grid(runs, slots=slots, echo=lambda line: None))
        return {(tmp_path / f"t{i}").read_text() for i in range(n)}

    assert threads_seen(["cpu", "cpu"]) == {"2"}
    assert threads_seen(["0", "1", "2"], n=3) == {"1"}
    assert threads_seen(["cpu"]) == {"None"}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_seen(["cpu", "cpu"]) == {"3"}
    assert launch.threads_per_slot(8) == 1

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_runs_in_flight(tmp_path, signum):
    sleeper = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
    runs = [launch.Run(_py(sleeper, tmp_path / f"pid{i}"), f"s{i}", str(tmp_path / f"s{i}.log")) for i in range(2)]
    runs.append(launch.Run(_py(sleeper, tmp_path / "never"), "later", str(tmp_path / "later.log"), stage=1))

    def send():
        deadline = time.time() + 60
        while not all((tmp_path / f"pid{i}").exists() for i in range(2)) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    before = signal.getsignal(signum)
    threading.Thread(target=send, daemon=True).start()
    t0 = time.time()
    with pytest.raises(launch.Interrupted) as caught:
        launch.run_grid(runs, slots=["cpu", "cpu"], echo=lambda line: None)
    assert caught.value.exit_code == 128 + signum
    assert time.time() - t0 < 30
    for i in range(2):
        with pytest.raises(ProcessLookupError):  # stopped and reaped
            os.kill(int((tmp_path / f"pid{i}").read_text()), 0)
    assert not (tmp_path / "never").exists()
    assert signal.getsignal(signum) == before  # the caller's handler is back


# ---- whole grids of the mains on Digits --------------------------------------------------------

@pytest.mark.slow
def test_a_grid_killed_midway_and_rerun_records_each_run_once(smallcnn_ckpt, tmp_path):
    results = tmp_path / "r.jsonl"
    env = _env(RESULTS=results,
               EXTRA_ARGS=f"-retrain_epochs 1 -n_samples 2 -relearn_max_steps 0 -retrain_dir {tmp_path / 'retrained'}")
    cmd = _grid_cmd(_grid_file(tmp_path, targets=["-forget_class 1"]), "cpu,cpu", "0", smallcnn_ckpt)
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    # the retrain recorded, then both runs of the next stage started: kill them in flight
    logs = [tmp_path / "r-logs" / f"forget_full_class_main-{m}_-forget_class_1-seed0.log"
            for m in ("baseline", "lipschitz_forgetting")]
    deadline = time.time() + 240
    while not (_records(results) and all(p.exists() for p in logs)) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and every run in flight
    proc.wait(30)
    first = _records(results)
    assert [r["method"] for r in first] == ["retrain_full"], "the grid was not killed midway"

    rerun = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, _describe(rerun)
    recs = _records(results)
    assert sorted(r["method"] for r in recs) == ["baseline", "lipschitz_forgetting", "retrain_full"]
    assert all(r["forget"] == "1" for r in recs)
    assert recs[:len(first)] == first  # the rerun only appended
    assert sum("/3] done: " in line for line in rerun.stdout.splitlines()) == 3  # recorded runs exit at once
    # the retrain finished before the others started: every other run found its retrained model
    assert all(r.get("RetrainReference") == "retrain_full" for r in recs if r["method"] != "retrain_full")
    names = sorted(p.name for p in (tmp_path / "r-logs").iterdir())
    assert names == sorted([p.name for p in logs] + ["forget_full_class_main-retrain_full_-forget_class_1-seed0.log"])


@pytest.mark.slow
def test_term_stops_a_one_slot_grid_at_once(smallcnn_ckpt, tmp_path):
    """TERM (kill, timeout, a scheduler) stops the run in flight, not after it."""
    results = tmp_path / "r.jsonl"
    env = _env(RESULTS=results, ONLY_METHODS="retrain_full",
               EXTRA_ARGS=f"-retrain_epochs 50 -relearn_max_steps 0 -retrain_dir {tmp_path}")
    proc = subprocess.Popen(_grid_cmd(_grid_file(tmp_path), "cpu", "0", smallcnn_ckpt), env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("== forget_full_class_main.py -net SmallCNN")
        assert proc.stdout.readline() == "== retrain_full -forget_class 1 on cpu\n"  # its output follows
        time.sleep(3)  # inside the 50-epoch retrain
        t0 = time.time()
        proc.terminate()
        assert proc.wait(30) == 143
        assert time.time() - t0 < 15
    finally:
        proc.kill()
    assert proc.stderr.read().endswith("interrupted: rerun the same command to complete the grid\n")
    assert _records(results) == []
    time.sleep(0.5)
    assert not _processes_mentioning(str(tmp_path)), "a run outlived its grid"


@pytest.mark.slow
def test_a_grid_lists_its_failed_runs_and_finishes_the_rest(smallcnn_ckpt, tmp_path):
    results = tmp_path / "r.jsonl"
    spec = _grid_file(tmp_path, targets=["-forget_class 1", "-forget_class 12"])
    proc = subprocess.run(_grid_cmd(spec, "cpu,cpu", "0", smallcnn_ckpt), capture_output=True, text=True, timeout=300,
                          env=_env(RESULTS=results, ONLY_METHODS="baseline", EXTRA_ARGS="-relearn_max_steps 0"),
                          cwd=tmp_path)
    assert proc.returncode == 1, _describe(proc)
    log = tmp_path / "r-logs" / "forget_full_class_main-baseline_-forget_class_12-seed0.log"
    assert proc.stderr == ("error: 1 run(s) failed (rerun the same command to retry them):\n"
                           f"  baseline -forget_class 12 (exit 2, log {log})\n")
    assert "error:" in log.read_text()
    assert [r["forget"] for r in _records(results)] == ["1"]


@pytest.mark.slow
def test_a_wrapper_resumes_and_records_each_run_once(tmp_path):
    import torch

    from models import VGG16
    from tools.fake_cifar import write_cifar

    write_cifar(tmp_path, "cifar10", train_per_class=20, test_per_class=5)  # 200: forget_perc picks one
    torch.manual_seed(0)
    torch.save(VGG16(10).state_dict(), tmp_path / "vgg16.pth")
    results = tmp_path / "r.jsonl"
    env = dict(RESULTS=results, EXTRA_ARGS=f"-data_root {tmp_path} -relearn_max_steps 0")
    wrapper = str(REPO / "cifar10_random_exps_vgg.sh")
    first = subprocess.run(["bash", wrapper, "cpu", "0", tmp_path / "vgg16.pth"], env=_env(**env, ONLY_METHODS="baseline"),
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, _describe(first)
    # a second pass over more methods, the weights from $WEIGHT_PATH: the recorded baseline is skipped
    second = subprocess.run(["bash", wrapper, "cpu", "0"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env=_env(**env, ONLY_METHODS="baseline lipschitz_forgetting",
                                     WEIGHT_PATH=tmp_path / "vgg16.pth"))
    assert second.returncode == 0, _describe(second)
    assert "skip:" in second.stdout and "== [2/2] done: lipschitz_forgetting -forget_perc 0.00165 on cpu" in second.stdout
    records = _records(results)
    assert sorted(r["method"] for r in records) == ["baseline", "lipschitz_forgetting"]
    # random_split's count: floor(0.33) plus the image rounding leaves over
    assert all(r["net"] == "VGG16" and r["dataset"] == "Cifar10" and r["n_forget"] == 1 for r in records)
    assert all(r["forget"] == 0.00165 and r["seed"] == 0 for r in records)


# ---- submitit ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_grid_runs_through_submitits_local_executor(smallcnn_ckpt, tmp_path):
    pytest.importorskip("submitit")
    results = tmp_path / "r.jsonl"
    spec = _grid_file(tmp_path, targets=["-forget_class 1"], methods=["baseline", "retrain_full"])
    env = _env(RESULTS=results, EXTRA_ARGS=f"-retrain_epochs 1 -relearn_max_steps 0 -retrain_dir {tmp_path / 'rt'}")
    proc = subprocess.run(_grid_cmd(spec, "0", smallcnn_ckpt, "-executor", "local", "-timeout_min", "10"), env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, _describe(proc)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("== [")]
    assert [line.split(":")[1].split(" on job ")[0] for line in lines] == [" retrain_full -forget_class 1",
                                                                           " baseline -forget_class 1"]
    recs = _records(results)
    assert sorted(r["method"] for r in recs) == ["baseline", "retrain_full"]
    assert next(r for r in recs if r["method"] == "baseline")["RetrainReference"] == "retrain_full"
    # submitit's own files per job, the run's output in the grid's log as with local slots
    job_files = sorted(p.name.split("_", 1)[1] for p in (tmp_path / "r-submitit").iterdir())
    assert job_files == sorted(["0_log.err", "0_log.out", "0_result.pkl", "submitted.pkl"] * 2)
    assert "skip:" not in (tmp_path / "r-logs" / "forget_full_class_main-baseline_-forget_class_1-seed0.log").read_text()


def test_slurm_queues_the_other_runs_behind_the_retrains(monkeypatch, tmp_path, capsys):
    pytest.importorskip("submitit")
    from submitit.slurm.test_slurm import mocked_slurm  # submitit's stand-in for sbatch/sacct

    (tmp_path / "w.pth").write_bytes(b"")
    spec = _grid_file(tmp_path, methods=["baseline", "retrain_full"])
    with mocked_slurm():
        rc = _cli(monkeypatch, tmp_path, spec, "4", tmp_path / "w.pth", "-slurm", "-partition", "gpu",
                  "-timeout_min", "90", "-slurm_extra", "account=proj", "-detach")
    assert rc == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "== submitted job 12: retrain_full -forget_class 1" in out
    assert "== submitted job 15: baseline -forget_class 2" in out
    folder = tmp_path / "r-submitit"
    for job in ("12", "13", "14", "15"):
        sbatch = (folder / f"{job}_submission.sh").read_text()
        for line in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--account=proj", "--ntasks-per-node=1"):
            assert f"#SBATCH {line}\n" in sbatch, (job, line)
        assert ("#SBATCH --dependency=afterany:12:13\n" in sbatch) == (job in ("14", "15"))
        with open(folder / f"{job}_submitted.pkl", "rb") as f:
            delayed = pickle.load(f)
        cmd, log, cwd, claim = delayed.args
        assert cmd[-2:] == ["-skip_existing", "-gpu"] and cmd[:2] == [sys.executable, str(REPO / DIGITS["main"])]
        assert ("-seed", "4") == tuple(cmd[cmd.index("-seed"):cmd.index("-seed") + 2])
        assert log.startswith(str(tmp_path / "r-logs" / "forget_full_class_main-"))


def test_one_slurm_executor_serves_several_calls_of_run_grid(tmp_path):
    pytest.importorskip("submitit")
    import argparse

    from submitit.slurm.test_slurm import mocked_slurm

    p = argparse.ArgumentParser()
    launch.add_launch_flags(p)
    with mocked_slurm():
        executor = launch.executor_from_flags(p.parse_args(["-slurm"]), tmp_path / "jobs", "t")
        runs = [launch.Run(("true",), "a"), launch.Run(("true",), "b", stage=1)]
        first = launch.run_grid(runs, executor=executor, detach=True, echo=lambda line: None)
        again = launch.run_grid(runs[:1], executor=executor, detach=True, echo=lambda line: None)
    assert [o.where for o in first + again] == ["job 12", "job 13", "job 14"]
    assert "--dependency=afterany:12\n" in (tmp_path / "jobs" / "13_submission.sh").read_text()
    assert "--dependency" not in (tmp_path / "jobs" / "14_submission.sh").read_text()


# ---- submit_pretrain.py ------------------------------------------------------------------------

def test_a_requeued_pretraining_resumes_from_its_saved_state(tmp_path):
    pytest.importorskip("submitit")
    import submit_pretrain

    flags = ["-net", "SmallCNN", "-dataset", "Digits", "-classes", "10", "-out", "w/m.pth", "-resume", "old.pth"]
    job = submit_pretrain.PretrainJob(flags, str(tmp_path))
    assert job.checkpoint().function.flags == flags[:-2]  # nothing saved yet: start again
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "m-resume.pth").write_bytes(b"")
    again = job.checkpoint().function
    assert again.flags == flags[:-2] + ["-resume", str(tmp_path / "w" / "m-resume.pth")] and again.cwd == str(tmp_path)


@pytest.mark.parametrize("flags, message", [(["-tasks_per_node", "3", "-out", "m.pth"], "does not split evenly over 3"),
                                            ([], "give -out")])
def test_submit_pretrain_refuses_bad_flags_before_submitting(monkeypatch, tmp_path, capsys, flags, message):
    pytest.importorskip("submitit")
    import submit_pretrain

    monkeypatch.chdir(tmp_path)
    argv = ["-executor", "local", "-gpus_per_node", "0", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
            "-b", "64", *flags]
    assert submit_pretrain.cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing submitted


@pytest.mark.slow
def test_submit_pretrain_runs_a_two_process_job_on_the_local_executor(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "ddp.pth"
    proc = subprocess.run([sys.executable, str(REPO / "submit_pretrain.py"), "-executor", "local", "-gpus_per_node", "0",
                           "-tasks_per_node", "2", "-wait", "-timeout_min", "10", "-net", "SmallCNN", "-dataset", "Digits",
                           "-classes", "10", "-epochs", "1", "-out", out], env=_env(), cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, _describe(proc)
    assert out.is_file() and (tmp_path / "ddp-resume.pth").is_file()
    logs = tmp_path / "ddp-submitit"
    rank0 = next(logs.glob("*_0_log.out")).read_text()
    assert "2 process(es) x 32 images per step (64 in all)" in rank0 and "epoch 1/1" in rank0
    assert "epoch 1/1" not in next(logs.glob("*_1_log.out")).read_text()  # rank 1 trains silently
