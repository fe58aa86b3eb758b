"""Importance-based baselines: Selective Synaptic Dampening (``ssd_tuning``), its label-free
variant (``lfssd_tuning``) and Fisher forgetting (``FisherForgetting``). All three read a
per-parameter importance off gradients of the trained model and edit the weights in one shot;
none takes an optimiser step.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Subset

from cli import UserError
from hparams import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Overrides, hparam
from registry import register
from utils import progress_bar

# ---- hyperparameters --------------------------------------------------------------------------

@dataclass(frozen=True)
class SsdHP:
    """SSD and LF-SSD: where I_f > α·I_D the weight is multiplied by min(λ·I_D/I_f, 1)."""
    alpha: float = hparam(1.0, "SSD/LF-SSD selection weighting α", "ssd_alpha", NON_NEGATIVE)
    lam: float = hparam(1.0, "SSD/LF-SSD dampening constant λ", "ssd_lambda", NON_NEGATIVE)


# (α, λ) as the authors' three forget_*_main.py pass them (LF-SSD gets the same pair); nets
# without a row of their own take VGG16's values.
SSD_OVERRIDES = Overrides((
    (dict(setting="subclass"), dict(alpha=5.0, lam=6.0)),
    (dict(setting="subclass", net="ViT"), dict(alpha=10.0, lam=1.0)),
    (dict(setting="random"), dict(alpha=10.0, lam=4.0)),
    (dict(setting="random", net="ViT"), dict(alpha=3.5, lam=1.0)),
))


@dataclass(frozen=True)
class FisherHP:
    """variance = α·min(1/(F + 1e-8), clamp); clamp_final in the final layer; ×boost for 1-D
    parameters and, in full class, the final layer; the forget class's final-layer row gets
    mean 0 and variance forget_var (before the boost)."""
    alpha: float = hparam(1e-6, "FisherForgetting variance scale α (the authors' caller passes 1e-6; "
                          "its get_mean_var defaults to 3e-6)", "fisher_alpha", NON_NEGATIVE)
    clamp: float = hparam(1e3, "FisherForgetting cap on 1/F", "fisher_clamp", POSITIVE)
    clamp_final: float = hparam(1e2, "FisherForgetting cap on 1/F in the final layer", "fisher_clamp_final", POSITIVE)
    forget_var: float = hparam(1e-4, "FisherForgetting variance of the forget class's final-layer row",
                               "fisher_forget_var", NON_NEGATIVE)
    boost: float = hparam(10.0, "FisherForgetting variance factor for 1-D parameters (and the full-class final layer)",
                          "fisher_boost", POSITIVE)
    samples: Optional[int] = hparam(None, "retain samples the Fisher is estimated on (none given: all, as the "
                                    "authors' code; else a seeded random subset)", "fisher_samples", AT_LEAST_ONE)


# Digits: a reduced CPU budget, not part of either recipe's protocol: SmallCNN costs ~40 ms of CPU per
# sample (10 classes), ~50 s for all 1,300.
FISHER_OVERRIDES = Overrides(((dict(dataset=("Digits", "Digits5")), dict(samples=256)),))
# Per-sample gradients held at once, in floats (samples × classes × parameters), by device
# type: bounds the memory of the batched Fisher. SmallCNN gets 128 samples × 10 classes per
# call; VGG16 (133M parameters) one sample and 1 (CPU) or 8 (CUDA) classes per call.
FISHER_CHUNK_FLOATS = {"cpu": 2 ** 27, "cuda": 2 ** 30}
FISHER_BATCH = 128  # most samples per vmapped call


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


def _ssd(model, data, hp, device, objective, reduce, name):
    model.eval()
    imp_forget = importance(model, data.forget_train, objective, reduce, device, f"{name} I_f")
    imp_full = importance(model, data.full_train, objective, reduce, device, f"{name} I_D")
    dampen(model, imp_forget, imp_full, hp.alpha, hp.lam)
    return model


@register("ssd_tuning", hparams=SsdHP, overrides=SSD_OVERRIDES)
def ssd_tuning(model, data, hp, device):
    """Selective Synaptic Dampening (Foster et al. 2024).

    Importance I = mean over batches of the squared gradient of the batch-mean cross-entropy,
    on forget_train (I_f) and on the full training set (I_D, forget + retain).
    Where I_f > α·I_D the weight is multiplied by min(λ·I_D / I_f, 1), so no weight grows.
    α, λ: SsdHP with the setting's and net's row of SSD_OVERRIDES.
    Eval mode while computing importances, so
    dropout does not make them random; the model is left in eval mode.
    No optimiser step: gradients are read per batch (never accumulated) and weights change
    only by dampening.
    """
    return _ssd(model, data, hp, device, _cross_entropy, torch.square, "ssd")


@register("lfssd_tuning", hparams=SsdHP, overrides=SSD_OVERRIDES)
def lfssd_tuning(model, data, hp, device):
    """Label-free SSD (Foster et al. 2024, "Loss-Free Machine Unlearning").

    SSD with the importance I = mean over batches of |∂/∂θ mean_batch ‖f(x)‖₂²| (the
    absolute gradient of the squared L2 norm of the outputs, as the paper's MAS-style
    importance), on forget_train and the full training set. No label is read.
    Selection and dampening, α, λ, eval mode: exactly as ssd_tuning.
    """
    return _ssd(model, data, hp, device, _output_sq_norm, torch.abs, "lfssd")


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
            # scaled_dot_product_attention (ViT) under vmap: the math kernel, which has batching
            # rules; the fused CUDA kernels may not, or fall back to a per-example loop
            with sdpa_kernel(SDPBackend.MATH):
                fisher = per_sample(params, part)
            for n, f in fisher.items():
                total[n] += f.sum(0)
        count += len(x)
    return {n: t / max(count, 1) for n, t in total.items()}


def final_layer(model, num_classes):
    """Names of the parameters of the classification layer: the last nn.Linear with
    ``num_classes`` outputs (the authors' code instead treats every parameter whose first
    dimension is num_classes as final layer; for the nets here that is the same set)."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            name = n
    if name is None:
        raise UserError(f"FisherForgetting: the model has no final nn.Linear with {num_classes} outputs")
    prefix = f"{name}." if name else ""
    return {prefix + k for k, _ in model.get_submodule(name).named_parameters()}


