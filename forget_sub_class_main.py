"""Sub-class forgetting: forget one fine class while the model keeps predicting coarse labels.

python forget_sub_class_main.py -net VGG16 -dataset Cifar20 -superclasses 20 -subclasses 100 -gpu \
    -method lipschitz_forgetting -forget_class rocket -weight_path W.pth -seed 0
"""
import datasets
from cli import UserError
from experiment import Task, main
from hparams import by_net

# JiT for sub-class forgetting, per net: σ (the authors' lipschitz_weighting), η (their
# learning_rate) and N perturbations per sample; other nets take VGG16's row. Edit them here,
# or pass -sigma/-eta/-n_samples for one run.
JIT = {"VGG16": dict(sigma=0.01, eta=3e-4, n_samples=25), "ViT": dict(sigma=1.5, eta=0.5, n_samples=25)}


def add_args(p):
    p.add_argument("-superclasses", type=int, required=True, help="number of coarse classes (the model's outputs)")
    p.add_argument("-subclasses", type=int, required=True, help="number of fine classes")
    p.add_argument("-forget_class", required=True, help="fine class to forget (name such as rocket, or fine label id)")
    p.set_defaults(seed=42)  # the authors' sub-class main defaults -seed to 42 (their other mains to 0)


def split(args):
    """(number of model classes, forget fine-label id, split function) of this setting."""
    fine = {"Cifar20": 100, "Digits5": 10}.get(args.dataset)
    if fine is not None and args.subclasses != fine:
        raise UserError(f"{args.dataset} has {fine} fine classes, but -subclasses {args.subclasses} was given")
    cls = datasets.forget_target_id(args.dataset, args.forget_class, subclass=True)
    return args.superclasses, cls, lambda tr, te, pipe, _: datasets.split_sub_class(tr, te, cls, pipe.retain_test_order == "grouped")


TASK = Task("subclass", batch=64, add_args=add_args, split=split, description=__doc__.splitlines()[0],
            tables={"lipschitz_forgetting": by_net(JIT, fallback="VGG16")})

if __name__ == "__main__":
    main(TASK)
