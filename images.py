"""Images as samples: the transform from a uint8 image to the model's input, and a data set of
decoded images with their labels.

Images are kept as decoded uint8 arrays and turned into normalised tensors one sample at a time
(or one batch at a time on the device, batching.py), so no split ever decodes or resizes the
whole data set up front, and a 224×224 ViT input exists only inside the batch being used. Labels
are plain numpy arrays (``targets`` = model labels, ``fine`` = fine labels or None), so forget
and retain splits are computed from them directly.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# CIFAR-100's per-channel training-set mean and standard deviation, to the digits JiT's authors
# use (they apply them to every data set).
MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)


class ImageTransform:
    """uint8 HWC image -> float CHW tensor: optional augmentation, then
    ToTensor, Normalize and Resize (bilinear, as torchvision's Resize on tensors).

    ``augment=True`` adds the pretraining augmentation (RandomCrop(32, padding=4),
    RandomHorizontalFlip, RandomRotation(15)); it acts on the uint8 image, as the authors'
    PIL transforms do. A fresh instance is built for every data set.
    """

    def __init__(self, size=32, augment=False):
        self.size = size
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)
        self.augment = None
        if augment:
            from torchvision.transforms import v2

            self.augment = v2.Compose([
                v2.RandomCrop(32, padding=4),
                v2.RandomHorizontalFlip(),
                v2.RandomRotation(15),
            ])

    def __call__(self, img):
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        if self.augment is not None:
            x = self.augment(x)
        return self.normalize(x[None])[0]

    def normalize(self, x):
        """uint8 (B, 3, H, W), on any device -> the model's float input (B, 3, size, size).
        The one definition of the deterministic part: per item above, per batch on the
        device in ``device_batches``."""
        x = (x.float().div_(255) - self.mean.to(x.device)) / self.std.to(x.device)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x


EMPTY = torch.tensor([])


class ArrayImages(Dataset):
    """Decoded uint8 images (N, H, W, 3) with model labels and optional fine labels."""

    def __init__(self, images, targets, fine=None, transform=None, classes=None):
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.fine = None if fine is None else np.asarray(fine, dtype=np.int64)
        self.transform = transform
        self.classes = classes

    def __len__(self):
        return len(self.targets)

    def load(self, i):
        return self.images[i]

    def __getitem__(self, i):
        x = self.transform(self.load(i))
        fine = EMPTY if self.fine is None else int(self.fine[i])
        return x, fine, int(self.targets[i])
