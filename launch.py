"""Launching runs: one command per run, on this machine's slots (GPU indices or cpu, one run
per slot at a time) or as submitit jobs (SLURM, or submitit's local executor).

grid.py, forgetting_quality.py and submit_pretrain.py share it: ``Run`` is one command and its
log, ``run_grid`` runs a list of them and returns one ``Outcome`` each, ``add_launch_flags`` and
``executor_from_flags`` give a command the same -slurm flags.

One run gives one record whatever the user does:
- a run with a ``claim`` holds an exclusive lock on that file for as long as its process lives
  (the process inherits the locked descriptor), so the same run started by a second grid, or
  by a rerun while the first copy is still going, waits for it and then finds it recorded;
- a run on a local slot dies with the process that started it (Linux: a parent-death signal),
  so ``kill -9`` of a grid leaves no run behind to finish later beside the rerun's copy;
- a run is the leader of its own process group: Ctrl-C at a terminal reaches the grid alone,
  which then stops each run with everything the run started.

Only the standard library is imported (submitit when an executor is asked for), so that runs
can be launched from a machine without torch.
"""
import argparse
import copy
import dataclasses
import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from cli import UserError, float_above, int_in

REPO = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Run:
    """One command to run. ``log``: the file its output is appended to (None: the console, or
    submitit's own log for a job). Runs of a later ``stage`` start only once every run of the
    earlier stages has finished. ``gpu_flag`` is added to the command when the run gets a GPU.
    ``claim``: a lock file that names the run; two runs with the same claim never run at once,
    whichever processes launched them."""
    cmd: tuple
    name: str
    log: Optional[str] = None
    stage: int = 0
    gpu_flag: Optional[str] = "-gpu"
    claim: Optional[str] = None


@dataclasses.dataclass
class Outcome:
    run: Run
    returncode: Optional[int]  # None: no exit status (not started, a job lost or cancelled, or not waited for)
    where: str                 # the slot, or the job id
    seconds: float
    note: str = ""             # what happened to a run without an exit status

    @property
    def ok(self):
        return self.returncode == 0


