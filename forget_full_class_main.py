"""Full-class forgetting: forget every training image of one class.

python forget_full_class_main.py -net VGG16 -dataset Cifar100 -classes 100 -gpu \
    -method lipschitz_forgetting -forget_class rocket -weight_path W.pth -seed 0
"""
import datasets
from experiment import Task, main
from hparams import by_net

# JiT for full-class forgetting, per net: σ (the authors' lipschitz_weighting), η (their
# learning_rate) and N perturbations per sample; other nets take VGG16's row. Edit them here,
# or pass -sigma/-eta/-n_samples for one run.
JIT = {"VGG16": dict(sigma=0.5, eta=3e-4, n_samples=25), "ViT": dict(sigma=0.8, eta=1.5, n_samples=25)}


def add_args(p):
    p.add_argument("-classes", type=int, required=True, help="number of classes of the model")
    p.add_argument("-forget_class", required=True, help="class to forget (name such as rocket, or label id)")


def split(args):
    """(number of model classes, forget label id, split function) of this setting."""
    cls = datasets.forget_target_id(args.dataset, args.forget_class)
    return args.classes, cls, lambda tr, te, pipe, _: datasets.split_full_class(tr, te, cls, pipe.retain_test_order == "grouped")


TASK = Task("fullclass", batch=128, add_args=add_args, split=split, description=__doc__.splitlines()[0],
            tables={"lipschitz_forgetting": by_net(JIT, fallback="VGG16")})

if __name__ == "__main__":
    main(TASK)
