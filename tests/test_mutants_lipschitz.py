"""Cases added for mutants of Lipschitz.py that the other tests let survive (docs/testing.md)."""
import copy

import pytest
import torch
from helpers import Triples
from test_jit import ETA, SIGMA, make_loader, oracle_jit, tiny_conv
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

import Lipschitz


def run(model, loader, seed=0, **kwargs):
    model = copy.deepcopy(model)
    torch.manual_seed(seed)
    Lipschitz.jit_unlearn(model, loader, SIGMA, ETA, progress=False, **kwargs)
    return model


def test_default_is_25_perturbations():
    model, loader = tiny_conv(), make_loader(2, 2)
    torch.testing.assert_close(run(model, loader).state_dict(), run(model, loader, n_samples=25).state_dict(),
                               rtol=0, atol=0)


def test_one_perturbation_is_allowed_and_is_the_reference_step():
    model, loader = tiny_conv(), make_loader(6, 6)
    ref = copy.deepcopy(model)
    torch.manual_seed(0)
    oracle_jit(ref, loader, SIGMA, ETA, 1)
    torch.testing.assert_close(run(model, loader, n_samples=1).state_dict(), ref.state_dict(), rtol=1e-5, atol=1e-7)


def test_messages():
    with pytest.raises(ValueError, match=r"^sigma and eta must be > 0 and n_samples >= 1$"):
        Lipschitz.jit_unlearn(tiny_conv(), make_loader(5, 5), SIGMA, ETA, n_samples=0, progress=False)
    # a bad mode alone is enough, whatever the other two switches are
    with pytest.raises(ValueError, match=r"^grad in \('accumulate', 'per_batch'\), reduction in \('sum', 'mean'\), "
                                         r"mode in \('as_loaded', 'eval'\)$"):
        Lipschitz.jit_unlearn(tiny_conv(), make_loader(5, 5), SIGMA, ETA, progress=False, mode="train")


def test_loader_without_batch_size_and_cpu_noise():
    # A loader built from a batch sampler has batch_size None; its batches are the same.
    model, plain = tiny_conv(), make_loader(13, 5)
    sampled = DataLoader(plain.dataset, batch_sampler=BatchSampler(SequentialSampler(plain.dataset), 5, False))
    assert sampled.batch_size is None and isinstance(plain.dataset, Triples)
    want = run(model, plain, n_samples=3).state_dict()
    torch.testing.assert_close(run(model, sampled, n_samples=3).state_dict(), want, rtol=1e-5, atol=1e-7)
    # On the CPU the reference's CPU draw is the same draw.
    torch.testing.assert_close(run(model, plain, n_samples=3, cpu_noise=True).state_dict(), want, rtol=0, atol=0)
