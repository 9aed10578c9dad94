"""DenseNet-121 (Huang et al., 2017) as torchvision builds it, in plain torch: BOED's posterior network g
in the official code (`mea/variational_cnn/architectures.py`: `torchvision.models.densenet121`).

- stem: 7x7/2 conv (no bias), BN, ReLU, 3x3/2 max pool (padding 1);
- 4 dense blocks of (6, 12, 24, 16) layers, growth rate 32; a layer is BN-ReLU-1x1 conv (4 x 32 channels)
  -BN-ReLU-3x3 conv (32 channels), and its output is concatenated to its input;
- between blocks a transition: BN-ReLU-1x1 conv halving the channels, 2x2/2 average pool;
- final BN, ReLU, global average pool, linear classifier (1,024 -> num_classes).
Module and parameter names are torchvision's (`features.denseblock1.denselayer1.conv1.weight`, ...), so a
state dict saved from torchvision's model loads as is. 1,000 classes on RGB: 7,978,856 parameters (tested).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from core.backbones import register_backbone
from core.errors import UserError

BLOCK_LAYERS = (6, 12, 24, 16)
GROWTH = 32
BOTTLENECK = 4  # the 1x1 conv of a layer has BOTTLENECK x GROWTH channels
STEM = 64


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, BOTTLENECK * GROWTH, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(BOTTLENECK * GROWTH)
        self.conv2 = nn.Conv2d(BOTTLENECK * GROWTH, GROWTH, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(F.relu(self.norm2(out)))], 1)


class Transition(nn.Sequential):
    def __init__(self, in_channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, in_channels // 2, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet121(nn.Module):
    """forward(x (B, in_channels, H, W)) -> logits (B, num_classes)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise UserError(f"densenet121 needs num_classes and in_channels >= 1, got {num_classes}, "
                            f"{in_channels}")
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(in_channels, STEM, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(STEM))
        self.features.add_module("relu0", nn.ReLU())
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        channels = STEM
        for i, n in enumerate(BLOCK_LAYERS, 1):
            block = nn.Sequential()
            for j in range(n):
                block.add_module(f"denselayer{j + 1}", DenseLayer(channels + j * GROWTH))
            self.features.add_module(f"denseblock{i}", block)
            channels += n * GROWTH
            if i < len(BLOCK_LAYERS):
                self.features.add_module(f"transition{i}", Transition(channels))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.num_features = channels
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise UserError(f"densenet121 expects images (B, C, H, W), got shape {tuple(x.shape)}")
        pooled = F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1)
        return self.classifier(pooled)


@register_backbone("densenet121")
def densenet121(**kwargs) -> DenseNet121:
    return DenseNet121(**kwargs)


def densenet121_from_imagenet(state: dict[str, torch.Tensor], num_classes: int,
                              in_channels: int = 3) -> DenseNet121:
    """DenseNet-121 with torchvision's ImageNet features from `state` (its state dict, in the current or the
    pre-0.4 `norm.1` key style), a fresh classifier for num_classes, and any input channels past the first 3
    starting at zero weight, so the network first computes what the pretrained one does (as BOED's official
    `add_conv_channel` does for its mask channel)."""
    if in_channels < 3:
        raise UserError(f"ImageNet weights need in_channels >= 3 (RGB first), got {in_channels}")
    legacy = re.compile(r"^(.*denselayer\d+\.(?:norm|conv))\.([12]\.(?:weight|bias|running_(?:mean|var)))$")
    state = {legacy.sub(r"\1\2", k): v for k, v in state.items() if not k.startswith("classifier.")}
    model = DenseNet121(num_classes, in_channels)
    own = model.state_dict()
    # Pre-0.4 checkpoints (torchvision's download among them) have no BN step counters.
    state |= {k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}
    missing = sorted(k for k in own if not k.startswith("classifier.") and k not in state)
    if missing:
        raise UserError(f"not a torchvision densenet121 state dict: no {missing[0]} ({len(missing)} missing)")
    conv0 = own["features.conv0.weight"].zero_()
    try:
        conv0[:, :3] = state.pop("features.conv0.weight")
        state["features.conv0.weight"] = conv0
        model.load_state_dict(state | {k: v for k, v in own.items() if k.startswith("classifier.")})
    except RuntimeError as e:  # other shapes or extra layers: another DenseNet
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"not a torchvision densenet121 state dict ({first})") from None
    return model
