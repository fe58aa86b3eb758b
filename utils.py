"""Small shared pieces: user-facing errors, the argument parser, device, seeds, checkpoints
and result records."""
import argparse
import datetime
import fcntl
import json
import os
import pickle
import platform
import random
import sys
import tempfile
from importlib import metadata

import numpy as np
import torch


class UserError(Exception):
    """A problem with what the user asked for: reported as one line, never a traceback."""


def cli(main):
    """Run ``main()``; turn a UserError into a one-line message and exit status 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and defaults shown in the help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see -h)\n")


def progress_bar(iterable, desc, enabled=True):
    """A tqdm bar on a terminal; silent when output is redirected (logs stay readable)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, disable=None if enabled else True, mininterval=0.5)


def resolve_device(use_gpu):
    """One device decided once. ``-gpu`` with no CUDA is an error, not a silent CPU run.
    Which GPU is chosen by CUDA_VISIBLE_DEVICES, as in the reference's grid scripts."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("-gpu given but no CUDA device is available (drop -gpu to run on the CPU)")
    return torch.device("cuda")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def load_weights(model, path, net, classes):
    """Load a plain state dict with ``weights_only=True`` (a pickle that carries code is
    refused, never executed) and ``strict=True``."""
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
    leaves a half-written checkpoint under the final name."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append_record(path, record):
    """Append one JSON line: a whole line or nothing, never over what is there.

    The file is opened in append mode and held under an exclusive lock (``flock``) while the
    line is written, so concurrent writers (a grid on several GPUs) never interleave. If a
    writer was killed inside a write and left a torn last line, the new line starts on a
    line of its own (``read_records`` skips the torn one)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    line = (json.dumps(record, sort_keys=False) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


def read_records(path):
    """All whole JSON lines of a results file (a torn last line is skipped)."""
    if not os.path.isfile(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
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
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
