"""evaluation.py: loaders, logits, accuracies and the split's metrics against written-out
computations, relearn time, and that it computes from models and data alone."""
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import Triples, run_inprocess
from torch.utils.data import DataLoader, get_worker_info

import evaluation


def _full(weights, results, method, *extra):
    return ["forget_full_class_main.py", "-net", "SmallCNN", "-dataset", "Digits", "-classes", "10",
            "-forget_class", "3", "-weight_path", weights, "-seed", "0", "-results", results, "-method", method,
            *extra]


def test_relearn_steps_are_zero_for_the_unchanged_model(smallcnn_ckpt, tmp_path):
    results = str(tmp_path / "r.jsonl")
    assert run_inprocess(_full(smallcnn_ckpt, results, "baseline", "-retrain_dir", str(tmp_path))).returncode == 0
    assert json.loads(open(results).read())["RelearnSteps"] == 0


def test_evaluation_takes_no_argument_bag():
    """evaluation.py computes metrics from models and data: no function takes the command line's
    namespace (a parameter named or annotated as one), and nothing there reads a flag off an
    object (an attribute named as any flag of the forget mains, such as .seed or .retrain_dir)."""
    import ast
    import inspect

    import evaluation
    import forget_full_class_main
    import forget_random_main
    import forget_sub_class_main
    from flags import parser_for

    tree = ast.parse(inspect.getsource(evaluation))
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Lambda))]
    assert len(functions) >= 8
    params = [a for f in functions for a in (*f.args.posonlyargs, *f.args.args, *f.args.kwonlyargs)]
    assert not [a.arg for a in params if a.arg in ("args", "namespace", "opts", "cfg", "config")]
    assert not [a.arg for a in params if a.annotation is not None and "Namespace" in ast.unparse(a.annotation)]
    dests = {a.dest for m in (forget_full_class_main, forget_sub_class_main, forget_random_main)
             for a in parser_for(m.TASK)._actions}
    assert {"seed", "retrain_dir", "results", "net"} <= dests
    read = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert read & dests == set()
    assert "argparse" not in {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                              for a in n.names} | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}


CPU = torch.device("cpu")


def rows(x, y):
    """A Triples data set (not ArrayImages: evaluation goes through evaluation.loader)."""
    return Triples(torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long))


def no_warning_about(caught, word):
    return [str(w.message) for w in caught if word in str(w.message)] == []


def order_of(ld):
    return [int(v) for x, _, _ in ld for v in x[:, 0]]


def test_loader_batches_and_shuffles_with_its_own_seeded_generator():
    # Shuffled: the order a DataLoader with its own Generator().manual_seed(seed) gives, seed 0
    # unless given, whatever the global generator holds; not shuffled: the data set's order.
    # Batches of `batch`, the last one partial.
    ds = rows(torch.arange(10.0)[:, None], torch.zeros(10))
    plain = evaluation.loader(ds, 3, False, 0, CPU)
    assert order_of(plain) == list(range(10))
    assert [len(y) for _, _, y in plain] == [3, 3, 3, 1]
    for seed in (0, 5):
        want = order_of(DataLoader(ds, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(seed)))
        kw = {} if seed == 0 else {"seed": seed}
        shuffled = evaluation.loader(ds, 3, True, 0, CPU, **kw)
        torch.manual_seed(123)  # the global generator plays no part in the order
        assert order_of(shuffled) == want, seed
        assert [len(y) for _, _, y in shuffled][:3] == [3, 3, 3]
    assert want != list(range(10))


def test_a_loader_that_does_not_shuffle_draws_from_the_global_generator_like_a_plain_dataloader():
    # Every iterator of a DataLoader without a generator takes its base seed from the global
    # generator (the reference's loaders do), so the random stream after it is the reference's;
    # only the shuffled loaders carry a generator of their own.
    ds = rows(torch.arange(4.0)[:, None], torch.zeros(4))
    torch.manual_seed(1)
    list(evaluation.loader(ds, 2, False, 0, CPU))
    got = torch.rand(3)
    torch.manual_seed(1)
    list(DataLoader(ds, batch_size=2))
    assert torch.equal(got, torch.rand(3))
    assert evaluation.loader(ds, 2, False, 0, CPU).generator is None


