"""The one experiment core behind the three forget_*_main.py scripts:
load data and model -> split -> run the method -> evaluate -> record."""
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch.utils.data import Subset

import datasets
import hparams
import records
from cli import UserError, run_cli
from evaluation import Diverged, check_finite, divergence_from, evaluate_split, exact_accuracy_of, loader, relearn_steps
from flags import check_outputs, check_tables, parser_for, resolve_data, resolve_method, warn_inapplicable
from methods import METHODS, UnlearnData
from models import build_model, input_size
from records import read_records
from registry import RETRAIN_METHODS
from retrained import RetrainStore
from utils import device_name, library_versions, load_weights, now_iso, resolve_device, seed_everything

# Fewest retained training images a run accepts (at least one per class as well): fine-tuning,
# retraining and the membership attack's fit need more than a handful.
MIN_RETAIN = 10


@dataclass(frozen=True)
class Task:
    """What one forget_*_main.py declares: its setting, its -b default, its own flags, how it
    splits, and ``tables``, override rows per method name (hparams.Overrides) applied after the
    method's own table in this setting (JiT's σ, η, N). ``split(args) -> (number of model
    classes, forget label id or None, split function)``, the split function mapping (train,
    test, data pipeline choices, generator function) to datasets.split_*'s dict (see
    ``prepare``). Every table's rows are checked when the Task is built."""
    setting: str
    batch: int
    add_args: Callable
    split: Callable
    description: str = ""
    tables: dict = field(default_factory=dict)

    def __post_init__(self):
        check_tables(self)


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
    pipe: Any = None


def forget_target(args):
    """The run's forget target as given: -forget_class (a class name or id) or -forget_perc."""
    return getattr(args, "forget_class", None) or getattr(args, "forget_perc", None)


def prepare(args, setting, num_classes, target_id, split_fn):
    """Load data and model and build the split. ``split_fn(train, test, pipe, generator)``
    returns the split dict of datasets.split_*, given the data pipeline's choices ``pipe``
    (datasets.DataHP) and ``generator()``, the torch generator a random split draws from;
    ``target_id`` is the forget label id (None: random)."""
    forget = forget_target(args)
    device = resolve_device(args.gpu)
    if args.weight_path and not os.path.isfile(args.weight_path):
        raise UserError(f"weight file not found: {args.weight_path}")
    seed_everything(args.seed)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)

    pipe = resolve_data(args, setting)
    size = input_size(args.net)
    train = datasets.load_dataset(args.dataset, args.data_root, train=True, size=size, pins_split=pipe.pins_split)
    test = datasets.load_dataset(args.dataset, args.data_root, train=False, size=size, pins_split=pipe.pins_split)
    if datasets.DATASETS[args.dataset].classes != num_classes:
        raise UserError(f"{args.dataset} has {datasets.DATASETS[args.dataset].classes} model classes, "
                        f"but {num_classes} were given")

    def build_fresh():
        return build_model(args.net, num_classes)

    model = load_weights(build_fresh(), args.weight_path, args.net, num_classes).to(device)

    def generator():
        if pipe.split_draw == "own_generator":
            return torch.Generator().manual_seed(args.seed)
        # The authors' code seeds the default generator, builds the net and the bad teacher (two
        # initialisations of the architecture), then draws its random split from it.
        build_fresh()
        return torch.default_generator

    split = split_fn(train, test, pipe, generator)
    n_forget, n_retain = len(split["forget_train"][1]), len(split["retain_train"][1])
    if n_forget and n_retain < max(MIN_RETAIN, num_classes):
        raise UserError(f"the split leaves {n_retain} training image(s) to retain ({n_forget} to forget): too few to "
                        f"train on or to fit the membership attack; at least {max(MIN_RETAIN, num_classes)} are needed")
    for name, (_, idx) in split.items():
        if len(idx) == 0:
            raise UserError(f"the {name} split is empty for forget target {forget!r}")
    subset = {n: Subset(train if src == "train" else test, idx) for n, (src, idx) in split.items()}
    batch = pipe.loader_batch or args.b
    data = UnlearnData(
        forget_train=loader(subset["forget_train"], batch, False, workers, device),
        retain_train=loader(subset["retain_train"], batch, True, workers, device, args.seed),
        # the batches of SSD/LF-SSD's importance over the whole training set (their order matters)
        full_train=loader(Subset(train, datasets.importance_order(
            split, pipe.importance_order, args.seed, train.targets if train.fine is None else train.fine)),
            args.b, False, workers, device),
        num_classes=num_classes, forget_class=target_id, setting=setting, dataset=args.dataset, net=args.net,
        build_fresh=build_fresh, seed=args.seed, amp=args.amp,
    )
    return Experiment(args, setting, forget, target_id, num_classes, device, workers, train, test, split, subset,
                      data, model, build_fresh, pipe)


