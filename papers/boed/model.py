"""The RAM-style hard-attention network of §2 (Figure 1) with the official code's architecture, the §4 loss
(eq. 3) and the §5 adaptive-stopping module.

Per step t = 1..T: a location l_t is drawn from a categorical over the candidate lattice given h_{t-1}
(or, for a supervised example, fixed to its sequence), the glimpse y_t = f_glimpse(x, l_t) is embedded
by a small CNN, the location by an MLP, and h_t = GRU(relu(emb(y_t) + emb(l_t)), h_{t-1}). The classifier
reads h_T. The location network and the learned baseline see h detached (official), so only REINFORCE
and the supervised-location term train them.

`members` independent networks (one per task and replicate: Figure 5 trains one network per attribute)
are computed side by side in one pass: every layer holds a leading member dimension (grouped convs,
batched matmuls, a per-channel BatchNorm over all members), so member e is exactly the official
network with its own parameters, state and samples, and nothing couples members (their losses are
summed, Adam is elementwise). With members=1 this is the official network, parameter for parameter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.estimators import learned_baseline_loss, reinforce_loss
from core.glimpse import extract_patches, lattice_top_left
from core.metrics import correct


class MemberLinear(nn.Module):
    """E independent nn.Linear layers applied to (..., E, in) -> (..., E, out), with nn.Linear's init."""

    def __init__(self, members: int, fan_in: int, fan_out: int):
        super().__init__()
        bound = 1 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(members, fan_in, fan_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, fan_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...ei,eio->...eo", x, self.weight) + self.bias


class MemberBatchNorm(nn.BatchNorm1d):
    """nn.BatchNorm1d over (B, E, features): every (member, feature) is its own channel."""

    def __init__(self, members: int, features: int):
        super().__init__(members * features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1)).view(x.shape)


class MemberGRUCell(nn.Module):
    """E independent nn.GRUCell(n, n) (same equations and init): x, h (B, E, n) -> h' (B, E, n)."""

    def __init__(self, members: int, n: int):
        super().__init__()
        self.ih, self.hh = MemberLinear(members, n, 3 * n), MemberLinear(members, n, 3 * n)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        xr, xz, xn = self.ih(x).chunk(3, -1)
        hr, hz, hn = self.hh(h).chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


def sample_categorical(log_probs: torch.Tensor) -> torch.Tensor:
    """One draw per row of a categorical given normalised log-probabilities (..., L), by inverting the CDF
    with one uniform per row (cheaper on CPU than torch.multinomial's exponential race)."""
    cdf = log_probs.exp().cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), dtype=cdf.dtype, device=cdf.device) * cdf[..., -1:]
    return (cdf < u).sum(-1).clamp_max(cdf.shape[-1] - 1)


