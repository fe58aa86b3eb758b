"""Importance-based baselines: Selective Synaptic Dampening (``ssd_tuning``), its label-free
variant (``lfssd_tuning``) and Fisher forgetting (``FisherForgetting``). All three read a
per-parameter importance off gradients of the trained model and edit the weights in one shot;
none takes an optimiser step.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vjp, vmap
from torch.utils.data import DataLoader, Subset

from methods import register
from utils import UserError, progress_bar

# ---- hyperparameters (the reference's values) -------------------------------------------
# SSD and LF-SSD: (α selection weighting, λ dampening constant) per setting and net, as the
# reference's three forget_*_main.py pass them (LF-SSD gets the same pair). Nets without a
# row of their own use "default", VGG16's values. -ssd_alpha / -ssd_lambda override.
SSD = {
    "fullclass": {"default": (1.0, 1.0)},
    "subclass": {"ViT": (10.0, 1.0), "default": (5.0, 6.0)},
    "random": {"ViT": (3.5, 1.0), "default": (10.0, 4.0)},
}
# FisherForgetting: variance = α · min(1 / (F + 1e-8), clamp); clamp_final for the final
# layer; boost (×10) for 1-D parameters and, in full class, the final layer; the forget
# class's final-layer row gets mean 0 and variance forget_var (before the boost).
# α is 1e-6: the reference's get_mean_var defaults to 3e-6 but its caller passes 1e-6.
FISHER = dict(alpha=1e-6, clamp=1e3, clamp_final=1e2, forget_var=1e-4, boost=10.0)
# Retain samples the Fisher is estimated on (None: all of retain_train, as the reference).
# The Digits rows are this project's reduced CPU budget (a seeded random subset), not the
# reference's: SmallCNN costs ~40 ms of CPU per sample (10 classes), ~50 s for all 1,300.
FISHER_SAMPLES = {"Digits": 256, "Digits5": 256}
# Per-sample gradients held at once, in floats (samples × classes × parameters), by device
# type: bounds the memory of the batched Fisher. SmallCNN gets 128 samples × 10 classes per
# call; VGG16 (133M parameters) one sample and 1 (CPU) or 8 (CUDA) classes per call.
FISHER_CHUNK_FLOATS = {"cpu": 2 ** 27, "cuda": 2 ** 30}
FISHER_BATCH = 128  # most samples per vmapped call


def add_ssd_args(parser):
    parser.add_argument("-ssd_alpha", type=float, default=None,
                        help="SSD/LF-SSD selection weighting α (default: the setting's table)")
    parser.add_argument("-ssd_lambda", type=float, default=None,
                        help="SSD/LF-SSD dampening constant λ (default: the setting's table)")


def add_fisher_args(parser):
    parser.add_argument("-fisher_alpha", type=float, default=None,
                        help=f"FisherForgetting variance scale α (default {FISHER['alpha']:g})")


def _non_negative(value, flag):
    if not value >= 0:  # also rejects NaN
        raise UserError(f"{flag} must be >= 0 (got {value})")
    return value


def ssd_hyperparameters(data, args):
    """(α, λ): the flags if given, else the table row of the setting and net."""
    row = SSD[data.setting]
    alpha, lam = row.get(data.net, row["default"])
    a, lm = getattr(args, "ssd_alpha", None), getattr(args, "ssd_lambda", None)
    alpha = _non_negative(a, "-ssd_alpha") if a is not None else alpha
    lam = _non_negative(lm, "-ssd_lambda") if lm is not None else lam
    return alpha, lam


# ---- SSD and LF-SSD -------------------------------------------------------------------------

def _cross_entropy(model, batch, device):
    x, _, y = batch
    return F.cross_entropy(model(x.to(device)), torch.as_tensor(y).to(device))


def _output_sq_norm(model, batch, device):
    """Label-free objective: the squared L2 norm of the outputs, mean over the batch. Only the
    images are read, never the labels."""
    return model(batch[0].to(device)).pow(2).sum(dim=1).mean()


def importance(model, loader, objective, reduce, device, desc):
    """Per parameter: the mean over batches of ``reduce(∂ objective / ∂θ)``, one backward per
    batch. Parameters the objective does not reach get 0. The weights are not changed."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    batches = 0
    for batch in progress_bar(loader, desc):
        grads = torch.autograd.grad(objective(model, batch, device), params, allow_unused=True)
        for acc, g in zip(total, grads):
            if g is not None:
                acc += reduce(g)
        batches += 1
    return [t / max(batches, 1) for t in total]


