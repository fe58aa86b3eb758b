"""The command line of the forget mains: the shared flags, every method's hyperparameter flags
(generated from their declarations), and resolving a run's hyperparameters from them."""
import dataclasses
import os

import datasets
import hparams
from cli import Parser, UserError, float_above, int_in, seed_type
from methods import METHODS
from methods.jit import JitHP, table_overrides
from models import MODELS
from utils import check_results_path, check_writable


def base_parser(description, batch_size=128, with_method=True, jit_table=None):
    """Flags shared by the three mains (the reference's, verbatim, plus this project's), and
    every method's hyperparameter flags, generated from their declarations.
    ``with_method=False`` leaves out -method (sweep.py fixes it)."""
    p = Parser(description=description)
    p.add_argument("-net", required=True, choices=list(MODELS), help="network")
    p.add_argument("-weight_path", default=None, help="state dict of the trained model (.pth)")
    p.add_argument("-dataset", required=True, choices=list(datasets.DATASETS), help="data set")
    p.add_argument("-gpu", action="store_true", help="run on CUDA (pick the card with CUDA_VISIBLE_DEVICES)")
    p.add_argument("-b", type=int_in(1), default=batch_size, help="batch size of the forget/retain loaders (>= 1)")
    p.add_argument("-warm", type=int_in(0), default=1, help="accepted for parity with the reference (unused here)")
    p.add_argument("-lr", type=float_above(0), default=0.1, help="accepted for parity with the reference (unused here)")
    p.add_argument("-epochs", type=int, default=None,
                   help="accepted for parity with the reference, which never reads it (unused here; the retrains "
                        "take -retrain_epochs)")
    if with_method:
        p.add_argument("-method", required=True, choices=list(METHODS), help="unlearning method")
    p.add_argument("-recipe", default=hparams.RECIPES[0], choices=hparams.RECIPES,
                   help="reference: every method and the data pipeline as the reference code runs them, defects "
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
    jit_rows = table_overrides(jit_table) if jit_table else hparams.Overrides()
    hparams.add_flags(p, JitHP, jit_rows, group="lipschitz_forgetting (JiT)")
    # A class shared by several methods (ssd_tuning, lfssd_tuning) gives its flags once, and so
    # does a field inherited by several classes (UNSIR's and emmn's learnt noise): the first
    # method's group holds it.
    seen, added = {JitHP}, set()
    for m in METHODS.values():
        if m.hparams is not None and m.hparams not in seen:
            seen.add(m.hparams)
            users = ", ".join(n for n, o in METHODS.items() if o.hparams is m.hparams)
            hparams.add_flags(p, m.hparams, m.overrides or hparams.Overrides(), group=users, skip=added)
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


def resolve_jit(args, table, setting=None):
    """JiT's σ, η, N (and switches) for this run: the main's table row for the net, then the
    flags. The resolved σ, η, N are written back into ``args`` for the record's top-level
    fields and run identity."""
    rows = table_overrides(table) if table else hparams.Overrides()
    try:
        jit = hparams.resolve(JitHP, rows, context(args, setting), args)
    except hparams.InvalidValue as e:
        raise UserError(str(e)) from None
    args.sigma, args.eta, args.n_samples = jit.sigma, jit.eta, jit.n_samples
    return jit


def resolve_method(args, setting, table):
    """The resolved hyperparameters of ``args.method`` (None for a method without any)."""
    m = METHODS[args.method]
    if m.hparams is JitHP:
        return resolve_jit(args, table, setting)
    if m.hparams is None:
        return None
    try:
        return hparams.resolve(m.hparams, m.overrides or hparams.Overrides(), context(args, setting), args)
    except hparams.InvalidValue as e:
        raise UserError(str(e)) from None


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
    p = base_parser(task.description, batch_size=task.batch, jit_table=task.jit)
    task.add_args(p)
    return p
