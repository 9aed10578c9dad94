"""ResNet-v2-50 (pre-activation ResNet) in the TF-slim convention used by Saccader and DRAM.

What slim's `resnet_v2_50` does, mirrored here (the Saccader paper counts 25,615,849 variables with
1001 classes, Table Supp.1):
- root: 7x7/2 conv with bias and no BN/activation (slim's `conv2d_same`, i.e. pad 3 + "valid"), then a
  3x3/2 max pool with TF "SAME" padding (the odd padding pixel goes bottom/right);
- 4 blocks of bottleneck units [3, 4, 6, 3], depths 256/512/1024/2048, the stride (2, 2, 2, 1) sits
  in the *last* unit of each block (output stride 32);
- unit: preact = BN+ReLU(x); shortcut = x subsampled (same depth) or a 1x1 conv with bias on preact;
  residual = 1x1 conv-BN-ReLU, 3x3/s conv-BN-ReLU, 1x1 conv with bias; output = shortcut + residual;
- "postnorm" BN+ReLU after the last block, global average pool, 1x1-conv logits with bias.
BN: decay 0.997 (torch momentum 0.003), eps 1e-5, with gamma. Kernels use slim's
`variance_scaling_initializer()` (truncated normal, std sqrt(1.3 * 2 / fan_in)), biases zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.backbones import register_backbone
from core.backbones.bagnet import BatchNorm2d, PointwiseConv, pad_same
from core.errors import UserError

BLOCK_UNITS = (3, 4, 6, 3)
BASE_DEPTHS = (64, 128, 256, 512)
BLOCK_STRIDES = (2, 2, 2, 1)


def _bn(channels: int) -> BatchNorm2d:
    return BatchNorm2d(channels, eps=1e-5, momentum=1 - 0.997)


class PreActBottleneck(nn.Module):
    """slim's `resnet_v2.bottleneck` (stride applied by the 3x3 conv and by the shortcut)."""

    def __init__(self, in_channels: int, depth: int, bottleneck: int, stride: int):
        super().__init__()
        self.stride = stride
        self.preact = _bn(in_channels)
        self.shortcut = PointwiseConv(in_channels, depth, stride) if in_channels != depth else None
        self.conv1, self.bn1 = nn.Conv2d(in_channels, bottleneck, 1, bias=False), _bn(bottleneck)
        # slim's conv2d_same pads (k-1)//2 per side then convolves "valid": torch's padding=1.
        self.conv2 = nn.Conv2d(bottleneck, bottleneck, 3, stride, padding=1, bias=False)
        self.bn2 = _bn(bottleneck)
        self.conv3 = nn.Conv2d(bottleneck, depth, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.preact(x))
        # Same depth: slim subsamples the raw input with a 1x1 max pool of stride s.
        s = self.stride
        shortcut = self.shortcut(preact) if self.shortcut is not None else x[:, :, ::s, ::s]
        out = F.relu(self.bn1(self.conv1(preact)))
        out = F.relu(self.bn2(self.conv2(out)))
        return shortcut + self.conv3(out)


class ResNetV2_50(nn.Module):
    """slim `resnet_v2_50`, 224 px -> 7x7x2048 final map.

    forward(x) -> logits (B, num_classes), or the pooled features (B, 2048) when num_classes is None
    (DRAM's glimpse network: in_channels=15 for 3 fields of view x (RGB + 2 coordinate channels)).
    forward_features(x) -> {"map": (B, 2048, h, w) after postnorm, "pooled": (B, 2048)}.
    """

    num_features: int

    def __init__(self, num_classes: int | None = 1001, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        if not width > 0:
            raise UserError(f"resnet_v2_50: width must be > 0, got {width}")
        bases = [max(1, round(b * width)) for b in BASE_DEPTHS]
        self.root = nn.Conv2d(in_channels, bases[0], 7, 2, padding=3)
        channels = bases[0]
        units = []
        for base, n, stride in zip(bases, BLOCK_UNITS, BLOCK_STRIDES, strict=True):
            for i in range(n):
                units.append(PreActBottleneck(channels, base * 4, base, stride if i == n - 1 else 1))
                channels = base * 4
        self.blocks = nn.Sequential(*units)
        self.postnorm = _bn(channels)
        self.num_features = channels
        self.logits = nn.Conv2d(channels, num_classes, 1) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                std = math.sqrt(1.3 * 2.0 / fan_in)
                nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4:
            raise UserError(f"resnet_v2_50 expects images (B, C, H, W), got shape {tuple(x.shape)}")
        return self.features_from_root(self.root(x))

    def features_from_root(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """forward_features from the root conv's output on (DRAM sums that linear conv's per-view parts)."""
        # 3x3/2 max pool with TF "SAME" padding (bottom/right only at even sizes; -inf never wins).
        x = F.max_pool2d(pad_same(x, 3, 2, value=-math.inf), 3, 2)
        fmap = F.relu(self.postnorm(self.blocks(x)))
        return {"map": fmap, "pooled": fmap.mean(dim=(2, 3))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.forward_features(x)["pooled"]
        if self.logits is None:
            return pooled
        return self.logits(pooled[:, :, None, None]).flatten(1)


@register_backbone("resnet_v2_50")
def resnet_v2_50(**kwargs) -> ResNetV2_50:
    return ResNetV2_50(**kwargs)
