"""BagNet-77 in the two conventions of the official code the papers were run with.

- "bagnet77_tnet": TNet's BagNet-77 (TNet paper, Table 4 and Appendix B.1; official TF2/Keras code):
  no batch norm, conv biases, leaky ReLU, some 3x3 convs with "same" padding.
- "bagnet77_lowd": Saccader's BagNet-77-lowD (Saccader paper, sec. 3.1 and Fig. Supp.4; official
  TF1 code): batch norm, ReLU, every conv "valid", a 2048->512 "what" bottleneck, and 1x1-conv logits
  at every location, averaged over space.

Both are ResNet-50-like (bottleneck expansion 4, stages [3, 4, 6, 3]) with 3x3 kernels only in the
first two blocks of each stage, which caps the receptive field at 77x77 px. `width` scales every
channel count (1.0 = the papers' networks) and never changes the construction. The small TF helpers
(`pad_same`, `Conv2dSame`, `keras_init_`) are shared with the other backbone modules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.backbones import register_backbone
from core.errors import UserError

STAGE_BLOCKS = (3, 4, 6, 3)
STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (2, 2, 2, 1)
KERNEL3_BLOCKS = 2  # 3x3 convs only in the first two blocks of each stage (RF 77 instead of 435)
EXPANSION = 4


def pad_same(x: torch.Tensor, kernel_size: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad like TensorFlow's "SAME": max((ceil(n/s) - 1) * s + k - n, 0) pixels per dimension, the odd
    one at the bottom / right (torch's symmetric padding samples a shifted grid when s > 1)."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad wants the last dim (width) first
        total = max((math.ceil(n / stride) - 1) * stride + kernel_size - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow's "SAME" padding (see `pad_same`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = True):
        # With stride 1 and an odd kernel TF's padding is symmetric: let torch do it without a copy.
        padding = (kernel_size - 1) // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


class PointwiseConv(nn.Conv2d):
    """A 1x1 conv (stride s) computed as subsample-then-convolve: the same numbers and multiplications,
    but torch 2.13's CPU backward of a strided 1x1 conv in channels_last segfaults on large maps."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that normalises a channels_last CPU map of fewer than 16 channels in the
    contiguous format: torch 2.13's channels_last CPU kernels are 3-4x slower there (4 channels at
    158 px: 26 vs 6 ms forward), and the high-resolution stem of a narrow (CPU-scale) BagNet-lowD is
    such a map (12% of an update). Same parameters, buffers and numbers up to rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cpu and self.num_features < 16 and x.is_contiguous(memory_format=torch.channels_last) \
                and not x.is_contiguous():
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def keras_init_(weight: torch.Tensor, scale: float, mode: str, distribution: str,
                depthwise: bool = False) -> None:
    """Keras `VarianceScaling(scale, mode, distribution)` on a torch conv/linear weight.

    Keras' glorot_normal is (1.0, "fan_avg", "truncated_normal"), its truncated normal is cut at 2 std
    and rescaled by 1/0.8796 so the kept samples have the target variance. A Keras depthwise kernel is
    (k, k, C, 1), so its fans differ from torch's view of the (C, 1, k, k) weight: fan_in = C*k*k,
    fan_out = k*k.
    """
    receptive = weight[0][0].numel()
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    if depthwise:
        fan_in, fan_out = weight.shape[0] * receptive, receptive
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    if distribution == "truncated_normal":
        std = math.sqrt(scale / n) / 0.87962566103423978
        nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)
    elif distribution == "uniform":
        limit = math.sqrt(3 * scale / n)
        nn.init.uniform_(weight, -limit, limit)
    else:
        raise ValueError(f"unknown distribution {distribution!r}")


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _check_width(name: str, width: float) -> None:
    if not width > 0:
        raise UserError(f"{name}: width must be > 0, got {width}")


def _check_input(name: str, x: torch.Tensor, min_size: int) -> None:
    if x.ndim != 4 or min(x.shape[-2:]) < min_size:
        raise UserError(f"{name} expects images (B, C, H, W) of at least {min_size}x{min_size} px, "
                        f"got shape {tuple(x.shape)}")


# ---------------------------------------------------------------------------------------------
# TNet's BagNet-77
# ---------------------------------------------------------------------------------------------

# Padding of the 3x3 conv of each 3x3 block, in network order (official TNet code, `padding_lst`):
# stage 1 same/same, stage 2 same/same, stage 3 valid/same, stage 4 valid/same; the stem is valid.
TNET_PADDINGS = (("same", "same"), ("same", "same"), ("valid", "same"), ("valid", "same"))


