"""JiT (``lipschitz_forgetting``), this paper's method: Lipschitz smoothing of the model around
each forget sample (Lipschitz.jit_unlearn). σ, η, N come from the JIT table at the top of each
forget_*_main.py (per net; the Task passes it to the resolver as this method's rows), or from
-sigma/-eta/-n_samples."""
from dataclasses import dataclass
from typing import Optional

from hparams import AT_LEAST_ONE, POSITIVE, Overrides, hparam
from Lipschitz import DEFAULT_CHUNK, GRAD_MODES, MODEL_MODES, REDUCTIONS, jit_unlearn
from registry import register


@dataclass(frozen=True)
class JitHP:
    """The defaults of the switches are what the authors' code does; σ, η, N are the main's."""
    sigma: Optional[float] = hparam(None, "JiT σ, the perturbation scale (the authors' lipschitz_weighting)",
                                    "sigma", POSITIVE)
    eta: Optional[float] = hparam(None, "JiT η, its SGD learning rate", "eta", POSITIVE)
    n_samples: Optional[int] = hparam(None, "JiT perturbations N per forget sample", "n_samples", AT_LEAST_ONE)
    grad: str = hparam("accumulate", "JiT gradients: accumulated across forget batches or cleared per "
                       "batch", "jit_grad", choices=GRAD_MODES)
    reduction: str = hparam("sum", "JiT batch loss: sum over the batch or mean", "jit_reduction",
                            choices=REDUCTIONS)
    mode: str = hparam("as_loaded", "JiT model mode: as loaded, i.e. train mode with dropout, or "
                       "eval", "jit_mode", choices=MODEL_MODES)
    cpu_noise: bool = hparam(False, "draw JiT's noise on the CPU and move it to the device, as the authors' "
                             "code (the same numbers on a GPU; slower)", "jit_cpu_noise")
    chunk: int = hparam(DEFAULT_CHUNK, "most perturbed images in one JiT forward", "jit_chunk", AT_LEAST_ONE)


# Memory budget of the perturbed forwards (no graph is kept): a ViT-B/16 forward at 224 px grew
# the CPU's peak by about 14 MiB per image (measured from batches of 8 and 32, math attention),
# so 4,096 images would need about 56 GiB; 1,024 keep it near 14 GiB (less with fused attention).
JIT_OVERRIDES = Overrides(((dict(net="ViT"), dict(chunk=1024)),))


# σ, η, N are repeated at the record's top level: report.py labels JiT's rows by them.
@register("lipschitz_forgetting", hparams=JitHP, overrides=JIT_OVERRIDES, zero_shot=True,
          top_level=("sigma", "eta", "n_samples"))
def lipschitz_forgetting(model, data, hp, device):
    """JiT (Lipschitz.jit_unlearn) with the resolved σ, η, N and switches."""
    return jit_unlearn(model, data.forget_train, hp.sigma, hp.eta, hp.n_samples, chunk_size=hp.chunk,
                       device=device, grad=hp.grad, reduction=hp.reduction, mode=hp.mode,
                       cpu_noise=hp.cpu_noise, amp=data.amp)
