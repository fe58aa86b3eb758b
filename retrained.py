"""Retrained models on disk. One store names, finds and saves them: the mains save a retrain run's
model and compare every other run with it; forgetting_quality.py keeps its K retrains in one."""
import glob
import hashlib
import os

from records import DEFAULT_RECIPE
from registry import RETRAIN_METHODS
from utils import atomic_save


def _name(target, method):
    """setting-dataset-net-forget-seedN, the recipe unless it is the default one, dataXXXXXX (six
    hex digits of a digest of the target's data pipeline), then the method: the files of one
    target share this prefix, and a lookup by target is a prefix."""
    t = dict(target)
    head = [t[k] for k in ("setting", "dataset", "net", "forget")] + [f"seed{t['seed']}"]
    tags = [] if t["recipe"] == DEFAULT_RECIPE else [t["recipe"]]
    tags.append("data" + hashlib.sha1(repr(t["pipeline"]).encode()).hexdigest()[:6])
    return "-".join(str(part) for part in (*head, *tags, method))


class RetrainStore:
    """A folder of retrained models. Each file is named by the target of the runs compared with it
    (records.record_target), its method and a digest of its run's whole identity
    (records.RunIdentity), e.g. ``fullclass-Digits-SmallCNN-3-seed0-data1a2b3c-retrain_full-0123456789.pth``:
    a retrain with other flags gets a file of its own, and a run finds the retrains of its own
    target (recipe and data pipeline included) and no other."""

    def __init__(self, folder):
        self.folder = folder

    def path(self, identity, target, model_seed=None):
        """The file of the model retrained by the run ``identity`` of ``target``; with
        ``model_seed``, the file of one of several retrains of that run that differ only in their
        training's seed."""
        stem = os.path.join(self.folder, _name(target, identity.flag("method")))
        if model_seed is None:
            return f"{stem}-{identity.digest()}.pth"
        return f"{stem}-model{model_seed}-{identity.digest(model_seed)}.pth"

    def save(self, state_dict, identity, target, model_seed=None):
        """Save retrained weights under ``path(identity, target, model_seed)``, never over an
        existing file (the same name is the same model); returns the path. Raises OSError when it
        cannot be written."""
        path = self.path(identity, target, model_seed)
        if not os.path.isfile(path):
            atomic_save(state_dict, path)
        return path

    def find(self, target, records):
        """(path, method) of the retrained model that runs of ``target`` are compared with:
        retrain_full preferred to retrain; of several, the one the newest record of a retrain run
        in ``records`` names, else the newest file. None if there is none."""
        for method in RETRAIN_METHODS:
            prefix = os.path.join(self.folder, _name(target, method)) + "-"
            named = [r.get("RetrainCheckpoint") for r in records if isinstance(r, dict) and r.get("method") == method]
            named = [p for p in named if isinstance(p, str) and p.startswith(prefix) and os.path.isfile(p)]
            if named:
                return named[-1], method
            files = sorted(glob.glob(glob.escape(prefix) + "*.pth"), key=os.path.getmtime)
            if files:
                return files[-1], method
        return None