class MaxPool2(nn.Module):
    """2x2 max pooling as a reshape (cheaper than nn.MaxPool2d for tiny maps on CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 2)


def conv_bn_relu6(cin: int, cout: int, stride: int, members: int) -> nn.Sequential:
    """E independent 3x3 conv-BN-ReLU6 layers as one grouped conv over member-major channels."""
    return nn.Sequential(nn.Conv2d(members * cin, members * cout, 3, stride, 1, bias=False, groups=members),
                         nn.BatchNorm2d(members * cout), nn.ReLU6(inplace=True))


class GlimpseNet(nn.Module):
    """Glimpse CNN (official "standard_fc" type): `conv_depth` = (n1, c1, n2, c2, n3, c3) gives n_i 3x3
    conv-BN-ReLU6 layers of c_i channels at glimpse resolution g, g/2, g/4 (the first of a stage strided, a
    stage without convs max-pools instead), then FC (c * (g/4)^2 -> fc_hidden) - ReLU - FC (-> out) - BN.
    At paper scale (g = 16, 1-16-1-32-0-32): 16x16x16 -> 8x8x32 -> pool -> 4x4x32 = 512 -> 128 -> 64."""

    def __init__(self, in_channels: int, glimpse_size: int, conv_depth: tuple[int, ...], fc_hidden: int,
                 out_dim: int, members: int = 1):
        super().__init__()
        layers, c, side = [], in_channels, glimpse_size
        for stage, (n, width) in enumerate(zip(conv_depth[::2], conv_depth[1::2], strict=True)):
            for i in range(n):
                layers.append(conv_bn_relu6(c, width, 2 if stage > 0 and i == 0 else 1, members))
                c = width
            if stage > 0:
                if n == 0:
                    layers.append(MaxPool2())
                side //= 2
        self.convs = nn.Sequential(*layers)
        self.members, self.flat = members, c * side * side
        self.fc = nn.Sequential(MemberLinear(members, self.flat, fc_hidden), nn.ReLU(),
                                MemberLinear(members, fc_hidden, out_dim), MemberBatchNorm(members, out_dim))

    def forward(self, glimpses: torch.Tensor) -> torch.Tensor:
        """(B, E, C, g, g) -> (B, E, out)."""
        B = glimpses.shape[0]
        # channels_last: the grouped (per-member) convs run 2-4x faster on CPU than in NCHW
        x = self.convs(glimpses.flatten(1, 2).contiguous(memory_format=torch.channels_last))
        return self.fc(x.reshape(B, self.members, self.flat))


class HardAttentionNet(nn.Module):
    """`members` recurrent hard-attention networks over a lattice of candidate glimpses (top-left corners
    `self.lattice`, index = row_index * lattice + col_index as in the official Location class).

    adaptive=True adds a classifier at every step and the stopping module: one linear map per step t < T
    from h_t (detached) to the predicted accuracy gain of taking glimpse t+1 before predicting (§5).
    """

    def __init__(self, channels: int, image_size: int, glimpse_size: int, lattice: int, num_glimpses: int,
                 conv_depth: tuple[int, ...] = (1, 16, 1, 32, 0, 32), fc_hidden: int = 128, hidden: int = 64,
                 location_hidden: int = 32, num_classes: int = 2, adaptive: bool = False, members: int = 1):
        super().__init__()
        E = members
        self.members, self.glimpse_size, self.num_glimpses, self.adaptive = (E, glimpse_size, num_glimpses,
                                                                             adaptive)
        self.register_buffer("lattice", lattice_top_left(image_size, glimpse_size, lattice), persistent=False)
        self.max_coord = image_size - glimpse_size  # official: normalised = pixel / 208 * 2 - 1 at 224 px
        self.glimpse_net = GlimpseNet(channels, glimpse_size, conv_depth, fc_hidden, hidden, E)
        self.location_embed = nn.Sequential(MemberLinear(E, 2, location_hidden), nn.ReLU(),
                                            MemberLinear(E, location_hidden, hidden),
                                            MemberBatchNorm(E, hidden))
        self.rnn = MemberGRUCell(E, hidden)
        self.location_net = nn.Sequential(MemberLinear(E, hidden, location_hidden), nn.ReLU(),
                                          MemberLinear(E, location_hidden, len(self.lattice)))
        self.baseline = MemberLinear(E, hidden, 1)
        self.classifiers = nn.ModuleList(MemberLinear(E, hidden, num_classes)
                                         for _ in range(num_glimpses if adaptive else 1))
        self.stop_nets = nn.ModuleList(MemberLinear(E, hidden, 1)
                                       for _ in range(num_glimpses - 1)) if adaptive else None
        self.init_hidden = nn.Parameter(torch.randn(E, hidden))

    def normalised(self, top_left: torch.Tensor) -> torch.Tensor:
        """(..., 2) (row, col) pixels -> [-1, 1] as the official Location.normalized."""
        return top_left.float() / self.max_coord * 2 - 1

    def step(self, images: torch.Tensor, h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Every member glimpses at its lattice index (B, E) and updates its state h (B, E, hidden)."""
        top_left = self.lattice[index]  # (B, E, 2)
        glimpses = extract_patches(images, top_left, self.glimpse_size)  # (B, E, C, g, g)
        emb = F.relu(self.glimpse_net(glimpses) + self.location_embed(self.normalised(top_left)))
        return self.rnn(emb, h)

    def forward(self, images: torch.Tensor, forced: torch.Tensor | None = None,
                force: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One rollout of every member on images (B, C, H, W). forced (B, E, T) lattice indices replace the
        sampled ones where force (B, E) is true (supervised examples).

        Returns (B, E, T) indices, log_pi, baselines; logits (B, E, T or 1, classes); stop (B, E, T-1) if
        adaptive.
        """
        B = images.shape[0]
        h = self.init_hidden.expand(B, -1, -1)
        out = {k: [] for k in ("indices", "log_pi", "baselines", "logits", "stop")}
        for t in range(self.num_glimpses):
            out["baselines"].append(self.baseline(h.detach())[..., 0])
            log_probs = torch.log_softmax(self.location_net(h.detach()), -1)
            index = sample_categorical(log_probs.detach())
            if forced is not None:
                index = torch.where(force, forced[..., t], index)
            out["indices"].append(index)
            out["log_pi"].append(log_probs.gather(-1, index[..., None])[..., 0])
            h = self.step(images, h, index)
            if self.adaptive:
                out["logits"].append(self.classifiers[t](h))
                if t < self.num_glimpses - 1:
                    out["stop"].append(self.stop_nets[t](h.detach())[..., 0])
        if not self.adaptive:
            out["logits"].append(self.classifiers[0](h))
        return {k: torch.stack(v, 2) for k, v in out.items() if v}


def hard_attention_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, supervised: torch.Tensor,
                        supervision_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 3 as the official trainer minimises it, summed over members. labels, supervised: (B, E).

    Unsupervised examples: NLL of the final prediction + learned-baseline MSE + REINFORCE (reward = final
    prediction correct, per-step baselines; summed over steps, averaged over the batch). Supervised
    examples (locations fixed to their sequence): the same NLL and baseline terms, no REINFORCE, and
    - supervision_weight * the log-probabilities of their sequence's locations, summed over examples and
    steps (official). Adaptive nets add the NLL of every step's classifier and the stopping module's
    regression onto the realised gain correct_{t+1} - correct_t, whose expectation it estimates.
    """
    logits = out["logits"]  # (B, E, S, classes)
    B, E, T = out["log_pi"].shape
    hits = correct(logits, labels[..., None].expand(logits.shape[:-1]))  # (B, E, S)
    nll = F.cross_entropy(logits.flatten(0, 2), labels[..., None].expand(hits.shape).flatten(),
                          reduction="none").view(hits.shape).sum(2).mean(0).sum()
    reward = hits[..., -1:].expand(-1, -1, T)
    unsup = (~supervised).float()[..., None]
    loss_baseline = learned_baseline_loss(out["baselines"], reward) * E  # each member: mean over (B, T)
    loss_reinforce = reinforce_loss(out["log_pi"] * unsup, reward, out["baselines"]) * E * T
    loss_supervised = -(out["log_pi"] * supervised.float()[..., None]).sum()
    loss = nll + loss_baseline + loss_reinforce + supervision_weight * loss_supervised
    stats = {"nll": nll.item() / E, "train_acc": hits[..., -1].mean().item(),
             "baseline_mse": loss_baseline.item() / E}
    if "stop" in out:
        loss_stop = F.mse_loss(out["stop"], (hits[..., 1:] - hits[..., :-1]).detach()) * E
        loss = loss + loss_stop
        stats["stop_mse"] = loss_stop.item() / E
    return loss, stats


def build_model(cfg, members: int = 1, adaptive: bool = False) -> HardAttentionNet:
    """`members` hard-attention networks of a BOEDConfig (binary tasks)."""
    return HardAttentionNet(cfg.channels, cfg.image_size, cfg.glimpse_size, cfg.lattice, cfg.num_glimpses,
                            cfg.conv_depth, cfg.fc_hidden, cfg.hidden, cfg.location_hidden, 2, adaptive,
                            members)
