"""TNet: multi-scale hard attention that traverses an image pyramid top-down (paper sec. 3, App. B.1).

Level 1 runs the feature extraction module on the whole image downscaled to the base resolution. The
location module scores an n x n grid of (overlapping) cells from an intermediate feature map; the top-k
cells (or k cells sampled without replacement) are cropped from the full-resolution region, resized to
the base resolution and processed at level 2, and so on recursively. Every feature vector gets a
sin/cos code of its (y, x, scale) position (positional encoding module); the mean of all of them is
classified (classification module). Nothing here is specific to two levels.

`tnet_loss` is the learning rule: eq. 1 (REINFORCE with the EMA baseline of eq. 7) with the per-feature
regularisation of eq. 2, weighted exactly as the official code does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from accelerate.utils import reduce
from torch import Tensor, nn

from core.backbones import build_backbone
from core.backbones.bagnet import keras_init_
from core.errors import UserError
from core.estimators import EMABaseline, reinforce_loss, sample_without_replacement, topk_select
from core.glimpse import GridSpec, child_coords, extract_patches, select_child_boxes
from core.metrics import correct
from papers.tnet.config import TNetConfig

LEAKY_SLOPE = 0.2  # tf.nn.leaky_relu's default alpha, used throughout the official ImageNet model


def _init_(module: nn.Module, scheme: str) -> None:
    """Xavier/Glorot-normal weights and zero biases (B.2), or EfficientNet's Keras init (B.3)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if scheme == "glorot":
                keras_init_(m.weight, 1.0, "fan_avg", "truncated_normal")
            else:
                keras_init_(m.weight, 2.0, "fan_out", "truncated_normal")
        elif isinstance(m, nn.Linear):
            if scheme == "glorot":
                keras_init_(m.weight, 1.0, "fan_avg", "truncated_normal")
            else:
                keras_init_(m.weight, 1 / 3, "fan_out", "uniform")
        else:
            continue
        nn.init.zeros_(m.bias)


def positional_code(coords: Tensor, dim: int, max_inv_freq: float = 100.0) -> Tensor:
    """Fixed sin/cos code (App. B.1.2) of (y, x, scale) triplets (N, 3) -> (N, dim).

    For each coordinate p: sin(p * w_t) then cos(p * w_t), t = 0..n-1, n = dim // 6, with inverse angular
    frequencies 1/w_t spaced geometrically from 1 to max_inv_freq (the official code's layout; the
    remaining dim - 6n entries are zero).
    """
    n = dim // 6
    if n < 2:
        raise UserError(f"the positional code needs at least 12 dimensions, got {dim}")
    t = torch.arange(n, device=coords.device, dtype=coords.dtype)
    freqs = torch.exp(-math.log(max_inv_freq) * t / (n - 1))
    angles = coords[..., None] * freqs  # (N, 3, n)
    code = torch.cat([angles.sin(), angles.cos()], -1).flatten(-2)  # (N, 6n): [sin y, cos y, sin x, ...]
    return F.pad(code, (0, dim - 6 * n))


