"""The one experiment core behind the three forget_*_main.py scripts:
load data and model -> split -> run the method -> evaluate -> record."""
import copy
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import datasets
import metrics
from methods import METHODS, RETRAIN_METHODS, UnlearnData
from models import MODELS, build_model, input_size
from utils import (
    Parser,
    UserError,
    append_record,
    atomic_save,
    device_name,
    library_versions,
    load_weights,
    now_iso,
    progress_bar,
    read_records,
    resolve_device,
    seed_everything,
)

EVAL_BATCH = 512  # forward batch for evaluation; the reported accuracies do not depend on it


class Diverged(FloatingPointError):
    """The unlearned model has non-finite weights or outputs: its metrics would be noise."""


def check_finite(model):
    """Raise Diverged if a floating-point parameter or buffer of ``model`` is NaN or infinite."""
    bad = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise Diverged(f"non-finite weights in {len(bad)} tensor(s), first {bad[0]}")


def base_parser(description, batch_size=128, with_method=True):
    """Flags shared by the three mains (the reference's, verbatim, plus this project's).
    ``with_method=False`` leaves out -method (sweep.py fixes it)."""
    p = Parser(description=description)
    p.add_argument("-net", required=True, choices=list(MODELS), help="network")
    p.add_argument("-weight_path", default=None, help="state dict of the trained model (.pth)")
    p.add_argument("-dataset", required=True, choices=list(datasets.DATASETS), help="data set")
    p.add_argument("-gpu", action="store_true", help="run on CUDA (pick the card with CUDA_VISIBLE_DEVICES)")
    p.add_argument("-b", type=int, default=batch_size, help="batch size of the forget/retain loaders")
    p.add_argument("-warm", type=int, default=1, help="accepted for parity with the reference (unused here)")
    p.add_argument("-lr", type=float, default=0.1, help="accepted for parity with the reference (unused here)")
    if with_method:
        p.add_argument("-method", required=True, choices=list(METHODS), help="unlearning method")
    p.add_argument("-epochs", type=int, default=None, help="override the retrain epochs of the method table")
    p.add_argument("-seed", type=int, default=0, help="seed for torch, numpy, python and the random split")
    p.add_argument("-sigma", type=float, default=None, help="JiT σ (default: this task's table)")
    p.add_argument("-eta", type=float, default=None, help="JiT η, its SGD learning rate (default: table)")
    p.add_argument("-n_samples", type=int, default=None, help="JiT perturbations N per sample (default: table)")
    p.add_argument("-data_root", default="./data", help="folder holding the data set files")
    p.add_argument("-results", default="results/results.jsonl", help="JSON-lines file each run appends to")
    p.add_argument("-wandb", default="disabled", choices=["online", "offline", "disabled"],
                   help="mirror the record to Weights & Biases (needs the wandb package)")
    p.add_argument("-amp", action="store_true", help="bf16 autocast for JiT's forwards and the evaluation")
    p.add_argument("-workers", type=int, default=None, help="data-loader workers (default: 0 on CPU, 4 on GPU)")
    p.add_argument("-retrain_dir", default="checkpoint/retrained",
                   help="retrain runs save their model here; other runs compare with it (JSToRetrain, ActDistToRetrain)")
    p.add_argument("-relearn_max_steps", type=int, default=50,
                   help="bound on the relearn-time metric (fine-tuning steps until Df is back); 0 skips it")
    p.add_argument("-skip_existing", action="store_true",
                   help="exit without running if -results already holds this run's record")
    added = set()
    for m in METHODS.values():
        if m.add_args is not None and m.add_args not in added:
            m.add_args(p)
            added.add(m.add_args)
    return p


def resolve_jit(args, table):
    """Fill σ, η, N from the main's table (per net, else its 'default' row) unless given,
    then check them."""
    row = table.get(args.net, table["default"])
    for k in ("sigma", "eta", "n_samples"):
        if getattr(args, k) is None:
            setattr(args, k, row[k])
    if not args.sigma > 0:
        raise UserError(f"-sigma must be > 0 (got {args.sigma})")
    if not args.eta > 0:
        raise UserError(f"-eta must be > 0 (got {args.eta})")
    if args.n_samples < 1:
        raise UserError(f"-n_samples must be >= 1 (got {args.n_samples})")
    if args.b < 1:
        raise UserError(f"-b must be >= 1 (got {args.b})")


