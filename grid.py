"""The paper's experiment grids as data, and the runner that works through one of them.

    python grid.py cifar100_fullclass_vgg 0,1,2,3 SEED WEIGHTS   one run per GPU at a time
    python grid.py cifar100_fullclass_vgg cpu,cpu SEED WEIGHTS   two runs side by side on the CPU
    python grid.py cifar100_fullclass_vgg SEED WEIGHTS -slurm -partition P -gpus_per_job 1 -timeout_min 600
    ./cifar100_fullclass_exps_vgg.sh 0 SEED WEIGHTS               the same as the first, by the reference's name

A grid is every target x every method of one setting, net and data set, for one seed; each run
is one call of a forget_*_main.py. The retrain runs go first and finish before the others
start, so that every other run finds the retrained model it is compared with. Runs already
recorded in RESULTS exit at once (the mains' -skip_existing), so an interrupted grid is
completed by running the same command again; a run writes its record in one piece at its end.
Runs side by side share the cores out (OMP_NUM_THREADS, unless it is set).

Environment: RESULTS (default results/results.jsonl) is the file every run appends to;
ONLY_METHODS="a b" runs these methods instead of the grid's; EXTRA_ARGS="-data_root /data" is
added to every run (split like a shell line); WEIGHT_PATH stands for the last argument.

Other commands spread their own runs over the same slots or cluster with ``run_grid``
(``Run`` is one command and its log) and ``add_launch_flags`` / ``executor_from_flags``.
This module needs only the standard library (submitit for -slurm / -executor local), so grids
can be submitted from a machine without torch.
"""
import argparse
import copy
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from registry import RETRAIN_METHODS  # torch-free: the runs' order is known without loading a method

REPO = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Grid:
    """One grid: ``main`` with the fixed flags ``args``, for every target x method. A target
    is the flags that pick what is forgotten ("-forget_class rocket")."""
    about: str
    main: str
    args: str
    targets: tuple
    methods: tuple


def _forget_classes(*names):
    return tuple(f"-forget_class {n}" for n in names)


CIFAR100_CLASSES = _forget_classes("rocket", "mushroom", "baby", "lamp", "sea")
CIFAR20_CLASSES = _forget_classes("vehicle2", "veg", "people", "electrical_devices", "natural_scenes")
FULLCLASS_METHODS = ("baseline", "retrain", "retrain_full", "finetune", "blindspot", "amnesiac", "UNSIR",
                     "ssd_tuning", "lipschitz_forgetting", "scrub", "gkt", "emmn")
SUBCLASS_METHODS = ("baseline", "retrain", "retrain_full", "finetune", "blindspot", "amnesiac", "UNSIR",
                    "FisherForgetting", "ssd_tuning", "lipschitz_forgetting", "scrub")
RANDOM_METHODS = ("baseline", "retrain", "retrain_full", "finetune", "blindspot", "amnesiac", "FisherForgetting",
                  "ssd_tuning", "lfssd_tuning", "lipschitz_forgetting", "scrub")
FULL, SUB, RANDOM = "forget_full_class_main.py", "forget_sub_class_main.py", "forget_random_main.py"

