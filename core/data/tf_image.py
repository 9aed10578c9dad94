"""TensorFlow's image ops that the papers' official input pipelines use, in plain torch on float images
(C, H, W), so a paper-scale pipeline can follow its official code step by step.

- `sample_distorted_bounding_box`: tf.image.sample_distorted_bounding_box (TF's
  core/kernels/image/sample_distorted_bounding_box_op.cc: aspect ratio uniform, height uniform between
  the heights the area range allows, the crop must cover `min_object_covered` of a box; the whole image
  after `max_attempts` failures).
- `resize`: tf.image.resize(..., antialias=False) with each of its methods (TF's scale_and_translate
  kernels: triangle, Keys cubic a = -0.5, Lanczos 3 and 5, Gaussian radius 1.5 sigma 0.5, Mitchell-Netravali
  B = C = 1/3; nearest with half-pixel centres; area = exact box averaging), and TF1's
  tf.image.resize_bicubic (legacy: no half-pixel offset, a = -0.75, edge-clamped taps).
- `adjust_brightness` / `adjust_saturation` / `adjust_hue` / `adjust_contrast`: the tf.image ops the
  random_* ops call (saturation and hue in HSV; contrast per channel around its mean).

Random draws use the global torch RNG (DataLoader workers seed it per worker) unless a generator is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from core.errors import UserError

__all__ = ["RESIZE_METHODS", "sample_distorted_bounding_box", "resize", "adjust_brightness",
           "adjust_saturation", "adjust_hue", "adjust_contrast", "rgb_to_hsv", "hsv_to_rgb"]


def _rand(generator: torch.Generator | None) -> float:
    return torch.rand((), generator=generator).item()


def _randint(n: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(n, (), generator=generator))


def sample_distorted_bounding_box(height: int, width: int,
                                  boxes: Sequence[Sequence[float]] = ((0.0, 0.0, 1.0, 1.0),),
                                  min_object_covered: float = 0.1,
                                  aspect_ratio_range: Sequence[float] = (0.75, 1.33),
                                  area_range: Sequence[float] = (0.05, 1.0), max_attempts: int = 100,
                                  generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering at least `min_object_covered` of one of `boxes`
    ((ymin, xmin, ymax, xmax) in [0, 1]; none: the whole image), with w/h in `aspect_ratio_range` and
    area/(H*W) in `area_range`."""
    pixel_boxes = [(b[0] * height, b[1] * width, b[2] * height, b[3] * width) for b in boxes] or \
        [(0.0, 0.0, float(height), float(width))]  # use_image_if_no_bounding_boxes

    def covers(top: int, left: int, h: int, w: int) -> bool:
        for y0, x0, y1, x1 in pixel_boxes:
            box_area = max(y1 - y0, 0.0) * max(x1 - x0, 0.0)
            inter = max(0.0, min(y1, top + h) - max(y0, top)) * max(0.0, min(x1, left + w) - max(x0, left))
            if box_area == 0 or inter / box_area >= min_object_covered:
                return True
        return False

    area = height * width
    min_area, max_area = area_range[0] * area, area_range[1] * area
    for _ in range(max_attempts):
        aspect = aspect_ratio_range[0] + _rand(generator) * (aspect_ratio_range[1] - aspect_ratio_range[0])
        min_h = round(math.sqrt(min_area / aspect))
        max_h = round(math.sqrt(max_area / aspect))
        if round(max_h * aspect) > width:
            max_h = int((width + 0.5 - 1e-7) / aspect)
        max_h = min(max_h, height)
        min_h = min(min_h, max_h)
        h = min_h + _randint(max_h - min_h + 1, generator) if min_h < max_h else min_h
        w = round(h * aspect)
        if not (0 < h <= height and 0 < w <= width and min_area <= h * w <= max_area):
            continue
        top, left = _randint(height - h + 1, generator), _randint(width - w + 1, generator)
        if covers(top, left, h, w):
            return top, left, h, w
    return 0, 0, height, width


# ---- resizing ----

def _sinc(x: torch.Tensor) -> torch.Tensor:
    return torch.sinc(x)  # sin(pi x) / (pi x)