# Flags that do not change what a run computes; every other flag is part of its identity.
NOT_IDENTITY = {"results", "wandb", "workers", "skip_existing", "gpu", "data_root", "retrain_dir"}


def run_identity(setting, args_dict):
    """What makes two runs the same run (for -skip_existing): the setting and every flag
    that can change the result."""
    return (setting, tuple(sorted((k, str(v)) for k, v in args_dict.items() if k not in NOT_IDENTITY)))


def _loader(ds, batch, shuffle, workers, device, seed=0):
    g = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch, shuffle=shuffle, num_workers=workers, generator=g,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def _logits(model, ds, workers, device, desc, amp=False):
    """Logits and labels of every item of ``ds`` in order: decoded images are batched and
    transformed on the device (datasets.device_batches), anything else goes through a DataLoader."""
    batches = datasets.device_batches(ds, EVAL_BATCH, device)
    if batches is None:
        batches = _loader(ds, EVAL_BATCH, False, workers, device)
    return metrics.predict(model, progress_bar(batches, desc), device, amp)


def evaluate_split(model, train, test, split, batch, workers, device, amp=False):
    """Every metric from one forward pass over the train set and one over the test set.
    Accuracies are computed per split in the split's own order, batched by ``batch`` for the
    reference's mean-of-batch accuracy."""
    logits = {"train": _logits(model, train, workers, device, "eval train", amp),
              "test": _logits(model, test, workers, device, "eval test", amp)}
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
        out[key] = metrics.batch_mean_accuracy(correct, batch)
        out[key + "Exact"] = metrics.exact_accuracy(correct)
    ent = {n: metrics.entropy(F.softmax(part(n)[0], dim=-1)).numpy()
           for n in ("retain_train", "forget_train", "test")}
    out["MIA"] = metrics.mia_from_entropies(ent["retain_train"], ent["forget_train"], ent["test"])
    out.update(metrics.attack_metrics(*part("forget_train"), *part("test")))
    return out, part("forget_train")[0]


def _exact_accuracy(model, ds, workers, device):
    lg, y = _logits(model, ds, workers, device, "eval")
    return metrics.exact_accuracy((lg.argmax(1) == y).numpy())


def relearn_steps(model, forget_loader, forget_valid, target, max_steps, workers, device, lr=0.01):
    """Fine-tuning steps on the forget set (SGD lr 0.01, momentum 0.9, on a copy) until the
    exact accuracy on forget_valid is back at ``target`` (the original model's Df); None if
    not within ``max_steps``. Few steps = the information was hidden, not removed."""
    m = copy.deepcopy(model)
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    if _exact_accuracy(m, forget_valid, workers, device) >= target:
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
            if _exact_accuracy(m, forget_valid, workers, device) >= target:
                return steps
            if steps >= max_steps:
                break
    return None


def retrain_checkpoint(args, setting, forget, method):
    """Where a retrain run saves its model and where the other runs of the same setting,
    data set, net, forget target and seed look for it."""
    return os.path.join(args.retrain_dir, f"{setting}-{args.dataset}-{args.net}-{forget}-seed{args.seed}-{method}.pth")


@dataclass
class Experiment:
    """Everything loaded once for one setting: data, split, loaders and the trained model."""
    args: Any
    setting: str
    forget: Any
    target_id: Optional[int]
    num_classes: int
    device: torch.device
    workers: int
    train: Any
    test: Any
    split: dict
    subset: dict
    data: UnlearnData
    model: torch.nn.Module
    build_fresh: Callable


def recorded(args, setting):
    """The record of this exact run (same setting and result-changing flags) in -results, or None."""
    identity = run_identity(setting, vars(args))
    return next((r for r in read_records(args.results)
                 if run_identity(r.get("setting"), r.get("args", {})) == identity), None)


