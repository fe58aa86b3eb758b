"""Supervised training loops shared by pretraining, retraining and fine-tuning."""
import bisect
import math

import torch
import torch.nn.functional as F

from utils import progress_bar


class Warmup:
    """Per-batch learning-rate driver: ``schedule`` (a closed-form torch scheduler such as
    OneCycleLR or LambdaLR, stepped every batch) scaled by a linear warm-up factor
    (t + 1) / warm_steps during the first ``warm_steps`` batches."""

    def __init__(self, optimizer, schedule, warm_steps):
        self.optimizer, self.schedule, self.warm_steps = optimizer, schedule, warm_steps
        self.t = 0
        self._scale()

    def _scale(self):
        if self.t < self.warm_steps:
            for g in self.optimizer.param_groups:
                g["lr"] *= (self.t + 1) / self.warm_steps

    def step(self):
        self.t += 1
        self.schedule.step()
        self._scale()


class ReferenceWarmup:
    """The authors' pretraining warm-up laid over ``schedule`` (OneCycleLR), stepped every
    batch: their WarmUpLR is built after OneCycleLR, so it scales one-cycle's initial rate (the
    peak / 25), not the current one, and it is stepped after one-cycle in each warm-up batch.
    Global batch t runs at initial·t/(warm_steps + 1e-8) for t <= warm_steps (the first at
    lr 0, the warm-up ending at the initial rate), then at one-cycle's rate for batch t."""

    def __init__(self, optimizer, schedule, warm_steps):
        self.optimizer, self.schedule, self.warm_steps = optimizer, schedule, warm_steps
        self.start = [g["initial_lr"] for g in optimizer.param_groups]
        self.t = 0
        self._ramp()

    def _ramp(self):
        if self.t <= self.warm_steps:
            for g, start in zip(self.optimizer.param_groups, self.start):
                g["lr"] = start * self.t / (self.warm_steps + 1e-8)

    def step(self):
        self.t += 1
        self.schedule.step()
        self._ramp()


def multistep(optimizer, steps_per_epoch, milestones, gamma):
    """MultiStepLR with milestones in epochs, stepped per batch."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: gamma ** sum(s // steps_per_epoch >= m for m in milestones)
    )


def reference_schedule(optimizer, steps_per_epoch, milestones, gamma):
    """The authors' retraining schedule, stepped per batch: their WarmUpLR (lr·t/(T + 1e-8)
    at global batch t, T batches per epoch) is stepped through epochs 0 and 1, so epoch 1
    rises to about twice the base rate; from epoch 2 on, MultiStepLR.step(epoch) sets
    lr·gamma^(number of milestones <= epoch)."""
    T, milestones = steps_per_epoch, sorted(milestones)

    def factor(t):
        epoch = t // T
        if epoch <= 1:
            return t / (T + 1e-8)
        return gamma ** bisect.bisect_right(milestones, epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_epoch(model, loader, optimizer, device, scheduler=None, desc="train", progress=True, all_finite=None):
    """One epoch of cross-entropy training on (x, _, y) batches; returns mean loss.
    Raises FloatingPointError if the loss stops being finite. ``all_finite(bool) -> bool``
    (torchrun) makes every process agree, before any backward, whether every process's loss is
    finite, so that all of them stop together instead of leaving the others waiting in a
    gradient all-reduce."""
    model.train()
    total, n = 0.0, 0
    bar = progress_bar(loader, desc, progress)
    for x, _, y in bar:
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        finite = math.isfinite(loss.item())
        if all_finite is not None and not all_finite(finite):
            raise FloatingPointError(f"{desc}: loss became {loss.item()}" if not finite else
                                     f"{desc}: the loss of another process became non-finite")
        if not finite:
            raise FloatingPointError(f"{desc}: loss became {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(y)
        n += len(y)
        bar.set_postfix(loss=f"{total / max(n, 1):.3f}")
    return total / max(n, 1)
