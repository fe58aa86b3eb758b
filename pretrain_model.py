"""Train the model that is later unlearned.

python pretrain_model.py -net VGG16 -dataset Cifar100 -classes 100 -gpu
SGD (momentum 0.9, weight decay 5e-4), cross-entropy, a one-cycle cosine schedule stepped every
batch and a linear warm-up over the first -warm epochs: under -recipe reference (the default) as
the authors' script runs them (peak 0.1 whatever -lr is; the warm-up climbs from 0 to one-cycle's
initial rate, 0.1/25), under -recipe corrected with peak -lr and the warm-up scaling one-cycle's
current rate. After every epoch
the test accuracy is measured and a new best is saved (atomically) as a plain state dict,
and the whole training state (model, optimiser, schedule, epoch) is saved beside it, so that
``-resume`` continues a killed job and loses at most the epoch it was in.

Several processes (one per GPU, or several on a CPU) with PyTorch's DistributedDataParallel:
torchrun --nproc_per_node 4 pretrain_model.py -net VGG16 -dataset Cifar100 -classes 100 -gpu
-b stays the global batch: each of the K processes takes -b/K images per step, so the steps
per epoch and the learning-rate schedule are those of a one-process run. Rank 0 alone
evaluates, prints and saves. NCCL with -gpu, gloo on the CPU.

Bad flags are refused before any work, and under torchrun by rank 0 alone (one line); every
process then exits with status 2 and no traceback. torchrun reports the failure in its own
words: a traceback of its launcher ending in a "ChildFailedError" block whose root cause is a
rank with "exitcode : 2"; the ranks still exiting when it stopped the job show "-15 (SIGTERM)".
An existing -out is never replaced without -overwrite (a -resume of the run that wrote it
continues writing there).
"""
import datetime
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

import datasets
import hparams
import metrics
from cli import Parser, UserError, float_above, int_in, one_line, run_cli, seed_type
from engine import ReferenceWarmup, Warmup, train_epoch
from models import MODELS, ViT, build_model, input_size
from utils import atomic_save, check_writable, non_finite_tensors, resolve_device, seed_everything

# The authors' epochs per net and data set; Digits* is the CPU quickstart's.
EPOCHS = {
    "VGG16": {"Cifar100": 210, "Cifar10": 25, "Cifar20": 50, "PinsFaceRecognition": 250},
    "ViT": {"Cifar10": 8, "Cifar20": 9, "Cifar100": 8},
    "default": {"Cifar100": 200, "Cifar10": 20, "Cifar20": 40, "PinsFaceRecognition": 200,
                "Digits": 30, "Digits5": 30},
}
RESUME_FORMAT = "jit-unlearning pretrain state v1"
# Flags a resumed run must share with the run it continues (anything else would silently
# train a different model than the one the saved schedule and optimiser belong to). pins_split
# is the resolved one: under another recipe a Pins run would train on its held-out images.
RESUME_IDENTITY = ("net", "dataset", "classes", "b", "warm", "lr", "epochs", "seed", "vit_weights", "recipe",
                   "pins_split", "sync_bn")
# The authors' one-cycle peak: their script builds OneCycleLR with max_lr=0.1 and never reads -lr.
REFERENCE_PEAK_LR = 0.1


def default_epochs(net, dataset):
    table = EPOCHS.get(net, {})
    return table.get(dataset, EPOCHS["default"].get(dataset))