class LocationModule(nn.Module):
    """Scores the n x n candidate cells (App. B.1.1): logits (N, n*n), L2-normalised, ready for softmax.

    "context" (Table 4): concat(grid features, the tiled global feature vector, 2 coordinate channels)
    -> 1x1 conv + leaky ReLU -> 1x1 conv to 1 logit per cell. "squeeze_excite" (Table 5): 1x1 conv + SiLU
    -> squeeze-excite -> concat coordinates -> 1x1 conv + SiLU -> 1x1 conv. The coordinates are the
    cell's (row, col) in [-1, 1], each through a learned 1->1 linear map (initialised to identity).
    The logits are L2-normalised so that the softmax never saturates (App. B.1.1).
    """

    def __init__(self, kind: str, grid_channels: int, context_channels: int, hidden: int):
        super().__init__()
        self.kind = kind
        if kind == "context":
            in_channels = grid_channels + context_channels + 2
            self.act = lambda x: F.leaky_relu(x, LEAKY_SLOPE)
        else:
            self.pre = nn.Conv2d(grid_channels, grid_channels, 1)
            self.se_reduce = nn.Conv2d(grid_channels, max(1, grid_channels // 2), 1)
            self.se_expand = nn.Conv2d(max(1, grid_channels // 2), grid_channels, 1)
            in_channels = grid_channels + 2
            self.act = F.silu
        self.coord_scale = nn.Parameter(torch.ones(2))
        self.coord_shift = nn.Parameter(torch.zeros(2))
        self.fuse = nn.Conv2d(in_channels, hidden, 1)
        self.out = nn.Conv2d(hidden, 1, 1)

    def forward(self, grid: Tensor, context: Tensor) -> Tensor:
        N, _, gh, gw = grid.shape
        if self.kind == "context":
            x = torch.cat([grid, context[:, :, None, None].expand(-1, -1, gh, gw)], 1)
        else:
            x = self.act(self.pre(grid))
            x = x * torch.sigmoid(self.se_expand(self.act(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        rows = torch.linspace(-1, 1, gh, device=grid.device, dtype=grid.dtype)[:, None].expand(gh, gw)
        cols = torch.linspace(-1, 1, gw, device=grid.device, dtype=grid.dtype)[None, :].expand(gh, gw)
        coords = torch.stack([rows, cols]) * self.coord_scale[:, None, None] + self.coord_shift[:, None, None]
        x = torch.cat([x, coords.expand(N, -1, -1, -1)], 1)
        logits = self.out(self.act(self.fuse(x))).flatten(1)
        return F.normalize(logits, dim=1)


class PositionalEncoding(nn.Module):
    """Positional encoding module (App. B.1.2): FC(concat(feature, code)) (Table 4), or
    SiLU(feature + FC(code)) (Table 5)."""

    def __init__(self, mode: str, feature_dim: int, pos_dim: int, max_inv_freq: float):
        super().__init__()
        self.mode, self.pos_dim, self.max_inv_freq = mode, pos_dim, max_inv_freq
        self.fc = nn.Linear(feature_dim + pos_dim if mode == "concat" else pos_dim, feature_dim)

    def forward(self, features: Tensor, coords: Tensor) -> Tensor:
        code = positional_code(coords.to(features.dtype), self.pos_dim, self.max_inv_freq)
        if self.mode == "concat":
            return self.fc(torch.cat([features, code], 1))
        return F.silu(features + self.fc(code))


@dataclass
class TNetOutput:
    """Everything one pass produces; per-level lists, level 1 first. n_l = regions processed at level l."""

    logits: Tensor
    """(B, classes) from the mean of all positional-encoded feature vectors."""
    level_logits: list[Tensor] = field(default_factory=list)
    """(B, classes) prediction after each level (features of levels 1..l): early stopping for free."""
    features: list[Tensor] = field(default_factory=list)
    """(B, n_l, D) positional-encoded feature vectors."""
    feature_logits: list[Tensor] = field(default_factory=list)
    """(B, n_l, classes) per-feature predictions for eq. 2 (training only, else empty)."""
    log_probs: list[Tensor] = field(default_factory=list)
    """(B, n_{l+1}) log-probability of each attended location (levels 2..), for eqs. 1 and 2."""
    probs: list[Tensor] = field(default_factory=list)
    """(B, n_l, n*n) attention distribution over each processed region's grid (levels that attend)."""
    indices: list[Tensor] = field(default_factory=list)
    """(B, n_l, k) chosen cells (row-major) inside each region."""
    boxes: list[Tensor] = field(default_factory=list)
    """(B, n_l, 4) pixel boxes (y0, x0, y1, x1) of the processed regions in the input image."""
    coords: list[Tensor] = field(default_factory=list)
    """(B, n_l, 3) positional triplets (y, x, scale) of the regions (App. B.1.2)."""


def _select(logits: Tensor, k: int, sample: bool) -> tuple[Tensor, Tensor]:
    """k distinct cells and the log-probability of each pick, (N, k) both.

    Top-k (official) uses log p of each cell, dropping eq. 9's renormalisation (App. A.2); sampling
    without replacement uses eq. 9's factors log p_r - log(1 - sum of the earlier picks' p), which sum
    to the exact log-probability of the ordered draw.
    """
    indices = sample_without_replacement(logits, k)[0] if sample else topk_select(logits, k)[0]
    log_p = torch.log_softmax(logits, -1).gather(-1, indices)
    if sample:
        before = torch.cumsum(log_p.exp(), -1) - log_p.exp()
        log_p = log_p - torch.log1p(-before)
    return indices, log_p


class TNet(nn.Module):
    """TNet; forward(images, locs=None) -> TNetOutput. `locs` (per-level counts, e.g. (2, 1)) overrides the
    training setting, which is how accuracy vs. number of locations is evaluated."""

    def __init__(self, cfg: TNetConfig):
        super().__init__()
        self.cfg = cfg
        self.extractor = _extractor(cfg)
        _check_feature_dim(self.extractor, cfg)
        grid_channels = self._probe_grid_channels()
        self.location = LocationModule(cfg.location_module, grid_channels, cfg.feature_dim,
                                       cfg.location_hidden)
        self.positional = PositionalEncoding(cfg.pos_mode, cfg.feature_dim, cfg.pos_dim, cfg.pos_max_inv_freq)
        self.classifier_dropout = nn.Dropout(cfg.classifier_dropout)
        self.classifier = nn.Linear(cfg.feature_dim, cfg.num_classes)
        for module in (self.location, self.positional, self.classifier):
            _init_(module, cfg.init)
        self.baseline = EMABaseline(cfg.baseline_decay, cfg.baseline_init)

    def _probe_grid_channels(self) -> int:
        with torch.no_grad():
            x = torch.zeros(1, self.cfg.channels, self.cfg.base_res, self.cfg.base_res)
            grid = self._grid(self.extractor.forward_features(x))
        return grid.shape[1]

    def _grid(self, feats: dict[str, Tensor]) -> Tensor:
        """The n x n map describing the grid cells, picked from the intermediate map (App. B.1.1)."""
        cfg = self.cfg
        fmap = feats[cfg.grid_features]
        o, s, n = cfg.grid_offset, cfg.grid_step, cfg.grid_size
        grid = fmap[:, :, o::s, o::s][:, :, :n, :n]
        if grid.shape[-2:] != (n, n):
            raise UserError(f"{cfg.grid_features} map {tuple(fmap.shape[-2:])} at base resolution "
                            f"{cfg.base_res} has no {n}x{n} grid at offset {o}, step {s}")
        return grid

    def forward(self, images: Tensor, locs: tuple[int, ...] | None = None) -> TNetOutput:
        cfg = self.cfg
        locs = tuple(cfg.locs_per_grid if locs is None else locs)
        if len(locs) != cfg.levels - 1:
            raise UserError(f"locs needs {cfg.levels - 1} per-level counts, got {locs}")
        B, _, H, W = images.shape
        if H != W:
            raise UserError(f"TNet expects square images, got {H}x{W}")
        sample = self.training and cfg.selection == "sample"
        regions = images  # full-resolution content of the regions of the current level
        boxes = images.new_tensor([0.0, 0.0, H, W]).expand(B, 4)  # (N, 4), absolute pixels
        coords = images.new_zeros(B, 2)  # (N, 2) grid coordinates (y, x) of each region
        out = TNetOutput(logits=images.new_zeros(0))
        for level in range(cfg.levels):
            x = regions
            if x.shape[-1] != cfg.base_res:
                x = F.interpolate(x, size=(cfg.base_res, cfg.base_res), mode="bilinear", align_corners=False,
                                  antialias=False)
            feats = self.extractor.forward_features(x)
            triplets = torch.cat([coords, coords.new_full((coords.shape[0], 1), float(level))], 1)
            encoded = self.positional(feats["pooled"], triplets)
            out.features.append(encoded.view(B, -1, encoded.shape[-1]))
            out.coords.append(triplets.view(B, -1, 3))
            out.boxes.append(boxes.view(B, -1, 4))
            mean = torch.cat(out.features, 1).mean(1)
            out.level_logits.append(self.classifier(self.classifier_dropout(mean)))
            if level == cfg.levels - 1:
                break
            # The location module runs (and costs FLOPs) even when 0 locations follow, as in Table 1.
            # Its inputs are detached: no gradient flows from the policy into the extractor (official).
            logits = self.location(self._grid(feats).detach(), feats["pooled"].detach())
            out.probs.append(logits.softmax(-1).view(B, -1, logits.shape[-1]))
            k = locs[level]
            if k == 0:
                break
            index, log_p = _select(logits, k, sample)  # (N, k)
            out.indices.append(index.view(B, -1, k))
            out.log_probs.append(log_p.reshape(B, -1))
            spec = GridSpec.from_fraction(regions.shape[-2:], cfg.grid_size, cfg.cell_fraction)
            top_left = spec.boxes(device=images.device)[:, :2].long()[index]  # (N, k, 2)
            regions = extract_patches(regions, top_left, spec.cell_hw).flatten(0, 1)
            boxes = select_child_boxes(boxes, index, cfg.grid_size, cfg.cell_fraction).flatten(0, 1)
            coords = child_coords(coords, index, cfg.grid_size).flatten(0, 1)
        out.logits = out.level_logits[-1]
        if self.training:
            out.feature_logits = [self.classifier(self.classifier_dropout(f)) for f in out.features]
        return out


class Baseline(nn.Module):
    """Feature extraction module + classification module on the whole image (the BagNet-77 and
    EfficientNet-B0 baselines, App. B.1); forward(images) -> logits. The image is resized to
    `input_size` first when that differs from its size."""

    def __init__(self, cfg: TNetConfig):
        super().__init__()
        self.input_size = cfg.input_size or cfg.image_size
        self.extractor = _extractor(cfg)
        _check_feature_dim(self.extractor, cfg)
        self.dropout = nn.Dropout(cfg.classifier_dropout)
        self.classifier = nn.Linear(cfg.feature_dim, cfg.num_classes)
        _init_(self.classifier, cfg.init)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=False)
        return self.classifier(self.dropout(self.extractor.forward_features(images)["pooled"]))


def _extractor(cfg: TNetConfig) -> nn.Module:
    """The feature extraction module, without its classifier (TNet's classification module replaces it)."""
    if cfg.backbone == "bagnet77_tnet":
        # The spatial dropout of sec. 5.1 acts on the extractor's last layer (official num_do_layers=1).
        return build_backbone(cfg.backbone, num_classes=None, width=cfg.width, in_channels=cfg.channels,
                              spatial_dropout=cfg.feature_dropout, dropout_layers=1)
    return build_backbone(cfg.backbone, num_classes=None, width=cfg.width, in_channels=cfg.channels,
                          drop_path=cfg.drop_path)


def _check_feature_dim(extractor: nn.Module, cfg: TNetConfig) -> None:
    if extractor.num_features != cfg.feature_dim:
        raise UserError(f"{cfg.backbone} at width {cfg.width} gives {extractor.num_features} features, "
                        f"but feature_dim is {cfg.feature_dim}")


def build_model(cfg: TNetConfig) -> nn.Module:
    """TNet or its fully convolutional baseline, as `cfg.model` says."""
    return TNet(cfg) if cfg.model == "tnet" else Baseline(cfg)


# ----------------------------------------------------------------------------------------------------
# Learning rule (sec. 4, App. A)
# ----------------------------------------------------------------------------------------------------


def tnet_loss(out: TNetOutput, targets: Tensor, baseline: EMABaseline, cfg: TNetConfig,
              ) -> tuple[Tensor, dict[str, float]]:
    """Loss whose gradient is the learning rule of eq. 2 (eq. 1 when lambda_c = lambda_r = 1).

    With T feature vectors per image (level 1 plus the attended locations) and R = 1 for a correct top-1
    prediction, following the official code:
        lambda_c * CE(final)                                   first term of eq. 2a
      + lambda_f * lambda_r * REINFORCE(R, log p(l))           second term of eq. 2a, l = the whole sequence
      + (1 - lambda_c) * mean over the T features of CE        first term of eq. 2b, averaged over k
      + lambda_f * (1 - lambda_r) * mean over the T - 1 attended locations of REINFORCE(R^k, log p(l_k))
    The baseline b is the EMA of eq. 7 (decay 0.9 from 0.5); it is updated after the batch with the
    rewards weighted like their terms, lambda_r * mean(R) + (1 - lambda_r) * mean(R^k) (official code).
    """
    lc, lr, lf = cfg.lambda_c, cfg.lambda_r, cfg.lambda_f
    ce = F.cross_entropy(out.logits, targets)
    reward = correct(out.logits, targets)
    loss = lc * ce
    stats = {"ce": ce.item(), "reward": reward.mean().item(), "baseline": baseline.value.item()}
    if not out.log_probs:  # nothing attended: a plain classifier
        return ce, stats
    b = baseline.value
    sequence_log_p = sum(lp.sum(1) for lp in out.log_probs)  # log p(l^i), (B,)
    loss = loss + lf * lr * reinforce_loss(sequence_log_p, reward, b)
    levels = cfg.perfeature_levels or len(out.feature_logits)
    feature_logits = torch.cat(out.feature_logits[:levels], 1)  # (B, T, classes)
    per_ce = F.cross_entropy(feature_logits.flatten(0, 1), targets.repeat_interleave(feature_logits.shape[1]))
    loss = loss + (1 - lc) * per_ce
    attended_logits = torch.cat(out.feature_logits[1:levels], 1)  # (B, T-1, classes)
    attended_reward = correct(attended_logits, targets[:, None].expand(attended_logits.shape[:-1]))
    attended_log_p = torch.cat(out.log_probs[:levels - 1], 1)
    loss = loss + lf * (1 - lr) * reinforce_loss(attended_log_p, attended_reward, b)
    mixed = lr * reward.mean() + (1 - lr) * attended_reward.mean()
    mixed = reduce(mixed, "mean")  # over processes (accelerate): every process keeps the same baseline
    baseline(mixed.reshape(1))  # eq. 7 update (training mode only)
    stats.update(per_feature_ce=per_ce.item(), location_reward=attended_reward.mean().item())
    return loss, stats