def reseed(exp, seed):
    """The experiment's data with every source of randomness set from ``seed``, so that a method's
    random draws depend on the seed alone, not on what ran before (every DataLoader iterator, for
    instance, takes a number from the default generator; the shuffled retain loader's order comes
    from its own generator)."""
    seed_everything(seed)
    for ld in (exp.data.forget_train, exp.data.retain_train, exp.data.full_train):
        if ld is not None and ld.generator is not None:
            ld.generator.manual_seed(seed)
    return dataclasses.replace(exp.data, seed=seed)


def run_method(exp, method, hp, seed):
    """Run ``method`` with hyperparameters ``hp`` on ``exp.model`` (in place), reseeded from
    ``seed``: (the model, or None if it diverged; the seconds it took; why it diverged, or None)."""
    data = reseed(exp, seed)
    if METHODS[method].zero_shot:
        data = data.without_retain()
    t0 = time.perf_counter()
    model, reason = None, None
    try:
        model = METHODS[method].fn(exp.model, data, hp, exp.device)
    except FloatingPointError as e:
        reason = str(e)
    if exp.device.type == "cuda":
        torch.cuda.synchronize()
    return model, time.perf_counter() - t0, reason


def target_fields(exp):
    """The fields of a run's record that make up its target (records.record_target): every run
    of ``exp`` records them, so a record's target is its run's."""
    args = exp.args
    return dict(setting=exp.setting, dataset=args.dataset, net=args.net, forget=exp.forget, seed=args.seed,
                recipe=getattr(args, "recipe", records.DEFAULT_RECIPE), pipeline=hparams.as_record(exp.pipe))


def save_retrained(model, identity, target, store):
    """A retrain run's model, saved for the other runs to compare with: {"RetrainCheckpoint": the
    path}, the path None (after a warning) when it cannot be written, the run's record being
    still written."""
    try:
        return {"RetrainCheckpoint": store.save(model.state_dict(), identity, target)}
    except OSError as e:
        print(f"warning: cannot save the retrained model to {store.path(identity, target)} ({e.strerror or e}); other "
              f"runs cannot compare with it", file=sys.stderr)
        return {"RetrainCheckpoint": None}


def compare_with_retrained(forget_logits, exp, found):
    """The divergences of a run's forget-set outputs from the retrained model ``found`` ((path,
    method) from RetrainStore.find, None: no comparison), and which model that was."""
    if found is None:
        return {}
    path, name = found
    gold = load_weights(exp.build_fresh(), path, exp.args.net, exp.num_classes).to(exp.device)
    scores = divergence_from(gold, forget_logits, exp.subset["forget_train"], exp.workers, exp.device,
                             exp.args.amp)
    return dict(scores, RetrainReference=name, RetrainCheckpoint=path)


