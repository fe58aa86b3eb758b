"""Train the model that is later unlearned (REFERENCE §4).

python pretrain_model.py -net VGG16 -dataset Cifar100 -classes 100 -gpu
SGD (momentum 0.9, weight decay 5e-4), cross-entropy, a one-cycle cosine schedule with max lr
-lr stepped every batch and a linear warm-up over the first -warm epochs. After every epoch
the test accuracy is measured and a new best is saved (atomically) as a plain state dict.
"""
import os
import time

import torch

import datasets
import metrics
from engine import Warmup, train_epoch
from models import MODELS, ViT, build_model, input_size
from utils import Parser, UserError, atomic_save, cli, resolve_device, seed_everything

# Epochs of the reference per net and data set; Digits* is this project's CPU quickstart.
EPOCHS = {
    "VGG16": {"Cifar100": 210, "Cifar10": 25, "Cifar20": 50, "PinsFaceRecognition": 250},
    "ViT": {"Cifar10": 8, "Cifar20": 9, "Cifar100": 8},
    "default": {"Cifar100": 200, "Cifar10": 20, "Cifar20": 40, "PinsFaceRecognition": 200,
                "Digits": 30, "Digits5": 30},
}


def default_epochs(net, dataset):
    table = EPOCHS.get(net, {})
    return table.get(dataset, EPOCHS["default"].get(dataset))


def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("-net", required=True, choices=list(MODELS))
    p.add_argument("-dataset", required=True, choices=list(datasets.DATASETS))
    p.add_argument("-classes", type=int, required=True, help="number of classes of the model")
    p.add_argument("-gpu", action="store_true", help="train on CUDA")
    p.add_argument("-b", type=int, default=64, help="batch size")
    p.add_argument("-warm", type=int, default=1, help="warm-up epochs")
    p.add_argument("-lr", type=float, default=0.1, help="maximum learning rate of the one-cycle schedule")
    p.add_argument("-epochs", type=int, default=None, help="epochs (default: the reference's per net/data set)")
    p.add_argument("-seed", type=int, default=0)
    p.add_argument("-data_root", default="./data")
    p.add_argument("-out", default=None,
                   help="save the best checkpoint to this path (default: checkpoint/{net}/{time}/{net}-{dataset}-{epoch}-best.pth)")
    p.add_argument("-vit_weights", default="google/vit-base-patch16-224",
                   help="ViT starting weights: a Hugging Face hub name (in the local cache) or a local directory")
    p.add_argument("-workers", type=int, default=None, help="data-loader workers (default: 0 on CPU, 4 on GPU)")
    args = p.parse_args()

    if datasets.DATASETS[args.dataset] != args.classes:
        raise UserError(f"{args.dataset} has {datasets.DATASETS[args.dataset]} classes, but -classes {args.classes} was given")
    epochs = args.epochs or default_epochs(args.net, args.dataset)
    if not epochs or epochs < 1:
        raise UserError(f"no default epoch count for {args.net} on {args.dataset}: pass -epochs")
    if args.b < 1 or args.lr <= 0 or args.warm < 0:
        raise UserError("-b must be >= 1, -lr > 0 and -warm >= 0")
    device = resolve_device(args.gpu)
    seed_everything(args.seed)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)

    size = input_size(args.net)
    train = datasets.load_dataset(args.dataset, args.data_root, train=True, size=size, augment=True)
    test = datasets.load_dataset(args.dataset, args.data_root, train=False, size=size)
    g = torch.Generator().manual_seed(args.seed)
    train_dl = torch.utils.data.DataLoader(train, args.b, shuffle=True, num_workers=workers, generator=g,
                                           pin_memory=device.type == "cuda")
    test_dl = torch.utils.data.DataLoader(test, 512, shuffle=False, num_workers=workers)

    if args.net == "ViT":
        try:
            model = ViT(args.classes, weights=args.vit_weights)
        except OSError as e:
            raise UserError(f"cannot load ViT weights {args.vit_weights!r} offline "
                            f"(give a local directory with -vit_weights): {str(e).splitlines()[0]}") from None
    else:
        model = build_model(args.net, args.classes)
    model.to(device)

    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps = len(train_dl)
    onecycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=epochs, steps_per_epoch=steps,
                                                   anneal_strategy="cos")
    sched = Warmup(opt, onecycle, args.warm * steps)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    best_acc, best_path = -1.0, None
    for epoch in range(1, epochs + 1):
        try:
            loss = train_epoch(model, train_dl, opt, device, sched, desc=f"epoch {epoch}/{epochs}")
        except FloatingPointError as e:
            raise UserError(f"training diverged: {e}; try a smaller -lr") from None
        acc = metrics.evaluate(model, test_dl, device)["AccExact"]
        line = f"epoch {epoch}/{epochs}  loss {loss:.4f}  test acc {acc:.2f}%"
        if acc > best_acc:
            path = args.out or os.path.join("checkpoint", args.net, stamp, f"{args.net}-{args.dataset}-{epoch}-best.pth")
            atomic_save(model.state_dict(), path)
            if best_path and best_path != path and os.path.exists(best_path):
                os.remove(best_path)  # keep only the best so far
            best_acc, best_path = acc, path
            line += "  (best, saved)"
        print(line, flush=True)
    print(f"best test accuracy {best_acc:.2f}% -> {best_path}")


if __name__ == "__main__":
    cli(main)