class Interrupted(Exception):
    """INT or TERM arrived; the runs in flight have been stopped."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum  # 130 for INT, 143 for TERM, as a shell reports them


# ---- slots --------------------------------------------------------------------------------------

SLOTS = re.compile(r"(cpu|[0-9]+)(,(cpu|[0-9]+))*")  # [0-9], not \d: only ASCII digits name a GPU
SLOTS_PER_CORE = 4


def usable_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def visible_gpus():
    """The GPUs this process was given, as CUDA_VISIBLE_DEVICES lists them (a SLURM allocation,
    or the user's own choice); None: every GPU of the machine."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if text is None else [g.strip() for g in text.split(",") if g.strip()]


def parse_slots(text):
    """"0,1,3" -> ["0", "1", "3"]: one run at a time per entry; "cpu" entries run on the CPU.
    GPU slots count from 0 within the GPUs this process was given. Every run is a process that
    needs a core to drive it (a GPU run too), so more than SLOTS_PER_CORE slots per usable core
    is refused: those runs would only wait on each other."""
    if not SLOTS.fullmatch(text):
        raise UserError(f"bad device list {text[:80]!r}: GPU indices and/or cpu, comma-separated (0,1 or cpu,cpu)")
    slots = text.split(",")
    gpus = visible_gpus()
    beyond = [s for s in slots if s != "cpu" and gpus is not None and int(s) >= len(gpus)]
    if beyond:
        raise UserError(f"GPU slot {beyond[0]}: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} gives "
                        f"this process {len(gpus)} GPU(s), slots 0..{len(gpus) - 1}")
    most = SLOTS_PER_CORE * usable_cores()
    if len(slots) > most:
        raise UserError(f"{len(slots)} slots, but this machine gives {usable_cores()} core(s): at most {most} "
                        f"runs side by side ({SLOTS_PER_CORE} per core)")
    return slots


def threads_per_slot(n_slots):
    """CPU threads for each of ``n_slots`` runs side by side: the cores this process may use,
    shared out. Each torch process otherwise starts one thread per core, and runs that
    oversubscribe the cores spin against each other: two default runs on 2 cores took twice as
    long as the same two with one thread each."""
    return max(1, usable_cores() // max(1, n_slots))


# ---- one run's process: its claim, its process group, its death with the launcher -------------

def _try_claim(path):
    """An open descriptor holding an exclusive lock on ``path``; None while another process
    holds it. flock locks belong to the open file, so a child that inherits the descriptor
    keeps the lock after this process has closed its copy, or died."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _prctl():
    """libc's prctl on Linux, None elsewhere (there a run outlives a killed launcher, and its
    claim keeps a rerun's copy waiting until it ends)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


PR_SET_DEATHSIG = 1  # linux/prctl.h


def _child_setup(prctl, parent):
    """Runs in the child between fork and exec. The parent-death signal belongs to the thread
    that forked, so a launcher must start its runs from a thread that outlives them."""
    os.setpgid(0, 0)
    if prctl is not None:
        prctl(PR_SET_DEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the launcher died before the signal was armed
            os._exit(1)


def _popen(cmd, claim_fd=None, **kwargs):
    """Start ``cmd`` as a run: its own process group, killed when this process dies, holding
    the claim ``claim_fd`` (closed here once the child has its copy)."""
    prctl, parent = _prctl(), os.getpid()
    try:
        return subprocess.Popen(cmd, preexec_fn=lambda: _child_setup(prctl, parent),
                                pass_fds=() if claim_fd is None else (claim_fd,), **kwargs)
    finally:
        if claim_fd is not None:
            os.close(claim_fd)


def _start(run, slot, n_slots=1, claim_fd=None):
    cmd, env = list(run.cmd), dict(os.environ)
    if n_slots > 1 and "OMP_NUM_THREADS" not in env:  # the user's own setting wins
        env["OMP_NUM_THREADS"] = str(threads_per_slot(n_slots))
    if slot != "cpu":
        gpus = visible_gpus()
        env["CUDA_VISIBLE_DEVICES"] = slot if gpus is None else gpus[int(slot)]
        if run.gpu_flag:
            cmd.append(run.gpu_flag)
    if run.log is None:
        return _popen(cmd, claim_fd, env=env, stdin=subprocess.DEVNULL)
    os.makedirs(os.path.dirname(os.path.abspath(run.log)), exist_ok=True)
    with open(run.log, "ab") as log:
        return _popen(cmd, claim_fd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop(procs, grace_s=10.0):
    """TERM each run's process group (the run and whatever it started), KILL what is left after
    ``grace_s``."""
    def signal_group(p, signum):
        try:
            os.killpg(p.pid, signum)
        except ProcessLookupError:
            pass

    for p in procs:
        if p.poll() is None:
            signal_group(p, signal.SIGTERM)
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            signal_group(p, signal.SIGKILL)
            p.wait()


# ---- running: local slots or submitit ---------------------------------------------------------

class _Signals:
    """INT and TERM set a flag that the wait loops check, so a signal never lands between
    starting a run and noting it (the run would outlive the grid)."""

    def __enter__(self):
        self.caught, self.old = None, {}
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.signal(s, self._catch) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _catch(self, signum, frame):
        self.caught = self.caught or signum

    def check(self):
        if self.caught:
            raise Interrupted(self.caught)

    def __exit__(self, *exc):
        for s, handler in self.old.items():
            signal.signal(s, handler)


def _progress(echo, outcome, i, total):
    what = "done" if outcome.ok else (f"failed (exit {outcome.returncode})" if outcome.returncode is not None
                                      else f"failed ({outcome.note})")
    log = f" (log {outcome.run.log})" if outcome.run.log and not outcome.ok else ""
    echo(f"== [{i}/{total}] {what}: {outcome.run.name} on {outcome.where}, {outcome.seconds:.0f} s{log}")


def _next_claimed(queue, echo, waiting):
    """Take the first run of ``queue`` that is not running elsewhere: (run, claim descriptor
    or None), or None when every queued run is held by another process."""
    for run in queue:
        fd = None
        if run.claim is not None:
            fd = _try_claim(run.claim)
            if fd is None:
                if run not in waiting:
                    waiting.add(run)
                    echo(f"== waiting: {run.name} is running in another process (claim {run.claim})")
                continue
        queue.remove(run)
        return run, fd
    return None


def _run_slots(runs, slots, echo, sig, outcomes):
    total, waiting = len(runs), set()
    for stage in sorted({r.stage for r in runs}):
        queue = [r for r in runs if r.stage == stage]
        busy = {}  # slot index -> (run, process, start time)
        try:
            while queue or busy:
                sig.check()
                for i, slot in enumerate(slots):
                    if i in busy or not queue:
                        continue
                    claimed = _next_claimed(queue, echo, waiting)
                    if claimed is None:
                        break
                    run, fd = claimed
                    if run.log is None:  # its output follows on the console
                        echo(f"== {run.name} on {slot}")
                    try:
                        busy[i] = (run, _start(run, slot, len(slots), fd), time.time())
                    except OSError as e:  # a command too long, an interpreter gone: that run fails
                        outcomes.append(Outcome(run, None, slot, 0.0, f"cannot start: {e.strerror or e}"))
                        _progress(echo, outcomes[-1], len(outcomes), total)
                time.sleep(0.05)
                for i, (run, proc, t0) in list(busy.items()):
                    if proc.poll() is not None:
                        del busy[i]
                        outcomes.append(Outcome(run, proc.returncode, slots[i], time.time() - t0))
                        _progress(echo, outcomes[-1], len(outcomes), total)
        finally:
            _stop([proc for _, proc, _ in busy.values()])


def _run_job(cmd, log, cwd, claim):
    """The body of one submitit job: wait for the run's claim, run ``cmd`` (its output into
    ``log``), return its exit status."""
    fd = None
    if claim is not None:
        os.makedirs(os.path.dirname(claim), exist_ok=True)
        fd = os.open(claim, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # the same run in another job or grid: wait for it to end
    out = open(log, "ab") if log else None
    try:
        proc = _popen(cmd, fd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None)
        return proc.wait()
    finally:
        if out:
            out.close()


def _job_outcome(run, job, t0):
    try:
        rc, note = job.result(), ""
    except Exception as e:  # noqa: BLE001 - a lost or cancelled job is a failed run, reported in a line
        rc, note = None, f"job {job.job_id}: {_last_line(e)}"
    return Outcome(run, rc, f"job {job.job_id}", time.time() - t0, note)


def _last_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[-1][:200]


def _run_submitit(runs, executor, job_gpus, detach, echo, sig, outcomes):
    slurm = executor.cluster == "slurm"
    if slurm:  # the dependencies set below stay on this call's copy
        executor = copy.deepcopy(executor)
    total, pending, ids = len(runs), [], []
    for folder in {os.path.dirname(os.path.abspath(r.log)) for r in runs if r.log}:
        os.makedirs(folder, exist_ok=True)
    try:
        for stage in sorted({r.stage for r in runs}):
            if slurm and ids:
                # queued at once, started by SLURM once every earlier job has ended (however it ended)
                executor.update_parameters(slurm_dependency="afterany:" + ":".join(ids))
            elif pending:
                _wait_jobs(pending, echo, sig, outcomes, total)
            for run in (r for r in runs if r.stage == stage):
                sig.check()
                cmd = list(run.cmd) + ([run.gpu_flag] if job_gpus and run.gpu_flag else [])
                claim = os.path.abspath(run.claim) if run.claim else None
                try:
                    job = executor.submit(_run_job, cmd, run.log, os.getcwd(), claim)
                except Exception as e:  # noqa: BLE001 - sbatch refused it: a bad partition, account or option
                    raise UserError(f"submitting {run.name} failed ({_last_line(e)}); the jobs submitted "
                                    f"before it are cancelled") from None
                ids.append(str(job.job_id))
                pending.append((run, job, time.time()))
                if detach:
                    echo(f"== submitted job {job.job_id}: {run.name}")
        if detach:
            outcomes.extend(Outcome(r, None, f"job {j.job_id}", 0.0, "submitted") for r, j, _ in pending)
            pending = []
            return
        _wait_jobs(pending, echo, sig, outcomes, total)
    finally:
        if pending:
            for _, job, _ in pending:
                job.cancel(check=False)
            # a local job takes a second to stop its run; SLURM's jobs are the scheduler's to end
            deadline = time.time() + (0 if slurm else 15)
            while time.time() < deadline and not all(job.done() for _, job, _ in pending):
                time.sleep(0.2)


def _wait_jobs(pending, echo, sig, outcomes, total):
    while pending:
        sig.check()
        time.sleep(0.5)
        for item in list(pending):
            run, job, t0 = item
            if job.done():
                pending.remove(item)
                outcomes.append(_job_outcome(run, job, t0))
                _progress(echo, outcomes[-1], len(outcomes), total)


def run_grid(runs, slots=("cpu",), executor=None, job_gpus=0, detach=False, echo=None):
    """Run ``runs`` (Run objects) and return one Outcome each, in the order they finished.

    Without ``executor``: on this machine, one run per entry of ``slots`` at a time ("cpu" or a
    GPU index, given to the run as CUDA_VISIBLE_DEVICES with the run's gpu_flag). With a
    submitit ``executor`` (``executor_from_flags``): one job per run, ``job_gpus`` GPUs each;
    on SLURM the later stages are queued at once behind the earlier ones, and ``detach``
    returns right after submitting. A run whose claim another process holds waits for it. A
    failed run does not stop the others. INT or TERM stops (or cancels) the runs in flight and
    raises Interrupted. One line per finished run goes to ``echo`` (print by default).
    """
    echo = echo or (lambda line: print(line, flush=True))
    runs = list(runs)
    if detach and (executor is None or executor.cluster != "slurm"):
        raise UserError("-detach needs -slurm (other runners stay to order the stages)")
    outcomes = []
    with _Signals() as sig:
        if executor is None:
            _run_slots(runs, list(slots), echo, sig, outcomes)
        else:
            _run_submitit(runs, executor, job_gpus, detach, echo, sig, outcomes)
    return outcomes


# ---- the launch flags and the executor they configure -----------------------------------------

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; each flag's default where it has one."""

    def _get_help_string(self, action):
        unset = action.default is None or action.default is False or action.default == [] or \
            action.default is argparse.SUPPRESS or not action.option_strings
        return action.help if unset or "%(default)" in action.help else f"{action.help} (default: %(default)s)"


def add_launch_flags(p, executors=("slots", "local", "slurm"), default="slots", detach=True):
    """The flags that pick where runs go: local slots, submitit's local executor, or SLURM."""
    what = {"slots": "slots: processes on this machine", "slurm": "slurm: SLURM jobs through submitit",
            "local": "local: submitit's LocalExecutor (a check of the submission path)"}
    g = p.add_argument_group("where the runs go")
    g.add_argument("-executor", choices=executors, default=default, help="; ".join(what[e] for e in executors))
    g.add_argument("-slurm", dest="executor", action="store_const", const="slurm", help="the same as -executor slurm")
    g.add_argument("-partition", help="SLURM partition")
    g.add_argument("-timeout_min", type=int_in(1), default=1440, help="time limit of a job, minutes")
    g.add_argument("-cpus_per_task", type=int_in(1), default=None, help="CPU cores per task (SLURM's default if unset)")
    g.add_argument("-mem_gb", type=float_above(0), default=None, help="memory per node, GB (SLURM's default if unset)")
    g.add_argument("-job_dir", default=None,
                   help="submitit's folder: job scripts, pickles, logs (unset: beside the results or the weights)")
    g.add_argument("-slurm_extra", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. account=proj or qos=high (repeatable)")
    if detach:
        g.add_argument("-detach", action="store_true", help="SLURM: submit every job (later stages queued behind "
                                                            "the earlier ones) and return without waiting")
    return g


def _export_repo_path():
    # A job unpickles the function it runs by reference when it comes from an imported module
    # (launch, submit_pretrain): the job's python must find the project's modules, wherever it starts.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *paths])


def _printable(text, what):
    """sbatch reads its options from the lines of a script: a line break in one would start a
    command of its own."""
    if any(ord(c) < 32 or ord(c) == 127 for c in str(text)):
        raise UserError(f"{what} {str(text)!r} holds a control character (a line break, a tab, ...)")
    return text


def executor_from_flags(args, job_dir, name, nodes=1, gpus_per_node=0, tasks_per_node=1):
    """A submitit executor configured from add_launch_flags' flags; None for -executor slots."""
    if args.executor == "slots":
        return None
    try:
        import submitit  # only here: the machines that run the mains need not have it
    except ImportError:
        raise UserError(f"-executor {args.executor} needs submitit: pip install submitit") from None
    extra = {}
    for item in args.slurm_extra:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise UserError(f"-slurm_extra wants KEY=VALUE (an sbatch option name, then its value), not {item!r}")
        extra[key] = _printable(value, "-slurm_extra")
    if gpus_per_node < 0:
        raise UserError(f"GPUs per job must be >= 0, not {gpus_per_node}")
    folder = _printable(args.job_dir or job_dir, "the submitit folder")
    _printable(args.partition or "", "-partition")
    if args.executor != "slurm" and (args.partition or extra):
        raise UserError("-partition and -slurm_extra are for -slurm")
    if args.executor == "slurm" and submitit.SlurmExecutor.affinity() <= 0:
        raise UserError("-slurm needs SLURM, and this machine has no srun: submit from a SLURM login node, "
                        "or drop -slurm to run on this machine (GPU or cpu slots, e.g. 0,1 or cpu)")
    _export_repo_path()
    executor = submitit.AutoExecutor(folder=folder, cluster=args.executor)
    params = dict(name=re.sub(r"[^A-Za-z0-9._-]", "_", name), timeout_min=args.timeout_min, nodes=nodes,
                  gpus_per_node=gpus_per_node, tasks_per_node=tasks_per_node, cpus_per_task=args.cpus_per_task,
                  mem_gb=args.mem_gb)
    if args.executor == "slurm":
        params.update(slurm_partition=args.partition, slurm_additional_parameters=extra or None)
    executor.update_parameters(**params)
    return executor
