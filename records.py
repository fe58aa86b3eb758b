"""Run records: what identifies a run (RunIdentity) and which runs are compared with each other
(its target), the code version, and writing one record (a JSON line in -results, mirrored to
Weights & Biases when asked). Imports no torch."""
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

from cli import UserError
from hparams import RECIPES
from utils import append_record, read_records

# Flags that do not change what a run computes; every other flag is part of its identity.
NOT_IDENTITY = {"results", "wandb", "workers", "skip_existing", "gpu", "data_root", "retrain_dir"}

# The flags that decide which images a run forgets and retains, and what it is compared with:
# runs that agree on all of them (and on the setting) form one target. They are compared with one
# another and with a retrained model of the same target. The recipe is one of them: it sets the
# split flags' defaults and every method's hyperparameters. The split flags, unset (None), take
# the recipe's value.
TARGET_FLAGS = ("dataset", "net", "forget_class", "forget_perc", "seed", "recipe", "split_draw", "pins_split")
DEFAULT_RECIPE = RECIPES[0]

_REPO = os.path.dirname(os.path.abspath(__file__))
_VERSION = []


def _text(value):
    """A flag's value as the identity holds it: text, a tuple written as the list a JSON record
    gives back, so that a run and its record have the same identity."""
    return str(list(value)) if isinstance(value, (list, tuple)) else str(value)


@dataclass(frozen=True)
class RunIdentity:
    """What makes two runs the same run: the setting and every flag that can change the result
    (all but NOT_IDENTITY), as (name, text) pairs sorted by name. Built by ``run_identity`` for a
    run about to start and by ``record_identity`` for a recorded one."""
    setting: Optional[str]
    flags: Tuple[Tuple[str, str], ...]

    def flag(self, name):
        """The flag's value as text; None where the run has no such flag or left it unset."""
        value = dict(self.flags).get(name)
        return None if value == "None" else value

    def target(self):
        """(name, value) pairs of the run's target: the setting, data set, net, forget target
        (class or fraction), seed, recipe (a record without one ran the default recipe) and
        split flags. Runs of one target share their forget set."""
        values = {n: self.flag(n) for n in TARGET_FLAGS if n not in ("forget_class", "forget_perc")}
        values["recipe"] = values["recipe"] or DEFAULT_RECIPE
        forget = self.flag("forget_class") or self.flag("forget_perc")
        return (("setting", self.setting), ("forget", forget), *values.items())

    def digest(self, *extra):
        """Ten hex digits of SHA-1 over the identity (and ``extra``, e.g. a model seed)."""
        key = (self.setting, self.flags, *extra)
        return hashlib.sha1(repr(key).encode()).hexdigest()[:10]


def run_identity(setting, args):
    """The identity of a run of ``setting`` with flags ``args`` (a namespace or a dict)."""
    flags = args if isinstance(args, dict) else vars(args)
    return RunIdentity(setting, tuple(sorted((k, _text(v)) for k, v in flags.items() if k not in NOT_IDENTITY)))


def record_identity(record):
    """The identity of the run that wrote ``record``; None for a line that is no run's record."""
    if not isinstance(record, dict) or not isinstance(record.get("args"), dict):
        return None
    return run_identity(record.get("setting"), record["args"])


def recorded(args, setting):
    """The record of this exact run (same setting and result-changing flags) in -results, or None."""
    identity = run_identity(setting, args)
    return next((r for r in read_records(args.results) if record_identity(r) == identity), None)


def code_version():
    """{'commit': the checkout's git commit or None, 'dirty': tracked files differ from it}."""
    if not _VERSION:
        def git(*cmd):
            return subprocess.run(["git", "-C", _REPO, *cmd], capture_output=True, text=True, timeout=10,
                                  check=False)
        try:
            head = git("rev-parse", "HEAD")
            status = git("status", "--porcelain", "--untracked-files=no")
            ok = head.returncode == 0 and status.returncode == 0
            _VERSION.append({"commit": head.stdout.strip() if ok else None,
                             "dirty": bool(status.stdout.strip()) if ok else None})
        except (OSError, subprocess.SubprocessError):
            _VERSION.append({"commit": None, "dirty": None})
    return dict(_VERSION[0])


def write(args, record):
    """Append ``record`` to -results (or, if that fails at the end of a run, to a fallback file
    that a warning names) and mirror it to wandb when -wandb asks for it. Returns the path
    written."""
    path = append_record(args.results, record)
    mirror_to_wandb(args, record, path)
    return path


def mirror_to_wandb(args, record, path):
    """The record, as a wandb run. The run already succeeded and is on disk: a wandb failure
    (no key, no network) is one warning line, never an error."""
    if args.wandb == "disabled":
        return
    try:
        import wandb
    except ImportError:
        raise UserError("-wandb online/offline needs the wandb package (pip install wandb)") from None
    name = f"{record['setting']}-{record['dataset']}-{record['net']}-{record['method']}-{record['forget']}-s{record['seed']}"
    try:
        run = wandb.init(project="jit-unlearning", mode=args.wandb, config=record["args"], name=name)
        run.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        run.finish()
    except Exception as e:  # noqa: BLE001 - any wandb failure leaves the record on disk intact
        first = (str(e).splitlines() or [""])[0]
        print(f"warning: the record is in {path}, but mirroring it to wandb failed: "
              f"{type(e).__name__}: {first}", file=sys.stderr)