def prepare(args, setting, num_classes, target_id, split_fn):
    """Load data and model and build the split. ``split_fn(train, test)`` returns the split
    dict of datasets.split_*; ``target_id`` is the forget label id (None: random)."""
    forget = getattr(args, "forget_class", None) or getattr(args, "forget_perc", None)
    device = resolve_device(args.gpu)
    if args.weight_path and not os.path.isfile(args.weight_path):
        raise UserError(f"weight file not found: {args.weight_path}")
    seed_everything(args.seed)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)

    size = input_size(args.net)
    train = datasets.load_dataset(args.dataset, args.data_root, train=True, size=size)
    test = datasets.load_dataset(args.dataset, args.data_root, train=False, size=size)
    if datasets.DATASETS[args.dataset] != num_classes:
        raise UserError(f"{args.dataset} has {datasets.DATASETS[args.dataset]} model classes, "
                        f"but {num_classes} were given")

    def build_fresh():
        return build_model(args.net, num_classes)

    model = load_weights(build_fresh(), args.weight_path, args.net, num_classes).to(device)

    split = split_fn(train, test)
    for name, (_, idx) in split.items():
        if len(idx) == 0:
            raise UserError(f"the {name} split is empty for forget target {forget!r}")
    subset = {n: Subset(train if src == "train" else test, idx) for n, (src, idx) in split.items()}
    data = UnlearnData(
        forget_train=_loader(subset["forget_train"], args.b, False, workers, device),
        retain_train=_loader(subset["retain_train"], args.b, True, workers, device, args.seed),
        # retain then forget, as the reference concatenates them (SSD's batches depend on it)
        full_train=_loader(Subset(train, np.concatenate([split["retain_train"][1], split["forget_train"][1]])),
                           args.b, False, workers, device),
        num_classes=num_classes, forget_class=target_id, setting=setting, dataset=args.dataset, net=args.net,
        build_fresh=build_fresh,
    )
    return Experiment(args, setting, forget, target_id, num_classes, device, workers, train, test, split, subset,
                      data, model, build_fresh)


def execute(exp, args):
    """Run ``args.method`` on ``exp.model`` (in place), evaluate, append and return the record.
    A method that diverges (a non-finite loss, weights or outputs) is still recorded, with
    ``diverged`` true, the reason, and no metrics, and a warning is printed."""
    method = METHODS[args.method]
    data = exp.data.without_retain() if method.zero_shot else exp.data
    model, device, workers = exp.model, exp.device, exp.workers
    forget_valid = exp.subset["forget_valid"]
    target_df = _exact_accuracy(model, forget_valid, workers, device) if args.relearn_max_steps > 0 else None

    # Reseed so the method's random draws depend on the seed alone, not on what ran before
    # (every DataLoader iterator, for instance, takes a number from the default generator;
    # the shuffled retain loader's order comes from its own generator).
    seed_everything(args.seed)
    for loader in (exp.data.forget_train, exp.data.retain_train, exp.data.full_train):
        if loader.generator is not None:
            loader.generator.manual_seed(args.seed)
    t0 = time.perf_counter()
    diverged = None
    try:
        model = method.fn(model, data, args, device)
    except FloatingPointError as e:
        diverged = str(e)
    if device.type == "cuda":
        torch.cuda.synchronize()
    method_time = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores = {}
    if diverged is None:
        try:
            check_finite(model)
            scores, forget_logits = evaluate_split(model, exp.train, exp.test, exp.split, args.b, workers, device,
                                                   args.amp)
        except Diverged as e:
            diverged = str(e)
    if diverged is None:
        scores.update(_compare_to_retrained(model, forget_logits, exp.subset["forget_train"], args, exp.setting,
                                            exp.forget, exp.num_classes, exp.build_fresh, workers, device))
        if target_df is not None:
            scores["RelearnSteps"] = relearn_steps(model, data.forget_train, forget_valid, target_df,
                                                   args.relearn_max_steps, workers, device)
    eval_time = time.perf_counter() - t0

    record = dict(setting=exp.setting, dataset=args.dataset, net=args.net, method=args.method,
                  forget=exp.forget, forget_id=exp.target_id, seed=args.seed,
                  sigma=args.sigma, eta=args.eta, n_samples=args.n_samples, weight_path=args.weight_path,
                  diverged=diverged is not None)
    if diverged is not None:
        record["diverged_reason"] = diverged
    record.update(scores)
    record.update(
        MethodTime=method_time, EvalTime=eval_time,
        n_forget=int(len(exp.split["forget_train"][1])), n_retain=int(len(exp.split["retain_train"][1])),
        accuracy_note="TestAcc/RetainTestAcc/Df: mean of per-batch accuracy (%) as the reference "
                      "computes it, batch -b; *Exact: correct/total (%)",
        args=dict(vars(args)), versions=library_versions(), device=device_name(device), time=now_iso(),
    )
    append_record(args.results, record)
    _mirror_to_wandb(args, record)
    if diverged is not None:
        print(f"warning: {args.method} diverged ({diverged}); recorded with diverged=true and no metrics "
              f"-> {args.results}", file=sys.stderr)
    else:
        print(f"{args.method}: Dr {scores['RetainTestAcc']:.2f}  Df {scores['Df']:.2f}  MIA {scores['MIA']:.3f}  "
              f"TestAcc {scores['TestAcc']:.2f}  method {method_time:.2f}s  eval {eval_time:.2f}s -> {args.results}")
    return record


