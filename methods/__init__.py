"""Unlearning methods, one module per family, each registering its methods in ``registry``:

- ``retrain``:    baseline, retrain (top-level modules re-initialised), retrain_full, finetune
- ``jit``:        lipschitz_forgetting (JiT, this paper's method)
- ``distill``:    blindspot (bad teacher), amnesiac, scrub
- ``importance``: ssd_tuning, lfssd_tuning, FisherForgetting
- ``noise``:      UNSIR, emmn
- ``gkt``:        gkt (gated knowledge transfer)

Every method is ``fn(model, data, hp, device) -> model`` with ``data`` a registry.UnlearnData
and ``hp`` its resolved hyperparameters (a frozen dataclass declared beside the method).
"""
import importlib

from registry import METHODS, RETRAIN_METHODS, Method, UnlearnData, register

# Imported in this order, so -method lists the methods in it (retrain family first, JiT next).
FAMILIES = ("retrain", "jit", "distill", "importance", "noise", "gkt")
for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")

__all__ = ["METHODS", "RETRAIN_METHODS", "Method", "UnlearnData", "register"]
