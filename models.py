"""Networks used by the experiments, registered by the names the command lines use.

Every net JiT's authors define keeps their state-dict layout (VGG16 ``model.*``/``fc.*``, ViT
``base.*``/``final.*``, ResNet18 and AllCNN module for module), so checkpoints saved by their
classes load with ``strict=True``.
"""
import re

import torch
import torch.nn as nn
import torch.nn.functional as F


class VGG16(nn.Module):
    """The authors' "VGG16": torchvision's vgg11 (no batch norm, ImageNet head with
    1000 outputs) followed by a Linear(1000, num_classes). The name is kept for parity."""

    def __init__(self, num_classes=100, **_):
        from torchvision.models import vgg11  # about a second to import: only when a VGG16 is built

        super().__init__()
        self.model = vgg11(weights=None)
        self.fc = nn.Linear(1000, num_classes)

    def forward(self, x):
        return self.fc(self.model(x))


# transformers 5 names ViTModel's parameters differently from 4.x, whose names the released
# checkpoints carry. Each rule maps a 4.x key fragment to its 5.x form (applied in order).
_VIT_V4_TO_V5 = [
    (r"\.encoder\.layer\.(\d+)\.", r".layers.\1."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]


def _vit_current_key(key):
    for old, new in _VIT_V4_TO_V5:
        key = re.sub(old, new, key)
    return key


class ViT(nn.Module):
    """Hugging Face ViTModel (``base``) + Linear head (``final``) on the [CLS] token of the
    last hidden state (after the final layer norm).

    ``weights``: a hub name or a local directory to load pretrained weights from (only
    pretraining needs them); ``None`` builds the ViT-B/16-224 architecture from its config,
    which is all a forget run needs before its checkpoint is loaded. ``config``: an explicit
    ``ViTConfig`` (the tests use a tiny one).
    """

    def __init__(self, num_classes=100, weights=None, config=None, **_):
        super().__init__()
        from transformers import ViTConfig, ViTModel  # heavy import, only when a ViT is built

        if weights is not None:
            self.base = ViTModel.from_pretrained(weights)
        else:
            self.base = ViTModel(config if config is not None else ViTConfig())
        self.final = nn.Linear(self.base.config.hidden_size, num_classes)

    @property
    def image_size(self):
        return self.base.config.image_size

    def forward(self, x):
        return self.final(self.base(pixel_values=x).last_hidden_state[:, 0])

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Accept both the transformers-4 layout (released checkpoints) and the current one."""
        state_dict = {_vit_current_key(k): v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class _BasicBlock(nn.Module):
    """ResNet basic block: ``residual_function`` (conv, bn, relu,
    conv, bn) and ``shortcut`` (empty, or a 1×1 conv and bn)."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.residual_function = nn.Sequential(
            nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        return F.relu(self.residual_function(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR variant of ResNet18: 3×3 stem, no max-pool, four stages of two basic blocks. The
    module layout (and so the state-dict keys and the order of initialisation) is the
    authors', so their checkpoints load strict."""

    def __init__(self, num_classes=100, **_):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        layers, in_planes = [], 64
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers.append(nn.Sequential(_BasicBlock(in_planes, planes, stride), _BasicBlock(planes, planes)))
            in_planes = planes
        self.conv2_x, self.conv3_x, self.conv4_x, self.conv5_x = layers
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        x = self.conv5_x(self.conv4_x(self.conv3_x(self.conv2_x(x))))
        return self.fc(torch.flatten(self.avg_pool(x), 1))


def _conv_bn_relu(cin, cout, k, stride=1, padding=None):
    """One block of AllCNN: conv without bias (batch norm follows), bn, ReLU; padding keeps the
    size unless given."""
    padding = (k - 1) // 2 if padding is None else padding
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class AllCNN(nn.Module):
    """All-convolutional net (Springenberg et al. 2015) with batch norm, as in unlearning work.
    Laid out as the authors' (``features.N.{0,1}`` blocks, identities where dropout may go,
    ``classifier.0``), so their checkpoints load strict."""

    def __init__(self, num_classes=10, n_filters=(96, 192), dropout=False, **_):
        super().__init__()
        a, b = n_filters

        def drop():
            return nn.Dropout(inplace=True) if dropout else nn.Identity()

        self.features = nn.Sequential(
            _conv_bn_relu(3, a, 3), _conv_bn_relu(a, a, 3), _conv_bn_relu(a, b, 3, 2, 1),
            drop(),
            _conv_bn_relu(b, b, 3), _conv_bn_relu(b, b, 3), _conv_bn_relu(b, b, 3, 2, 1),
            drop(),
            _conv_bn_relu(b, b, 3), _conv_bn_relu(b, b, 1),
            nn.AvgPool2d(8), nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(b, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """A small VGG-like network for the CPU quickstart: no batch norm, dropout in the head
    like VGG16, so JiT's train-mode behaviour is exercised the same way."""

    def __init__(self, num_classes=10, width=32, **_):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(8 * w, 128), nn.ReLU(inplace=True))
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.fc(self.classifier(self.features(x)))


MODELS = {
    "VGG16": VGG16,
    "ViT": ViT,
    "ResNet18": ResNet18,
    "AllCNN": AllCNN,
    "SmallCNN": SmallCNN,
}


def input_size(net):
    """Side length of the images a net expects (inputs are resized to it)."""
    return 224 if net == "ViT" else 32


def build_model(net, num_classes, **kwargs):
    return MODELS[net](num_classes=num_classes, **kwargs)
