"""The paper's experiment grids as data, and the command that runs one of them through launch.py.

    python grid.py cifar100_fullclass_vgg 0,1,2,3 SEED WEIGHTS   one run per GPU at a time
    python grid.py cifar100_fullclass_vgg cpu,cpu SEED WEIGHTS   two runs side by side on the CPU
    python grid.py cifar100_fullclass_vgg SEED WEIGHTS -slurm -partition P -gpus_per_job 1 -timeout_min 600
    ./cifar100_fullclass_exps_vgg.sh 0 SEED WEIGHTS               the same as the first, by the authors' name

A grid is every target x every method of one setting, net and data set, for one seed; each run
is one call of a forget_*_main.py. The retrain runs go first and finish before the others
start, so that every other run finds the retrained model it is compared with. Runs already
recorded in RESULTS exit at once (the mains' -skip_existing), so an interrupted grid is
completed by running the same command again; a run writes its record in one piece at its end.
A run holds a claim file while it runs, so the same run started twice (two grids, or a rerun
beside a grid still going) runs once. Runs side by side share the cores out (OMP_NUM_THREADS,
unless it is set).

Environment: RESULTS (default results/results.jsonl) is the file every run appends to;
ONLY_METHODS="a b" runs these methods instead of the grid's; EXTRA_ARGS="-data_root /data" is
added to every run (split like a shell line; it cannot set a flag the grid sets); WEIGHT_PATH
stands for the last argument.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import re
import shlex
import stat
import sys
from pathlib import Path

from cli import SEED_MAX, UserError, exit_status, int_in
from launch import (
    REPO,
    SLOTS,
    HelpFormatter,
    Interrupted,
    Run,
    add_launch_flags,
    executor_from_flags,
    parse_slots,
    run_grid,
)
from registry import RETRAIN_METHODS  # torch-free: the runs' order is known without loading a method


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

# The paper's settings; each is run on both nets. A Grid without its net: (about, main, args, targets, methods).
SETTINGS = {
    "cifar100_fullclass": ("CIFAR-100 full-class forgetting", "forget_full_class_main.py",
                           "-dataset Cifar100 -classes 100 -b 128", CIFAR100_CLASSES, FULLCLASS_METHODS),
    "cifar20_fullclass": ("CIFAR-20 full-class forgetting", "forget_full_class_main.py",
                          "-dataset Cifar20 -classes 20 -b 128", CIFAR20_CLASSES, FULLCLASS_METHODS),
    "cifar20_subclass": ("CIFAR-20 sub-class forgetting", "forget_sub_class_main.py",
                         "-dataset Cifar20 -superclasses 20 -subclasses 100 -b 64", CIFAR100_CLASSES, SUBCLASS_METHODS),
    "cifar10_random": ("CIFAR-10 random forgetting (0.165% of the training set, ~83 images)", "forget_random_main.py",
                       "-dataset Cifar10 -classes 10 -b 128", ("-forget_perc 0.00165",), RANDOM_METHODS),
}
NETS = {"vgg": "VGG16", "vit": "ViT"}

# name -> grid; each has a wrapper <setting>_exps_<net>.sh named as the authors' scripts.
GRIDS = {f"{setting}_{short}": Grid(f"{about}, {net}", main, f"-net {net} {args}", targets, methods)
         for setting, (about, main, args, targets, methods) in SETTINGS.items() for short, net in NETS.items()}

# A grid file is a few lines, and a grid's runs take minutes each: a bigger one cannot finish.
MAX_GRID_FILE_BYTES = 1 << 20
MAX_RUNS = 10_000


def load_grid(name):
    """A grid of GRIDS, or a JSON file holding the fields of Grid (main relative to the repository)."""
    if name in GRIDS:
        return GRIDS[name]
    if not (name.endswith(".json") and os.path.isfile(name)):
        raise UserError(f"unknown grid {name[:200]!r}; known: {', '.join(GRIDS)} (or a .json file)")
    if os.path.getsize(name) > MAX_GRID_FILE_BYTES:
        raise UserError(f"grid file {name} is over {MAX_GRID_FILE_BYTES >> 20} MiB: not a grid")
    try:
        with open(name) as f:
            fields = json.load(f)
        g = Grid(about=fields.get("about", name), main=fields["main"], args=fields.get("args", ""),
                 targets=tuple(fields["targets"]), methods=tuple(fields["methods"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"cannot read grid {name}: {type(e).__name__} {e}") from None
    if not all(isinstance(v, str) for v in (g.main, g.args, *g.targets, *g.methods)):
        raise UserError(f"cannot read grid {name}: main, args, targets and methods hold strings")
    if not (g.targets and g.methods):
        raise UserError(f"grid {name} has no runs: give at least one target and one method")
    if not (REPO / g.main).is_file():
        raise UserError(f"grid {name}: main {g.main!r} is not a file of the repository ({REPO})")
    return g


def check_methods(names, source="ONLY_METHODS"):
    """Unknown method names -> UserError. The table's names are known without importing the
    methods (a test checks them against the registry); any other name is looked up there."""
    known = {m for g in GRIDS.values() for m in g.methods}
    other = [m for m in names if m not in known]
    if not other:
        return
    try:
        from methods import METHODS  # the registry: torch and every baseline, so only when needed
    except ImportError as e:
        raise UserError(f"cannot check the method names {' '.join(other)}: {e}") from None
    unknown = [m for m in other if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) in {source}: {' '.join(unknown)}; registered: {' '.join(sorted(METHODS))}")


def grid_runs(grid, seed, weights, results, methods, extra=(), console=False):
    """The runs of ``grid``, each once: the retrain methods as stage 0, the rest as stage 1.
    ``console``: no log files (one run at a time, its output on the console). A run's claim
    file is named by its whole command, beside RESULTS."""
    stem = os.path.splitext(results)[0]
    main = Path(grid.main).stem
    runs = []
    for target in dict.fromkeys(grid.targets):
        for method in dict.fromkeys(methods):
            job = re.sub(r"[^A-Za-z0-9._-]", "_", f"{method}|{target}")
            flags = (*grid.args.split(), "-method", method, *target.split(), *extra, "-weight_path", weights,
                     "-seed", str(seed), "-results", results, "-skip_existing")
            key = hashlib.sha256("\0".join((grid.main, *flags)).encode()).hexdigest()[:16]
            runs.append(Run((sys.executable, str(REPO / grid.main), *flags), f"{method} {target}",
                            None if console else os.path.join(f"{stem}-logs", f"{main}-{job}-seed{seed}.log"),
                            stage=0 if method in RETRAIN_METHODS else 1,
                            claim=os.path.join(f"{stem}-claims", f"{main}-{job}-seed{seed}-{key}")))
    return sorted(runs, key=lambda r: r.stage)


# ---- the command line -------------------------------------------------------------------------

USAGE = "usage: grid.py NAME GPU[,GPU...]|cpu[,cpu...] SEED [WEIGHT_PATH]  (or $WEIGHT_PATH; -h for -slurm)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{USAGE}: {message}\n")


def parse_args(argv):
    epilog = "grids:\n" + "\n".join(f"  {k:24} {g.about}" for k, g in GRIDS.items())
    usage = ("grid.py NAME GPU[,GPU...]|cpu[,cpu...] SEED [WEIGHT_PATH] [flags]\n"
             "       grid.py NAME SEED [WEIGHT_PATH] -slurm|-executor local [flags]")
    p = _Parser(prog="grid.py", usage=usage, description=__doc__, epilog=epilog, formatter_class=HelpFormatter)
    p.add_argument("grid", help="a grid name (below) or a .json file with the fields of grid.Grid")
    p.add_argument("where", nargs="*", metavar="[SLOTS] SEED [WEIGHT_PATH]",
                   help="SLOTS (local runs only): GPU indices and/or cpu, comma-separated")
    add_launch_flags(p).add_argument("-gpus_per_job", type=int_in(0), default=None,
                                     help="GPUs per job (default: 1 with -slurm, 0 with -executor local)")
    args = p.parse_intermixed_args(argv)
    local = args.executor == "slots"
    where = list(args.where)
    if not (2 if local else 1) <= len(where) <= (3 if local else 2):
        p.error("wrong number of arguments")
    if local and not SLOTS.fullmatch(where[0]):
        p.error(f"bad device list {where[0][:80]!r}")
    args.slots = where.pop(0) if local else None
    seed = where.pop(0)
    # str.isdigit and int() take other scripts' digits ('١', '²'): a seed is written in 0-9
    if not re.fullmatch(r"[0-9]{1,10}", seed) or int(seed) > SEED_MAX:
        p.error(f"SEED must be a whole number in 0..{SEED_MAX}, written with the digits 0-9, not {seed[:40]!r}")
    args.seed = int(seed)
    args.weights = where.pop(0) if where else os.environ.get("WEIGHT_PATH", "")
    if not args.weights:
        p.error("no weight file given")
    return args


def check_weights(path):
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise UserError(f"weight file not found: {path}" if isinstance(e, FileNotFoundError)
                        else f"weight file {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):  # a folder, or a FIFO that every run would block on
        raise UserError(f"weight file {path} is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise UserError(f"weight file {path} cannot be read: {e.strerror}") from None


def results_path():
    """RESULTS: the records file of every run, and the stem of the grid's logs, claims and
    submitit folders beside it."""
    results = os.environ.get("RESULTS") or "results/results.jsonl"
    if any(ord(c) < 32 for c in results):
        raise UserError(f"RESULTS {results!r} holds a control character")
    if os.path.exists(results) and not os.path.isfile(results):  # a folder, a FIFO, /dev/null
        raise UserError(f"RESULTS {results} is not a regular file: name a .jsonl file (new or holding records)")
    return results


def grid_flags(grid):
    """The flags the grid sets itself, for each run or for all."""
    fixed = {"-method", "-weight_path", "-seed", "-results", "-skip_existing", "-gpu"}
    return fixed | {t.split("=")[0] for text in (grid.args, *grid.targets) for t in text.split() if t.startswith("-")}


def extra_args(grid):
    """EXTRA_ARGS, split as a shell would. A flag of the grid's own given again would take
    over in every run (the mains take the last value, and accept abbreviations): every target
    or method would become the same run."""
    try:
        extra = shlex.split(os.environ.get("EXTRA_ARGS", ""))
    except ValueError as e:
        raise UserError(f"EXTRA_ARGS: {e}") from None
    taken = grid_flags(grid)
    for token in extra:
        name = token.split("=")[0]
        if re.fullmatch(r"-[A-Za-z_][A-Za-z0-9_]*", name) and any(f.startswith(name) for f in taken):
            clash = sorted(f for f in taken if f.startswith(name))
            raise UserError(f"EXTRA_ARGS sets {name}, but the grid sets {' '.join(clash)} itself "
                            f"(ONLY_METHODS picks methods; a grid file, see -h, changes the rest)")
    return extra


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    grid = load_grid(args.grid)
    check_weights(args.weights)
    slots = parse_slots(args.slots) if args.slots is not None else None
    only = os.environ.get("ONLY_METHODS", "").replace(",", " ").split()
    methods = only or list(grid.methods)
    check_methods(methods, "ONLY_METHODS" if only else f"grid {args.grid}")
    n_runs = len(set(grid.targets)) * len(set(methods))
    if n_runs > MAX_RUNS:
        raise UserError(f"grid {args.grid} has {n_runs} runs; at most {MAX_RUNS} (split it into several grids)")
    extra = extra_args(grid)
    results = results_path()
    stem = os.path.splitext(results)[0]
    console = slots is not None and len(slots) == 1
    runs = grid_runs(grid, args.seed, args.weights, results, methods, extra, console=console)
    executor = executor_from_flags(args, stem + "-submitit", f"{Path(args.grid).stem}-seed{args.seed}",
                                   gpus_per_node=0 if args.executor == "slots" else _job_gpus(args))
    claims = os.path.dirname(runs[0].claim)
    try:
        os.makedirs(claims, exist_ok=True)
    except OSError as e:
        raise UserError(f"RESULTS {results}: cannot make the folder {claims}: {e.strerror}") from None
    n_first = sum(r.stage == 0 for r in runs)
    on = ",".join(slots) if executor is None else f"{args.executor} jobs (submitit folder {executor.folder})"
    print(f"== {grid.main} {grid.args} seed {args.seed}: {len(runs)} runs ({n_first} retrain first) on {on}"
          + ("" if console else f", logs in {stem}-logs/"), flush=True)
    outcomes = run_grid(runs, slots or (), executor, job_gpus=_job_gpus(args), detach=args.detach)
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
        return exit_status(main, argv)
    except Interrupted as e:
        print("interrupted: rerun the same command to complete the grid", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(cli())