class TNetBottleneck(nn.Module):
    """TNet's ConvBlock (paper Table 3): 1x1 -> kxk (stride, padding) -> 1x1, leaky ReLU, no BN.

    A "valid" kxk conv shrinks the map, so the shortcut is cropped by floor/ceil((k-1)/2) per side;
    a 1x1 conv (stride s, "same") projects it when the stride or channel count changes.
    """

    def __init__(self, in_channels: int, planes: int, kernel_size: int, stride: int, padding: str,
                 negative_slope: float):
        super().__init__()
        out_channels = planes * EXPANSION
        self.negative_slope = negative_slope
        self.conv1 = nn.Conv2d(in_channels, planes, 1)
        if padding == "valid":
            self.conv2 = nn.Conv2d(planes, planes, kernel_size, stride)
        else:
            self.conv2 = Conv2dSame(planes, planes, kernel_size, stride)
        self.conv3 = nn.Conv2d(planes, out_channels, 1)
        self.crop = (kernel_size - 1) // 2, kernel_size // 2  # floor / ceil of (k-1)/2
        self.crop_shortcut = padding == "valid" and kernel_size > 1
        # A 1x1 conv with "same" padding never pads, so a plain strided conv matches TF exactly.
        self.shortcut = (PointwiseConv(in_channels, out_channels, stride)
                         if stride > 1 or in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.negative_slope
        out = F.leaky_relu(self.conv1(x), act)
        out = F.leaky_relu(self.conv2(out), act)
        out = self.conv3(out)
        if self.crop_shortcut:
            lo, hi = self.crop
            x = x[:, :, lo:x.shape[-2] - hi, lo:x.shape[-1] - hi]
        if self.shortcut is not None:
            x = self.shortcut(x)
        return F.leaky_relu(out + x, act)


class BagNet77TNet(nn.Module):
    """TNet's BagNet-77 feature extractor (+ optional linear classifier, TNet's classification module).

    77x77 input -> stem 75 -> stage1 38 -> stage2 19 -> stage3 9 (1024 ch) -> stage4 7 (2048 ch)
    -> 1x1 conv to 512 + leaky ReLU (7x7 "map") -> global average pool (512-d "pooled"); 224 px -> 25x25.

    forward(x) -> logits (B, num_classes), or the pooled features (B, 512) if num_classes is None.
    forward_features(x) -> {"stage3": (B, 1024, 9, 9) at 77 px, the location module's input before
    TNet's [::2, ::2] subsampling; "map": (B, 512, 7, 7); "pooled": (B, 512)}.

    Leaky ReLU slope 0.2: the official code calls `tf.nn.leaky_relu` without `alpha`, whose default is
    0.2 (Keras' `LeakyReLU` layer defaults to 0.3 but is not used). Spatial dropout (whole channels, as
    TF's dropout with noise shape [B, 1, 1, C]) with rate `spatial_dropout` follows the last
    `dropout_layers` of (stage 2, stage 3, stage 4, 512-d head), as in the official code; TNet uses 1
    layer at rate 0.5, the BagNet-77 baseline rate 0.625 (paper sec. 5.1). Weights are Glorot-normal
    (Keras' truncated variant), biases zero (paper App. B.2).
    """

    num_features: int

    def __init__(self, num_classes: int | None = 1000, width: float = 1.0, in_channels: int = 3,
                 negative_slope: float = 0.2, spatial_dropout: float = 0.0, dropout_layers: int = 1):
        super().__init__()
        _check_width("bagnet77_tnet", width)
        if not 0 <= dropout_layers <= 4 or not 0 <= spatial_dropout < 1:
            raise UserError(f"bagnet77_tnet: need 0 <= dropout_layers <= 4 and 0 <= spatial_dropout < 1, "
                            f"got {dropout_layers} and {spatial_dropout}")
        self.negative_slope = negative_slope
        self.spatial_dropout = spatial_dropout
        self.dropout_layers = dropout_layers
        planes = [_scaled(p, width) for p in STAGE_PLANES]
        self.stem = nn.Conv2d(in_channels, planes[0], 3)  # "valid"
        channels = planes[0]
        self.stages = nn.ModuleList()
        for p, blocks, stride, paddings in zip(planes, STAGE_BLOCKS, STAGE_STRIDES, TNET_PADDINGS,
                                               strict=True):
            stage = []
            for i in range(blocks):
                kernel = 3 if i < KERNEL3_BLOCKS else 1
                padding = paddings[i] if kernel == 3 else "same"
                stage.append(TNetBottleneck(channels, p, kernel, stride if i == 0 else 1, padding,
                                            negative_slope))
                channels = p * EXPANSION
            self.stages.append(nn.Sequential(*stage))
        self.head = nn.Conv2d(channels, planes[3], 1)  # 2048 -> 512
        self.num_features = planes[3]
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                keras_init_(m.weight, 1.0, "fan_avg", "truncated_normal")
                nn.init.zeros_(m.bias)

    def _dropout(self, x: torch.Tensor, position: int) -> torch.Tensor:
        # position counts back from the head: 1 = head, 2 = stage 4, 3 = stage 3, 4 = stage 2.
        if self.dropout_layers >= position and self.spatial_dropout > 0:
            return F.dropout2d(x, self.spatial_dropout, self.training)
        return x

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_input("bagnet77_tnet", x, 27)
        x = F.leaky_relu(self.stem(x), self.negative_slope)
        x = self.stages[0](x)
        x = self._dropout(self.stages[1](x), 4)
        stage3 = self.stages[2](x)
        x = self._dropout(stage3, 3)
        x = self._dropout(self.stages[3](x), 2)
        fmap = self._dropout(F.leaky_relu(self.head(x), self.negative_slope), 1)
        return {"stage3": stage3, "map": fmap, "pooled": fmap.mean(dim=(2, 3))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.forward_features(x)["pooled"]
        return self.fc(pooled) if self.fc is not None else pooled


# ---------------------------------------------------------------------------------------------
# Saccader's BagNet-77-lowD
# ---------------------------------------------------------------------------------------------

def _bn(channels: int) -> BatchNorm2d:
    # TF momentum 0.9 (moving = 0.9 * moving + 0.1 * batch) is torch momentum 0.1.
    return BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class LowDBottleneck(nn.Module):
    """Saccader's bottleneck: 1x1 -> kxk (stride) -> 1x1, all "valid", BN + ReLU, no conv biases.

    The residual is centre-cropped [1:-1, 1:-1] when k = 3 and projected by a 1x1 conv (stride s)
    when the stride or channel count changes. The last BN starts with gamma = 0 (block = identity).

    Quirk of the official code, kept on purpose: in a projecting block the "downsample" BN is applied
    to the *main* branch (after the gamma-0 BN), not to the projected shortcut, which has neither BN
    nor bias. It has the same variables as the usual layout, so parameter counts are unaffected.
    """

    def __init__(self, in_channels: int, planes: int, kernel_size: int, stride: int):
        super().__init__()
        out_channels = planes * EXPANSION
        self.conv1, self.bn1 = nn.Conv2d(in_channels, planes, 1, bias=False), _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size, stride, bias=False)
        self.bn2 = _bn(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out_channels, 1, bias=False), _bn(out_channels)
        nn.init.zeros_(self.bn3.weight)
        self.crop = kernel_size == 3
        if stride != 1 or in_channels != out_channels:
            self.shortcut = PointwiseConv(in_channels, out_channels, stride, bias=False)
            self.bn_downsample = _bn(out_channels)
        else:
            self.shortcut = self.bn_downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.crop:
            x = x[:, :, 1:-1, 1:-1]
        if self.shortcut is not None:
            x = self.shortcut(x)
            out = self.bn_downsample(out)
        return F.relu(out + x)


class BagNet77LowD(nn.Module):
    """Saccader's representation network BagNet-77-lowD (1001 classes: label 0 is background).

    224x224 input -> stem 222 -> 108 -> 51 -> 23 -> 19x19 locations (361) 8 px apart, each with a
    77x77 px receptive field. Every conv is "valid" (TF output size ceil((n - k + 1) / s)).

    forward(x) -> logits (B, num_classes): the per-location logits averaged over space.
    forward_features(x) -> {"features": (B, 2048, 19, 19), the 2048-d map (Saccader's attention
    network input); "what": (B, 512, 19, 19), the lowD "what" features after BN + ReLU;
    "logits_map": (B, num_classes, 19, 19), per-location logits}.

    Init as in TF1 `tf.layers`: Glorot-uniform conv kernels, zero logits bias, BN gamma 1 / beta 0.
    """

    num_features: int

    def __init__(self, num_classes: int = 1001, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        _check_width("bagnet77_lowd", width)
        if not num_classes or num_classes < 1:
            raise UserError(f"bagnet77_lowd needs num_classes >= 1 (its logits map), got {num_classes}")
        planes = [_scaled(p, width) for p in STAGE_PLANES]
        self.stem = nn.Conv2d(in_channels, planes[0], 3, bias=False)
        self.stem_bn = _bn(planes[0])
        channels = planes[0]
        self.stages = nn.ModuleList()
        for p, blocks, stride in zip(planes, STAGE_BLOCKS, STAGE_STRIDES, strict=True):
            stage = []
            for i in range(blocks):
                stage.append(LowDBottleneck(channels, p, 3 if i < KERNEL3_BLOCKS else 1,
                                            stride if i == 0 else 1))
                channels = p * EXPANSION
            self.stages.append(nn.Sequential(*stage))
        self.lowd = nn.Conv2d(channels, channels // 4, 1, bias=False)  # 2048 -> 512 "what"
        self.lowd_bn = _bn(channels // 4)
        self.num_features = channels // 4
        self.logits = nn.Conv2d(self.num_features, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(self.logits.bias)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_input("bagnet77_lowd", x, 77)
        x = F.relu(self.stem_bn(self.stem(x)))
        for stage in self.stages:
            x = stage(x)
        what = F.relu(self.lowd_bn(self.lowd(x)))
        return {"features": x, "what": what, "logits_map": self.logits(what)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["logits_map"].mean(dim=(2, 3))


@register_backbone("bagnet77_tnet")
def bagnet77_tnet(**kwargs) -> BagNet77TNet:
    return BagNet77TNet(**kwargs)


@register_backbone("bagnet77_lowd")
def bagnet77_lowd(**kwargs) -> BagNet77LowD:
    return BagNet77LowD(**kwargs)
