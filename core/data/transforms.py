"""Image transforms in plain torch (no torchvision) on float images (C, H, W) or batches (B, C, H, W)
in [0, 1], e.g. ImageNet-style training augmentation (TNet App. B.2) and evaluation resizing.

Random transforms draw from `generator` when one is given (reproducible single-process pipelines and
tests) and from the global torch RNG otherwise. Prefer the latter inside DataLoader workers: each
worker gets its own seed for the global RNG, whereas a generator object would be copied into every
worker with the same state, giving all workers the same augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from core.errors import UserError

__all__ = [
    "resize", "center_crop", "random_resized_crop", "random_resized_crop_box", "horizontal_flip", "to_signed",
    "Compose", "Resize", "CenterCrop", "RandomResizedCrop", "RandomHorizontalFlip", "ToSigned",
]

Size = int | Sequence[int]


def _hw(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise UserError(f"image size must be positive, got {size}")
    return int(h), int(w)


def _check_image(image: torch.Tensor) -> None:
    if image.ndim not in (3, 4) or not image.is_floating_point():
        raise UserError(f"transforms expect float images (C, H, W) or (B, C, H, W), got "
                        f"{image.dtype} {tuple(image.shape)}")


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


def resize(image: torch.Tensor, size: Size, antialias: bool = True) -> torch.Tensor:
    """Bilinear resize (align_corners=False). `size` (h, w) is exact; an int sets the shorter side and
    keeps the aspect ratio (the usual "resize 256, center crop 224" evaluation). `antialias` low-pass
    filters when shrinking, like PIL; values stay in the input's range (bilinear is a convex blend)."""
    _check_image(image)
    H, W = image.shape[-2:]
    if isinstance(size, int):
        short = min(H, W)
        out = (size, max(1, round(W * size / short))) if H == short \
            else (max(1, round(H * size / short)), size)
    else:
        out = _hw(size)
    if out == (H, W):
        return image
    batch = image if image.ndim == 4 else image[None]
    resized = F.interpolate(batch, size=out, mode="bilinear", align_corners=False, antialias=antialias)
    return resized if image.ndim == 4 else resized[0]


def center_crop(image: torch.Tensor, size: Size) -> torch.Tensor:
    """The central (h, w) window (an int means square); the crop must fit inside the image."""
    _check_image(image)
    h, w = _hw(size)
    H, W = image.shape[-2:]
    if h > H or w > W:
        raise UserError(f"center crop {h}x{w} is larger than the {H}x{W} image")
    top, left = (H - h) // 2, (W - w) // 2
    return image[..., top:top + h, left:left + w]


def random_resized_crop_box(height: int, width: int, scale: Sequence[float] = (0.08, 1.0),
                            ratio: Sequence[float] = (3 / 4, 4 / 3),
                            generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an Inception-style crop (Szegedy et al. 2015): area a fraction U(scale) of
    the image, aspect ratio w/h log-uniform in `ratio`; 10 tries, then the largest central crop whose
    aspect ratio is clamped into `ratio`."""
    if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
        raise UserError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], "
                        f"got {scale}, {ratio}")
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(*log_ratio, generator))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(height - h + 1, (), generator=generator))
            left = int(torch.randint(width - w + 1, (), generator=generator))
            return top, left, h, w
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, min(height, round(width / aspect))) if width / height < aspect \
        else (min(width, round(height * aspect)), height)
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: torch.Tensor, size: Size, scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                        antialias: bool = True) -> torch.Tensor:
    """A random crop (`random_resized_crop_box`) resized to `size` (bilinear); one box for a batch."""
    _check_image(image)
    top, left, h, w = random_resized_crop_box(*image.shape[-2:], scale, ratio, generator)
    return resize(image[..., top:top + h, left:left + w], _hw(size), antialias)


def horizontal_flip(image: torch.Tensor) -> torch.Tensor:
    """Mirror left-right (the last axis)."""
    return image.flip(-1)


def to_signed(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (x * 2 - 1), the input range of the papers' TF models."""
    return image * 2 - 1


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            image = t(image)
        return image


class Resize:
    """`resize` as a transform object."""

    def __init__(self, size: Size, antialias: bool = True):
        self.size, self.antialias = size, antialias

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return resize(image, self.size, self.antialias)


class CenterCrop:
    """`center_crop` as a transform object."""

    def __init__(self, size: Size):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return center_crop(image, self.size)


class RandomResizedCrop:
    """`random_resized_crop` as a transform object (see the module note on `generator`)."""

    def __init__(self, size: Size, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                 antialias: bool = True):
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.generator, self.antialias = generator, antialias

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return random_resized_crop(image, self.size, self.scale, self.ratio, self.generator, self.antialias)


class RandomHorizontalFlip:
    """Mirror with probability `p` (see the module note on `generator`)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = p, generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        flip = torch.rand((), generator=self.generator).item() < self.p
        return horizontal_flip(image) if flip else image


class ToSigned:
    """`to_signed` as a transform object."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return to_signed(image)