def epoch_seed(seed, epoch, rank):
    """The seed of one epoch on one process. Every epoch starts from it (augmentation, dropout,
    worker seeds), so an epoch depends only on the state saved before it: a resumed run
    repeats an uninterrupted one exactly (on the CPU)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def freeze_unused(model):
    """Stop asking for gradients of parameters that forward() never uses: the ViT's pooler,
    kept only for the checkpoint's key layout. DistributedDataParallel refuses parameters
    that get no gradient; a one-process run is unchanged (SGD skips them either way)."""
    pooler = getattr(getattr(model, "base", None), "pooler", None)
    if pooler is not None:
        pooler.requires_grad_(False)
    return model


def lr_schedule(opt, args, epochs, steps):
    """(one-cycle, the per-batch driver to step): one-cycle cosine over every batch with a linear
    warm-up over the first -warm epochs. Reference recipe: the authors' schedule, peak 0.1
    whatever -lr is and their WarmUpLR from 0 to one-cycle's initial rate (ReferenceWarmup); corrected:
    peak -lr, the warm-up scaling one-cycle's current rate (Warmup)."""
    reference = args.recipe == "reference"
    onecycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=REFERENCE_PEAK_LR if reference else args.lr,
                                                   epochs=epochs, steps_per_epoch=steps, anneal_strategy="cos")
    return onecycle, (ReferenceWarmup if reference else Warmup)(opt, onecycle, args.warm * steps)


class RankError(UserError):
    """A UserError that only this process has (the others do not say it for it)."""


