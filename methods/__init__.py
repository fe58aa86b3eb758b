"""Unlearning methods, one module per family, each registering its methods in ``registry``:

- ``retrain``:    baseline, retrain (the reference's), retrain_full, finetune
- ``jit``:        lipschitz_forgetting (JiT, this paper's method)
- ``distill``:    blindspot (bad teacher), amnesiac, scrub
- ``importance``: ssd_tuning, lfssd_tuning, FisherForgetting
- ``noise``:      UNSIR, emmn
- ``gkt``:        gkt (gated knowledge transfer)

Every method is ``fn(model, data, hp, device) -> model`` with ``data`` a registry.UnlearnData
and ``hp`` its resolved hyperparameters (a frozen dataclass declared beside the method).
"""
from registry import METHODS, RETRAIN_METHODS, Method, UnlearnData, register

# registration order = the order of -method's choices
from . import (
    distill,  # noqa: E402,F401,I001
    gkt,  # noqa: E402,F401,I001
    importance,  # noqa: E402,F401,I001
    jit,  # noqa: E402,F401,I001
    noise,  # noqa: E402,F401,I001
    retrain,  # noqa: E402,F401,I001
)

__all__ = ["METHODS", "RETRAIN_METHODS", "Method", "UnlearnData", "register"]
