"""Evaluation of one unlearned model: every metric of a record from one forward pass over the
training set and one over the test set, the distance of its outputs from a retrained model's,
and the relearn-time probe. Metrics from models and data only: which retrained model to compare
with is retrained.py's."""
import copy

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import batching
import metrics
from utils import progress_bar

EVAL_BATCH = 512  # forward batch for evaluation; the reported accuracies do not depend on it


class Diverged(FloatingPointError):
    """The unlearned model has non-finite weights or outputs: its metrics would be noise."""


def check_finite(model):
    """Raise Diverged if a floating-point parameter or buffer of ``model`` is NaN or infinite."""
    bad = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise Diverged(f"non-finite weights in {len(bad)} tensor(s), first {bad[0]}")


def loader(ds, batch, shuffle, workers, device, seed=0):
    g = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch, shuffle=shuffle, num_workers=workers, generator=g,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def logits_of(model, ds, workers, device, desc, amp=False):
    """Logits and labels of every item of ``ds`` in order: decoded images are batched and
    transformed on the device (batching.device_batches), anything else goes through a DataLoader."""
    batches = batching.device_batches(ds, EVAL_BATCH, device)
    if batches is None:
        batches = loader(ds, EVAL_BATCH, False, workers, device)
    return metrics.predict(model, progress_bar(batches, desc), device, amp)


def evaluate_split(model, train, test, split, batch, workers, device, amp=False, batches=None):
    """Every metric from one forward pass over the train set and one over the test set.
    Accuracies are computed per split in the split's own order, batched by ``batch`` for the
    mean-of-batch accuracy, or by ``batches[key]`` for the keys it names
    (``TestAcc``, ``RetainTestAcc``, ``Df``). Returns (scores, forget_train logits)."""
    logits = {"train": logits_of(model, train, workers, device, "eval train", amp),
              "test": logits_of(model, test, workers, device, "eval test", amp)}
    for name, (lg, _) in logits.items():
        bad = int((~torch.isfinite(lg)).any(1).sum())
        if bad:
            raise Diverged(f"non-finite outputs on {bad} of {len(lg)} {name} images")

    def part(name):
        if name == "test":
            return logits["test"]
        source, idx = split[name]
        lg, y = logits[source]
        idx = torch.as_tensor(idx, dtype=torch.long)
        return lg[idx], y[idx]

    out = {}
    for key, name in (("TestAcc", "test"), ("RetainTestAcc", "retain_valid"), ("Df", "forget_valid")):
        lg, y = part(name)
        correct = (lg.argmax(1) == y).numpy()
        out[key] = metrics.batch_mean_accuracy(correct, (batches or {}).get(key, batch))
        out[key + "Exact"] = metrics.exact_accuracy(correct)
    ent = {n: metrics.entropy(F.softmax(part(n)[0], dim=-1)).numpy()
           for n in ("retain_train", "forget_train", "test")}
    out["MIA"] = metrics.mia_from_entropies(ent["retain_train"], ent["forget_train"], ent["test"])
    out.update(metrics.attack_metrics(*part("forget_train"), *part("test")))
    return out, part("forget_train")[0]


def exact_accuracy_of(model, ds, workers, device):
    lg, y = logits_of(model, ds, workers, device, "eval")
    return metrics.exact_accuracy((lg.argmax(1) == y).numpy())


def relearn_steps(model, forget_loader, forget_valid, target, max_steps, workers, device, lr=0.01):
    """Fine-tuning steps on the forget set (SGD lr 0.01, momentum 0.9, on a copy) until the
    exact accuracy on forget_valid is back at ``target`` (the original model's Df); None if
    not within ``max_steps``. Few steps = the information was hidden, not removed."""
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    if exact_accuracy_of(m, forget_valid, workers, device) >= target:
        return 0
    steps = 0
    while steps < max_steps:
        for x, _, y in forget_loader:
            m.train()
            loss = F.cross_entropy(m(x.to(device)), torch.as_tensor(y).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if exact_accuracy_of(m, forget_valid, workers, device) >= target:
                return steps
            if steps >= max_steps:
                break
    return None


def divergence_from(gold, forget_logits, forget_set, workers, device, amp=False):
    """How far a model's outputs on the forget set (``forget_logits``) are from those of ``gold``
    (a retrained model), its forwards in the run's precision (``amp``: bf16 autocast): the JS
    divergence and the activation distance of their softmaxes."""
    p = F.softmax(forget_logits, dim=-1)
    q = F.softmax(logits_of(gold, forget_set, workers, device, "eval retrained", amp)[0], dim=-1)
    return {"JSToRetrain": metrics.js_divergence(p, q), "ActDistToRetrain": metrics.activation_distance(p, q)}