class WhereLoaded(torch.utils.data.Dataset):
    """Items whose label says which worker loaded them (-1: the main process)."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        info = get_worker_info()
        return torch.zeros(1), torch.tensor([]), -1 if info is None else info.id


def test_loader_loads_in_the_given_number_of_worker_processes():
    assert [int(v) for _, _, y in evaluation.loader(WhereLoaded(), 2, False, 1, CPU) for v in y] == [0] * 4
    assert [int(v) for _, _, y in evaluation.loader(WhereLoaded(), 2, False, 0, CPU) for v in y] == [-1] * 4


def test_a_cpu_loader_pins_no_memory_and_warns_of_nothing():
    # Pinned memory only speeds up copies to a GPU; on a machine without one, pin_memory=True
    # prints a warning on every epoch.
    ds = rows(torch.zeros(4, 2), torch.zeros(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(evaluation.loader(ds, 2, False, 0, CPU))
    assert no_warning_about(caught, "pin_memory")
    assert not any(x.is_pinned() for x, _, _ in batches)


def tie_model():
    """Logits (1, 1 + 2^-10) for every input: class 1 in float32, a tie (class 0 by argmax) once
    bf16 autocast rounds both to 1."""
    m = nn.Linear(4, 2)
    with torch.no_grad():
        m.weight.zero_()
        m.bias.copy_(torch.tensor([1.0, 1.0 + 2 ** -10]))
    return m


FP32_ROW, BF16_ROW = [1.0, 1.0 + 2 ** -10], [1.0, 1.0]


def test_logits_of_a_plain_data_set_are_the_model_outputs_in_order():
    # 520 items: more than one evaluation batch (EVAL_BATCH = 512), the last one partial.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(520, 4, generator=g), torch.randint(0, 3, (520,), generator=g)
    model = nn.Linear(4, 3)
    lg, labels = evaluation.logits_of(model, rows(x, y), 0, CPU, "eval")
    assert lg.shape == (520, 3)
    torch.testing.assert_close(lg, model(x).detach(), rtol=0, atol=1e-6)
    assert labels.tolist() == y.tolist()


def test_logits_of_runs_bf16_autocast_only_when_asked():
    ds = rows(torch.randn(3, 4), torch.ones(3))
    assert evaluation.logits_of(tie_model(), ds, 0, CPU, "eval")[0].tolist() == [FP32_ROW] * 3
    assert evaluation.logits_of(tie_model(), ds, 0, CPU, "eval", amp=True)[0].tolist() == [BF16_ROW] * 3


class FixedMap(nn.Module):
    """A linear map held as a buffer: a model with no parameters at all."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.tensor([[1.0, 0.0], [0.0, 2.0]]))

    def forward(self, x):
        return x @ self.w.T


def test_logits_of_runs_on_the_device_it_is_given_even_for_a_model_without_parameters():
    x = torch.tensor([[1.0, 1.0], [3.0, 1.0]])
    lg, _ = evaluation.logits_of(FixedMap(), rows(x, torch.zeros(2)), 0, CPU, "eval")
    assert lg.tolist() == [[1.0, 2.0], [3.0, 2.0]]


def test_exact_accuracy_of_a_plain_data_set():
    # argmax of the rows: 0, 1, 1, 0, 1 against labels 0, 1, 0, 1, 1: three of five right.
    x = torch.tensor([[2.0, 1.0], [0.0, 1.0], [1.0, 3.0], [5.0, 4.0], [-1.0, 0.0]])
    model = FixedMap()
    model.w = torch.eye(2)
    assert evaluation.exact_accuracy_of(model, rows(x, [0, 1, 0, 1, 1]), 0, CPU) == 60.0