_KERNELS = {  # name: (radius, kernel on |x|), TF's sampling_kernels.h
    "bilinear": (1.0, lambda x: (1 - x).clamp(min=0)),
    "lanczos3": (3.0, lambda x: _sinc(x) * _sinc(x / 3) * (x < 3)),
    "lanczos5": (5.0, lambda x: _sinc(x) * _sinc(x / 5) * (x < 5)),
    "bicubic": (2.0, lambda x: torch.where(x < 1, (1.5 * x - 2.5) * x * x + 1,
                                           torch.where(x < 2, ((-0.5 * x + 2.5) * x - 4) * x + 2, 0.0))),
    "gaussian": (1.5, lambda x: torch.exp(-0.5 * (x / 0.5) ** 2) * (x < 1.5)),
    "mitchellcubic": (2.0, lambda x: torch.where(
        x < 1, (7 / 6 * x - 2) * x * x + 8 / 9,
        torch.where(x < 2, ((-7 / 18 * x + 2) * x - 10 / 3) * x + 16 / 9, 0.0))),
}
RESIZE_METHODS = (*_KERNELS, "nearest", "area", "legacy_bicubic")


def _table_offset(fraction: torch.Tensor) -> torch.Tensor:
    """TF's bicubic resize reads its kernel from a table of 1,024 steps per pixel (resize_bicubic_op.cc,
    kTableSize), in float32: the sub-pixel offset is rounded to the nearest 1/1024 (ties to even, lrintf)."""
    return torch.round(fraction * 1024) / 1024