# name -> grid; each has a wrapper <setting>_exps_<net>.sh named as in the reference.
GRIDS = {
    "cifar100_fullclass_vgg": Grid("CIFAR-100 full-class forgetting, VGG16 trained on Cifar100 (100 classes)",
                                   FULL, "-net VGG16 -dataset Cifar100 -classes 100 -b 128",
                                   CIFAR100_CLASSES, FULLCLASS_METHODS),
    "cifar100_fullclass_vit": Grid("CIFAR-100 full-class forgetting, ViT trained on Cifar100 (100 classes)",
                                   FULL, "-net ViT -dataset Cifar100 -classes 100 -b 128",
                                   CIFAR100_CLASSES, FULLCLASS_METHODS),
    "cifar20_fullclass_vgg": Grid("CIFAR-20 full-class forgetting, VGG16 trained on Cifar20 (20 classes)",
                                  FULL, "-net VGG16 -dataset Cifar20 -classes 20 -b 128",
                                  CIFAR20_CLASSES, FULLCLASS_METHODS),
    "cifar20_fullclass_vit": Grid("CIFAR-20 full-class forgetting, ViT trained on Cifar20 (20 classes)",
                                  FULL, "-net ViT -dataset Cifar20 -classes 20 -b 128",
                                  CIFAR20_CLASSES, FULLCLASS_METHODS),
    "cifar20_subclass_vgg": Grid("CIFAR-20 sub-class forgetting, VGG16 trained on Cifar20 (20 classes)",
                                 SUB, "-net VGG16 -dataset Cifar20 -superclasses 20 -subclasses 100 -b 64",
                                 CIFAR100_CLASSES, SUBCLASS_METHODS),
    "cifar20_subclass_vit": Grid("CIFAR-20 sub-class forgetting, ViT trained on Cifar20 (20 classes)",
                                 SUB, "-net ViT -dataset Cifar20 -superclasses 20 -subclasses 100 -b 64",
                                 CIFAR100_CLASSES, SUBCLASS_METHODS),
    "cifar10_random_vgg": Grid("CIFAR-10 random forgetting (0.165% of the training set, ~83 images), VGG16 "
                               "trained on Cifar10", RANDOM, "-net VGG16 -dataset Cifar10 -classes 10 -b 128",
                               ("-forget_perc 0.00165",), RANDOM_METHODS),
    "cifar10_random_vit": Grid("CIFAR-10 random forgetting (0.165% of the training set, ~83 images), ViT "
                               "trained on Cifar10", RANDOM, "-net ViT -dataset Cifar10 -classes 10 -b 128",
                               ("-forget_perc 0.00165",), RANDOM_METHODS),
}


class GridError(Exception):
    """Bad input: one line and exit status 2."""


class Interrupted(Exception):
    """INT or TERM arrived; the runs in flight have been stopped."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum  # 130 for INT, 143 for TERM, as a shell reports them


@dataclasses.dataclass(frozen=True)
class Run:
    """One command to run. ``log``: the file its output is appended to (None: the console, or
    submitit's own log for a job). Runs of a later ``stage`` start only once every run of the
    earlier stages has finished. ``gpu_flag`` is added to the command when the run gets a GPU."""
    cmd: tuple
    name: str
    log: Optional[str] = None
    stage: int = 0
    gpu_flag: Optional[str] = "-gpu"


@dataclasses.dataclass
class Outcome:
    run: Run
    returncode: Optional[int]  # None: no exit status (a job lost, cancelled, or not waited for)
    where: str                 # the slot, or the job id
    seconds: float
    note: str = ""             # what happened to a job without an exit status

    @property
    def ok(self):
        return self.returncode == 0


# ---- running: local slots or submitit ---------------------------------------------------------

SLOTS = re.compile(r"(cpu|[0-9]+)(,(cpu|[0-9]+))*")


def parse_slots(text):
    """"0,1,3" -> ["0", "1", "3"]: one run at a time per entry; "cpu" entries run on the CPU."""
    if not SLOTS.fullmatch(text):
        raise GridError(f"bad device list {text!r}: GPU indices and/or cpu, comma-separated (0,1 or cpu,cpu)")
    return text.split(",")


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


def threads_per_slot(n_slots):
    """CPU threads for each of ``n_slots`` runs side by side: the cores this process may use,
    shared out. Each torch process otherwise starts one thread per core, and runs that
    oversubscribe the cores spin against each other: two default runs on 2 cores took twice as
    long as the same two with one thread each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, n_slots))