@torch.no_grad()
def dampen(model, imp_forget, imp_full, alpha, lam):
    """Where I_f > α·I_D, multiply the weight by min(λ·I_D / I_f, 1); elsewhere leave it."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p, fi, di in zip(params, imp_forget, imp_full):
        sel = fi > di * alpha
        p[sel] = p[sel] * (di[sel] * lam / fi[sel]).clamp(max=1.0)


def _ssd(model, data, args, device, objective, reduce, name):
    alpha, lam = ssd_hyperparameters(data, args)
    args.ssd_alpha, args.ssd_lambda = alpha, lam  # the run's record saves the resolved values
    model.eval()
    imp_forget = importance(model, data.forget_train, objective, reduce, device, f"{name} I_f")
    imp_full = importance(model, data.full_train, objective, reduce, device, f"{name} I_D")
    dampen(model, imp_forget, imp_full, alpha, lam)
    return model


@register("ssd_tuning", add_args=add_ssd_args)
def ssd_tuning(model, data, args, device):
    """Selective Synaptic Dampening (Foster et al. 2024).

    Importance I = mean over batches of the squared gradient of the batch-mean cross-entropy,
    on forget_train (I_f) and on the full training set (I_D, forget + retain).
    Where I_f > α·I_D the weight is multiplied by min(λ·I_D / I_f, 1), so no weight grows.
    α, λ: the SSD table for the setting and net, or -ssd_alpha / -ssd_lambda.
    Eval mode while computing importances, as the reference (it calls model.eval() first), so
    dropout does not make them random; the model is left in eval mode.
    No optimiser step: gradients are read per batch (never accumulated) and weights change
    only by dampening.
    """
    return _ssd(model, data, args, device, _cross_entropy, torch.square, "ssd")


@register("lfssd_tuning", add_args=add_ssd_args)
def lfssd_tuning(model, data, args, device):
    """Label-free SSD (Foster et al. 2024, "Loss-Free Machine Unlearning").

    SSD with the importance I = mean over batches of |∂/∂θ mean_batch ‖f(x)‖₂²| (the
    absolute gradient of the squared L2 norm of the outputs, as the paper's MAS-style
    importance), on forget_train and the full training set. No label is read.
    Selection and dampening, α, λ, eval mode: exactly as ssd_tuning.
    """
    return _ssd(model, data, args, device, _output_sq_norm, torch.abs, "lfssd")


# ---- Fisher forgetting ----------------------------------------------------------------------

def fisher_diagonal(model, loader, num_classes, device, desc="fisher"):
    """Diagonal Fisher information of the model's predictive distribution on ``loader``'s
    images: mean over samples x of Σ_y p(y|x) · (∂ log p(y|x) / ∂θ)², per parameter.

    Per-sample gradients come from torch.func: one forward per sample, then vector-Jacobian
    products for a block of classes at once, vmapped over a chunk of samples; block and chunk
    are sized so that chunk × block × parameters stays under FISHER_CHUNK_FLOATS. The model is
    used in its current mode. Returns {parameter name: tensor}.
    """
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())
    n_params = max(1, sum(p.numel() for p in params.values()))
    budget = FISHER_CHUNK_FLOATS.get(torch.device(device).type, FISHER_CHUNK_FLOATS["cpu"])
    block = max(1, min(num_classes, budget // n_params))
    chunk = max(1, min(FISHER_BATCH, budget // (n_params * block)))
    basis = torch.eye(num_classes, device=device)

    def log_probs(theta, x):
        out = functional_call(model, ({**theta, **frozen}, buffers), (x.unsqueeze(0),))
        return F.log_softmax(out, dim=-1)[0]

    def one_sample(theta, x):
        logp, pull = vjp(lambda t: log_probs(t, x), theta)
        prob = logp.detach().exp()
        acc = {n: torch.zeros_like(v) for n, v in theta.items()}
        for lo in range(0, num_classes, block):
            (g,) = vmap(pull)(basis[lo:lo + block].to(logp.dtype))  # ∂ log p(y|x)/∂θ for the block's y
            w = prob[lo:lo + block]
            acc = {n: acc[n] + torch.tensordot(w, g[n].square(), dims=1) for n in acc}
        return acc

    per_sample = vmap(one_sample, in_dims=(None, 0))
    total = {n: torch.zeros_like(v) for n, v in params.items()}
    count = 0
    for batch in progress_bar(loader, desc):
        x = batch[0].to(device)
        for part in x.split(chunk):
            for n, f in per_sample(params, part).items():
                total[n] += f.sum(0)
        count += len(x)
    return {n: t / max(count, 1) for n, t in total.items()}


def final_layer(model, num_classes):
    """Names of the parameters of the classification layer: the last nn.Linear with
    ``num_classes`` outputs (the reference instead treats every parameter whose first
    dimension is num_classes as final layer; for the nets here that is the same set)."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            name = n
    if name is None:
        raise UserError(f"FisherForgetting: the model has no final nn.Linear with {num_classes} outputs")
    prefix = f"{name}." if name else ""
    return {prefix + k for k, _ in model.get_submodule(name).named_parameters()}