def parse_args(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("-net", required=True, choices=list(MODELS))
    p.add_argument("-dataset", required=True, choices=list(datasets.DATASETS))
    p.add_argument("-classes", type=int_in(1), required=True,
                   help="number of classes of the model: the data set's (Digits5 5, Digits/Cifar10 10, Cifar20 20, "
                        "Cifar100 100, PinsFaceRecognition 105)")
    p.add_argument("-gpu", action="store_true", help="train on CUDA (under torchrun: one GPU per process)")
    p.add_argument("-b", type=int_in(1), default=64,
                   help="global batch size, an integer >= 1; under torchrun a multiple of the number of processes")
    p.add_argument("-warm", type=int_in(0), default=1, help="warm-up epochs, an integer >= 0")
    p.add_argument("-lr", type=float_above(0), default=0.1,
                   help="maximum learning rate of the one-cycle schedule under -recipe corrected, a finite number "
                        "> 0 (the reference recipe's is 0.1, as the authors' script, which ignores -lr)")
    p.add_argument("-epochs", type=int_in(1), default=None,
                   help="epochs, an integer >= 1 (default: the authors' per net/data set)")
    p.add_argument("-seed", type=seed_type, default=0, help="seed, an integer in 0..2**32-1")
    p.add_argument("-data_root", default="./data")
    p.add_argument("-out", default=None,
                   help="save the best checkpoint to this path, and the training state beside it as *-resume.pth; "
                        "an existing file is refused unless -overwrite (default: checkpoint/{net}/{time}/"
                        "{net}-{dataset}-{epoch}-best.pth)")
    p.add_argument("-overwrite", action="store_true",
                   help="allow -out to replace an existing checkpoint and its training state")
    p.add_argument("-resume", default=None, metavar="STATE",
                   help="continue the run whose training state this is (the *-resume.pth file saved after every epoch)")
    p.add_argument("-sync_bn", action="store_true",
                   help="under torchrun with -gpu: batch-norm statistics over all processes' images (SyncBatchNorm)")
    p.add_argument("-vit_weights", default="google/vit-base-patch16-224",
                   help="ViT starting weights: a Hugging Face hub name (in the local cache) or a local directory")
    p.add_argument("-workers", type=int_in(0), default=None,
                   help="data-loader workers per process, an integer >= 0 (default: 0 on CPU, 4 on GPU)")
    p.add_argument("-recipe", default=hparams.RECIPES[0], choices=hparams.RECIPES,
                   help="reference: the authors' learning-rate schedule and data pipeline (Pins: train and test "
                        "on the whole folder); corrected: one-cycle to -lr with a warm-up that scales it, and Pins "
                        "with a held-out 80/20 split per person")
    hparams.add_flags(p, datasets.DataHP, datasets.DATA_OVERRIDES, group="data pipeline",
                      skip={"importance_order", "retain_test_order", "split_draw", "loader_batch"})
    return p.parse_args(argv)


def pins_split(args):
    return hparams.resolve(datasets.DataHP, datasets.DATA_OVERRIDES, dict(recipe=args.recipe), args).pins_split


class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    def __init__(self, use_gpu):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(use_gpu)
        if self.device.type == "cuda" and self.world > 1:
            if local >= torch.cuda.device_count():
                raise RankError(f"process {local} has no GPU: {torch.cuda.device_count()} visible for "
                                f"--nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', self.world)}")
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        self.errors = None
        if self.world > 1:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            # a CPU group with a short timeout, only for ending a refused job in order (fail())
            self.errors = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=60))

    def fail(self, error):
        """End this process after a UserError that every process of the job meets (a bad
        flag, missing data): rank 0 prints it once; the others wait until it has, so that
        torchrun, which stops the job at the first exit, never cuts the message; then all
        leave the group and exit 2. A RankError is printed by the process that has it.
        Without torchrun this returns and the caller's cli prints the error."""
        if self.world == 1 or not dist.is_initialized():
            return
        if self.main or isinstance(error, RankError):
            print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        if not isinstance(error, RankError):
            try:
                dist.barrier(group=self.errors)
            except Exception:  # noqa: BLE001 - a process that did not fail: exit all the same
                pass
        self.close()
        sys.exit(2)

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def mean(self, value, count):
        """The mean over all processes of a per-process mean ``value`` over ``count`` items."""
        if self.world == 1:
            return value
        # on the process's own device: NCCL reduces CUDA tensors only
        t = torch.tensor([value * count, float(count)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t[0] / t[1]).item()

    def all_finite(self, finite):
        """Whether every process's value is finite (one all-reduce; only under torchrun)."""
        t = torch.tensor([0.0 if finite else 1.0], device=self.device)
        dist.all_reduce(t)
        return t.item() == 0

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def load_resume_state(path, args, epochs):
    if not os.path.isfile(path):
        raise UserError(f"resume state not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - reported in one line
        raise UserError(f"cannot read resume state {path}: {type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise UserError(f"{path} is not a training state saved by pretrain_model.py "
                        f"(pass the *-resume.pth file, not the best checkpoint)")
    bad = non_finite_tensors(state["model"]) if isinstance(state.get("model"), dict) else []
    if bad:
        raise UserError(f"refusing {path}: {len(bad)} tensor(s) of its model hold NaN or inf values (first {bad[0]})")
    given, saved = resume_identity(args, epochs), state.get("args", {})
    diff = [f"-{k} {saved.get(k, 'unrecorded')} (now {given[k]})" for k in RESUME_IDENTITY if saved.get(k) != given[k]]
    if diff:
        raise UserError(f"{path} belongs to a run with " + ", ".join(diff) + "; resume with the same flags")
    return state


def resume_identity(args, epochs):
    """The values of RESUME_IDENTITY for this run, as its training state records them."""
    return {k: getattr(args, k) for k in RESUME_IDENTITY} | {"epochs": epochs, "pins_split": pins_split(args)}


def data_identity(train, test):
    """What the run trains and evaluates on: sizes and a digest of each split."""
    return {"train": len(train), "test": len(test),
            "fingerprint": f"{datasets.fingerprint(train)}-{datasets.fingerprint(test)}"}


def check_resume_data(state, path, data):
    """Refuse to continue on other data than the run started on: photos added to a Pins folder
    change the steps per epoch (the saved schedule's length) and the split; another data folder
    trains a different model."""
    saved = state.get("data")
    if saved == data:
        return
    if not isinstance(saved, dict):
        was = "data it did not record"
    elif (saved.get("train"), saved.get("test")) == (data["train"], data["test"]):
        was = "other images of the same counts"
    else:
        was = f"{saved.get('train')} training and {saved.get('test')} test images"
    raise UserError(f"{path} belongs to a run on {was}, but the data now hold {data['train']} training and "
                    f"{data['test']} test images: restore the data the run started on, or start a new run "
                    f"without -resume")


def resume_path(out):
    return os.path.splitext(out)[0] + "-resume.pth"


def check_args(args, world):
    """Everything about the flags that can be refused before any work; returns (epochs,
    resume state or None). Reads the files it names, writes nothing."""
    if datasets.DATASETS[args.dataset].classes != args.classes:
        raise UserError(f"{args.dataset} has {datasets.DATASETS[args.dataset].classes} classes, but -classes {args.classes} was given")
    epochs = args.epochs if args.epochs is not None else default_epochs(args.net, args.dataset)
    if epochs is None:
        raise UserError(f"no default epoch count for {args.net} on {args.dataset}: pass -epochs")
    if args.b % world:
        raise UserError(f"-b {args.b} does not split evenly over {world} processes: give a multiple of {world}")
    state = load_resume_state(args.resume, args, epochs) if args.resume else None
    if state is not None:
        check_writable(args.resume, "-resume")
    if args.out is not None:
        check_writable(args.out, "-out")
        same_run = state is not None and state.get("out") is not None and \
            os.path.abspath(state["out"]) == os.path.abspath(args.out)
        taken = [p for p in (args.out, resume_path(args.out)) if os.path.lexists(p)]
        if taken and not args.overwrite and not same_run:
            hint = f", -resume {resume_path(args.out)} to continue that run" if os.path.exists(resume_path(args.out)) else ""
            raise UserError(f"-out {args.out}: {taken[0]} exists already; pass -overwrite to replace it{hint}, "
                            f"or choose another -out")
    elif state is None:
        check_writable(os.path.join("checkpoint", args.net, "new.pth"), "the default checkpoint folder of -out")
    return epochs, state


def main(argv=None):
    # Errors before the process group exists (argparse, -gpu without CUDA) are printed by
    # every process: there is no way yet to let rank 0 alone speak without the risk that
    # torchrun stops it before it does.
    args = parse_args(argv)
    ctx = Dist(args.gpu)
    try:
        epochs, state = check_args(args, ctx.world)
        train_model(args, epochs, state, ctx)
    except UserError as e:
        ctx.fail(e)
        raise
    finally:
        ctx.close()


def save(obj, path, state_path, epoch):
    """atomic_save, with a failure (a full disk) as one line: the files saved after the
    previous epoch are intact (atomic), and -resume continues from them."""
    try:
        atomic_save(obj, path)
    except OSError as e:
        after = (f"the training state saved after epoch {epoch - 1} is {state_path}: free space and continue "
                 f"with -resume {state_path}") if epoch > 1 or os.path.exists(state_path) else "nothing was saved"
        raise UserError(f"cannot save {path} after epoch {epoch}: {e.strerror or e}; {after}") from None


def train_model(args, epochs, state, ctx):
    if args.sync_bn and not (ctx.device.type == "cuda" and ctx.world > 1):
        raise UserError("-sync_bn needs -gpu under torchrun with more than one process")
    device = ctx.device
    seed_everything(args.seed)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)

    size = input_size(args.net)
    pins = pins_split(args)
    train = datasets.load_dataset(args.dataset, args.data_root, train=True, size=size, augment=True, pins_split=pins)
    test = datasets.load_dataset(args.dataset, args.data_root, train=False, size=size, pins_split=pins)
    data = data_identity(train, test)
    if state is not None:
        check_resume_data(state, args.resume, data)
    # One sampler for both cases: the order of an epoch is a permutation seeded by (seed, epoch).
    sampler = DistributedSampler(train, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=args.seed)
    train_dl = DataLoader(train, args.b // ctx.world, sampler=sampler, num_workers=workers,
                          pin_memory=device.type == "cuda")
    test_dl = DataLoader(test, 512, shuffle=False, num_workers=workers)

    if args.net == "ViT":
        try:
            model = ViT(args.classes, weights=args.vit_weights)
        except OSError as e:
            raise UserError(f"cannot load ViT weights {args.vit_weights!r} offline "
                            f"(give a local directory with -vit_weights): {str(e).splitlines()[0]}") from None
    else:
        model = build_model(args.net, args.classes)
    freeze_unused(model)
    if state is not None:
        model.load_state_dict(state["model"])
    # On the device before the optimiser exists: loading its state puts the momentum buffers
    # where the parameters are at that moment.
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps = len(train_dl)
    reference = args.recipe == "reference"
    onecycle, sched = lr_schedule(opt, args, epochs, steps)

    if state is None:
        start, best_acc, best_path = 1, -1.0, None
        if args.out is not None:
            state_path = resume_path(args.out)
        else:
            folder = os.path.join("checkpoint", args.net, time.strftime("%Y%m%d-%H%M%S"))
            state_path = os.path.join(folder, f"{args.net}-{args.dataset}-resume.pth")
    else:
        opt.load_state_dict(state["optimizer"])
        onecycle.load_state_dict(state["onecycle"])
        sched.t = state["warm_t"]
        start, best_acc, best_path = state["epoch"] + 1, state["best_acc"], state["best_path"]
        state_path = args.resume
        if args.out is None:
            args.out = state.get("out")  # keep writing the best checkpoint where the run did
        if ctx.main:
            print(f"resuming after epoch {state['epoch']}/{epochs} (best so far {best_acc:.2f}%) from {state_path}")
    if args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = model
    if ctx.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if ctx.main:
        print(f"{ctx.world} process(es) x {args.b // ctx.world} images per step ({args.b} in all), "
              f"{steps} steps per epoch, on {device}", flush=True)
    if ctx.main and start == 1:
        print(f"training state saved after every epoch to {state_path} (continue with -resume {state_path})", flush=True)

    for epoch in range(start, epochs + 1):
        sampler.set_epoch(epoch)
        seed_everything(epoch_seed(args.seed, epoch, ctx.rank))
        try:
            loss = train_epoch(net, train_dl, opt, device, sched, desc=f"epoch {epoch}/{epochs}", progress=ctx.main,
                               all_finite=ctx.all_finite if ctx.world > 1 else None)
        except FloatingPointError as e:
            hint = "-recipe corrected with a smaller -lr (the reference recipe's peak is 0.1)" if reference else "a smaller -lr"
            raise UserError(f"training diverged: {e}; try {hint}") from None
        loss = ctx.mean(loss, len(sampler))
        if ctx.main:
            acc = metrics.evaluate(model, test_dl, device)["AccExact"]
            line = f"epoch {epoch}/{epochs}  loss {loss:.4f}  test acc {acc:.2f}%"
            old_best = None
            if acc > best_acc:
                path = args.out if args.out is not None else os.path.join(os.path.dirname(state_path), f"{args.net}-{args.dataset}-{epoch}-best.pth")
                save(model.state_dict(), path, state_path, epoch)
                old_best = best_path if best_path != path else None
                best_acc, best_path = acc, path
                line += "  (best, saved)"
            # the state first, then the old best goes: a kill in between never leaves the
            # state pointing at a deleted checkpoint
            save(dict(format=RESUME_FORMAT, epoch=epoch, model=model.state_dict(), optimizer=opt.state_dict(),
                      onecycle=onecycle.state_dict(), warm_t=sched.t, best_acc=best_acc, best_path=best_path,
                      out=args.out, world=ctx.world, args=resume_identity(args, epochs), data=data),
                 state_path, state_path, epoch)
            if old_best and os.path.exists(old_best):
                os.remove(old_best)  # keep only the best so far
            print(line, flush=True)
        ctx.barrier()
    if ctx.main:
        if start > epochs:
            print(f"nothing to do: {state_path} already holds all {epochs} epochs")
        print(f"best test accuracy {best_acc:.2f}% -> {best_path}")


if __name__ == "__main__":
    run_cli(main)
