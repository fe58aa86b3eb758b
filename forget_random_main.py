"""Random forgetting: forget a random fraction of the training set.

python forget_random_main.py -net VGG16 -dataset Cifar10 -classes 10 -gpu \
    -method lipschitz_forgetting -forget_perc 0.00165 -weight_path W.pth -seed 0
"""
import datasets
from cli import UserError
from experiment import Task, main
from hparams import by_net

# JiT for random forgetting, per net: σ (the authors' lipschitz_weighting), η (their
# learning_rate) and N perturbations per sample; other nets take VGG16's row. Edit them here,
# or pass -sigma/-eta/-n_samples for one run.
JIT = {"VGG16": dict(sigma=0.01, eta=3e-4, n_samples=25), "ViT": dict(sigma=0.5, eta=0.1, n_samples=25)}


def add_args(p):
    p.add_argument("-classes", type=int, required=True, help="number of classes of the model")
    p.add_argument("-forget_perc", type=float, required=True,
                   help="fraction of the training set to forget, in (0, 1); the authors' grid uses 0.00165")


def split(args):
    """(number of model classes, None: no forget class, split function) of this setting."""
    if not 0 < args.forget_perc < 1:
        raise UserError(f"-forget_perc must lie in (0, 1) (got {args.forget_perc})")
    return args.classes, None, lambda tr, te, _, generator: datasets.split_random(tr, te, args.forget_perc, generator())


TASK = Task("random", batch=128, add_args=add_args, split=split, description=__doc__.splitlines()[0],
            tables={"lipschitz_forgetting": by_net(JIT, fallback="VGG16")})

if __name__ == "__main__":
    main(TASK)