def run(args, setting, num_classes, target_id, split_fn):
    """One forget experiment, as the three mains run it: load, split, method, evaluate, record."""
    if args.skip_existing and recorded(args, setting) is not None:
        forget = getattr(args, "forget_class", None) or getattr(args, "forget_perc", None)
        print(f"skip: {args.results} already holds {args.method} on {args.dataset} ({forget}), seed {args.seed}")
        return None
    return execute(prepare(args, setting, num_classes, target_id, split_fn), args)


def task_main(task):
    """The whole of a forget_*_main.py: its module supplies the docstring, BATCH, JIT,
    SETTING, add_task_args(parser) and task(args) -> (classes, forget id, split function)."""
    p = base_parser(task.__doc__.splitlines()[0], batch_size=task.BATCH)
    task.add_task_args(p)
    args = p.parse_args()
    resolve_jit(args, task.JIT)
    run(args, task.SETTING, *task.task(args))


def _compare_to_retrained(model, forget_logits, forget_train, args, setting, forget, num_classes, build_fresh,
                          workers, device):
    """A retrain run saves its model; any other run compares its forget-set outputs with the
    saved retrained model of the same setting, data, net, target and seed, when one exists."""
    if args.method in RETRAIN_METHODS:
        path = retrain_checkpoint(args, setting, forget, args.method)
        atomic_save(model.state_dict(), path)
        return {"RetrainCheckpoint": path}
    for name in RETRAIN_METHODS:
        path = retrain_checkpoint(args, setting, forget, name)
        if os.path.isfile(path):
            gold = load_weights(build_fresh(), path, args.net, num_classes).to(device)
            p = F.softmax(forget_logits, dim=-1)
            q = F.softmax(_logits(gold, forget_train, workers, device, "eval retrained")[0], dim=-1)
            return {"JSToRetrain": metrics.js_divergence(p, q), "ActDistToRetrain": metrics.activation_distance(p, q),
                    "RetrainReference": name}
    return {}


def _mirror_to_wandb(args, record):
    if args.wandb == "disabled":
        return
    try:
        import wandb
    except ImportError:
        raise UserError("-wandb online/offline needs the wandb package (pip install wandb)") from None
    run = wandb.init(project="jit-unlearning", mode=args.wandb, config=record["args"],
                     name=f"{record['setting']}-{record['dataset']}-{record['net']}-{record['method']}-{record['forget']}-s{record['seed']}")
    run.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    run.finish()
