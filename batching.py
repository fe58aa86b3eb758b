"""Evaluation batches built on the device: the uint8 images of a batch are moved there and only
there converted and resized."""
import numpy as np
import torch
from torch.utils.data import Subset

from images import EMPTY, ArrayImages, ImageTransform


class DeviceBatches:
    """(x, fine, y) batches of an ArrayImages (or a Subset of one, nested or not), in order,
    built without a DataLoader: the uint8 images of a batch are gathered from the array, moved
    to ``device`` and only there converted and resized. For ViT that moves 3 KB per CIFAR
    image instead of 600 KB and never holds a 224x224 image in host memory; for every net it
    skips the per-item Python of a DataLoader. The tensors equal those of a DataLoader with
    the same batch size (the transform is shared, and deterministic)."""

    def __init__(self, base, indices, batch_size, device):
        self.base, self.indices, self.batch_size, self.device = base, indices, batch_size, device

    def __len__(self):
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        b = self.base
        for start in range(0, len(self.indices), self.batch_size):
            j = self.indices[start:start + self.batch_size]
            x = torch.from_numpy(np.ascontiguousarray(b.images[j]))
            if self.device.type == "cuda":
                x = x.pin_memory()
            # contiguous NCHW as a DataLoader collates it: a channels-last batch would take other
            # convolution kernels and change the logits in the last bits
            x = b.transform.normalize(x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous())
            fine = EMPTY.expand(len(j), 0) if b.fine is None else torch.from_numpy(b.fine[j])
            yield x, fine, torch.from_numpy(b.targets[j])


def device_batches(ds, batch_size, device):
    """A DeviceBatches over ``ds``, or None where it does not apply (images decoded from files,
    or a transform with random augmentation): use a DataLoader then."""
    indices = np.arange(len(ds))
    while isinstance(ds, Subset):
        indices = np.asarray(ds.indices)[indices]
        ds = ds.dataset
    if type(ds) is not ArrayImages or not isinstance(ds.transform, ImageTransform) or ds.transform.augment is not None:
        return None
    return DeviceBatches(ds, indices, batch_size, device)
