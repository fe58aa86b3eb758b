"""retrained.py: the one store of retrained models names each by its target, method and
identity, finds only those of a run's own target, and never saves over a model."""
import os

import pytest
import torch

import records
from retrained import RetrainStore

RUN = dict(dataset="Digits", net="SmallCNN", forget_class="3", seed=0, recipe="reference", split_draw=None,
           pins_split=None, method="baseline")


def ident(setting="fullclass", **kw):
    return records.run_identity(setting, {**RUN, **kw})


def test_names_hold_the_target_method_and_digest(tmp_path):
    store = RetrainStore(str(tmp_path))
    retrain = ident(method="retrain_full")
    assert store.path(retrain) == str(tmp_path / f"fullclass-Digits-SmallCNN-3-seed0-retrain_full-{retrain.digest()}.pth")
    odd = ident(method="retrain", recipe="corrected", split_draw="own_generator", pins_split="per_person", seed=4)
    assert os.path.basename(store.path(odd)) == (
        f"fullclass-Digits-SmallCNN-3-seed4-corrected-split_draw=own_generator-pins_split=per_person-retrain-"
        f"{odd.digest()}.pth")
    # K retrains of one run: named by their model seed, each its own digest
    k3 = os.path.basename(store.path(retrain, 3))
    assert k3 == f"fullclass-Digits-SmallCNN-3-seed0-retrain_full-model3-{retrain.digest(3)}.pth"
    assert len({retrain.digest(), retrain.digest(0), retrain.digest(3)}) == 3


@pytest.mark.parametrize("change", [dict(split_draw="own_generator"), dict(pins_split="per_person"),
                                    dict(recipe="corrected"), dict(seed=1), dict(forget_class="4"),
                                    dict(net="AllCNN"), dict(dataset="Digits5")])
def test_a_run_finds_only_a_retrain_of_its_own_target(tmp_path, change):
    """A run with another split choice (or recipe, seed, target, net, data) shares no forget set
    with the retrain on disk: it must not be compared with it, even though it is the only one."""
    store = RetrainStore(str(tmp_path))
    theirs = store.save({}, ident(method="retrain_full"))
    assert store.find(ident(), []) == (theirs, "retrain_full")
    assert store.find(ident(**change), []) is None
    ours = store.save({}, ident(method="retrain_full", **change))
    os.utime(theirs, (2e9, 2e9))  # the other target's file is the newer one
    assert store.find(ident(**change), []) == (ours, "retrain_full")
    assert store.find(ident(), []) == (theirs, "retrain_full")


def test_a_run_of_other_flags_finds_the_retrain_of_its_target(tmp_path):
    # which unlearning method ran, and its flags, do not change the forget set
    store = RetrainStore(str(tmp_path))
    path = store.save({}, ident(method="retrain", epochs=3))
    assert store.find(ident(method="lipschitz_forgetting", sigma=0.5), []) == (path, "retrain")


def test_save_never_replaces_a_model(tmp_path):
    store = RetrainStore(str(tmp_path))
    path = store.save({"w": torch.ones(1)}, ident(method="retrain_full"))
    assert store.save({"w": torch.zeros(1)}, ident(method="retrain_full")) == path
    assert torch.load(path, weights_only=True)["w"].item() == 1.0
