"""The registry of unlearning methods, by the name given to ``-method``.

Method modules (the ``methods`` package) register themselves here. This module imports nothing
of the project and no torch, so reading results (report.py) never loads a method, and modules
can be imported in any order.
"""
from dataclasses import dataclass
from typing import Any, Callable, Optional

METHODS = {}

# The retrained models other runs are compared with, in order of preference.
RETRAIN_METHODS = ("retrain_full", "retrain")


@dataclass(frozen=True)
class Method:
    """``fn(model, data, hp, device) -> model``: ``data`` an UnlearnData, ``hp`` the resolved
    instance of ``hparams`` (None for a method without hyperparameters). ``zero_shot`` methods
    are handed no retain data. ``overrides``: the hyperparameter table (hparams.Overrides).
    ``top_level``: fields of ``hparams`` the run's record also holds at its top level.
    ``eval_batches``: ``hp -> {metric: batch}``, the accuracies the method's runs score over
    other batches than -b (None: none)."""
    name: str
    fn: Callable
    hparams: Optional[type] = None
    overrides: Any = None
    zero_shot: bool = False
    top_level: tuple = ()
    eval_batches: Optional[Callable] = None


def register(name, hparams=None, overrides=None, zero_shot=False, top_level=(), eval_batches=None):
    """Register the decorated function under ``name``."""
    def wrap(fn):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = Method(name, fn, hparams, overrides, zero_shot, top_level, eval_batches)
        return fn
    return wrap


@dataclass
class UnlearnData:
    """What a method may use. Loaders yield (x, fine_or_empty, y) batches; their datasets
    (``loader.dataset``) are Subsets of the training set, for methods that build their own."""
    forget_train: Any             # DataLoader, not shuffled, batch -b
    retain_train: Any             # DataLoader, shuffled, batch -b; None for zero-shot methods
    full_train: Any               # DataLoader over the training set in -importance_order for SSD;
                                  # None for zero-shot methods
    num_classes: int
    forget_class: Optional[int]   # forget label id: a model class (full class), a fine class
                                  # (sub-class: not a model output), None (random setting)
    setting: str                  # "fullclass", "subclass" or "random"
    dataset: str
    net: str
    build_fresh: Callable         # () -> a newly initialised model of the same kind
    seed: int = 0                 # the run's -seed, for the method's own generators
    amp: bool = False             # bf16 autocast allowed for forwards

    def without_retain(self):
        import dataclasses

        return dataclasses.replace(self, retain_train=None, full_train=None)
