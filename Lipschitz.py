"""JiT unlearning: Lipschitz smoothing of the model around each forget sample.

For a forget sample x and N perturbations ξ_i ~ N(0, σ²I) the objective is

    L(θ; x) = (1/N) Σ_i ‖f_θ(x) − f_θ(x + ξ_i)‖₂ / ‖ξ_i‖₂ .
"""
import math

import torch
import torch.nn as nn

from utils import check_allocatable, progress_bar

# Largest number of perturbed images evaluated in one forward pass. 25 × 128 CIFAR images
# fit easily; lower it for big inputs on a small GPU.
DEFAULT_CHUNK = 4096


def _has_batch_statistics(model):
    """True if some layer computes statistics over the batch (train-mode batch norm): then
    stacking the N perturbations into one forward would change its output, and the update
    falls back to one forward per perturbation."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


GRAD_MODES = ("accumulate", "per_batch")
REDUCTIONS = ("sum", "mean")
MODEL_MODES = ("as_loaded", "eval")


def jit_unlearn(model, forget_loader, sigma, eta, n_samples=25, chunk_size=DEFAULT_CHUNK,
                device=None, progress=True, grad="accumulate", reduction="sum", mode="as_loaded",
                cpu_noise=False, amp=False):
    """Unlearn ``forget_loader`` from ``model`` in place. The defaults are what the
    authors' code does; ``grad``, ``reduction`` and ``mode`` switch one step each:

    - Optimiser: plain SGD over all parameters, learning rate ``eta``.
    - Gradients are cleared once before the loop, never between batches, so every step
      uses the sum of all gradients so far (``grad="accumulate"``; ``"per_batch"`` clears
      them before every batch, so each step uses its own batch's gradient only).
    - Per batch: the clean output f(x) with gradient; N perturbed inputs
      x'_i = clamp(x + σ·ε_i, min(x), max(x)) (ε_i standard normal, min/max over the whole
      batch tensor) whose outputs are computed without gradient (stop-gradient).
    - Per sample ratio ‖f(x) − f(x'_i)‖ / ‖x − x'_i‖ (the denominator uses the clamped x'_i).
    - Batch loss: sum over the batch, mean over the N perturbations (``reduction="sum"``;
      ``"mean"`` also averages over the batch, so η does not scale with the batch size);
      backward; one step.
    - The model's mode is left as it is (``mode="as_loaded"``): a freshly built model is in
      training mode, so dropout is active here. ``"eval"`` runs JiT in eval mode (no
      dropout, batch-norm running statistics) and restores the previous mode afterwards.

    Noise is drawn as one (N, B, C, H, W) tensor after the clean forward, on the model's
    device; ``cpu_noise=True`` draws it from the CPU's default generator and moves it, as the
    authors' code does (on a GPU this is the bit-parity switch; on the CPU both are the same). For
    inputs whose element count is a multiple of 16 one draw gives the same numbers as N
    successive draws. ``amp=True`` runs the forwards under bf16 autocast
    (the loss itself is computed in float32). The N perturbed forwards run in
    chunks of up to ``chunk_size`` images (a per-perturbation loop only when a train-mode
    batch-norm layer makes batch composition matter). With dropout active the masks are drawn
    from the same distribution as in the authors' code but in a different order.
    """
    if sigma <= 0 or eta <= 0 or n_samples < 1:
        raise ValueError("sigma and eta must be > 0 and n_samples >= 1")
    if grad not in GRAD_MODES or reduction not in REDUCTIONS or mode not in MODEL_MODES:
        raise ValueError(f"grad in {GRAD_MODES}, reduction in {REDUCTIONS}, mode in {MODEL_MODES}")
    device = device or next(model.parameters()).device
    was_training = model.training
    if mode == "eval":
        model.eval()
    try:
        _jit_loop(model, forget_loader, sigma, eta, n_samples, chunk_size, device, progress, grad, reduction,
                  cpu_noise, amp)
    finally:
        model.train(was_training)
    return model


def _jit_loop(model, forget_loader, sigma, eta, n_samples, chunk_size, device, progress, grad, reduction,
              cpu_noise, amp):
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    optimizer = torch.optim.SGD(model.parameters(), lr=eta)
    optimizer.zero_grad()
    per_perturbation = max(1, chunk_size // forget_loader.batch_size) if forget_loader.batch_size else 1
    if _has_batch_statistics(model):
        per_perturbation = 1

    for i, batch in enumerate(progress_bar(forget_loader, "JiT", progress)):
        if grad == "per_batch":
            optimizer.zero_grad()
        x = batch[0].to(device)
        with autocast:
            out = model(x).float()
        shape = (n_samples,) + tuple(x.shape)
        if i == 0:  # the first batch is the largest: one look at the free memory covers the loop
            check_allocatable(math.prod(shape), "JiT's N perturbations of a batch (-n_samples × -b)", device)
        noise = torch.randn(shape).to(device) if cpu_noise else torch.randn(shape, device=device)
        lo, hi = x.min(), x.max()
        flat_x = x.flatten(1)
        ratios = []
        for chunk in noise.split(per_perturbation):
            x2 = torch.clamp(x + chunk * sigma, min=lo, max=hi)  # (n, B, C, H, W)
            with torch.no_grad(), autocast:
                out2 = model(x2.flatten(0, 1)).float().view(chunk.shape[0], x.shape[0], -1)
            in_norm = torch.linalg.vector_norm(flat_x - x2.flatten(2), dim=2)
            out_norm = torch.linalg.vector_norm(out - out2, dim=2)
            ratios.append(out_norm / in_norm)
        ratios = torch.cat(ratios)  # (N, B)
        loss = ratios.sum() / n_samples if reduction == "sum" else ratios.mean()
        loss.backward()
        optimizer.step()
