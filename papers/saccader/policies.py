"""Location policies compared in Fig. 3a (sec. 4.1), for evaluation on a Saccader's location grid.

Every policy returns (B, T) distinct row-major location indices (no location is visited twice, as the
Saccader cell's state C guarantees for the learned policy), and every one is vectorised over the batch.
- learned: the Saccader cell, argmax at each step (eval mode);
- random: T locations drawn uniformly without replacement;
- ordered_logits: locations by decreasing logit of the predicted class (official `engineered_policies`);
- sobel_mean / sobel_var: locations by decreasing mean / variance of the Sobel edge magnitude inside
  each 77 x 77 receptive field (official: average pooling of the edge map, stride 8, "valid").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from core.errors import UserError
from papers.saccader.model import Saccader, gather_logits

POLICIES = ("learned", "random", "ordered_logits", "sobel_mean", "sobel_var")


def _top(scores: Tensor, num_glimpses: int) -> Tensor:
    """Indices (B, T) of the T largest of scores (B, N), descending: distinct by construction."""
    if not 1 <= num_glimpses <= scores.shape[1]:
        raise UserError(f"num_glimpses must be in [1, {scores.shape[1]}], got {num_glimpses}")
    return scores.topk(num_glimpses, -1).indices


def sobel_magnitude(images: Tensor) -> Tensor:
    """Edge intensity (B, 1, H, W) of the grey image: |(Sobel_y, Sobel_x)| with reflect padding
    (tf.image.sobel_edges on tf.image.rgb_to_grayscale, as the official Sobel policies)."""
    if images.shape[1] == 3:
        grey = torch.einsum("bchw,c->bhw", images, images.new_tensor([0.2989, 0.5870, 0.1140]))[:, None]
    else:
        grey = images.mean(1, keepdim=True)
    ky = images.new_tensor([[-1, -2, -1], [0, 0, 0], [1, 2, 1]])
    kernels = torch.stack([ky, ky.T])[:, None]  # (2, 1, 3, 3)
    edges = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="reflect"), kernels)
    return edges.norm(dim=1, keepdim=True)


def sobel_scores(images: Tensor, grid_hw: tuple[int, int], statistic: str, size: int = 77) -> Tensor:
    """Mean or unbiased variance (B, h*w) of the edge magnitude in each location's size x size field."""
    edges = sobel_magnitude(images)
    H, W = images.shape[-2:]
    h, w = grid_hw
    stride = (-(-(H - size + 1) // h), -(-(W - size + 1) // w))  # official: ceil((H - size + 1) / h)
    mean = F.avg_pool2d(edges, size, stride)
    if statistic == "mean":
        out = mean
    else:
        n = size * size
        out = n / (n - 1) * (F.avg_pool2d(edges.square(), size, stride) - mean.square())
    if out.shape[-2:] != (h, w):
        raise UserError(f"Sobel grid {tuple(out.shape[-2:])} does not match the logits grid {(h, w)}")
    return out.flatten(1)


@torch.no_grad()
def select_locations(policy: str, model: Saccader, images: Tensor, num_glimpses: int,
                     logits_map: Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(locations (B, T), per-glimpse logits (B, T, K)) of `policy` on a Saccader in eval mode.
    logits_map: the representation network's output on `images`, when already computed."""
    if policy not in POLICIES:
        raise UserError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    if policy == "learned":
        out = model(images, num_glimpses)
        return out["locations"], out["logits"]
    if logits_map is None:
        logits_map = model.backbone.forward_features(images)["logits_map"]
    B, _, h, w = logits_map.shape
    if policy == "random":
        scores = torch.rand(B, h * w, generator=generator, device=images.device)
    elif policy == "ordered_logits":
        predicted = logits_map.mean((2, 3)).argmax(1)
        scores = logits_map.flatten(2).gather(1, predicted[:, None, None].expand(-1, 1, h * w))[:, 0]
    else:
        scores = sobel_scores(images, (h, w), policy.removeprefix("sobel_"), model.receptive_field)
    locations = _top(scores, num_glimpses)
    return locations, gather_logits(logits_map, locations)

