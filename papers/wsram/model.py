"""The WS-RAM prediction network, its inference network, and the sampled glimpse rollout (§3, §4.3, Fig. 1).

Prediction network: two recurrent ReLU layers. The low-resolution whole image enters only the *second*
layer, at the first step; every action a_n+1 = (Gaussian location, multinomial scale) is emitted from the
second layer; the class is read from the *first* layer after the last glimpse. Layer 1 never receives
layer 2's state, so the low-resolution image can reach the prediction only through where the glimpses
land (the paper's guard against ignoring attention).

Inference network q(a_n+1 | y, a_1:n, I) (§4.3): sees the class label and the (detached) top-layer state
of the prediction network, so eq. 14 trains only its own parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.glimpse import RetinaSensor

from .config import WSRAMConfig

NUM_CLASSES = 10
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class ActionDist:
    """Independent Gaussian location and multinomial scale for one glimpse (§5.1)."""

    loc_mean: torch.Tensor  # (N, 2) normalised (x, y)
    scale_logits: torch.Tensor  # (N, num_scales)
    loc_std: torch.Tensor  # (2,), shared by all states

    def tempered(self, temperature: float) -> ActionDist:
        """p^(1/T), renormalised: Gaussian std x sqrt(T), logits / T (§4.5 heuristic 1)."""
        if temperature == 1.0:
            return self
        std = self.loc_std * math.sqrt(temperature)
        return ActionDist(self.loc_mean, self.scale_logits / temperature, std)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        loc = (self.loc_mean + self.loc_std * torch.randn_like(self.loc_mean)).detach()
        scale = torch.multinomial(F.softmax(self.scale_logits.detach().float(), -1), 1).squeeze(1)
        return loc, scale

    def log_prob(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        z = (loc - self.loc_mean) / self.loc_std
        log_loc = (-0.5 * z.square() - self.loc_std.log() - _LOG_SQRT_2PI).sum(-1)
        log_scale = F.log_softmax(self.scale_logits, -1).gather(1, scale[:, None]).squeeze(1)
        return log_loc + log_scale


class ActionHead(nn.Module):
    """state -> ActionDist; tanh keeps the mean location inside the image. The location std is a learned
    parameter (not a function of the state), kept within [MIN_STD, MAX_STD]."""

    MIN_STD, MAX_STD = 0.02, 1.0

    def __init__(self, in_features: int, num_scales: int, loc_std: float):
        super().__init__()
        self.loc = nn.Linear(in_features, 2)
        self.scale = nn.Linear(in_features, num_scales)
        self.log_std = nn.Parameter(torch.full((2,), math.log(loc_std)))

    def forward(self, h: torch.Tensor) -> ActionDist:
        std = self.log_std.clamp(math.log(self.MIN_STD), math.log(self.MAX_STD)).exp()
        return ActionDist(torch.tanh(self.loc(h)), self.scale(h), std)


class InferenceNet(nn.Module):
    """q(a_n+1 | y, a_1:n, I): an MLP on [top-layer state, one-hot label] (§3, §4.3)."""

    def __init__(self, hidden: int, q_hidden: int, num_scales: int, loc_std: float):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(hidden + NUM_CLASSES, q_hidden), nn.ReLU())
        self.head = ActionHead(q_hidden, num_scales, loc_std)

    def forward(self, h2: torch.Tensor, labels: torch.Tensor) -> ActionDist:
        y = F.one_hot(labels, NUM_CLASSES).to(h2.dtype)
        return self.head(self.body(torch.cat([h2, y], -1)))


class WSRAM(nn.Module):
    """forward(images, labels, num_samples, proposal, temperature) samples M glimpse sequences per image
    and returns, shaped (M, B) (sample-major): log p(y | a, I), log p(a | I) under the prior at T = 1,
    the log-density of the proposal the actions were drawn from, plus what the heuristics and logs need.

    proposal: "prior" (p tempered by `temperature`), "q" (inference network, tempered), "random"
    (uniform location in [-1, 1]^2 and uniform scale: the baseline's glimpses, or a learned model's
    glimpses replaced by random ones in evaluate.py).
    """

    def __init__(self, cfg: WSRAMConfig):
        super().__init__()
        self.cfg = cfg
        s, h, c = cfg.num_scales, cfg.hidden, cfg.glimpse_channels
        # Glimpse network: a small conv net with global max pooling ([2] uses a conv glimpse network), so a
        # digit is recognised wherever it lies inside the patch.
        self.what = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
            nn.Flatten(), nn.Linear(2 * c, cfg.glimpse_hidden))
        self.where = nn.Linear(2 + s, cfg.glimpse_hidden)  # location and one-hot scale of the glimpse
        self.in1, self.rec1 = nn.Linear(cfg.glimpse_hidden, h), nn.Linear(h, h, bias=False)
        self.classifier = nn.Linear(h, NUM_CLASSES)
        self.learned = cfg.policy == "learned"
        if self.learned:  # layer 2 only drives the policy, so the random-glimpse baseline has none
            self.context = nn.Linear(cfg.lowres_size**2, h)
            self.in2, self.rec2 = nn.Linear(h, h), nn.Linear(h, h, bias=False)
            self.policy = ActionHead(h, s, cfg.loc_std)
        self.inference = InferenceNet(h, cfg.q_hidden, s, cfg.loc_std) if cfg.use_q else None
        self.register_buffer("pixel_stats", torch.tensor([0.0, 1.0]))  # (mean, std); identity until set
        for rec in (m for name, m in self.named_children() if name.startswith("rec")):
            nn.init.eye_(rec.weight)  # IRNN (Le et al. 2015): early glimpses survive the ReLU recurrence

    def set_pixel_stats(self, mean: float, std: float) -> None:
        """Standardise what the network sees, (pixel - mean) / std (cfg.standardize_images)."""
        self.pixel_stats.copy_(torch.tensor([mean, std]))

    def standardize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Glimpses and the low-resolution image are standardised after they are read, so pixels off the
        image stay the canvas's black background rather than the mean a standardised canvas pads with."""
        return (pixels - self.pixel_stats[0]) / self.pixel_stats[1]

    def glimpse(self, sensor: RetinaSensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Glimpse embedding g(a_n, I): what (conv net on the patch) + where (location, one-hot scale).
        Action i of the M*B looks at image i % B (sample-major)."""
        loc = loc.clamp(-1, 1)
        where = torch.cat([loc, F.one_hot(scale, self.cfg.num_scales).to(loc.dtype)], -1)
        index = torch.arange(len(loc), device=loc.device) % len(sensor.images)
        return F.relu(self.what(self.standardize(sensor(loc, scale, index))) + self.where(where))

    def forward(self, images: torch.Tensor, labels: torch.Tensor, num_samples: int,
                proposal: str = "prior", temperature: float = 1.0) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if (proposal == "prior" and not self.learned) or (proposal == "q" and self.inference is None):
            raise ValueError(f"proposal {proposal!r} does not fit this model (policy={cfg.policy}, "
                             f"use_q={cfg.use_q})")
        B, M = images.shape[0], num_samples
        y = labels.repeat(M)  # every per-sequence tensor is (M*B, ...), sample-major, so it views as (M, B)
        h1 = images.new_zeros(M * B, cfg.hidden)
        if self.learned:
            lowres = self.standardize(F.adaptive_avg_pool2d(images, cfg.lowres_size)).flatten(1).repeat(M, 1)
            h2 = F.relu(self.context(lowres))
        sensor = RetinaSensor(images, cfg.glimpse_size, cfg.num_scales, cfg.scale_factor)
        log_pa = images.new_zeros(M * B)
        log_prop = images.new_zeros(M * B)
        locs, scales, priors = [], [], []
        for n in range(cfg.num_glimpses):
            if proposal == "random":  # its density is constant, so log_proposal stays 0
                loc = torch.rand(M * B, 2, device=images.device, dtype=images.dtype) * 2 - 1
                scale = torch.randint(cfg.num_scales, (M * B,), device=images.device)
            if self.learned:
                prior = self.policy(h2)
                priors.append(prior)
                if proposal != "random":
                    prop = self.inference(h2.detach(), y) if proposal == "q" else prior
                    prop = prop.tempered(temperature)
                    loc, scale = prop.sample()
                    lp = prop.log_prob(loc, scale)
                    log_prop = log_prop + (lp if proposal == "q" else lp.detach())
                log_pa = log_pa + prior.log_prob(loc, scale)
            locs.append(loc)
            scales.append(scale)
            h1 = F.relu(self.in1(self.glimpse(sensor, loc, scale)) + self.rec1(h1))
            if self.learned and n + 1 < cfg.num_glimpses:  # the last top-layer state would drive no action
                h2 = F.relu(self.in2(h1) + self.rec2(h2))
        logits = self.classifier(h1)
        log_py = -F.cross_entropy(logits, y, reduction="none")
        out = {
            "log_py": log_py.view(M, B),
            "log_pa": log_pa.view(M, B),
            "log_proposal": log_prop.view(M, B),
            "logits": logits.view(M, B, NUM_CLASSES),
            "locs": torch.stack(locs, 1).view(M, B, cfg.num_glimpses, 2),
            "scales": torch.stack(scales, 1).view(M, B, cfg.num_glimpses),
        }
        if self.learned:  # the prior's parameters per glimpse, for the exploration heuristics (§4.5)
            out["prior_loc_mean"] = torch.stack([p.loc_mean for p in priors])  # (N, M*B, 2)
            out["prior_scale_logits"] = torch.stack([p.scale_logits for p in priors])  # (N, M*B, S)
            out["prior_loc_std"] = priors[0].loc_std  # (2,)
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor, num_samples: int, random_glimpses: bool = False) -> torch.Tensor:
        """p(y | I) ~ mean over M glimpse sequences from the prior (T = 1), or uniformly random ones, of
        p(y | a, I). The placeholder label only scores log p(y | a, I); it cannot influence the glimpses."""
        proposal = "random" if random_glimpses or not self.learned else "prior"
        placeholder = torch.zeros(len(images), dtype=torch.long, device=images.device)
        return self.forward(images, placeholder, num_samples, proposal)["logits"].softmax(-1).mean(0)


def build_model(cfg: WSRAMConfig) -> WSRAM:
    return WSRAM(cfg)