def _start(run, slot, n_slots=1):
    cmd, env = list(run.cmd), dict(os.environ)
    if n_slots > 1 and "OMP_NUM_THREADS" not in env:  # the user's own setting wins
        env["OMP_NUM_THREADS"] = str(threads_per_slot(n_slots))
    if slot != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = slot
        if run.gpu_flag:
            cmd.append(run.gpu_flag)
    if run.log is None:
        return subprocess.Popen(cmd, env=env)
    os.makedirs(os.path.dirname(os.path.abspath(run.log)), exist_ok=True)
    with open(run.log, "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop(procs, grace_s=10.0):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _run_slots(runs, slots, echo, sig, outcomes):
    total = len(runs)
    for stage in sorted({r.stage for r in runs}):
        queue = [r for r in runs if r.stage == stage]
        busy = {}  # slot index -> (run, process, start time)
        try:
            while queue or busy:
                sig.check()
                for i, slot in enumerate(slots):
                    if queue and i not in busy:
                        run = queue.pop(0)
                        if run.log is None:  # its output follows on the console
                            echo(f"== {run.name} on {slot}")
                        busy[i] = (run, _start(run, slot, len(slots)), time.time())
                time.sleep(0.05)
                for i, (run, proc, t0) in list(busy.items()):
                    if proc.poll() is not None:
                        del busy[i]
                        outcomes.append(Outcome(run, proc.returncode, slots[i], time.time() - t0))
                        _progress(echo, outcomes[-1], len(outcomes), total)
        finally:
            _stop([proc for _, proc, _ in busy.values()])


def _run_job(cmd, log, cwd):
    """The body of one submitit job: run ``cmd`` (its output into ``log``), return its exit status."""
    out = open(log, "ab") if log else None
    try:
        return subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None).returncode
    finally:
        if out:
            out.close()


def _job_outcome(run, job, t0):
    try:
        rc, note = job.result(), ""
    except Exception as e:  # noqa: BLE001 - a lost or cancelled job is a failed run, reported in a line
        rc, note = None, f"job {job.job_id}: {(str(e).strip().splitlines() or [type(e).__name__])[-1][:200]}"
    return Outcome(run, rc, f"job {job.job_id}", time.time() - t0, note)


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
                job = executor.submit(_run_job, cmd, run.log, os.getcwd())
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
            deadline = time.time() + 15  # a local job takes a second to stop its run
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
    returns right after submitting. A failed run does not stop the others. INT or TERM
    stops (or cancels) the runs in flight and raises Interrupted. One line per finished run
    goes to ``echo`` (print by default).
    """
    echo = echo or (lambda line: print(line, flush=True))
    runs = list(runs)
    if detach and (executor is None or executor.cluster != "slurm"):
        raise GridError("-detach needs -slurm (other runners stay to order the stages)")
    outcomes = []
    with _Signals() as sig:
        if executor is None:
            _run_slots(runs, list(slots), echo, sig, outcomes)
        else:
            _run_submitit(runs, executor, job_gpus, detach, echo, sig, outcomes)
    return outcomes


def _export_repo_path():
    # A job unpickles the function it runs by reference when it comes from an imported module
    # (grid, submit_pretrain): the job's python must find the project's modules, wherever it starts.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *paths])


def add_launch_flags(p, executors=("slots", "local", "slurm"), default="slots", detach=True):
    """The flags that pick where runs go: local slots, submitit's local executor, or SLURM."""
    what = {"slots": "slots: processes on this machine", "slurm": "slurm: SLURM jobs through submitit",
            "local": "local: submitit's LocalExecutor (a check of the submission path)"}
    g = p.add_argument_group("where the runs go")
    g.add_argument("-executor", choices=executors, default=default, help="; ".join(what[e] for e in executors))
    g.add_argument("-slurm", dest="executor", action="store_const", const="slurm", help="the same as -executor slurm")
    g.add_argument("-partition", help="SLURM partition")
    g.add_argument("-timeout_min", type=int, default=1440, help="time limit of a job, minutes")
    g.add_argument("-cpus_per_task", type=int, default=None, help="CPU cores per task (SLURM's default if unset)")
    g.add_argument("-mem_gb", type=float, default=None, help="memory per node, GB (SLURM's default if unset)")
    g.add_argument("-job_dir", default=None,
                   help="submitit's folder: job scripts, pickles, logs (unset: beside the results or the weights)")
    g.add_argument("-slurm_extra", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. account=proj or qos=high (repeatable)")
    if detach:
        g.add_argument("-detach", action="store_true", help="SLURM: submit every job (later stages queued behind "
                                                            "the earlier ones) and return without waiting")
    return g


def executor_from_flags(args, job_dir, name, nodes=1, gpus_per_node=0, tasks_per_node=1):
    """A submitit executor configured from add_launch_flags' flags; None for -executor slots."""
    if args.executor == "slots":
        return None
    try:
        import submitit  # only here: the machines that run the mains need not have it
    except ImportError:
        raise GridError(f"-executor {args.executor} needs submitit: pip install submitit") from None
    extra = {}
    for item in args.slurm_extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GridError(f"-slurm_extra wants KEY=VALUE, not {item!r}")
        extra[key] = value
    if args.timeout_min < 1 or (args.cpus_per_task is not None and args.cpus_per_task < 1) or \
            (args.mem_gb is not None and not args.mem_gb > 0) or gpus_per_node < 0:
        raise GridError("-timeout_min and -cpus_per_task must be >= 1, -mem_gb > 0, GPU counts >= 0")
    _export_repo_path()
    executor = submitit.AutoExecutor(folder=args.job_dir or job_dir, cluster=args.executor)
    params = dict(name=name, timeout_min=args.timeout_min, nodes=nodes, gpus_per_node=gpus_per_node,
                  tasks_per_node=tasks_per_node, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb)
    if args.executor == "slurm":
        params.update(slurm_partition=args.partition, slurm_additional_parameters=extra or None)
    elif args.partition or extra:
        raise GridError("-partition and -slurm_extra are for -slurm")
    executor.update_parameters(**params)
    return executor


# ---- the command line -------------------------------------------------------------------------

USAGE = "usage: grid.py NAME GPU[,GPU...]|cpu[,cpu...] SEED [WEIGHT_PATH]  (or $WEIGHT_PATH; -h for -slurm)"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; each flag's default where it has one."""

    def _get_help_string(self, action):
        unset = action.default is None or action.default is False or action.default == [] or \
            action.default is argparse.SUPPRESS or not action.option_strings
        return action.help if unset or "%(default)" in action.help else f"{action.help} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{USAGE}: {message}\n")


