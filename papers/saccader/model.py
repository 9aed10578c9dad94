"""Saccader (paper sec. 3.1, eqs. 1-3, Figs. Supp.4-6) and the baselines of Table Supp.1.

The representation network (BagNet-77-lowD, core.backbones) computes, in one pass, a logits vector for
every 77 x 77 px patch on a grid 8 px apart (19 x 19 = 361 locations at 224 px). The attention network
turns its 2048-d features into "where" features, a 1x1 conv mixes them with the 512-d "what" features
into F, and the Saccader cell picks T locations one after the other from F, never the same one twice.
The prediction is the mean of the logits read at the picked locations.

`Saccader.forward` returns per-glimpse logits, the picked location indices (row-major on the grid) and
their log-probabilities under the cell's policy, for REINFORCE (eq. 6); it can also be forced along given
locations (eq. 5: the log-probabilities of the target locations, with the visited state C following
them).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.backbones import build_backbone
from core.errors import UserError
from core.glimpse import extract_patches
from papers.saccader.config import SaccaderConfig
from papers.saccader.dram import DRAM

MASK = 1e5  # eqs. 1 and 3: a visited location's logit is lowered by 10^5


def _bn(channels: int) -> nn.BatchNorm2d:
    # Official: tf.layers.batch_normalization(momentum=0.9, epsilon=1e-5) = torch momentum 0.1.
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class AttentionNetwork(nn.Module):
    """Fig. Supp.5: `groups` x (1x1 conv, 3x3 conv with dilation 2), each conv without bias and followed by
    BN + ReLU, "same" padding; group i has in_channels / 2^(i+1) filters (2048 -> 1024, 1024 -> 512, 512)."""

    def __init__(self, in_channels: int, groups: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(groups):
            filters = in_channels // 2 ** (i + 1)
            for kernel in (1, 3):
                dilation = 2 if kernel == 3 else 1
                layers += [nn.Conv2d(channels, filters, kernel, padding=dilation * (kernel // 2),
                                     dilation=dilation, bias=False), _bn(filters), nn.ReLU()]
                channels = filters
        self.layers = nn.Sequential(*layers)
        self.out_channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)  # tf.layers default (Glorot uniform)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SaccaderCell(nn.Module):
    """Eqs. 1-3. F (B, d, N) mixed features over N locations, C (B, N) visited state -> location logits.

    G = F.a / sqrt(d) - 1e5 C; G~ = softmax over space; h = sum_space F G~; h~ = softmax over channels;
    R = F.h~ - 1e5 C; the policy is softmax(R) over space. `a` is the cell's only parameter.
    """

    def __init__(self, channels: int):
        super().__init__()
        limit = math.sqrt(6 / (channels + 1))  # tf.layers.dense(units=1) kernel: Glorot uniform
        self.a = nn.Parameter(torch.empty(channels).uniform_(-limit, limit))

    def forward(self, features: Tensor, visited: Tensor) -> Tensor:
        d = features.shape[1]
        mask = MASK * visited
        spatial = torch.einsum("bdn,d->bn", features, self.a) / math.sqrt(d) - mask  # eq. 1
        channel = torch.softmax((features * torch.softmax(spatial, -1)[:, None]).sum(-1), -1)  # eq. 2
        return torch.einsum("bdn,bd->bn", features, channel) - mask  # eq. 3 (logits of R~)


def gather_logits(logits_map: Tensor, locations: Tensor) -> Tensor:
    """Logits (B, T, K) read from logits_map (B, K, h, w) at row-major location indices (B, T)."""
    flat = logits_map.flatten(2)  # (B, K, N)
    return flat.gather(2, locations[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


class Saccader(nn.Module):
    """BagNet-77-lowD + attention network + what/where mixing + Saccader cell (sec. 3.1).

    forward(images, num_glimpses, num_samples=1, locations=None, detach_representation=False) -> dict:
      logits (S*B, T, K) per-glimpse logits (average over T for the prediction);
      locations (S*B, T) row-major indices on the h x w grid; log_prob (S*B, T) of each pick;
      location_logits (S*B, T, N) the cell's logits R at each step (masked);
      logits_map (B, K, h, w) the representation network's per-location logits.
    The S samples of an image are trajectories over the same features (the representation and attention
    networks run once), stacked sample-major: row s*B + b. Picks are sampled in training mode and the
    argmax in eval mode (official); `locations` (B, T), or a function of the detached logits map that
    returns them, forces the picks (eq. 5's targets). num_glimpses=0 returns the representation network's
    prediction (eq. 4): logits (B, 1, K) averaged over all locations, and logits_map.
    """

    receptive_field = 77  # px, BagNet-77 (sec. 3.1)
    stride = 8  # px between neighbouring locations (sec. 3.1)

    def __init__(self, num_classes: int = 1001, width: float = 1.0, in_channels: int = 3,
                 attention_network: bool = True):
        super().__init__()
        self.backbone = build_backbone("bagnet77_lowd", num_classes=num_classes, width=width,
                                       in_channels=in_channels)
        what = self.backbone.num_features  # 512 at width 1
        features = what * 4  # 2048: the last stage's output
        self.attention = AttentionNetwork(features) if attention_network else None
        # Without the attention network (official attention_groups = 0) the "where" features are the
        # 2048-d features themselves.
        where = self.attention.out_channels if attention_network else features
        self.mix = nn.Conv2d(where + what, what, 1)  # 1x1 conv with bias -> 512 (sec. 3.1)
        nn.init.xavier_uniform_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)
        self.cell = SaccaderCell(what)

    def representation_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def location_parameters(self) -> list[nn.Parameter]:
        """eta of eqs. 5-6: attention network, mixing conv and Saccader cell."""
        modules = [m for m in (self.attention, self.mix, self.cell) if m is not None]
        return [p for m in modules for p in m.parameters()]

    def mixed_features(self, out: dict[str, Tensor]) -> Tensor:
        where = out["features"] if self.attention is None else self.attention(out["features"])
        return self.mix(torch.cat([where, out["what"]], 1))  # concat(where, what)

    def forward(self, images: Tensor, num_glimpses: int, num_samples: int = 1,
                locations: Tensor | Callable[[Tensor], Tensor] | None = None,
                detach_representation: bool = False) -> dict[str, Tensor]:
        out = self.backbone.forward_features(images)
        if detach_representation:  # eq. 5: no gradient into the representation network
            out = {k: v.detach() for k, v in out.items()}
        logits_map = out["logits_map"]
        if num_glimpses == 0:  # eq. 4: the representation network alone, logits averaged over all locations
            return {"logits": logits_map.mean((2, 3))[:, None], "logits_map": logits_map}
        if callable(locations):
            locations = locations(logits_map.detach())
        mixed = self.mixed_features(out).flatten(2)  # (B, d, N)
        B, _, N = mixed.shape
        if not 1 <= num_glimpses <= N:
            raise UserError(f"num_glimpses must be in [1, {N}] (locations on the grid), got {num_glimpses}")
        if locations is not None and tuple(locations.shape) != (B, num_glimpses):
            raise UserError(f"forced locations must be ({B}, {num_glimpses}), got {tuple(locations.shape)}")
        mixed = mixed.repeat(num_samples, 1, 1)
        visited = mixed.new_zeros(num_samples * B, N)
        picks, log_probs, cell_logits = [], [], []
        for t in range(num_glimpses):
            logit = self.cell(mixed, visited)
            if locations is not None:
                pick = locations[:, t].repeat(num_samples)
            elif self.training:
                pick = torch.multinomial(torch.softmax(logit.detach(), -1), 1)[:, 0]
            else:
                pick = logit.detach().argmax(-1)
            log_probs.append(torch.log_softmax(logit, -1).gather(1, pick[:, None])[:, 0])
            visited = visited.scatter(1, pick[:, None], 1.0)  # one-hot state C^t (eq. 1)
            picks.append(pick)
            cell_logits.append(logit)
        picks_t = torch.stack(picks, 1)
        glimpse_logits = gather_logits(logits_map.repeat(num_samples, 1, 1, 1), picks_t)
        return {"logits": glimpse_logits, "locations": picks_t, "log_prob": torch.stack(log_probs, 1),
                "location_logits": torch.stack(cell_logits, 1), "logits_map": logits_map}


def location_boxes(locations: Tensor, grid_w: int, stride: int = 8, size: int = 77) -> Tensor:
    """Pixel boxes (..., 4) (y0, x0, y1, x1) of the receptive fields at row-major indices (valid convs:
    location (i, j) sees pixels [stride*i, stride*i + size) x [stride*j, stride*j + size))."""
    row, col = locations // grid_w, locations % grid_w
    y0, x0 = row * stride, col * stride
    return torch.stack([y0, x0, y0 + size, x0 + size], -1).float()


class ResNetClassifier(nn.Module):
    """ResNet-v2-50 whole-image baseline (Table Supp.1: 25,615,849 variables with 1001 classes)."""

    def __init__(self, num_classes: int = 1001, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        self.net = build_backbone("resnet_v2_50", num_classes=num_classes, width=width,
                                  in_channels=in_channels)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class PatchClassifier(nn.Module):
    """Saccader-NASNet (sec. 4.3): a separate, higher-capacity classifier applied to the 77 x 77 patches
    a Saccader attends to, its logits averaged over the glimpses. Any registered backbone that takes
    (num_classes, width, in_channels) serves (the paper: NASNet, fine-tuned on Saccader's patches).

    forward(images, boxes (B, T, 4) pixel (y0, x0, y1, x1) of the patches) -> logits (B, T, K)."""

    def __init__(self, backbone: str, num_classes: int, width: float = 1.0, in_channels: int = 3,
                 patch: int = 77):
        super().__init__()
        self.patch = patch
        self.net = build_backbone(backbone, num_classes=num_classes, width=width, in_channels=in_channels)

    def forward(self, images: Tensor, boxes: Tensor) -> Tensor:
        patches = extract_patches(images, boxes[..., :2].long(), self.patch)  # (B, T, C, p, p)
        B, T = patches.shape[:2]
        return self.net(patches.flatten(0, 1)).view(B, T, -1)


def build_model(cfg: SaccaderConfig, attention_network: bool = True) -> nn.Module:
    """The model named by cfg.model (Table Supp.1 at width 1); attention_network=False builds the
    ablation of Fig. Supp.3."""
    kw = dict(num_classes=cfg.num_classes, width=cfg.width, in_channels=cfg.channels)
    if cfg.model == "saccader":
        return Saccader(attention_network=attention_network, **kw)
    if cfg.model == "bagnet":
        return build_backbone("bagnet77_lowd", **kw)
    if cfg.model == "resnet":
        return set_bn_decay(ResNetClassifier(**kw), cfg.resnet_bn_decay)
    if cfg.model == "dram":
        return set_bn_decay(DRAM(glimpse=cfg.dram_glimpse, resolutions=cfg.dram_resolutions, std=cfg.dram_std,
                                 **kw), cfg.resnet_bn_decay)
    raise UserError(f"unknown model {cfg.model!r}")


def set_bn_decay(model: nn.Module, decay: float) -> nn.Module:
    """Set the moving-average decay of every BN layer (TF decay d = torch momentum 1 - d)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1 - decay
    return model


def whole_image_classifier(cfg: SaccaderConfig) -> ResNetClassifier:
    """The separately trained ResNet-v2-50 of the occlusion analysis (sec. 4.2)."""
    width = cfg.occlusion_classifier_width or cfg.width
    classifier = ResNetClassifier(num_classes=cfg.num_classes, width=width, in_channels=cfg.channels)
    return set_bn_decay(classifier, cfg.resnet_bn_decay)


def patch_classifier(cfg: SaccaderConfig) -> PatchClassifier:
    """Saccader-NASNet's classifier (sec. 4.3) on cfg.patch_backbone, with the BN decay of the other
    separately trained networks: at TF-slim's 0.997 a few hundred CPU-scale updates leave its moving
    statistics mostly those of the untrained network, and evaluation collapses."""
    model = PatchClassifier(cfg.patch_backbone, cfg.num_classes, cfg.width, cfg.channels)
    return set_bn_decay(model, cfg.resnet_bn_decay)


def classification_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Second term of eq. 6 (and eq. 4 over all locations): cross-entropy of the geometric mean of the
    per-glimpse class probabilities, renormalised = softmax of the mean logits over glimpses."""
    return F.cross_entropy(logits.mean(1), targets)