def fisher_mean_var(p, fisher, is_final, alpha, setting, forget_class, hp=FisherHP()):
    """Mean and variance of the Gaussian that replaces parameter ``p`` (see FisherForgetting);
    ``hp`` gives the caps, the forget row's variance and the boost (α is passed alone)."""
    var = (1.0 / (fisher + 1e-8)).clamp(max=hp.clamp)
    if is_final:
        var = var.clamp(max=hp.clamp_final)
    var = alpha * var
    if p.ndim > 1:  # one variance per output row (per output channel and kernel position for convs)
        var = var.mean(dim=1, keepdim=True).expand_as(p).clone()
    mu = p.detach().clone()
    if is_final and setting == "fullclass":
        mu[forget_class] = 0
        var[forget_class] = hp.forget_var
    if (is_final and setting == "fullclass") or p.ndim == 1:
        var = var * hp.boost
    return mu, var


@register("FisherForgetting", hparams=FisherHP, overrides=FISHER_OVERRIDES)
def FisherForgetting(model, data, hp, device):
    """Fisher forgetting (Golatkar et al. 2020, "Eternal Sunshine of the Spotless Net").

    F = diagonal Fisher of the retain set under the model's own predictive distribution,
    E_x Σ_y p(y|x)·(∂ log p(y|x)/∂θ)², estimated on retain_train (the whole set; Digits: a
    seeded random subset of -fisher_samples) in eval mode.
    Each weight is replaced by w + sqrt(var)·ε, ε ~ N(0, 1) from torch's default generator,
    drawn per parameter in model.parameters() order, with:
      var = α·min(1/(F + 1e-8), 1e3), clamped at α·1e2 in the final classification layer;
      weight matrices and kernels: var averaged over dim 1 (the input side) per output row;
      ×10 for every 1-D parameter (biases, norm scales);
      full class only: the forget class's final-layer row (weight row and bias) gets mean 0
      and variance 1e-4, and the whole final layer ×10 (the forget row then 1e-3).
    Sub-class: the outputs are coarse classes and the forget target is a fine class, so no
    output row belongs to it alone and none is zeroed, and the final weight matrix gets no ×10.
    Random: likewise, nothing is zeroed.
    α and the caps: FisherHP.
    """
    final = final_layer(model, data.num_classes)
    if data.setting == "fullclass" and data.forget_class is None:
        raise UserError("FisherForgetting in full class needs a forget class")

    retain = data.retain_train.dataset
    budget = hp.samples
    if budget is not None and budget < len(retain):
        pick = torch.randperm(len(retain), generator=torch.Generator().manual_seed(data.seed))[:budget]
        retain = Subset(retain, pick.sort().values.tolist())
    loader = DataLoader(retain, batch_size=data.retain_train.batch_size, shuffle=False,
                        num_workers=data.retain_train.num_workers)

    model.eval()
    fisher = fisher_diagonal(model, loader, data.num_classes, device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in fisher:
                continue
            mu, var = fisher_mean_var(p, fisher[name], name in final, hp.alpha, data.setting, data.forget_class, hp)
            p.copy_(mu + var.sqrt() * torch.randn_like(p))
    return model
