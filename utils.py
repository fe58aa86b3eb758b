"""Small shared pieces: device, seeds, checkpoints and the check of an output path.

torch is imported inside the functions that need it, so that modules which only read records
(records.py, report.py) import without torch installed."""
import datetime
import errno
import os
import pickle
import platform
import random
import stat
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
    Which GPU is chosen by CUDA_VISIBLE_DEVICES, as in the authors' grid scripts."""
    import torch

    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("-gpu given but no CUDA device is available (drop -gpu to run on the CPU)")
    return torch.device("cuda")


def available_memory(device):
    """Bytes a new tensor on ``device`` can take: a CUDA device's free memory, else the host's
    available memory (MemAvailable, which counts the caches the kernel can drop)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_allocatable(numel, flags, device, itemsize=4):
    """Refuse in one line, naming the ``flags`` that size it, a tensor of ``numel`` values (float32
    by default) larger than the memory ``device`` has free: the allocator would otherwise fail with
    a traceback, or the host start swapping."""
    need = numel * itemsize
    free = available_memory(device)
    if need > free:
        raise UserError(f"{flags} ask(s) for {need / 2 ** 30:,.1f} GiB on {device.type}, more than the "
                        f"{free / 2 ** 30:,.1f} GiB available: give smaller values")


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

def _file_kind(path):
    mode = os.stat(path).st_mode
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def check_writable(path, flag):
    """Raise UserError (one line naming ``flag``) unless ``path`` can be written as a file:
    not empty, a regular file (or a symbolic link to one) or a new name, under folders that
    exist or can be created, and actually writable. A named pipe would block the run until
    some reader opened it, and a device (/dev/null) swallows or refuses what is written, so
    neither holds a result. Called before any work, so a run never computes for an hour and then fails on
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
        if not os.path.isfile(path):
            raise UserError(f"{flag} {path} is {_file_kind(path)}, not a regular file: give a file path")
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
