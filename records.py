"""Run records: what identifies a run (RunIdentity) and which runs are compared with each other
(record_target), the code version, and record I/O: checking a results file before any work,
appending one record (a strict-JSON line in -results, mirrored to Weights & Biases when asked)
and reading them back. Imports no torch."""
import datetime
import fcntl
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from cli import UserError
from hparams import RECIPES
from utils import check_writable

# Flags that say where and how a run is carried out, never what it computes (forgetting_quality.py's
# methods list, cache folder and slots included: one method's score does not change with them);
# every other flag is part of a run's identity.
NOT_IDENTITY = {"results", "wandb", "workers", "skip_existing", "gpu", "data_root", "retrain_dir",
                "methods", "fq_cache", "slots", "retrain_only"}

# The data pipeline's choices (datasets.DataHP) that are not part of a target: SSD and LF-SSD
# alone read importance_order, so runs that differ in it forget, retain and are scored on the same
# images and share a retrained model.
NOT_TARGET_DATA = ("importance_order",)
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

    def digest(self, *extra):
        """Ten hex digits of SHA-1 over the identity (and ``extra``, e.g. a model seed)."""
        key = (self.setting, self.flags, *extra)
        return hashlib.sha1(repr(key).encode()).hexdigest()[:10]


def recipe_of(record):
    """The -recipe a record ran; one that names none ran the default recipe. Forgetting-quality
    records hold it in their flags only."""
    flags = record.get("args") if isinstance(record.get("args"), dict) else {}
    return record.get("recipe") or flags.get("recipe") or DEFAULT_RECIPE


def record_target(record):
    """The target of the run that wrote ``record`` (a dict, or the fields a run is about to
    record): which runs are compared with one another and with one retrained model. Runs of one
    target forget, retain and are scored on the same images: the same setting, data set, net,
    forget target (class or fraction), seed, recipe and resolved data pipeline (the record's
    ``pipeline``, but for NOT_TARGET_DATA; None in a record written before it was recorded).
    (name, text) pairs; the mains, forgetting_quality.py, report.py and sweep.py all key on it."""
    pipe = record.get("pipeline")
    if isinstance(pipe, dict):
        pipe = tuple(sorted((k, _text(v)) for k, v in pipe.items() if k not in NOT_TARGET_DATA))
    else:
        pipe = None
    return (("setting", record.get("setting")), ("dataset", record.get("dataset")), ("net", record.get("net")),
            ("forget", _text(record.get("forget"))), ("seed", _text(record.get("seed"))),
            ("recipe", recipe_of(record)), ("pipeline", pipe))


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


# ---- record I/O: one strict-JSON line per run, appended under a lock --------------------------

def check_results_path(path, flag="-results"):
    """check_writable, and an existing non-empty file must already be JSON lines: records are
    never appended into a checkpoint, an image or any other file named by mistake."""
    check_writable(path, flag)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb") as f:
        head = f.read(65536)
    binary = b"\0" in head
    if binary or head.lstrip()[:1] not in (b"{", b""):
        why = "binary data" if binary else "its first line is not a JSON object"
        raise UserError(f"{flag} {path} exists and is not a JSON-lines results file ({why}); name another file")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end of the chunk
            raise UserError(f"{flag} {path} exists and is not a JSON-lines results file (not UTF-8 text); "
                            f"name another file") from None


def json_safe(obj):
    """``obj`` with every non-finite float (NaN, ±inf) replaced by None, numpy scalars and
    arrays turned into Python values, tuples into lists: what strict JSON can hold. In the
    records, null stands for "not a number" (or not measured)."""
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # a 0-d tensor
        return json_safe(obj.item())
    return str(obj)


def record_line(record):
    """One record as a strict-JSON line (no NaN/Infinity tokens: non-finite floats are null)."""
    return json.dumps(json_safe(record), allow_nan=False) + "\n"


def _append_line(path, line):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            # a part of the line may be there (a full disk): take it back, best effort
            try:
                if os.path.isfile(path):
                    os.ftruncate(fd, size)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)  # releases the lock


def _fallback_paths(path):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"unsaved-record-{os.path.splitext(os.path.basename(path) or 'results')[0]}-{stamp}-{os.getpid()}.jsonl"
    return [os.path.join(os.getcwd(), name), os.path.join(tempfile.gettempdir(), name)]


def append_record(path, record):
    """Append one record to ``path`` as one strict-JSON line (see record_line); return the
    path it was written to.

    A whole line or nothing, never over what is there: the file is opened in append mode and
    held under an exclusive lock (``flock``) while the line is written, so concurrent writers
    (a grid on several GPUs) never interleave. If a writer was killed inside a write and left a
    torn last line, the new line starts on a line of its own (``read_records`` skips the torn
    one). If ``path`` cannot be written at the end of a run (a full disk, a folder gone
    read-only), the run is not lost: the record goes to a file in the working folder (else in
    the temporary folder) and one warning line says where."""
    line = record_line(record).encode()
    try:
        _append_line(path, line)
        return path
    except OSError as e:
        first = e
    tried = []
    for fallback in _fallback_paths(path):
        try:
            _append_line(fallback, line)
        except OSError as e:
            tried.append(f"{fallback}: {e.strerror}")
            continue
        print(f"warning: cannot append to {path} ({first.strerror or first}); the record was written to "
              f"{fallback} instead (append it with: cat {fallback} >> {path})", file=sys.stderr)
        return fallback
    raise UserError(f"cannot append to {path} ({first.strerror or first}) nor write a fallback file "
                    f"({'; '.join(tried)}); the record was: {line.decode().strip()}")


def _not_a_number(name):
    return None  # NaN, Infinity, -Infinity (a non-strict writer's tokens): null, as the strict writer records them


def parse_lines(data):
    """The one JSON-lines parser: for each non-blank line of ``data`` (a results file's bytes),
    (line number, record, None), or (line number, None, why) for a line that is not UTF-8 text
    or not JSON (a torn last line, a stray note). Never raises."""
    for i, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            yield i, json.loads(raw.decode("utf-8"), parse_constant=_not_a_number), None
        except UnicodeDecodeError:
            yield i, None, "not UTF-8 text"
        except (ValueError, RecursionError):
            yield i, None, "not JSON"


def read_records(path):
    """All whole JSON lines of a results file (a torn last line, or any line that is not
    JSON, is skipped; bytes that are not UTF-8 never raise)."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        return [r for _, r, why in parse_lines(f.read()) if why is None]