def fisher_mean_var(p, fisher, is_final, alpha, setting, forget_class):
    """Mean and variance of the Gaussian that replaces parameter ``p`` (see FisherForgetting)."""
    var = (1.0 / (fisher + 1e-8)).clamp(max=FISHER["clamp"])
    if is_final:
        var = var.clamp(max=FISHER["clamp_final"])
    var = alpha * var
    if p.ndim > 1:  # one variance per output row (per output channel and kernel position for convs)
        var = var.mean(dim=1, keepdim=True).expand_as(p).clone()
    mu = p.detach().clone()
    if is_final and setting == "fullclass":
        mu[forget_class] = 0
        var[forget_class] = FISHER["forget_var"]
    if (is_final and setting == "fullclass") or p.ndim == 1:
        var = var * FISHER["boost"]
    return mu, var


@register("FisherForgetting", add_args=add_fisher_args)
def FisherForgetting(model, data, args, device):
    """Fisher forgetting (Golatkar et al. 2020, "Eternal Sunshine of the Spotless Net").

    F = diagonal Fisher of the retain set under the model's own predictive distribution,
    E_x Σ_y p(y|x)·(∂ log p(y|x)/∂θ)², estimated on retain_train (the whole set; Digits: a
    seeded random subset of FISHER_SAMPLES) in eval mode, as the reference.
    Each weight is replaced by w + sqrt(var)·ε, ε ~ N(0, 1) from torch's default generator,
    drawn per parameter in model.parameters() order, with (the reference's get_mean_var):
      var = α·min(1/(F + 1e-8), 1e3), clamped at α·1e2 in the final classification layer;
      weight matrices and kernels: var averaged over dim 1 (the input side) per output row;
      ×10 for every 1-D parameter (biases, norm scales);
      full class only: the forget class's final-layer row (weight row and bias) gets mean 0
      and variance 1e-4, and the whole final layer ×10 (the forget row then 1e-3).
    Sub-class: the outputs are coarse classes and the forget target is a fine class, so no
    output row belongs to it alone and none is zeroed; as the reference's sub-class and random
    variants, the final weight matrix gets no ×10 there. Random: likewise, nothing is zeroed.
    α: FISHER["alpha"] (1e-6, what the reference passes) or -fisher_alpha.
    """
    alpha = getattr(args, "fisher_alpha", None)
    alpha = FISHER["alpha"] if alpha is None else _non_negative(alpha, "-fisher_alpha")
    args.fisher_alpha = alpha  # the run's record saves the resolved value
    final = final_layer(model, data.num_classes)
    if data.setting == "fullclass" and data.forget_class is None:
        raise UserError("FisherForgetting in full class needs a forget class")

    retain = data.retain_train.dataset
    budget = FISHER_SAMPLES.get(data.dataset)
    if budget is not None and budget < len(retain):
        pick = torch.randperm(len(retain), generator=torch.Generator().manual_seed(args.seed))[:budget]
        retain = Subset(retain, pick.sort().values.tolist())
    loader = DataLoader(retain, batch_size=data.retain_train.batch_size, shuffle=False,
                        num_workers=data.retain_train.num_workers)

    model.eval()
    fisher = fisher_diagonal(model, loader, data.num_classes, device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in fisher:
                continue
            mu, var = fisher_mean_var(p, fisher[name], name in final, alpha, data.setting, data.forget_class)
            p.copy_(mu + var.sqrt() * torch.randn_like(p))
    return model
