"""DRAM, the Saccader paper's hard-attention baseline (App. C "DRAM model", Table Supp.1: 45,610,219).

Ba et al.'s deep recurrent attention model with Sermanet et al.'s changes, as the official code builds it:
- glimpse network: slim ResNet-v2-50 + global average pool on 3 fields of view centred at the location,
  sides linspace(77/224, 1, 3) x image (77, 150, 224 px), each resized to 77 x 77, each with RGB + 2
  coordinate channels (linspace(-1, 1) over rows, then columns, of the whole image): 15 input channels;
- classification only sees the high-resolution glimpse: the other two are replaced by their spatial
  mean per channel;
- LSTM 1 (1024, classification) on the 2048-d glimpse feature -> linear logits; LSTM 2 (1024,
  location) on LSTM 1's output -> linear -> tanh, scaled by 1 - 77/224 to keep glimpses inside;
  locations are sampled from a Gaussian of std 0.1 around it in training (clipped), its mean in eval;
- a first step at the centre with all three fields of view initialises the location LSTM; its
  classification state is then reset to zero and its emitted location is the first glimpse.
- classification pretraining (App. C): 2 steps of a uniform random policy, first with 200 px (at 224)
  then with 77 px high-resolution fields of view, every combination of views, one cross-entropy of the
  averaged logits; then the hybrid loss of Ba et al. (train.py).
TF's LSTMCell has one bias per gate and adds 1.0 to the forget gate (forget_bias), unlike nn.LSTMCell.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.backbones import build_backbone
from core.errors import UserError
from core.glimpse import extract_patches, glimpse_top_left


class TFLSTMCell(nn.Module):
    """tf.nn.rnn_cell.LSTMCell (no peepholes/projection): one kernel over concat(input, h), one bias,
    gates in TF's order (i, j, f, o), forget bias 1.0 added at run time."""

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0):
        super().__init__()
        self.hidden_size, self.forget_bias = hidden_size, forget_bias
        self.kernel = nn.Linear(input_size + hidden_size, 4 * hidden_size)
        nn.init.xavier_uniform_(self.kernel.weight)  # TF1's default glorot_uniform
        nn.init.zeros_(self.kernel.bias)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        c, h = state
        i, j, f, o = self.kernel(torch.cat([x, h], -1)).chunk(4, -1)
        c = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * torch.tanh(j)
        return c, torch.sigmoid(o) * torch.tanh(c)


def position_channels(images: Tensor) -> Tensor:
    """Two channels (B, 2, H, W): row coordinate then column coordinate, each linspace(-1, 1) (official)."""
    B, _, H, W = images.shape
    rows = torch.linspace(-1, 1, H, dtype=images.dtype, device=images.device)[:, None].expand(H, W)
    cols = torch.linspace(-1, 1, W, dtype=images.dtype, device=images.device)[None, :].expand(H, W)
    return torch.stack([rows, cols])[None].expand(B, -1, -1, -1)


