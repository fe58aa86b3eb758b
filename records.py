"""Run records: what identifies a run, the code version, and writing one record (a JSON line in
-results, mirrored to Weights & Biases when asked). Imports no torch."""
import os
import subprocess
import sys

from cli import UserError
from utils import append_record, read_records

# Flags that do not change what a run computes; every other flag is part of its identity.
NOT_IDENTITY = {"results", "wandb", "workers", "skip_existing", "gpu", "data_root", "retrain_dir"}

_REPO = os.path.dirname(os.path.abspath(__file__))
_VERSION = []


def run_identity(setting, args_dict):
    """What makes two runs the same run (for -skip_existing): the setting and every flag
    that can change the result."""
    return (setting, tuple(sorted((k, str(v)) for k, v in args_dict.items() if k not in NOT_IDENTITY)))


def recorded(args, setting):
    """The record of this exact run (same setting and result-changing flags) in -results, or None."""
    identity = run_identity(setting, vars(args))
    return next((r for r in read_records(args.results)
                 if isinstance(r, dict) and isinstance(r.get("args"), dict)
                 and run_identity(r.get("setting"), r["args"]) == identity), None)


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