class Lookup(nn.Module):
    """Logits looked up by item: an item is (index, is_test); ``train[i]`` / ``test[i]``."""

    def __init__(self, train, test):
        super().__init__()
        self.train_lg, self.test_lg = nn.Parameter(train), nn.Parameter(test)

    def forward(self, x):
        idx, is_test = x[:, 0].long(), x[:, 1] > 0.5
        return torch.where(is_test[:, None], self.test_lg[idx.clamp(max=len(self.test_lg) - 1)],
                           self.train_lg[idx.clamp(max=len(self.train_lg) - 1)])


def indexed(n, is_test, y):
    return rows(torch.stack([torch.arange(float(n)), torch.full((n,), float(is_test))], 1), y)


SPLIT = {"forget_train": ("train", [0, 2, 5]), "retain_train": ("train", [1, 3, 4, 6, 7, 8]),
         "forget_valid": ("test", [1, 4]), "retain_valid": ("test", [0, 2, 3, 5, 6]),
         "test": ("test", list(range(7)))}


def mean_of_batches(correct, b):
    accs = [sum(correct[i:i + b]) / len(correct[i:i + b]) for i in range(0, len(correct), b)]
    return 100.0 * sum(accs) / len(accs)


def test_evaluate_split_of_plain_data_sets_against_the_hand_computed_accuracies():
    g = torch.Generator().manual_seed(1)
    train_lg, test_lg = torch.randn(9, 3, generator=g), torch.randn(7, 3, generator=g)
    y_train, y_test = torch.randint(0, 3, (9,), generator=g), torch.randint(0, 3, (7,), generator=g)
    model = Lookup(train_lg, test_lg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, forget_lg = evaluation.evaluate_split(model, indexed(9, False, y_train), indexed(7, True, y_test), SPLIT,
                                                   2, 0, CPU)
    for key, name in (("TestAcc", "test"), ("RetainTestAcc", "retain_valid"), ("Df", "forget_valid")):
        idx = SPLIT[name][1]
        correct = [int(int(np.argmax(test_lg[i].tolist())) == int(y_test[i])) for i in idx]
        assert out[key] == pytest.approx(mean_of_batches(correct, 2)), key
        assert out[key + "Exact"] == pytest.approx(100.0 * sum(correct) / len(correct)), key
    assert forget_lg.tolist() == train_lg[[0, 2, 5]].tolist()
    # the softmax over classes is taken with an explicit dim: torch warns of an implicit one
    assert no_warning_about(caught, "softmax")


def test_evaluate_split_of_an_empty_part_is_not_a_number_not_an_error():
    model = Lookup(torch.randn(9, 3), torch.randn(7, 3))
    split = {**SPLIT, "forget_valid": ("test", [])}
    out, _ = evaluation.evaluate_split(model, indexed(9, False, torch.zeros(9)), indexed(7, True, torch.zeros(7)),
                                       split, 2, 0, CPU)
    assert math.isnan(out["Df"]) and math.isnan(out["DfExact"])
    assert out["TestAccExact"] == pytest.approx(100.0 * sum(int(torch.argmax(r)) == 0 for r in model.test_lg) / 7)


def test_evaluate_split_names_the_count_of_non_finite_outputs():
    train_lg = torch.randn(9, 3)
    train_lg[1, 0], train_lg[4, 2] = float("nan"), float("inf")
    model = Lookup(train_lg, torch.randn(7, 3))
    with pytest.raises(evaluation.Diverged, match=r"^non-finite outputs on 2 of 9 train images$"):
        evaluation.evaluate_split(model, indexed(9, False, torch.zeros(9)), indexed(7, True, torch.zeros(7)),
                                  SPLIT, 2, 0, CPU)


def test_evaluate_split_runs_bf16_autocast_on_both_sets_only_when_asked():
    # The tie model is right on every item in float32 (label 1) and wrong under bf16 autocast.
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(2))
    train, test = rows(x, torch.ones(9)), rows(x[:7], torch.ones(7))
    out, forget_lg = evaluation.evaluate_split(tie_model(), train, test, SPLIT, 2, 0, CPU)
    assert (out["TestAccExact"], out["RetainTestAccExact"], out["DfExact"]) == (100.0, 100.0, 100.0)
    assert forget_lg.tolist() == [FP32_ROW] * 3
    out, forget_lg = evaluation.evaluate_split(tie_model(), train, test, SPLIT, 2, 0, CPU, amp=True)
    assert (out["TestAccExact"], out["RetainTestAccExact"], out["DfExact"]) == (0.0, 0.0, 0.0)
    assert forget_lg.tolist() == [BF16_ROW] * 3


