"""EfficientNet-B0 in the Keras convention of TNet's fMoW code (TNet paper, Table 5 and App. B.3).

TNet's official fMoW code builds B0 itself with Keras layers, matching `keras.applications`
EfficientNetB0 minus its input `Normalization` layer: BN (momentum 0.99, eps 1e-3) without conv
biases, SiLU ("swish"), TF "SAME" padding, squeeze-excite with max(1, int(block_input_filters / 4))
units (with biases), stem 32, head 1280, stochastic depth on identity-skip blocks, dropout before the
classifier. With 62 classes this is 4,128,986 values (TNet Table 2: 4.13M): 4,086,970 trainable plus
42,016 BN moving means/variances (21,008 BN channels); Keras' own EfficientNetB0 adds 7 more
(the Normalization layer's mean, variance and count), which TNet's model does not have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.backbones import register_backbone
from core.backbones.bagnet import Conv2dSame, keras_init_
from core.errors import UserError

# (kernel, repeats, filters_out, expand_ratio, stride) per stage; stages 1..7 (TNet's parts 2..8).
B0_STAGES = (
    (3, 1, 16, 1, 1),
    (3, 2, 24, 6, 2),
    (5, 2, 40, 6, 2),
    (3, 3, 80, 6, 2),
    (5, 3, 112, 6, 1),
    (5, 4, 192, 6, 2),
    (3, 1, 320, 6, 1),
)
STEM_FILTERS, HEAD_FILTERS, SE_RATIO, DEPTH_DIVISOR = 32, 1280, 0.25, 8


def round_filters(filters: int, width: float, divisor: int = DEPTH_DIVISOR) -> int:
    """EfficientNet's width scaling: nearest multiple of `divisor`, never more than 10% below."""
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * filters else new)


def _bn(channels: int) -> nn.BatchNorm2d:
    # Keras momentum 0.99 (moving = 0.99 * moving + 0.01 * batch) is torch momentum 0.01.
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: [1x1 expand-BN-SiLU] -> kxk depthwise-BN-SiLU -> SE -> 1x1-BN,
    plus the input (randomly dropped per sample in training) when stride 1 and in == out."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int, drop_path: float):
        super().__init__()
        mid = in_channels * expand_ratio
        if expand_ratio != 1:
            self.expand = nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), _bn(mid), nn.SiLU())
        else:
            self.expand = nn.Identity()
        self.depthwise = nn.Sequential(Conv2dSame(mid, mid, kernel_size, stride, groups=mid, bias=False),
                                       _bn(mid), nn.SiLU())
        se = max(1, int(in_channels * SE_RATIO))  # from the block's input filters, not `mid`
        self.se_reduce = nn.Conv2d(mid, se, 1)
        self.se_expand = nn.Conv2d(se, mid, 1)
        self.project = nn.Sequential(nn.Conv2d(mid, out_channels, 1, bias=False), _bn(out_channels))
        self.has_skip = stride == 1 and in_channels == out_channels
        self.drop_path = drop_path if self.has_skip else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.depthwise(self.expand(x))
        scale = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(out.mean(dim=(2, 3), keepdim=True)))))
        out = self.project(out * scale)
        if not self.has_skip:
            return out
        if self.training and self.drop_path > 0:
            # Keras Dropout with noise shape (B, 1, 1, 1): drop the whole branch, rescale the kept ones.
            keep = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) >= self.drop_path
            out = out * keep / (1 - self.drop_path)
        return out + x


