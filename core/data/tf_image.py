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
  random_* ops call (saturation and hue in HSV; contrast per channel around its mean);
  `adjust_saturation_and_hue`: the two in one HSV round trip, for a pipeline that applies them in a row.

Random draws use the global torch RNG (DataLoader workers seed it per worker) unless a generator is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from core.errors import UserError

__all__ = ["RESIZE_METHODS", "sample_distorted_bounding_box", "resize", "adjust_brightness",
           "adjust_saturation", "adjust_hue", "adjust_saturation_and_hue", "adjust_contrast", "rgb_to_hsv",
           "hsv_to_rgb"]


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
# The resampling weights are computed in float64 NumPy: their arrays are small (n_out x a few taps), so the
# cost is per call, and a NumPy call costs a fraction of a torch one.

_KERNELS = {  # name: (radius, kernel on |x|), TF's sampling_kernels.h
    "bilinear": (1.0, lambda x: np.maximum(1 - x, 0)),
    "lanczos3": (3.0, lambda x: np.sinc(x) * np.sinc(x / 3) * (x < 3)),  # np.sinc: sin(pi x) / (pi x)
    "lanczos5": (5.0, lambda x: np.sinc(x) * np.sinc(x / 5) * (x < 5)),
    "bicubic": (2.0, lambda x: np.where(x < 1, (1.5 * x - 2.5) * x * x + 1,
                                        np.where(x < 2, ((-0.5 * x + 2.5) * x - 4) * x + 2, 0.0))),
    "gaussian": (1.5, lambda x: np.exp(-0.5 * (x / 0.5) ** 2) * (x < 1.5)),
    "mitchellcubic": (2.0, lambda x: np.where(
        x < 1, (7 / 6 * x - 2) * x * x + 8 / 9,
        np.where(x < 2, ((-7 / 18 * x + 2) * x - 10 / 3) * x + 16 / 9, 0.0))),
}
RESIZE_METHODS = (*_KERNELS, "nearest", "area", "legacy_bicubic")


def _table_offset(fraction: np.ndarray) -> np.ndarray:
    """TF's bicubic resize reads its kernel from a table of 1,024 steps per pixel (resize_bicubic_op.cc,
    kTableSize), in float32: the sub-pixel offset is rounded to the nearest 1/1024 (ties to even, lrintf)."""
    return np.round(fraction * 1024) / 1024