def np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ce_grad(w, b, x, y):
    """Gradient of the mean cross-entropy of the linear model x @ w.T + b, by hand."""
    dz = np_softmax(x @ w.T + b)
    dz[np.arange(len(y)), y] -= 1
    dz /= len(y)
    return dz.T @ x, dz.sum(0)


def np_acc(w, b, x, y):
    return 100.0 * np.mean(np.argmax(x @ w.T + b, 1) == y)


def literal_relearn(w, b, batches, vx, vy, target, max_steps, lr=0.01, momentum=0.9):
    """Step t (1, 2, ...) takes batch (t - 1) mod len(batches) and moves the weights by SGD with
    momentum (the buffer starts at the first gradient); the answer is 0 if the accuracy on (vx, vy)
    is already at target, else the first t <= max_steps after which it is, else None."""
    w, b = w.copy(), b.copy()
    if np_acc(w, b, vx, vy) >= target:
        return 0
    buf = None
    for t in range(1, max_steps + 1):
        x, y = batches[(t - 1) % len(batches)]
        grads = ce_grad(w, b, x, y)
        buf = list(grads) if buf is None else [momentum * m + gr for m, gr in zip(buf, grads)]
        w, b = w - lr * buf[0], b - lr * buf[1]
        if np_acc(w, b, vx, vy) >= target:
            return t
    return None


class Passes:
    """The forget loader: fixed (x, fine, y) batches, at most ``limit`` passes over them (a loop
    that never stops fails instead of hanging)."""

    def __init__(self, batches, limit=200):
        self.batches, self.limit, self.passes = batches, limit, 0

    def __iter__(self):
        self.passes += 1
        assert self.passes <= self.limit, "relearn_steps does not stop"
        return iter(self.batches)