class EfficientNetB0(nn.Module):
    """EfficientNet-B0, 224 px -> 7x7x1280.

    forward(x) -> logits (B, num_classes) (dropout on the pooled features first), or the pooled
    features (B, 1280) when num_classes is None.
    forward_features(x) -> {"stage1".."stage7": each stage's output, "map": (B, 1280, h, w) after the
    head conv-BN-SiLU, "pooled": (B, 1280)}. TNet's fMoW location module (3x3 grid) reads
    "stage4" = the output of stage 4, block 3 (80 ch, 14x14 at 224 px) as features[:, :, 2::4, 2::4];
    its 5x5-grid variant reads "stage3" (40 ch) as [:, :, 3::5, 3::5].

    `width` is EfficientNet's width coefficient (channels rounded to multiples of 8, at least 8);
    `drop_path` is the maximum stochastic-depth rate, reached linearly at the last block as in TNet's
    code (rate * b / 16 for block b = 1..16); `dropout` is the classifier's drop probability (Keras'
    B0 default 0.2; TNet's baselines use 0.75 / 0.3, TNet itself 0.5). Init as Keras: conv kernels
    VarianceScaling(2, fan_out, truncated normal), dense VarianceScaling(1/3, fan_out, uniform).
    """

    num_features: int

    def __init__(self, num_classes: int | None = 1000, width: float = 1.0, in_channels: int = 3,
                 dropout: float = 0.2, drop_path: float = 0.0):
        super().__init__()
        if not width > 0 or not 0 <= dropout < 1 or not 0 <= drop_path < 1:
            raise UserError(f"efficientnet_b0: need width > 0 and dropout, drop_path in [0, 1), got "
                            f"width={width}, dropout={dropout}, drop_path={drop_path}")
        stem = round_filters(STEM_FILTERS, width)
        self.stem = nn.Sequential(Conv2dSame(in_channels, stem, 3, 2, bias=False), _bn(stem), nn.SiLU())
        total_blocks = sum(stage[1] for stage in B0_STAGES)
        channels, b = stem, 0
        self.stages = nn.ModuleList()
        for kernel, repeats, filters, expand, stride in B0_STAGES:
            out_channels = round_filters(filters, width)
            blocks = []
            for i in range(repeats):
                b += 1
                blocks.append(MBConv(channels, out_channels, kernel, stride if i == 0 else 1, expand,
                                     drop_path * b / total_blocks))
                channels = out_channels
            self.stages.append(nn.Sequential(*blocks))
        self.num_features = round_filters(HEAD_FILTERS, width)
        self.head = nn.Sequential(nn.Conv2d(channels, self.num_features, 1, bias=False),
                                  _bn(self.num_features), nn.SiLU())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                keras_init_(m.weight, 2.0, "fan_out", "truncated_normal", depthwise=m.groups > 1)
            elif isinstance(m, nn.Linear):
                keras_init_(m.weight, 1 / 3, "fan_out", "uniform")
            if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4:
            raise UserError(f"efficientnet_b0 expects images (B, C, H, W), got shape {tuple(x.shape)}")
        out = {}
        x = self.stem(x)
        for i, stage in enumerate(self.stages, start=1):
            x = out[f"stage{i}"] = stage(x)
        out["map"] = self.head(x)
        out["pooled"] = out["map"].mean(dim=(2, 3))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.forward_features(x)["pooled"]
        return self.fc(self.dropout(pooled)) if self.fc is not None else pooled


def se_multiplications(model: EfficientNetB0, x: torch.Tensor) -> int:
    """Multiplications of the squeeze-excite channel scaling (one per element of every expanded map)
    in `model.forward_features(x)`: element-wise, so FlopCounterMode (and `count_multiplications`)
    skip them, but TNet's Table 2 counts them. Adding them reproduces its B0 numbers (0.387 / 1.546 /
    6.180 G vs 0.39 / 1.54 / 6.18 at 224 / 448 / 896 px, 62 classes; 0.385 / 1.536 / 6.143 without)
    and the TNet rows built from 224 px patches. Runs the model; use a meta-device copy to make it free.
    """
    total = 0

    def add(module, inputs, output):
        nonlocal total
        total += output.numel()

    handles = [m.depthwise.register_forward_hook(add) for m in model.modules() if isinstance(m, MBConv)]
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    return total


@register_backbone("efficientnet_b0")
def efficientnet_b0(**kwargs) -> EfficientNetB0:
    return EfficientNetB0(**kwargs)