def _taps(n_in: int, n_out: int, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis, out[o] = sum_k weight[o, k] * in[index[o, k]]: (n_out, K) source indices and float64
    weights, K the kernel's support (2 radius + 2 at most). Only the taps inside the kernel are evaluated, so
    the cost does not grow with n_in x n_out."""
    scale = n_in / n_out
    o = torch.arange(n_out, dtype=torch.float64)
    centre = (o + 0.5) * scale  # output pixel centres, input units
    if method == "nearest":  # half-pixel centres: floor((i + 0.5) * scale)
        return centre.floor().long().clamp(max=n_in - 1)[:, None], torch.ones(n_out, 1, dtype=torch.float64)
    if method == "area":  # exact overlap of [o, o+1) * scale with each input pixel
        lo, hi = o * scale, (o + 1) * scale
        index = lo.floor().long()[:, None] + torch.arange(math.ceil(scale) + 1)
        start = index.double()
        overlap = (torch.minimum(hi[:, None], start + 1) - torch.maximum(lo[:, None], start)).clamp(min=0)
        return index.clamp(max=n_in - 1), overlap * (index < n_in) / scale
    if method == "legacy_bicubic":  # TF1 resize_bicubic: x = i * scale, taps clamped to the edge
        x = (torch.arange(n_out, dtype=torch.float32) * torch.tensor(scale, dtype=torch.float32)).double()
        x0 = x.floor()
        d = (_table_offset(x - x0)[:, None] - torch.arange(-1, 3, dtype=torch.float64)).abs()
        a = -0.75
        weight = torch.where(d < 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                             torch.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))
        return (x0.long()[:, None] + torch.arange(-1, 3)).clamp(0, n_in - 1), weight
    if method not in _KERNELS:
        raise UserError(f"unknown resize method {method!r}; choose from {', '.join(RESIZE_METHODS)}")
    radius, kernel = _KERNELS[method]
    if method == "bicubic":  # TF's resize_bicubic kernel (half-pixel centres), with its tabulated offsets
        x = ((o.float() + 0.5) * torch.tensor(scale, dtype=torch.float32) - 0.5).double()
        centre = x.floor() + _table_offset(x - x.floor()) + 0.5
    # Input pixel j (centre j + 0.5) is a tap when |j + 0.5 - centre| < radius and 0 <= j < n_in; taps outside
    # the image are dropped and the rest renormalised, as TF's scale_and_translate kernels do.
    index = (centre - 0.5 - radius).floor().long()[:, None] + torch.arange(math.ceil(2 * radius) + 2)
    distance = (index + 0.5 - centre[:, None]).abs()
    weight = kernel(distance) * ((distance < radius) & (index >= 0) & (index < n_in))
    total = weight.sum(1, keepdim=True)
    weight = torch.where(total != 0, weight / total.where(total != 0, torch.ones_like(total)), weight)
    return index.clamp(0, n_in - 1), weight


def resize(image: torch.Tensor, size: Sequence[int], method: str = "bilinear") -> torch.Tensor:
    """tf.image.resize(image, size, method, antialias=False) of a float (C, H, W) image (values are not
    clipped: cubic and Lanczos kernels overshoot, as in TF); method "legacy_bicubic" is TF1's
    tf.image.resize_bicubic. Separable: rows, then columns, each a product with a sparse (out, in) matrix of
    the kernel's few taps per output pixel (3-8x the speed of dense weights on one core)."""
    h, w = int(size[0]), int(size[1])
    if image.ndim != 3 or h < 1 or w < 1:
        raise UserError(f"resize expects a (C, H, W) image and a positive size, got {tuple(image.shape)}, "
                        f"{size}")
    C, H, W = image.shape
    rows = torch.sparse.mm(_matrix(H, h, method, image.dtype), image.transpose(0, 1).reshape(H, C * W))
    columns_first = rows.view(h, C, W).permute(2, 0, 1).reshape(W, h * C)
    cols = torch.sparse.mm(_matrix(W, w, method, image.dtype), columns_first)
    return cols.view(w, h, C).permute(2, 1, 0).contiguous()


def _matrix(n_in: int, n_out: int, method: str, dtype: torch.dtype) -> torch.Tensor:
    """The (n_out, n_in) resampling matrix of `_taps` as a sparse tensor (repeated taps add up)."""
    index, weight = _taps(n_in, n_out, method)
    rows = torch.arange(n_out).repeat_interleave(index.shape[1])
    return torch.sparse_coo_tensor(torch.stack([rows, index.flatten()]), weight.flatten().to(dtype),
                                   (n_out, n_in), check_invariants=True)


# ---- colour ----

def _sextant_chroma_value(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """6 x hue (in [-1, 5): the sextant, not yet wrapped), chroma c = max - min and value v = max of a
    (3, H, W) RGB image, as tf.image.rgb_to_hsv computes them (hue = h6 / 6 mod 1, saturation c / v)."""
    r, g, b = image
    v = image.amax(0)
    c = v - image.amin(0)
    inverse = 1 / c.where(c > 0, torch.ones_like(c))
    h6 = torch.where(v == r, (g - b) * inverse,
                     torch.where(v == g, (b - r) * inverse + 2, (r - g) * inverse + 4))
    return h6.where(c > 0, torch.zeros_like(h6)), c, v


def _from_sextant(h6: torch.Tensor, vs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """RGB of 6 x hue h6 (any real: wrapped here), value v and v x saturation `vs` (tf.image.hsv_to_rgb)."""
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=h6.dtype, device=h6.device)[:, None, None] + h6) % 6
    return v - vs * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB -> HSV, hue in [0, 1) (tf.image.rgb_to_hsv)."""
    h6, c, v = _sextant_chroma_value(image)
    s = torch.where(v > 0, c / v.where(v > 0, torch.ones_like(v)), torch.zeros_like(v))
    return torch.stack([(h6 / 6) % 1.0, s, v])


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) HSV -> RGB (tf.image.hsv_to_rgb)."""
    h, s, v = image
    return _from_sextant(h * 6, v * s, v)


def adjust_brightness(image: torch.Tensor, delta: float) -> torch.Tensor:
    return image + delta


def adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    """tf.image.adjust_saturation: HSV saturation s = c / v times factor, clipped to [0, 1], hue and value
    kept. Every channel's distance below v scales by s' / s, which is clamp(v / c, 0, factor): no round
    trip through HSV."""
    v = image.amax(0)
    c = v - image.amin(0)
    ratio = torch.where(c > 0, (v / c.where(c > 0, torch.ones_like(c))).clamp(0, factor), torch.zeros_like(c))
    return v - (v - image) * ratio


def adjust_hue(image: torch.Tensor, delta: float) -> torch.Tensor:
    """tf.image.adjust_hue: hue + delta (mod 1), saturation and value kept (v x s is the chroma where
    v > 0)."""
    h6, c, v = _sextant_chroma_value(image)
    return _from_sextant(h6 + 6 * delta, torch.where(v > 0, c, torch.zeros_like(c)), v)


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    mean = image.mean((-2, -1), keepdim=True)  # per channel
    return (image - mean) * factor + mean