def relearn_case():
    """Six 2-D points, class x0 > 0, and a linear model (float64) that gets every one wrong."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 2)) * 3
    y = (x[:, 0] > 0).astype(np.int64)
    w, b = np.array([[1.0, 0.0], [-1.0, 0.0]]), np.zeros(2)
    model = nn.Linear(2, 2, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(w))
        model.bias.copy_(torch.tensor(b))
    batches = [(x[i:i + 2], y[i:i + 2]) for i in range(0, 6, 2)]
    loader = Passes([(torch.tensor(bx), torch.tensor([]), torch.tensor(by)) for bx, by in batches])
    return model, loader, rows(torch.tensor(x), y), (w, b, batches, x, y)


@pytest.mark.parametrize("kw", [{}, {"lr": 1e-3}, {"lr": 0.05}])
def test_relearn_steps_is_the_written_out_fine_tuning_loop(kw):
    model, loader, valid, (w, b, batches, x, y) = relearn_case()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    want = literal_relearn(w, b, batches, x, y, 100.0, 500, **kw)
    assert want is not None and want > 3  # more than one pass over the forget set
    assert evaluation.relearn_steps(model, loader, valid, 100.0, 500, 0, CPU, **kw) == want
    # it fine-tunes a copy: the model given is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_relearn_steps_stops_at_max_steps():
    _, _, _, (w, b, batches, x, y) = relearn_case()
    k = literal_relearn(w, b, batches, x, y, 100.0, 500)
    for max_steps in (k - 2, k - 1, k, k + 1, 0):
        model, loader, valid, _ = relearn_case()
        want = literal_relearn(w, b, batches, x, y, 100.0, max_steps)
        assert want == (k if max_steps >= k else None)
        assert evaluation.relearn_steps(model, loader, valid, 100.0, max_steps, 0, CPU) == want, max_steps
    model, loader, valid, _ = relearn_case()
    assert evaluation.relearn_steps(model, loader, valid, 0.0, 5, 0, CPU) == 0  # already there


class TwoHeads(nn.Module):
    """Two linear heads on features 0-1; a batch goes through head a when its first item's
    feature 2 is positive, else through head b."""

    def __init__(self, wa, wb):
        super().__init__()
        self.a, self.b = nn.Linear(2, 2, dtype=torch.float64), nn.Linear(2, 2, dtype=torch.float64)
        with torch.no_grad():
            for head, w in ((self.a, wa), (self.b, wb)):
                head.weight.copy_(torch.tensor(w))
                head.bias.zero_()

    def forward(self, x):
        return (self.a if x[0, 2] > 0 else self.b)(x[:, :2])


def test_relearn_steps_leaves_a_parameter_without_gradient_alone():
    # SGD skips a parameter whose gradient is None: head a, idle while head b trains on the
    # other batches, keeps its weights and its momentum buffer. Zeroed gradients instead of
    # None would move it by its momentum on every step.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 2)) * 3
    y = (x[:, 0] > 0).astype(np.int64)
    wa = np.array([[1.0, 0.0], [-1.0, 0.0]])
    wb = np.array([[0.5, 0.5], [-0.5, 0.0]])
    route = np.array([1.0, 1.0, -1.0, -1.0, -1.0, -1.0])  # batch 0 through head a, batches 1-2 through b
    feats = np.concatenate([x, route[:, None]], 1)
    loader = Passes([(torch.tensor(feats[i:i + 2]), torch.tensor([]), torch.tensor(y[i:i + 2]))
                     for i in range(0, 6, 2)])
    valid = rows(torch.tensor(np.concatenate([x, np.ones((6, 1))], 1)), y)  # evaluated through head a

    heads, bufs = {"a": [wa.copy(), np.zeros(2)], "b": [wb.copy(), np.zeros(2)]}, {}
    want = None
    for t in range(1, 301):
        i = 2 * ((t - 1) % 3)
        h = "a" if route[i] > 0 else "b"
        grads = ce_grad(*heads[h], x[i:i + 2], y[i:i + 2])
        bufs[h] = list(grads) if h not in bufs else [0.9 * m + gr for m, gr in zip(bufs[h], grads)]
        heads[h] = [p - 0.01 * m for p, m in zip(heads[h], bufs[h])]
        if np_acc(*heads["a"], x, y) >= 100.0:
            want = t
            break
    assert want is not None and want > 3
    assert evaluation.relearn_steps(TwoHeads(wa, wb), loader, valid, 100.0, 300, 0, CPU) == want


@pytest.mark.parametrize("amp", [False, True])
def test_the_retrained_models_forwards_run_in_the_runs_precision(monkeypatch, amp):
    seen = []
    real = evaluation.metrics.predict

    def predict(model, batches, device, amp_flag=False):
        seen.append(amp_flag)
        return real(model, batches, device, amp_flag)

    monkeypatch.setattr(evaluation.metrics, "predict", predict)
    gold = torch.nn.Linear(3, 2)
    forget = Triples(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    scores = evaluation.divergence_from(gold, torch.randn(4, 2), forget, 0, torch.device("cpu"), amp)
    assert seen == [amp] and set(scores) == {"JSToRetrain", "ActDistToRetrain"}
