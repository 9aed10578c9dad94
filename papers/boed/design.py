"""Bayesian optimal experimental design of glimpse sequences (§3, Algorithm 1, Figures 2 and 4).

The pieces, each a function of tensors so that tests can pin them down:
  * `PosteriorCNN`: g(theta | y_1:t, l_1:t), a CNN over the Figure 4 embedding (masked image + mask channel,
    core.glimpse.observation_mask) with one Bernoulli output per binary task, as the official code (40
    CelebA-HQ attributes from one network). Trained on uniformly random glimpse sets (`random_glimpses`).
  * `retrieval_log_weights` / `sample_images`: r_img(x | y_1:t-1, l_1:t-1) by probabilistic image retrieval
    from a database: database image m gets log-weight -||mask * (x_m - x)||^2 / noise_var, its agreement
    with the observed glimpses under a Gaussian likelihood (official), and N images are drawn from it.
  * `expected_posterior_entropy`: eq. 2 for every candidate location at once, vectorised over candidates
    x distinct samples (a sample drawn k times is evaluated once and weighted k / N, which is exactly
    the N-sample average).
  * `design_sequence`: the greedy grid search of Algorithm 1 over T steps, returning top-left corners
    (row, col) on the candidate lattice, the official sequences' format (`write_sequence`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from core.glimpse import observation_mask, patch_boxes

__all__ = [
    "Database",
    "PosteriorCNN",
    "bernoulli_entropy",
    "candidate_masks",
    "design_sequence",
    "effective_samples",
    "expected_posterior_entropy",
    "glimpse_hits",
    "heuristic_log_probs",
    "lattice_index",
    "random_glimpses",
    "read_sequence",
    "retrieval_log_weights",
    "sample_images",
    "write_sequence",
]


class PosteriorCNN(nn.Module):
    """g(theta | y_1:t, l_1:t) over the (C+1, H, W) embedding of Figure 4, one logit per binary task.

    Stride-2 3x3 conv + BN + ReLU stages, then a linear layer over the flattened final map: faces (and the
    proxy's cells) are aligned, so *where* a feature is matters and is kept (no global pooling).
    """

    def __init__(self, in_channels: int, num_tasks: int, image_size: int, widths: tuple[int, ...]):
        super().__init__()
        layers, c, side = [], in_channels, image_size
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c, side = w, (side + 1) // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(c * side * side, num_tasks)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(embedding))


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of Bernoulli(sigmoid(logits)), elementwise and stable for any logit."""
    p = torch.sigmoid(logits)
    return p * F.softplus(-logits) + (1 - p) * F.softplus(logits)


def random_glimpses(batch: int, num_glimpses: int, lattice: torch.Tensor, size: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Top-left corners (batch, T, 2) of uniformly random glimpse sets: t ~ U{1..T} glimpses, each at a
    uniform lattice location (the "uniform prior" g is trained under, §3). Unused slots sit fully outside
    the image, where observation_mask ignores them."""
    idx = torch.randint(len(lattice), (batch, num_glimpses), generator=generator)
    top_left = lattice[idx]
    count = torch.randint(1, num_glimpses + 1, (batch, 1), generator=generator)
    unused = torch.arange(num_glimpses) >= count  # (batch, T)
    return torch.where(unused[..., None], torch.full_like(top_left, -size), top_left)


def candidate_masks(image_hw: tuple[int, int], candidates: torch.Tensor, size: int) -> torch.Tensor:
    """(L, H, W) bool on candidates' device: the pixels each candidate glimpse (top-left (L, 2)) observes."""
    ones = torch.ones(len(candidates), 1, *image_hw, device=candidates.device)
    return observation_mask(ones, candidates[:, None].long(), size)[:, -1].bool()


def _observed_mask(image_hw: tuple[int, int], observed: torch.Tensor, size: int, device) -> torch.Tensor:
    """(H, W) bool union of the observed glimpses (top-left (t, 2); t may be 0), on `device`."""
    ones = torch.ones(1, 1, *image_hw, device=device)
    return observation_mask(ones, observed.long().to(device)[None], size)[0, -1].bool()


def retrieval_log_weights(database: torch.Tensor, image: torch.Tensor, observed: torch.Tensor, size: int,
                          noise_var: float) -> torch.Tensor:
    """log r_img weights (M,) of database images (M, C, H, W) given glimpses of `image` (C, H, W) at
    `observed` (t, 2): -sum over observed pixels of (x_m - x)^2 / noise_var. All zero when t = 0 (the
    prior: every database image equally likely)."""
    mask = _observed_mask(image.shape[-2:], observed, size, image.device)
    if not mask.any():
        return database.new_zeros(len(database))
    diff = database[:, :, mask] - image[:, mask]  # (M, C, observed pixels)
    return -diff.square().flatten(1).sum(1) / noise_var


class Database:
    """The retrieval database of r_img: uint8 images (M, C, H, W) kept in host memory and turned into floats
    on `device` `chunk` images at a time (a float copy of the paper's 1.5M images would need ~900 GB).

    shift > 0 and flip add variants, as the official sampler marginalises +-4 px shifts and adds flipped
    images: every database image shifted by (dy, dx) in range(-shift, shift + 1, shift_step)^2 (the uncovered
    border filled with the float of pixel 0), each also mirrored if flip. Variant v of image m has index
    v * M + m; retrieval weighs and samples all of them.
    """

    def __init__(self, images: torch.Tensor, to_float, device=None, chunk: int = 4096, shift: int = 0,
                 shift_step: int = 1, flip: bool = False):
        self.images, self.to_float, self.chunk = images, to_float, chunk
        self.device = torch.device("cpu") if device is None else torch.device(device)
        offsets = range(-shift, shift + 1, max(shift_step, 1))
        self.variants = [(dy, dx, f) for f in ((False, True) if flip else (False,)) for dy in offsets
                         for dx in offsets]

    def __len__(self) -> int:
        return len(self.images) * len(self.variants)

    def _floats(self, index, variant: tuple[int, int, bool]) -> torch.Tensor:
        x = self.images[index]
        dy, dx, flip = variant
        if flip:
            x = x.flip(-1)
        if dy or dx:  # shifted as uint8, so the uncovered border is pixel 0 in every channel
            H, W = x.shape[-2:]
            padded = F.pad(x, (abs(dx),) * 2 + (abs(dy),) * 2)
            x = padded[..., abs(dy) - dy:abs(dy) - dy + H, abs(dx) - dx:abs(dx) - dx + W]
        return self.to_float(x).to(self.device)

    def log_weights(self, image: torch.Tensor, observed: torch.Tensor, size: int,
                    noise_var: float) -> torch.Tensor:
        """retrieval_log_weights (len(self),) over every variant, chunk by chunk."""
        M = len(self.images)
        return torch.cat([retrieval_log_weights(self._floats(slice(s, s + self.chunk), v), image, observed,
                                                size, noise_var)
                          for v in self.variants for s in range(0, M, self.chunk)])

    def get(self, index: torch.Tensor) -> torch.Tensor:
        """Float images (len(index), C, H, W) of the given variant indices."""
        M, index = len(self.images), index.cpu()
        out = [None] * len(index)
        for v in (index // M).unique().tolist():
            where = (index // M == v).nonzero()[:, 0]
            for j, x in zip(where.tolist(), self._floats(index[where] % M, self.variants[v]), strict=True):
                out[j] = x
        return torch.stack(out) if out else torch.zeros(0)


def effective_samples(log_weights: torch.Tensor) -> float:
    """Kish's effective sample size 1 / sum p^2 of the normalised retrieval weights: ~1 means the posterior
    samples collapsed onto one completion."""
    p = torch.softmax(log_weights.double(), 0)
    return 1.0 / p.square().sum().item()


def sample_images(log_weights: torch.Tensor, num_samples: int, generator: torch.Generator | None = None):
    """N draws from softmax(log_weights) with replacement, returned as (distinct indices (U,),
    weights (U,) = count / N)."""
    probs = torch.softmax(log_weights.double(), 0)
    draws = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
    index, counts = torch.unique(draws, return_counts=True)
    return index, counts.double() / num_samples


@torch.no_grad()
def expected_posterior_entropy(posterior: nn.Module, image: torch.Tensor, observed: torch.Tensor,
                               candidates: torch.Tensor, samples: torch.Tensor, weights: torch.Tensor,
                               size: int, chunk: int = 4096,
                               masks: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2 for every candidate location and task: (L, K) nats, on the image's device in samples' dtype.

    EPE(l) = sum_u w_u H[g(theta | y_1:t-1, y_t^u(l))], where y_1:t-1 are `image`'s pixels at `observed`
    (t-1, 2) and y_t^u(l) the pixels of sample u (samples (U, C, H, W), weights (U,)) in candidate glimpse
    l (candidates (L, 2) top-left corners) that were not observed yet. Every (sample, candidate) input is
    built by broadcasting and fed to g in chunks of `chunk`; `masks` may pass precomputed
    `candidate_masks`. g must be in eval mode.
    """
    C, H, W = image.shape
    U, L = len(samples), len(candidates)
    if samples.shape[1:] != image.shape or weights.shape != (U,):
        raise UserError(f"samples must be (U, {C}, {H}, {W}) with weights (U,), got "
                        f"{tuple(samples.shape)} and {tuple(weights.shape)}")
    # Every mask lives on the image's device, so a CUDA image never meets a CPU mask.
    masks = (candidate_masks((H, W), candidates, size) if masks is None else masks).to(image.device)
    old = _observed_mask((H, W), observed, size, image.device)
    base = image * old  # the true observed pixels, zeros elsewhere
    per = max(1, chunk // U)  # candidates per chunk
    out = []
    for s in range(0, L, per):
        m = masks[s:s + per]  # (l, H, W)
        new = (m & ~old)[None, :, None]  # pixels only the candidate reveals
        x = torch.where(new, samples[:, None], base)  # (U, l, C, H, W)
        mask = (m | old)[None, :, None].expand(U, -1, 1, H, W).to(x.dtype)
        logits = posterior(torch.cat([x, mask], 2).flatten(0, 1))  # (U*l, K)
        entropy = bernoulli_entropy(logits.double()).view(U, len(m), -1)
        out.append(torch.einsum("u,ulk->lk", weights.double().to(entropy.device), entropy))
    return torch.cat(out).to(samples.dtype)


@torch.no_grad()
def design_sequence(posterior: nn.Module, image: torch.Tensor, database: torch.Tensor, task: int,
                    candidates: torch.Tensor, size: int, num_glimpses: int, num_samples: int,
                    noise_var: tuple[float, ...], first: int | None = None,
                    generator: torch.Generator | None = None, chunk: int = 4096,
                    masks: torch.Tensor | None = None,
                    log: list[dict] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 for one image and task: the greedy near-optimal sequence.

    At each step t, N images are drawn from r_img given the glimpses so far, eq. 2 is evaluated for every
    candidate and the minimiser is taken. `first` (a candidate index) skips step 1, whose EPE does not
    depend on the image (nothing is observed yet) and is shared by every image, as in the official code.
    `database` is a float tensor (M, C, H, W) or a `Database`. `log` (a list) gets one record per searched
    step: the distinct posterior samples and the retrieval weights' effective sample size.
    Returns (indices into candidates (T,), EPE maps (T, L); a skipped step's map is NaN).
    """
    masks = candidate_masks(image.shape[-2:], candidates, size) if masks is None else masks
    chosen, maps = [], []
    for t in range(num_glimpses):
        if t == 0 and first is not None:
            chosen.append(int(first))
            maps.append(torch.full((len(candidates),), math.nan, device=image.device))
            continue
        observed = candidates[torch.tensor(chosen, dtype=torch.long)].reshape(-1, 2)
        var = noise_var[max(t - 1, 0)]
        if isinstance(database, Database):
            log_w = database.log_weights(image, observed, size, var)
        else:
            log_w = retrieval_log_weights(database, image, observed, size, var)
        index, weights = sample_images(log_w, num_samples, generator)
        if log is not None:
            log.append({"t": t, "distinct": len(index), "ess": effective_samples(log_w)})
        samples = database.get(index) if isinstance(database, Database) else database[index]
        epe = expected_posterior_entropy(posterior, image, observed, candidates, samples, weights,
                                         size, chunk, masks)[:, task]
        chosen.append(int(epe.argmin()))
        maps.append(epe)
    return torch.tensor(chosen), torch.stack(maps)


def heuristic_log_probs(epe_first: torch.Tensor, scale: float) -> torch.Tensor:
    """§5's heuristic supervision distribution over candidates: log p(l) = -scale * EPE_0(l) + const."""
    return torch.log_softmax(-scale * epe_first.double(), -1).float()


def lattice_index(top_left: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Candidate indices of lattice top-left corners (..., 2); a UserError for a corner not on the lattice."""
    match = (top_left[..., None, :] == candidates).all(-1)  # (..., L)
    if not match.any(-1).all():
        raise UserError("a sequence location is not on the candidate lattice")
    return match.long().argmax(-1)


def glimpse_hits(top_left: torch.Tensor, size: int, boxes: torch.Tensor) -> torch.Tensor:
    """Whether glimpses (top-left (..., 2)) land on a region: at least half of the glimpse's pixels inside one
    of the boxes (4,) or (n, 4) (y0, x0, y1, x1)."""
    g = patch_boxes(top_left, size)[..., None, :]
    boxes = boxes.reshape(-1, 4)
    dy = (torch.minimum(g[..., 2], boxes[:, 2]) - torch.maximum(g[..., 0], boxes[:, 0])).clamp_min(0)
    dx = (torch.minimum(g[..., 3], boxes[:, 3]) - torch.maximum(g[..., 1], boxes[:, 1])).clamp_min(0)
    return (dy * dx * 2 >= size * size).any(-1)


def write_sequence(path: str | Path, top_left: torch.Tensor) -> None:
    """One "row, col" line per glimpse: the official optimal-sequences/celebhq/<attr>/<image>.txt format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{int(r)}, {int(c)}\n" for r, c in top_left.tolist()))


def read_sequence(path: str | Path) -> torch.Tensor:
    """(T, 2) long top-left corners from a sequence file (official format; a trailing non-numeric line,
    the image path of the official birds files, is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and all(p.lstrip("-").isdigit() for p in parts):
            rows.append([int(p) for p in parts])
    if not rows:
        raise UserError(f"{path} holds no 'row, col' lines")
    return torch.tensor(rows, dtype=torch.long)
