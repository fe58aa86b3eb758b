"""The methods of methods/retrain.py through the registry: retrain_full re-initialises every tensor,
zero-shot methods are structurally denied retain data, and the basic methods run end to end
through every main on Digits."""
import json

import pytest
import torch
from helpers import MAINS, SETTING, Triples, hp_for, run_inprocess
from torch.utils.data import DataLoader

import methods
from experiment import execute
from methods import METHODS, UnlearnData
from models import SmallCNN


def _data(build_fresh):
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    dl = DataLoader(Triples(x, y), batch_size=8)
    return UnlearnData(forget_train=dl, retain_train=dl, full_train=dl, num_classes=4, forget_class=0,
                       setting="fullclass", dataset="Digits", net="SmallCNN", build_fresh=build_fresh)


@pytest.mark.parametrize("name, reset_everything", [("retrain_full", True), ("retrain", False)])
def test_retrain_reinitialises_before_training(monkeypatch, name, reset_everything):
    """retrain_full: every parameter tensor is the fresh build's before training starts;
    retrain (the reference's): only the top-level ``fc`` head is reset, the trunk is kept."""
    torch.manual_seed(0)
    trained = SmallCNN(4)
    original = {k: v.clone() for k, v in trained.state_dict().items()}
    torch.manual_seed(1)
    fresh = SmallCNN(4)
    seen = {}
    monkeypatch.setattr(methods.retrain, "train_on_retain",
                        lambda model, *a, **k: seen.update({k2: v.clone() for k2, v in model.state_dict().items()}))
    METHODS[name].fn(trained, _data(lambda: fresh), hp_for(name), torch.device("cpu"))
    for key, before in original.items():
        changed = not torch.equal(seen[key], before)
        if reset_everything:
            assert changed and torch.equal(seen[key], fresh.state_dict()[key]), key
        else:
            assert changed == key.startswith("fc."), key


def test_zero_shot_methods_are_registered_as_such():
    assert {n for n, m in METHODS.items() if m.zero_shot} == {"baseline", "lipschitz_forgetting", "gkt", "emmn"}


def test_the_core_hands_zero_shot_methods_no_retain_data(monkeypatch, smallcnn_ckpt, tmp_path):
    import experiment
    import flags
    import forget_full_class_main as main

    seen = {}

    def spy(model, data, args, device):
        seen["data"] = data
        return model

    monkeypatch.setitem(METHODS, "lipschitz_forgetting",
                        methods.Method("lipschitz_forgetting", spy, METHODS["lipschitz_forgetting"].hparams,
                                       zero_shot=True))
    args = flags.parser_for(main.TASK).parse_args([
        "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10", "-forget_class", "3",
        "-method", "lipschitz_forgetting", "-weight_path", smallcnn_ckpt, "-results", str(tmp_path / "r.jsonl"),
        "-relearn_max_steps", "0", "-retrain_dir", str(tmp_path)])
    execute(experiment.prepare(args, main.TASK.setting, *main.split(args)), args,
            flags.resolve_method(args, main.TASK))
    data = seen["data"]
    assert data.retain_train is None and data.full_train is None
    assert len(data.forget_train.dataset) > 0


@pytest.mark.parametrize("main", list(MAINS))
@pytest.mark.parametrize("method", ["finetune", "retrain_full", "lipschitz_forgetting"])
def test_basic_method_end_to_end_in_every_main(smallcnn_ckpt, smallcnn5_ckpt, tmp_path, main, method):
    results = tmp_path / "r.jsonl"
    cmd = [*MAINS[main](smallcnn_ckpt, smallcnn5_ckpt), "-net", "SmallCNN", "-method", method, "-retrain_epochs", "1",
           "-finetune_epochs", "1", "-n_samples", "3", "-results", str(results), "-retrain_dir", str(tmp_path), "-relearn_max_steps", "5"]
    proc = run_inprocess(cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (rec,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert (rec["method"], rec["setting"]) == (method, SETTING[main])
