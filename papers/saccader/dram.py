"""DRAM, the Saccader paper's hard-attention baseline (App. C "DRAM model", Table Supp.1: 45,610,219).

Ba et al.'s deep recurrent attention model with Sermanet et al.'s changes, as the official code builds it:
- glimpse network: slim ResNet-v2-50 + global average pool on 3 fields of view centred at the location,
  sides linspace(77/224, 1, 3) x image (77, 150, 224 px), each resized to 77 x 77, each with RGB + 2
  coordinate channels (linspace(-1, 1) over rows, then columns, of the whole image): 15 input channels;
- classification only sees the high-resolution glimpse: the other two are replaced by their spatial
  mean per channel (no gradient through the mean);
- LSTM 1 (1024, classification) on the 2048-d glimpse feature -> linear logits; LSTM 2 (1024,
  location) on LSTM 1's output -> linear -> tanh, scaled by 1 - 77/224 to keep glimpses inside;
  locations are sampled from a Gaussian of std 0.1 around it in training (clipped), its mean in eval;
- a first step at the centre with all three fields of view initialises the location LSTM; its
  classification state is then reset to zero and its emitted location is the first glimpse.
TF's LSTMCell has one bias per gate and adds 1.0 to the forget gate (forget_bias), unlike nn.LSTMCell.
"""

from __future__ import annotations

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
    """forward(images, num_glimpses) -> dict: logits (B, T, K) per glimpse; locations (B, T, 2) the
    normalised (x, y) glimpse centres; log_prob (B, T) of each sampled location under the Gaussian
    policy (for REINFORCE; the mean carries the gradient); mean_locations (B, T, 2)."""

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

    def fields_of_view(self, images: Tensor, loc: Tensor) -> list[Tensor]:
        """The `resolutions` glimpses (B, C+2, g, g) centred at loc (B, 2), high resolution first."""
        H, W = images.shape[-2:]
        x = torch.cat([images, position_channels(images)], 1)
        start = self.glimpse / H
        fractions = torch.linspace(start, 1.0, self.resolutions).tolist()
        out = []
        for i, frac in enumerate(fractions):
            side = self.glimpse if i == 0 else int(frac * H)
            top_left = glimpse_top_left(loc, side, (H, W))[:, None]
            patch = extract_patches(x, top_left, side)[:, 0]
            if side != self.glimpse:
                patch = F.interpolate(patch, size=(self.glimpse, self.glimpse), mode="bilinear",
                                      align_corners=False)
            out.append(patch.detach())  # official: no gradient through glimpse extraction
        return out

    def step(self, images, loc, state, high_resolution_only: bool):
        views = self.fields_of_view(images, loc)
        if high_resolution_only:  # block the wide fields of view: their spatial mean per channel only
            views = [views[0]] + [v.mean((2, 3), keepdim=True).expand_as(v) for v in views[1:]]
        g = self.glimpse_net(torch.cat(views, 1))
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

    def forward(self, images: Tensor, num_glimpses: int) -> dict[str, Tensor]:
        if num_glimpses < 1:
            raise UserError(f"num_glimpses must be >= 1, got {num_glimpses}")
        B = images.shape[0]
        zeros = images.new_zeros(B, self.classification_rnn.hidden_size)
        state = ((zeros, zeros), (zeros, zeros))
        # Step 0 at the centre with every field of view initialises the location LSTM.
        _, loc, mean, log_prob, (_, loc_state) = self.step(images, images.new_zeros(B, 2), state, False)
        state = ((zeros, zeros), loc_state)
        logits, locs, means, log_probs = [], [], [], []
        for _ in range(num_glimpses):
            locs.append(loc)
            means.append(mean)
            log_probs.append(log_prob)
            out, loc, mean, log_prob, state = self.step(images, loc, state, True)
            logits.append(out)
        return {"logits": torch.stack(logits, 1), "locations": torch.stack(locs, 1),
                "mean_locations": torch.stack(means, 1), "log_prob": torch.stack(log_probs, 1)}