def execute(exp, args, hp):
    """Run ``args.method`` with its resolved hyperparameters ``hp`` (flags.resolve_method) on
    ``exp.model`` (in place), evaluate, append and return the record. A method that diverges
    (a non-finite loss, weights or outputs) is still recorded, with ``diverged`` true, the
    reason, and no metrics, and a warning is printed. A retrain run saves its model in
    -retrain_dir; any other run is compared with the retrained model of its target there, when
    there is one."""
    identity = records.run_identity(exp.setting, args)
    head = target_fields(exp)
    target = records.record_target(head)
    method = METHODS[args.method]
    model, device, workers = exp.model, exp.device, exp.workers
    forget_valid = exp.subset["forget_valid"]
    target_df = exact_accuracy_of(model, forget_valid, workers, device) if args.relearn_max_steps > 0 else None

    model, method_time, diverged = run_method(exp, args.method, hp, args.seed)

    t0 = time.perf_counter()
    scores = {}
    # Accuracies batched otherwise than -b, as the authors' code scores them: in the random setting
    # Df over its forget loader itself; and those the method names (UNSIR's and emmn's retained
    # test images in their noise batch).
    eval_batches = {"Df": exp.data.forget_train.batch_size} if exp.setting == "random" else {}
    if method.eval_batches is not None:
        eval_batches.update(method.eval_batches(hp))
    if diverged is None:
        try:
            check_finite(model)
            scores, forget_logits = evaluate_split(model, exp.train, exp.test, exp.split, args.b, workers, device,
                                                   args.amp, batches=eval_batches)
        except Diverged as e:
            diverged = str(e)
    if diverged is None:
        store = RetrainStore(args.retrain_dir)
        if args.method in RETRAIN_METHODS:
            scores.update(save_retrained(model, identity, target, store))
        else:
            scores.update(compare_with_retrained(forget_logits, exp, store.find(target, read_records(args.results))))
        if target_df is not None:
            scores["RelearnSteps"] = relearn_steps(model, exp.data.forget_train, forget_valid, target_df,
                                                   args.relearn_max_steps, workers, device)
    eval_time = time.perf_counter() - t0

    record = dict(head, method=args.method, forget_id=exp.target_id,
                  **{k: getattr(hp, k) for k in method.top_level}, weight_path=args.weight_path,
                  diverged=diverged is not None)
    if diverged is not None:
        record["diverged_reason"] = diverged
    record.update(scores)
    record.update(
        MethodTime=method_time, EvalTime=eval_time,
        n_forget=int(len(exp.split["forget_train"][1])), n_retain=int(len(exp.split["retain_train"][1])),
        accuracy_note="TestAcc/RetainTestAcc/Df: mean of per-batch accuracy (%) as the reference "
                      "computes it, batch -b unless eval_batches names another; *Exact: correct/total (%)",
        eval_batches=eval_batches,
        hparams=hparams.as_record(hp), args=dict(vars(args)), versions=library_versions(),
        code=records.code_version(), device=device_name(device), threads=torch.get_num_threads(), time=now_iso(),
    )
    path = records.write(args, record)
    if diverged is not None:
        print(f"warning: {args.method} diverged ({diverged}); recorded with diverged=true and no metrics "
              f"-> {path}", file=sys.stderr)
    else:
        print(f"{args.method}: Dr {scores['RetainTestAcc']:.2f}  Df {scores['Df']:.2f}  MIA {scores['MIA']:.3f}  "
              f"TestAcc {scores['TestAcc']:.2f}  method {method_time:.2f}s  eval {eval_time:.2f}s -> {path}")
    return record


def run(args, setting, num_classes, target_id, split_fn, hp):
    """One forget experiment, as the three mains run it: load, split, method, evaluate, record."""
    if args.skip_existing and records.recorded(args, setting) is not None:
        forget = forget_target(args)
        print(f"skip: {args.results} already holds {args.method} on {args.dataset} ({forget}), seed {args.seed}")
        return None
    return execute(prepare(args, setting, num_classes, target_id, split_fn), args, hp)


def main(task, argv=None):
    """The whole of a forget_*_main.py: parse, resolve the hyperparameters, check the outputs,
    run; bad input ends in one line and exit status 2."""
    def parse_and_run():
        args = parser_for(task).parse_args(argv)
        warn_inapplicable(args)
        hp = resolve_method(args, task)
        check_outputs(args)
        run(args, task.setting, *task.split(args), hp)

    run_cli(parse_and_run)