def load_grid(name):
    """A grid of GRIDS, or a JSON file holding the fields of Grid (main relative to the repository)."""
    if name in GRIDS:
        return GRIDS[name]
    if name.endswith(".json") and os.path.isfile(name):
        try:
            with open(name) as f:
                fields = json.load(f)
            g = Grid(about=fields.get("about", name), main=fields["main"], args=fields.get("args", ""),
                     targets=tuple(fields["targets"]), methods=tuple(fields["methods"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise GridError(f"cannot read grid {name}: {type(e).__name__} {e}") from None
        if not all(isinstance(v, str) for v in (g.main, g.args, *g.targets, *g.methods)):
            raise GridError(f"cannot read grid {name}: main, args, targets and methods hold strings")
        return g
    raise GridError(f"unknown grid {name!r}; known: {', '.join(GRIDS)} (or a .json file)")


def check_methods(names, source="ONLY_METHODS"):
    """Unknown method names -> GridError. The table's names are known without importing the
    methods (a test checks them against the registry); any other name is looked up there."""
    known = {m for g in GRIDS.values() for m in g.methods}
    other = [m for m in names if m not in known]
    if not other:
        return
    try:
        from methods import METHODS  # the registry: torch and every baseline, so only when needed
    except ImportError as e:
        raise GridError(f"cannot check the method names {' '.join(other)}: {e}") from None
    unknown = [m for m in other if m not in METHODS]
    if unknown:
        raise GridError(f"unknown method(s) in {source}: {' '.join(unknown)}; registered: {' '.join(sorted(METHODS))}")


def grid_runs(grid, seed, weights, results, methods, extra=(), console=False):
    """The runs of ``grid``: the retrain methods as stage 0, the rest as stage 1. ``console``:
    no log files (one run at a time, its output on the console)."""
    logs = os.path.splitext(results)[0] + "-logs"
    stem = Path(grid.main).stem
    runs = []
    for target in grid.targets:
        for method in methods:
            job = re.sub(r"[^A-Za-z0-9._-]", "_", f"{method}|{target}")
            cmd = (sys.executable, str(REPO / grid.main), *grid.args.split(), "-method", method, *target.split(),
                   *extra, "-weight_path", weights, "-seed", str(seed), "-results", results, "-skip_existing")
            log = None if console else os.path.join(logs, f"{stem}-{job}-seed{seed}.log")
            runs.append(Run(cmd, f"{method} {target}", log, stage=0 if method in RETRAIN_METHODS else 1))
    return sorted(runs, key=lambda r: r.stage)


def parse_args(argv):
    epilog = "grids:\n" + "\n".join(f"  {k:24} {g.about}" for k, g in GRIDS.items())
    usage = ("grid.py NAME GPU[,GPU...]|cpu[,cpu...] SEED [WEIGHT_PATH] [flags]\n"
             "       grid.py NAME SEED [WEIGHT_PATH] -slurm|-executor local [flags]")
    p = _Parser(prog="grid.py", usage=usage, description=__doc__.split("\n\nOther commands")[0], epilog=epilog,
                formatter_class=_HelpFormatter)
    p.add_argument("grid", help="a grid name (below) or a .json file with the fields of grid.Grid")
    p.add_argument("where", nargs="*", metavar="[SLOTS] SEED [WEIGHT_PATH]",
                   help="SLOTS (local runs only): GPU indices and/or cpu, comma-separated")
    add_launch_flags(p).add_argument("-gpus_per_job", type=int, default=None,
                                     help="GPUs per job (default: 1 with -slurm, 0 with -executor local)")
    args = p.parse_intermixed_args(argv)
    local = args.executor == "slots"
    where = list(args.where)
    if not (2 if local else 1) <= len(where) <= (3 if local else 2):
        p.error("wrong number of arguments")
    if local and not SLOTS.fullmatch(where[0]):
        p.error(f"bad device list {where[0]!r}")
    args.slots = parse_slots(where.pop(0)) if local else None
    args.seed = where.pop(0)
    if not args.seed.isdigit():
        p.error(f"SEED must be a whole number, not {args.seed!r}")
    args.weights = where.pop(0) if where else os.environ.get("WEIGHT_PATH", "")
    if not args.weights:
        p.error("no weight file given")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    grid = load_grid(args.grid)
    if not os.path.isfile(args.weights):
        raise GridError(f"weight file not found: {args.weights}")
    only = os.environ.get("ONLY_METHODS", "").replace(",", " ").split()
    methods = only or list(grid.methods)
    check_methods(methods, "ONLY_METHODS" if only else f"grid {args.grid}")
    try:
        extra = shlex.split(os.environ.get("EXTRA_ARGS", ""))
    except ValueError as e:
        raise GridError(f"EXTRA_ARGS: {e}") from None
    results = os.environ.get("RESULTS") or "results/results.jsonl"
    stem = os.path.splitext(results)[0]
    console = args.slots is not None and len(args.slots) == 1
    runs = grid_runs(grid, int(args.seed), args.weights, results, methods, extra, console=console)
    executor = executor_from_flags(args, stem + "-submitit", f"{Path(args.grid).stem}-seed{args.seed}",
                                   gpus_per_node=0 if args.executor == "slots" else _job_gpus(args))
    n_first = sum(r.stage == 0 for r in runs)
    on = ",".join(args.slots) if executor is None else f"{args.executor} jobs (submitit folder {executor.folder})"
    print(f"== {grid.main} {grid.args} seed {args.seed}: {len(runs)} runs ({n_first} retrain first) on {on}"
          + ("" if console else f", logs in {stem}-logs/"), flush=True)
    outcomes = run_grid(runs, args.slots or (), executor, job_gpus=_job_gpus(args), detach=args.detach)
    failed = [o for o in outcomes if not o.ok and o.note != "submitted"]
    if failed:
        print(f"error: {len(failed)} run(s) failed (rerun the same command to retry them):", file=sys.stderr)
        for o in failed:
            why = f"exit {o.returncode}" if o.returncode is not None else o.note
            print(f"  {o.run.name} ({why}{f', log {o.run.log}' if o.run.log else ''})", file=sys.stderr)
        return 1
    return 0


def _job_gpus(args):
    # a SLURM job gets one GPU unless told otherwise; a local submitit job runs where it is
    return args.gpus_per_job if args.gpus_per_job is not None else (1 if args.executor == "slurm" else 0)


def cli(argv=None):
    try:
        return main(argv)
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print("interrupted: rerun the same command to complete the grid", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(cli())
