"""Small shared pieces: device, seeds, checkpoints, writable-path checks and result records.

torch is imported inside the functions that need it, so that modules which only read records
(report.py) import without torch installed."""
import datetime
import errno
import fcntl
import json
import math
import os
import pickle
import platform
import random
import sys
import tempfile
from importlib import metadata

import numpy as np

from cli import SEED_MAX, UserError


def progress_bar(iterable, desc, enabled=True):
    """A tqdm bar on a terminal; silent when output is redirected (logs stay readable)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, disable=None if enabled else True, mininterval=0.5)


def resolve_device(use_gpu):
    """One device decided once. ``-gpu`` with no CUDA is an error, not a silent CPU run.
    Which GPU is chosen by CUDA_VISIBLE_DEVICES, as in the reference's grid scripts."""
    import torch

    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("-gpu given but no CUDA device is available (drop -gpu to run on the CPU)")
    return torch.device("cuda")


def seed_everything(seed):
    import torch

    if not 0 <= seed <= SEED_MAX:
        raise UserError(f"-seed must be an integer in 0..{SEED_MAX} (got {seed})")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def non_finite_tensors(state):
    """Names of the floating-point tensors of a state dict holding a NaN or an infinity."""
    import torch

    return [k for k, t in state.items() if torch.is_tensor(t) and (t.is_floating_point() or t.is_complex())
            and not torch.isfinite(t).all()]


def load_weights(model, path, net, classes):
    """Load a plain state dict with ``weights_only=True`` (a pickle that carries code is
    refused, never executed) and ``strict=True``. Weights holding NaN or inf are refused:
    any run from them would be noise, and its record would blame the method."""
    import torch

    if not path:
        raise UserError("-weight_path is required (a state dict saved by pretrain_model.py)")
    if not os.path.isfile(path):
        raise UserError(f"weight file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg or "GLOBAL" in msg:
            what = next((ln.strip() for ln in msg.splitlines() if "GLOBAL" in ln), "").split(" was ")[0]
            raise UserError(f"refusing {path}: it holds Python objects beyond tensors, and loading it "
                            f"could run code ({what.replace('WeightsUnpickler error: ', '')})") from None
        raise UserError(f"cannot read weight file {path}: not a PyTorch checkpoint") from None
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"cannot read weight file {path}: {type(e).__name__}: {first}") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path} is not a plain state dict (name -> tensor)")
    bad = non_finite_tensors(state)
    if bad:
        raise UserError(f"refusing {path}: {len(bad)} tensor(s) hold NaN or inf values (first {bad[0]}); "
                        f"a model with non-finite weights cannot be evaluated or unlearned")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        if len(detail) > 300:
            detail = detail[:300] + "..."
        raise UserError(f"{path} does not fit -net {net} with {classes} classes: {detail}") from None
    return model


def atomic_save(obj, path):
    """torch.save to a temporary file in the target folder, then rename: a crash never
    leaves a half-written checkpoint under the final name. A failed write (a full disk) is
    an OSError."""
    import torch

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            # torch's zip writer reports a failed write (a full disk) as a RuntimeError
            st = os.statvfs(folder)
            if st.f_bavail * st.f_frsize < 2 ** 20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from None
            raise OSError(errno.EIO, f"writing failed ({str(e).splitlines()[0]})", path) from None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---- output paths checked before any work ------------------------------------------------

def check_writable(path, flag):
    """Raise UserError (one line naming ``flag``) unless ``path`` can be written as a file:
    not empty, not a directory, under folders that exist or can be created, and actually
    writable. Called before any work, so a run never computes for an hour and then fails on
    its output. Writability is tested by opening (an existing file, for appending, without
    changing it) or by creating and removing a probe file in the nearest existing folder:
    permission bits alone say nothing for root or on a read-only mount."""
    if path is None or not str(path).strip():
        raise UserError(f"{flag} is empty: give a file path")
    path = os.fspath(path)
    if path.endswith(("/", os.sep)):
        raise UserError(f"{flag} {path} names a folder: give a file path")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a directory: give a file path")
    if os.path.lexists(path):
        if not os.path.exists(path):
            raise UserError(f"{flag} {path} is a broken symbolic link")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        except OSError as e:
            raise UserError(f"{flag} {path} cannot be written: {e.strerror}") from None
        return
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise UserError(f"{flag} {path} cannot be written: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{flag} {path} cannot be written: {folder}: {e.strerror}") from None


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


# ---- records ----------------------------------------------------------------------------

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


def read_records(path):
    """All whole JSON lines of a results file (a torn last line, or any line that is not
    JSON, is skipped; bytes that are not UTF-8 never raise)."""
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, "rb") as f:
        for raw in f:
            try:
                out.append(json.loads(raw.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                continue
    return out


def library_versions():
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "numpy", "scikit-learn", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def device_name(device):
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