class DRAM(nn.Module):
    """forward(images, num_glimpses) -> dict: logits (B, T, K), the prediction after each glimpse;
    locations (B, T, 2) the normalised (x, y) glimpse centres; log_prob (B, T) of each sampled location
    under the Gaussian policy (for REINFORCE; the mean carries the gradient); mean_locations (B, T, 2).
    forward(images, T, pretrain_glimpse=g) -> {"logits": `pretraining_logits(images, g, T)`}."""

    def __init__(self, num_classes: int = 1001, width: float = 1.0, in_channels: int = 3, glimpse: int = 77,
                 resolutions: int = 3, std: float = 0.1, hidden: int = 1024):
        super().__init__()
        self.glimpse, self.resolutions, self.std = glimpse, resolutions, std
        self.glimpse_net = build_backbone("resnet_v2_50", num_classes=None, width=width,
                                          in_channels=resolutions * (in_channels + 2))
        features = self.glimpse_net.num_features
        hidden = max(1, round(hidden * width))
        self.classification_rnn = TFLSTMCell(features, hidden)
        self.location_rnn = TFLSTMCell(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        self.emission = nn.Linear(hidden, 2)
        for m in (self.classifier, self.emission):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def classification_parameters(self) -> list[nn.Parameter]:
        """lambda's weights (Table Supp.4): glimpse network, classification LSTM, classifier."""
        modules = (self.glimpse_net, self.classification_rnn, self.classifier)
        return [p for m in modules for p in m.parameters()]

    def location_parameters(self) -> list[nn.Parameter]:
        """nu's weights (official var_list_location): location LSTM and emission layer."""
        return [p for m in (self.location_rnn, self.emission) for p in m.parameters()]

    def fields_of_view(self, images: Tensor, loc: Tensor, glimpse: int | None = None) -> list[Tensor]:
        """The `resolutions` glimpses (B, C+2, g, g) centred at loc (B, 2), high resolution first: sides
        linspace(g / H, 1, R) x H, each resized to g x g; pixels past the edge repeat the nearest one."""
        glimpse = glimpse or self.glimpse
        H, W = images.shape[-2:]
        x = torch.cat([images, position_channels(images)], 1)
        fractions = torch.linspace(glimpse / H, 1.0, self.resolutions).tolist()
        out = []
        for i, frac in enumerate(fractions):
            side = glimpse if i == 0 else int(frac * H)
            top_left = glimpse_top_left(loc, side, (H, W))[:, None]
            patch = extract_patches(x, top_left, side, padding="border")[:, 0]
            if side != glimpse:
                patch = F.interpolate(patch, size=(glimpse, glimpse), mode="bilinear", align_corners=False)
            out.append(patch.detach())  # official: no gradient through glimpse extraction
        return out

    def glimpse_features(self, views: list[Tensor], used: tuple[bool, ...]) -> Tensor:
        """Glimpse network on the views; an unused view is replaced by its spatial mean per channel."""
        views = [v if use else v.mean((2, 3), keepdim=True).expand_as(v)
                 for v, use in zip(views, used, strict=True)]
        return self.glimpse_net(torch.cat(views, 1))

    def _root_terms(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """The glimpse network's root conv (linear, zero padding) split by view, without its bias: each
        view's part as seen, and as replaced by its spatial mean (sum over channels c of mean_c x the conv
        of a constant 1 with kernel c). Pretraining's 7 view combinations are sums of these, so its 7 root
        convs per glimpse shrink to one per view and a small per-channel table."""
        root, R = self.glimpse_net.root, len(views)
        weight = root.weight  # (O, R * C, k, k)
        O, RC = weight.shape[:2]
        conv = dict(stride=root.stride, padding=root.padding)
        # In the network's memory format (a grouped conv, or contiguous beside channels_last, is slower).
        fmt = (torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last)
               else torch.contiguous_format)
        seen = [F.conv2d(v.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt), **conv)
                for v, w in zip(views, weight.chunk(R, 1), strict=True)]
        ones = views[0].new_ones(1, RC, *views[0].shape[-2:])
        per_channel = F.conv2d(ones, weight.transpose(0, 1).reshape(RC * O, 1, *weight.shape[2:]), groups=RC,
                               **conv).view(R, RC // R, O, *seen[0].shape[-2:])  # (R, C, O, h, w)
        replaced = [torch.einsum("bc,cohw->bohw", v.mean((2, 3)), k)
                    for v, k in zip(views, per_channel, strict=True)]
        return seen, replaced

    def step(self, images, loc, state, used: tuple[bool, ...]):
        g = self.glimpse_features(self.fields_of_view(images, loc), used)
        (c0, h0), (c1, h1) = state
        c0, h0 = self.classification_rnn(g, (c0, h0))
        c1, h1 = self.location_rnn(h0, (c1, h1))
        scale = 1 - self.glimpse / images.shape[-1]  # keeps glimpses inside the image
        mean = scale * torch.tanh(self.emission(h1))
        if self.training:
            sampled = (mean.detach() + self.std * torch.randn_like(mean)).clamp(-scale, scale)
        else:
            sampled = mean.detach()
        log_prob = torch.distributions.Normal(mean, self.std).log_prob(sampled).sum(-1)
        return self.classifier(h0), sampled, mean, log_prob, ((c0, h0), (c1, h1))

    def _zero_state(self, images: Tensor, batch: int):
        zeros = images.new_zeros(batch, self.classification_rnn.hidden_size)
        return zeros, zeros

    def forward(self, images: Tensor, num_glimpses: int, pretrain_glimpse: int = 0) -> dict[str, Tensor]:
        if num_glimpses < 1:
            raise UserError(f"num_glimpses must be >= 1, got {num_glimpses}")
        if pretrain_glimpse:
            return {"logits": self.pretraining_logits(images, pretrain_glimpse, num_glimpses)}
        B = images.shape[0]
        zero = self._zero_state(images, B)
        every_view, high_only = (True,) * self.resolutions, (True,) + (False,) * (self.resolutions - 1)
        # Step 0 at the centre with every field of view initialises the location LSTM.
        _, loc, mean, log_prob, (_, loc_state) = self.step(images, images.new_zeros(B, 2), (zero, zero),
                                                           every_view)
        state = (zero, loc_state)
        logits, locs, means, log_probs = [], [], [], []
        for _ in range(num_glimpses):
            locs.append(loc)
            means.append(mean)
            log_probs.append(log_prob)
            out, loc, mean, log_prob, state = self.step(images, loc, state, high_only)
            logits.append(out)
        return {"logits": torch.stack(logits, 1), "locations": torch.stack(locs, 1),
                "mean_locations": torch.stack(means, 1), "log_prob": torch.stack(log_probs, 1)}

    def pretraining_logits(self, images: Tensor, glimpse: int, num_glimpses: int = 2) -> Tensor:
        """Logits (B, V * T, K) of the classification pretraining (App. C): T glimpses at uniformly random
        locations with `glimpse` px fields of view, each seen through every combination of views (the
        V = 2^R - 1 non-empty subsets of resolutions, the others replaced by their mean), each combination
        with its own classification LSTM state; their logits are averaged into one cross-entropy."""
        B = images.shape[0]
        combos = [c for c in itertools.product((True, False), repeat=self.resolutions) if any(c)]
        scale = 1 - glimpse / images.shape[-1]
        state = self._zero_state(images, B * len(combos))
        bias = self.glimpse_net.root.bias[:, None, None]
        logits = []
        for _ in range(num_glimpses):
            loc = (torch.rand(B, 2, device=images.device) * 2 - 1) * scale
            seen, replaced = self._root_terms(self.fields_of_view(images, loc, glimpse))
            # One glimpse-network call per combination, as glimpse_features: BN statistics per combination.
            g = torch.cat([self.glimpse_net.features_from_root(
                bias + sum(s if use else r for s, r, use in zip(seen, replaced, used, strict=True)))["pooled"]
                for used in combos])  # (V * B, features)
            state = self.classification_rnn(g, state)
            logits.append(self.classifier(state[1]).view(len(combos), B, -1).transpose(0, 1))
        return torch.cat(logits, 1)