def _taps(n_in: int, n_out: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis, out[o] = sum_k weight[o, k] * in[index[o, k]]: (n_out, K) source indices and float64
    weights, K the kernel's support (2 radius + 2 at most); the taps of a row with nonzero weight are
    distinct. Only the taps inside the kernel are evaluated, so the cost does not grow with n_in x n_out."""
    scale = n_in / n_out
    o = np.arange(n_out, dtype=np.float64)
    centre = (o + 0.5) * scale  # output pixel centres, input units
    if method == "nearest":  # half-pixel centres: floor((i + 0.5) * scale)
        return np.minimum(np.floor(centre).astype(np.int64), n_in - 1)[:, None], np.ones((n_out, 1))
    if method == "area":  # exact overlap of [o, o+1) * scale with each input pixel
        lo, hi = o * scale, (o + 1) * scale
        index = np.floor(lo).astype(np.int64)[:, None] + np.arange(math.ceil(scale) + 1)
        overlap = (np.minimum(hi[:, None], index + 1) - np.maximum(lo[:, None], index)).clip(min=0)
        return np.minimum(index, n_in - 1), overlap * (index < n_in) / scale
    if method == "legacy_bicubic":  # TF1 resize_bicubic: x = i * scale, taps clamped to the edge
        x = (np.arange(n_out, dtype=np.float32) * np.float32(scale)).astype(np.float64)
        x0 = np.floor(x)
        d = np.abs(_table_offset(x - x0)[:, None] - np.arange(-1, 3))
        a = -0.75
        weight = np.where(d < 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                          np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))
        taps = x0.astype(np.int64)[:, None] + np.arange(-1, 3)
        index = taps.clip(0, n_in - 1)
        # A clamped tap's weight goes to the edge pixel's own tap, so that a row's weighted taps are distinct.
        return index, np.einsum("ok,okj->oj", weight, index[:, :, None] == taps[:, None, :])
    if method not in _KERNELS:
        raise UserError(f"unknown resize method {method!r}; choose from {', '.join(RESIZE_METHODS)}")
    radius, kernel = _KERNELS[method]
    if method == "bicubic":  # TF's resize_bicubic kernel (half-pixel centres), with its tabulated offsets
        x = (o.astype(np.float32) + np.float32(0.5)) * np.float32(scale) - np.float32(0.5)
        x = x.astype(np.float64)
        centre = np.floor(x) + _table_offset(x - np.floor(x)) + 0.5
    # Input pixel j (centre j + 0.5) is a tap when |j + 0.5 - centre| < radius and 0 <= j < n_in; taps outside
    # the image are dropped and the rest renormalised, as TF's scale_and_translate kernels do.
    index = np.floor(centre - 0.5 - radius).astype(np.int64)[:, None] + np.arange(math.ceil(2 * radius) + 2)
    distance = np.abs(index + 0.5 - centre[:, None])
    weight = kernel(distance) * ((distance < radius) & (index >= 0) & (index < n_in))
    total = weight.sum(1, keepdims=True)
    weight = np.where(total != 0, weight / np.where(total != 0, total, 1), weight)
    return index.clip(0, n_in - 1), weight


def resize(image: torch.Tensor, size: Sequence[int], method: str = "bilinear") -> torch.Tensor:
    """tf.image.resize(image, size, method, antialias=False) of a float (C, H, W) image (values are not
    clipped: cubic and Lanczos kernels overshoot, as in TF); method "legacy_bicubic" is TF1's
    tf.image.resize_bicubic. Separable: rows, then columns, each a product from the left with a sparse
    (out, in) matrix of the kernel's few taps per output pixel (3-8x the speed of dense weights on one
    core)."""
    h, w = int(size[0]), int(size[1])
    if image.ndim != 3 or h < 1 or w < 1:
        raise UserError(f"resize expects a (C, H, W) image and a positive size, got {tuple(image.shape)}, "
                        f"{size}")
    C, H, W = image.shape
    row_matrix, column_matrix = _matrix(H, h, method, image.dtype), _matrix(W, w, method, image.dtype)
    out = image.new_empty(C, h, w)
    for plane, out_plane in zip(image, out, strict=True):  # a crop's view goes in as it is, with no copy
        # columns from the left too (sparse x dense is the fast product), on the transposed rows
        out_plane.t().copy_(torch.mm(column_matrix, torch.mm(row_matrix, plane).t().contiguous()))
    return out


def _matrix(n_in: int, n_out: int, method: str, dtype: torch.dtype) -> torch.Tensor:
    """The (n_out, n_in) resampling matrix of `_taps` as a sparse tensor. Zero taps (outside the image) are
    dropped; the rest are distinct and in order, row by row, so the tensor is coalesced as built (checked by
    the tests, not here: the check would cost as much as the rest). Not cached: random crops rarely repeat a
    size, and long-lived entries among a loader's large temporaries fragment the heap (an LRU cache of these
    grew the TNet loader by ~0.5 MB of RSS and ~100 page faults per image, slower than building anew)."""
    index, weight = _taps(n_in, n_out, method)
    rows, k = np.nonzero(weight)
    return torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, index[rows, k]])),
                                   torch.from_numpy(weight[rows, k]).to(dtype), (n_out, n_in),
                                   check_invariants=False, is_coalesced=True)


# ---- colour ----

def _sextant_chroma_value(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """6 x hue (in [-1, 5): the sextant, not yet wrapped), chroma c = max - min and value v = max of a
    (3, H, W) RGB image, as tf.image.rgb_to_hsv computes them (hue = h6 / 6 mod 1, saturation c / v)."""
    r, g, b = image
    v = image.amax(0)
    c = v - image.amin(0)
    # h6 x c first: the max channel's neighbours' difference + 2 c per sextant, picked by lerp with 0/1
    # float masks (exact; torch.where and bool masks are several times slower); c = 0 gives 0 / tiny = 0.
    is_r, is_g = (torch.eq(v, channel, out=torch.empty_like(v)) for channel in (r, g))
    h6 = (r - g).add_(c, alpha=4).lerp_((b - r).add_(c, alpha=2), is_g).lerp_(g - b, is_r)
    return h6.div_(c.clamp(min=torch.finfo(c.dtype).tiny)), c, v


def _from_sextant(h6: torch.Tensor, vs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """RGB of 6 x hue h6 (any real), value v and v x saturation `vs` (tf.image.hsv_to_rgb): channel n is
    v - vs clamp(d - 1, 0, 1), d the distance from 6 x hue to 2n around the circle of 6 (0 to 3), that is
    (v - vs) + vs clamp(|a - 3| - 1, 0, 1) with a = |hue - 2n|, hue wrapped to [0, 6]."""
    hue = h6 - h6.div(6).floor_().mul_(6)  # mod 6 on one plane (torch.remainder is several times slower)
    ramp = (hue - torch.tensor([0.0, 2.0, 4.0], dtype=hue.dtype, device=hue.device)[:, None, None]).abs_()
    return ramp.sub_(3).abs_().sub_(1).clamp_(0, 1).mul_(vs).add_(v - vs)


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
    kept. Every channel's distance below v scales by s' / s = clamp(v / c, 0, factor): no round trip through
    HSV (c = 0 gives ratio factor on zero distances)."""
    v = image.amax(0)
    c = v - image.amin(0)
    ratio = v.div(c.clamp_(min=torch.finfo(c.dtype).tiny)).clamp_(0, factor)
    return torch.addcmul(v * (1 - ratio), image, ratio)  # v - (v - image) ratio


def adjust_hue(image: torch.Tensor, delta: float) -> torch.Tensor:
    """tf.image.adjust_hue: hue + delta (mod 1), saturation and value kept (v x s is the chroma where
    v > 0)."""
    h6, c, v = _sextant_chroma_value(image)
    return _from_sextant(h6.add_(6 * delta), c.mul_(torch.gt(v, 0, out=torch.empty_like(v))), v)


def adjust_saturation_and_hue(image: torch.Tensor, factor: float, delta: float) -> torch.Tensor:
    """adjust_saturation(factor) and adjust_hue(delta), in either order (they commute: saturation changes only
    the chroma, hue only the hue), in one HSV round trip."""
    h6, c, v = _sextant_chroma_value(image)
    # v x clamp(s factor, 0, 1) with s = c / v (0 where v <= 0, as TF's rgb_to_hsv): c factor within [0, v]
    return _from_sextant(h6.add_(6 * delta), torch.minimum(c.mul_(factor), v).clamp_(min=0), v)


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    mean = image.mean((-2, -1), keepdim=True)  # per channel
    return torch.add(mean * (1 - factor), image, alpha=factor)  # (image - mean) factor + mean
