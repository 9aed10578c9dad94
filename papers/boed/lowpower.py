"""The low-power CNN baselines of Figure 7, in plain torch: ShuffleNet [9] and MobileNet [12] (their v2
designs: Ma et al. 2018, Sandler et al. 2018) with a channel multiplier c, fed the whole image resized to
r x r. The paper searches c and r; like torchvision's width multipliers, every channel count is
c * base rounded to a multiple of 8 (at least 8), and the final 1x1 conv keeps its full width for c <= 1,
so c = 0.01 gives the narrowest possible network rather than an empty one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError


def scaled(channels: float, c: float, divisor: int = 8) -> int:
    """channels * c rounded to the nearest multiple of divisor, at least divisor, and never more than
    10% below the unrounded value (torchvision's _make_divisible)."""
    v = channels * c
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: type[nn.Module] | None = nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection (+ input)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn(cin, hidden, 1, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   conv_bn(hidden, cout, 1, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s), Sandler et al. Table 2
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, c: float, num_classes: int, in_channels: int = 3):
        super().__init__()
        cin = scaled(32, c)
        layers = [conv_bn(in_channels, cin, 3, 2, act=nn.ReLU6)]
        for t, ch, n, s in self.SETTINGS:
            cout = scaled(ch, c)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = scaled(1280, max(1.0, c))
        self.features = nn.Sequential(*layers, conv_bn(cin, last, 1, 1, act=nn.ReLU6))
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    B, C, H, W = x.shape
    return x.view(B, groups, C // groups, H, W).transpose(1, 2).reshape(B, C, H, W)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: stride 1 splits the channels and transforms one half; stride 2 transforms both
    (one branch depthwise-downsamples the input); the halves are concatenated and shuffled."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                                         conv_bn(cin, half, 1, 1))
        b2_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(conv_bn(b2_in, half, 1, 1),
                                     conv_bn(half, half, 3, stride, groups=half, act=None),
                                     conv_bn(half, half, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, 1)
            out = torch.cat([a, self.branch2(b)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    REPEATS, CHANNELS = (4, 8, 4), (24, 116, 232, 464, 1024)  # the 1.0x network, Ma et al. Table 5

    def __init__(self, c: float, num_classes: int, in_channels: int = 3):
        super().__init__()
        stem, *stages, last = self.CHANNELS
        cin = scaled(stem, c)
        layers = [conv_bn(in_channels, cin, 3, 2), nn.MaxPool2d(3, 2, 1)]
        for n, ch in zip(self.REPEATS, stages, strict=True):
            cout = scaled(ch, c)
            layers += [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            cin = cout
        last = scaled(last, max(1.0, c))
        self.features = nn.Sequential(*layers, conv_bn(cin, last, 1, 1))
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


ARCHS = {"mobilenet": MobileNetV2, "shufflenet": ShuffleNetV2}


class LowPowerCNN(nn.Module):
    """A Fig. 7 baseline: resize the whole image to `resolution` (area averaging), then the CNN."""

    def __init__(self, arch: str, c: float, resolution: int, num_classes: int, in_channels: int):
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"unknown low-power CNN {arch!r} (choose from {', '.join(ARCHS)})")
        if c <= 0 or resolution < 1:
            raise UserError(f"channel multiplier and resolution must be positive, got {c} and {resolution}")
        self.resolution = resolution
        self.net = ARCHS[arch](c, num_classes, in_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="area")
        return self.net(images)
