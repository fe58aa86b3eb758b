"""The command line of the forget mains: the shared flags, every method's hyperparameter flags
(generated from their declarations), and resolving a run's hyperparameters from them."""
import dataclasses
import os
import sys

import datasets
import hparams
from cli import Parser, UserError, float_above, int_in, seed_type
from methods import METHODS
from models import MODELS
from records import check_results_path
from utils import check_writable


def method_rows(task, method):
    """``method``'s override rows in ``task``'s setting: the method's own table, then the rows the
    task gives it (experiment.Task.tables)."""
    return (METHODS[method].overrides or hparams.Overrides()) + task.tables.get(method, hparams.Overrides())


def check_tables(task):
    """Raise ValueError unless every row of every method's table, with ``task``'s rows, and of the
    data pipeline's names nets, data sets and fields that exist (hparams.check_rows)."""
    hparams.check_rows(datasets.DataHP, datasets.DATA_OVERRIDES, MODELS, datasets.DATASETS)
    unknown = task.tables.keys() - METHODS.keys()
    if unknown:
        raise ValueError(f"the {task.setting} task has rows for {sorted(unknown)}, which are not methods")
    for name, m in METHODS.items():
        if m.hparams is not None:
            hparams.check_rows(m.hparams, method_rows(task, name), MODELS, datasets.DATASETS)


def base_parser(description, task, with_method=True):
    """Flags shared by the three mains (the authors' flags, verbatim, plus this project's), and
    every method's hyperparameter flags, generated from their declarations, with help texts
    from their tables in ``task``'s setting (an experiment.Task; its -b default too).
    ``with_method=False`` leaves out -method (sweep.py fixes it)."""
    p = Parser(description=description)
    p.add_argument("-net", required=True, choices=list(MODELS), help="network")
    p.add_argument("-weight_path", default=None, help="state dict of the trained model (.pth)")
    p.add_argument("-dataset", required=True, choices=list(datasets.DATASETS), help="data set")
    p.add_argument("-gpu", action="store_true", help="run on CUDA (pick the card with CUDA_VISIBLE_DEVICES)")
    p.add_argument("-b", type=int_in(1), default=task.batch, help="batch size of the forget/retain loaders (>= 1)")
    p.add_argument("-warm", type=int_in(0), default=1, help="accepted for parity with the authors' mains (unused)")
    p.add_argument("-lr", type=float_above(0), default=0.1, help="accepted for parity with the authors' mains (unused)")
    p.add_argument("-epochs", type=int, default=None,
                   help="accepted for parity with the authors' mains, which never read it (unused here; the retrains "
                        "take -retrain_epochs)")
    if with_method:
        p.add_argument("-method", required=True, choices=list(METHODS), help="unlearning method")
    p.add_argument("-recipe", default=hparams.RECIPES[0], choices=hparams.RECIPES,
                   help="reference: every method and the data pipeline as the authors' code runs them, defects "
                        "included (its command lines give its numbers); corrected: each method as its paper "
                        "describes it. Single choices can be overridden by their own flags; docs/parity.md lists "
                        "them all")
    p.add_argument("-seed", type=seed_type, default=0,
                   help="seed for torch, numpy, python and the random split (0 <= seed < 2^32)")
    p.add_argument("-data_root", default="./data", help="folder holding the data set files")
    p.add_argument("-results", default="results/results.jsonl", help="JSON-lines file each run appends to")
    p.add_argument("-wandb", default="disabled", choices=["online", "offline", "disabled"],
                   help="mirror the record to Weights & Biases (needs the wandb package)")
    p.add_argument("-amp", action="store_true", help="bf16 autocast for JiT's forwards and the evaluation")
    p.add_argument("-workers", type=int_in(0), default=None,
                   help="data-loader workers, >= 0 (default: 0 on CPU, 4 on GPU)")
    p.add_argument("-retrain_dir", default="checkpoint/retrained",
                   help="retrain runs save their model here; other runs compare with it (JSToRetrain, ActDistToRetrain)")
    p.add_argument("-relearn_max_steps", type=int_in(0), default=50,
                   help="bound on the relearn-time metric (fine-tuning steps until Df is back), >= 0; 0 skips it")
    p.add_argument("-skip_existing", action="store_true",
                   help="exit without running if -results already holds this run's record")
    hparams.add_flags(p, datasets.DataHP, datasets.DATA_OVERRIDES, group="data pipeline")
    # A class shared by several methods (ssd_tuning, lfssd_tuning) gives its flags once, and so
    # does a field inherited by several classes (UNSIR's and emmn's learnt noise): the first
    # method's group holds it.
    seen, added = set(), set()
    for name, m in METHODS.items():
        if m.hparams is not None and m.hparams not in seen:
            seen.add(m.hparams)
            users = ", ".join(n for n, o in METHODS.items() if o.hparams is m.hparams)
            hparams.add_flags(p, m.hparams, method_rows(task, name), group=users, skip=added)
            added |= {f.metadata["flag"] for f in dataclasses.fields(m.hparams)}
    return p


def context(args, setting):
    return dict(net=args.net, dataset=args.dataset, setting=setting, recipe=getattr(args, "recipe", "reference"))


def resolve_data(args, setting):
    """The data pipeline's choices for this run (datasets.DataHP): the recipe's, then the flags."""
    try:
        return hparams.resolve(datasets.DataHP, datasets.DATA_OVERRIDES, context(args, setting), args)
    except hparams.InvalidValue as e:
        raise UserError(str(e)) from None


def resolve_method(args, task):
    """The resolved hyperparameters of ``args.method`` in ``task``'s setting (None for a method
    without any): its declaration's defaults, its rows (``method_rows``), then the flags."""
    m = METHODS[args.method]
    if m.hparams is None:
        return None
    try:
        return hparams.resolve(m.hparams, method_rows(task, args.method), context(args, task.setting), args)
    except hparams.InvalidValue as e:
        raise UserError(str(e)) from None


def warn_inapplicable(args):
    """One warning line per hyperparameter flag given on the command line that sets only other
    methods' hyperparameters than ``args.method``'s: the run ignores it. -epochs, which the
    authors' forget mains accept and never read, is named with the method's own epoch flags."""
    users = {}
    for name, m in METHODS.items():
        for f in dataclasses.fields(m.hparams) if m.hparams else ():
            users.setdefault(f.metadata["flag"], []).append(name)
    for flag, names in users.items():
        if flag and args.method not in names and getattr(args, flag, None) is not None:
            print(f"warning: -{flag} sets a hyperparameter of {', '.join(names)}, not of {args.method}: "
                  f"this run ignores it", file=sys.stderr)
    if getattr(args, "epochs", None) is not None:
        hparams_class = METHODS[args.method].hparams
        own = [f"-{f.metadata['flag']}" for f in dataclasses.fields(hparams_class) if f.name == "epochs"] \
            if hparams_class else []
        where = f"{args.method} takes {' and '.join(own)}" if own else f"{args.method} has no epochs to set"
        print(f"warning: -epochs is accepted for parity with the reference and unused, as there; {where}",
              file=sys.stderr)


def check_outputs(args):
    """Everything a run will write, checked before any work."""
    check_results_path(args.results)
    check_writable(os.path.join(args.retrain_dir, "retrained.pth"), "-retrain_dir")
    if args.wandb != "disabled":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("-wandb online/offline needs the wandb package (pip install wandb)") from None


def parser_for(task):
    """The whole command line of ``task``'s forget_*_main.py."""
    p = base_parser(task.description, task)
    task.add_args(p)
    return p
