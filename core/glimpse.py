"""Vectorised glimpse operations shared by the four papers.

Every op works on a whole batch with integer index arithmetic and a single gather (or a single
F.interpolate / avg_pool call), never a Python loop over the batch. The ops are pure tensor ops, so
CPU and GPU pick the same pixels and agree to float rounding; device and dtype follow the input.

Conventions (all ops):
- Images are (B, C, H, W). Pixel (r, c) covers the continuous square [r, r+1) x [c, c+1).
- Boxes are (y0, x0, y1, x1) in pixels of the full-resolution image, half-open: a box covers rows
  y0 .. y1-1 and columns x0 .. x1-1. Boxes may lie partly or wholly outside the image.
- Top-left corners and coordinates are (row, col) = (y, x) pairs of integers.
- Normalised locations are (x, y) in [-1, 1], x = column, y = row, with -1/+1 at the outer image edges
  (the grid_sample align_corners=False convention), i.e. continuous pixel position u = (x + 1) / 2 * W.
- Pixels outside the image read as zeros (padding="zeros"), as in RAM-style glimpse sensors and TNet's
  zero padding; crop ops also offer padding="border" (nearest edge pixel, Saccader's DRAM glimpses).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.errors import UserError

__all__ = [
    "GridSpec",
    "child_boxes",
    "child_coords",
    "coverage",
    "crop_and_resize",
    "extract_patches",
    "glimpse_top_left",
    "grid_boxes",
    "lattice_top_left",
    "observation_mask",
    "patch_boxes",
    "pyramid_boxes",
    "pyramid_coords",
    "retina",
    "RetinaSensor",
    "select_child_boxes",
]


# ----------------------------------------------------------------------------------------------------
# Input checks: one-line UserErrors naming the argument.


def _int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool):
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _pair(name: str, value, minimum: int = 1) -> tuple[int, int]:
    """An int or a (height, width) pair of ints."""
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) != 2:
            raise UserError(f"{name} must be an int or an (height, width) pair, got {value!r}")
        return _int(name, value[0], minimum), _int(name, value[1], minimum)
    v = _int(name, value, minimum)
    return v, v


def _images(images, floating: bool = False) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserError(f"images must be a (B, C, H, W) tensor, got {shape}")
    if floating and not images.is_floating_point():
        raise UserError(f"images must be floating point for this op, got {images.dtype}")
    return images


def _per_glimpse(name: str, t, batch: int, last: int, integer: bool) -> torch.Tensor:
    """Checks a (B, K, last) tensor of per-glimpse values."""
    if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[0] != batch or t.shape[2] != last:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise UserError(f"{name} must be a ({batch}, K, {last}) tensor, got {shape}")
    if integer and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise UserError(f"{name} must be an integer tensor (e.g. torch.long), got {t.dtype}")
    return t


def _padding(padding: str) -> str:
    if padding not in ("zeros", "border"):
        raise UserError(f"padding must be 'zeros' or 'border', got {padding!r}")
    return padding


# ----------------------------------------------------------------------------------------------------
# The one gather everything is built on.


def _gather_grid(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, padding: str):
    """out[b, k, :, i, j] = images[b, :, rows[b, k, i], cols[b, k, j]] for rows (B, K, h) and cols
    (B, K, w) long -> (B, K, C, h, w), with one gather; off-image pixels read as zero ("zeros") or as
    the nearest edge pixel ("border"). Index math stays separable (per row / per column) so only
    two full-size integer ops precede the gather."""
    B, C, H, W = images.shape
    K, h, w = rows.shape[1], rows.shape[2], cols.shape[2]
    r, c = rows.clamp(0, H - 1), cols.clamp(0, W - 1)
    flat = (r * W)[..., :, None] + c[..., None, :]  # (B, K, h, w)
    out = images.reshape(B, C, H * W).gather(2, flat.view(B, 1, K * h * w).expand(B, C, K * h * w))
    out = out.view(B, C, K, h, w)
    if padding == "zeros":
        # A 0/1 mask in the output dtype, built separably: much cheaper than torch.where on CPU.
        inside = (r == rows).to(out.dtype)[..., :, None] * (c == cols).to(out.dtype)[..., None, :]
        out = out * inside[:, None]
    return out.transpose(1, 2)


def _rows_inside(images: torch.Tensor, top_left: torch.Tensor, hw: tuple[int, int],
                 padding: str = "zeros") -> torch.Tensor | None:
    """CPU fast path: windows copied as B*K*C*h runs of w consecutive pixels of the flattened batch.

    Every window row is a run of w consecutive floats of the flattened batch, so an overlapping
    (numel - w + 1, w) view of it plus one index_select on its first dim copies whole runs (memcpy)
    instead of indexing every pixel: ~10x faster than the per-pixel gather on CPU for TNet's 77 px crops
    (reproductions/bench.py). A window overhanging the image reads neighbouring rows (or, at the very
    ends of the batch, a shifted run that is re-read exactly); those pixels lie in the first/last rows
    or columns of the windows and are then set to zero, so nothing is copied twice (padding the batch
    first would copy all of it). Returns None (use the gather) off CPU, for non-contiguous images, or
    when a window overhangs the image with padding="border".
    """
    if images.device.type != "cpu" or not images.is_contiguous() or top_left.numel() == 0:
        return None
    (h, w), K = hw, top_left.shape[1]
    B, C, H, W = images.shape
    lo, hi = top_left.amin((0, 1)).tolist(), top_left.amax((0, 1)).tolist()
    top, bottom = min(max(-lo[0], 0), h), min(max(hi[0] + h - H, 0), h)  # overhanging rows / columns
    left, right = min(max(-lo[1], 0), w), min(max(hi[1] + w - W, 0), w)
    if padding != "zeros" and top + bottom + left + right:
        return None
    rows = (top_left[..., 0:1] + torch.arange(h)) * W + top_left[..., 1:2]  # (B, K, h) run starts
    starts = ((torch.arange(B) * (C * H * W))[:, None, None, None] + (torch.arange(C) * (H * W))[:, None]
              + rows[:, :, None, :]).reshape(-1)  # (B*K*C*h,)
    flat = images.reshape(-1)
    runs = flat.as_strided((flat.numel() - w + 1, w), (1, 1))
    inside = starts.clamp(0, flat.numel() - w)
    out = runs.index_select(0, inside)
    if top + bottom + left + right:
        shifted = (inside != starts).nonzero()[:, 0]
        if shifted.numel():  # runs past either end of the batch: re-read pixel by pixel, clamped
            out[shifted] = flat[(starts[shifted, None] + torch.arange(w)).clamp(0, flat.numel() - 1)]
        out = out.view(B, K, C, h, w)
        r = top_left[..., 0:1] + torch.arange(h)  # (B, K, h) image rows of the window rows
        c = top_left[..., 1:2] + torch.arange(w)
        keep_r = ((r >= 0) & (r < H))[:, :, None, :, None]
        keep_c = ((c >= 0) & (c < W))[:, :, None, None, :]
        target = out
        if not out.requires_grad and out.is_floating_point() and out.element_size() in _SAME_SIZE_INT:
            # The bits times 0/1 integers: +0.0 whatever was read (a float product can give -0.0 or NaN)
            # and ~8x faster than a broadcast masked_fill_ on CPU; autograd needs the masked_fill_.
            target = out.view(_SAME_SIZE_INT[out.element_size()])
        slabs = [((..., sl, slice(None)), keep_r[..., sl, :]) for sl in (slice(0, top), slice(h - bottom, h))]
        slabs += [((..., sl), keep_c[..., sl]) for sl in (slice(0, left), slice(w - right, w))]
        for index, keep in slabs:
            if target is out:
                out[index].masked_fill_(~keep, 0)
            else:
                target[index].mul_(keep.to(target.dtype))
    return out.view(B, K, C, h, w)


_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _window(images: torch.Tensor, top_left: torch.Tensor, hw: tuple[int, int], padding: str):
    """(B, K, C, h, w) windows whose top-left pixels are top_left (B, K, 2) (row, col)."""
    top_left = top_left.long()
    fast = _rows_inside(images, top_left, hw, padding)
    if fast is not None:
        return fast
    rows = top_left[..., 0:1] + torch.arange(hw[0], device=images.device)  # (B, K, h)
    cols = top_left[..., 1:2] + torch.arange(hw[1], device=images.device)  # (B, K, w)
    return _gather_grid(images, rows, cols, padding)


# ----------------------------------------------------------------------------------------------------
# RAM-style retina (WS-RAM) and BOED patches.


def glimpse_top_left(loc: torch.Tensor, size, image_hw) -> torch.Tensor:
    """Top-left pixel (row, col), long (..., 2), of a size x size patch centred at normalised loc (..., 2).

    With u = (x + 1) / 2 * W the continuous column (same for rows with y and H), the patch starts at
    floor(u - size / 2 + 0.5), i.e. its centre is rounded to the pixel grid: for odd sizes the centre
    pixel is the one containing u (as in RAM implementations), for even sizes the centre is the pixel
    corner nearest to u. The arithmetic is done in float64 so CPU and GPU agree bit for bit.
    Locations outside [-1, 1] (or exactly +1) give patches partly or wholly outside the image.
    """
    sh, sw = _pair("size", size)
    H, W = _pair("image_hw", image_hw)
    if not isinstance(loc, torch.Tensor) or loc.ndim < 1 or loc.shape[-1] != 2:
        shape = tuple(loc.shape) if isinstance(loc, torch.Tensor) else type(loc).__name__
        raise UserError(f"loc must be a (..., 2) tensor of normalised (x, y), got {shape}")
    loc = loc.detach().to(torch.float64)
    row = torch.floor((loc[..., 1] + 1) * (H / 2) - (sh / 2 - 0.5))
    col = torch.floor((loc[..., 0] + 1) * (W / 2) - (sw / 2 - 0.5))
    return torch.stack([row, col], -1).long()


def retina(images: torch.Tensor, loc: torch.Tensor, size: int, num_scales: int,
           scale_factor: int = 2) -> torch.Tensor:
    """Multi-resolution RAM glimpse: (B, num_scales, C, size, size).

    Scale i is the square patch of side size * scale_factor**i centred at loc (B, 2) (normalised (x, y),
    placement as in `glimpse_top_left`, so all scales share the rounded centre), zeros outside the
    image, reduced to size x size by average pooling over scale_factor**i x scale_factor**i blocks.
    Average pooling is the exact area-resampling for integer factors: every output pixel is the mean
    of the pixels it covers, with no aliasing and no interpolation choices. Not differentiable in loc
    (hard attention); differentiable in images.
    """
    images = _images(images, floating=True)
    size = _int("size", size)
    num_scales = _int("num_scales", num_scales)
    scale_factor = _int("scale_factor", scale_factor)
    B, C, H, W = images.shape
    if not isinstance(loc, torch.Tensor) or tuple(loc.shape) != (B, 2):
        shape = tuple(loc.shape) if isinstance(loc, torch.Tensor) else type(loc).__name__
        raise UserError(f"loc must be a ({B}, 2) tensor of normalised (x, y), got {shape}")
    loc = loc.to(images.device)
    sides = [size * scale_factor**i for i in range(num_scales)]

    def window(side):
        return _window(images, glimpse_top_left(loc, side, (H, W))[:, None], (side, side), "zeros")[:, 0]

    if size % 2 == 0 or scale_factor % 2 == 1:
        # All sides share a parity, so every scale is the centred slice of the largest: one gather.
        largest, last = window(sides[-1]), sides[-1]
        patches = [largest[..., (last - s) // 2 : (last + s) // 2, (last - s) // 2 : (last + s) // 2]
                   for s in sides]
    else:  # odd size, even factor: the centres differ by half a pixel between scales
        patches = [window(s) for s in sides]
    scales = [F.avg_pool2d(p, s // size) if s > size else p for p, s in zip(patches, sides, strict=True)]
    return torch.stack(scales, 1)


class RetinaSensor:
    """`retina` at one chosen scale per glimpse, for many glimpses on one batch of images.

    RetinaSensor(images, size, num_scales, scale_factor) builds a float64 summed-area table of the
    images once; sensor(loc, scale, index) returns (N, C, size, size), glimpse n being scale scale[n] of
    retina(images[index[n]], loc[n], size, num_scales, scale_factor). Every pooled pixel is a difference
    of four table entries at its block's corners, so N glimpses at any mix of scales cost one gather of
    their (size + 1)^2 corners each, with no copy of an image per glimpse (WS-RAM's M samples read each
    image M times per step). Pixels off the image read as zeros, wherever loc lies; differentiable
    in images, not in loc.
    """

    def __init__(self, images: torch.Tensor, size: int, num_scales: int, scale_factor: int = 2):
        self.images = _images(images, floating=True)
        self.size = _int("size", size)
        self.num_scales = _int("num_scales", num_scales)
        self.factor = _int("scale_factor", scale_factor)
        # table[..., r, c] = sum of images[..., :r, :c], in float64. The zero-padded images' table at any
        # (r, c) is this one at (r, c) clamped to [0, H] x [0, W] (zeros add nothing, exactly), so glimpses
        # overhanging the image need no padded copy.
        H, W = images.shape[-2:]
        table = images.new_zeros(*images.shape[:-2], H + 1, W + 1, dtype=torch.float64)
        table[..., 1:, 1:] = images
        self.table = table.cumsum_(-1).cumsum_(-2)

    def __call__(self, loc: torch.Tensor, scale: torch.Tensor, index: torch.Tensor | None = None):
        B, C, H, W = self.images.shape
        N = len(loc)
        if loc.shape != (N, 2) or scale.shape != (N,):
            raise UserError(f"loc must be (N, 2) and scale (N,), got {tuple(loc.shape)} and "
                            f"{tuple(scale.shape)}")
        device = self.table.device
        loc, scale = loc.to(device), scale.to(device)
        index = torch.arange(N, device=device) if index is None else index.to(device)
        block = self.factor ** scale  # (N,) pixels per pooled pixel along each axis
        top_left = torch.zeros(N, 2, dtype=torch.long, device=device)
        for s in range(self.num_scales):  # each scale rounds its own centre, as retina does
            side = self.size * self.factor**s
            top_left = torch.where((scale == s)[:, None], glimpse_top_left(loc, side, (H, W)), top_left)
        # The (size + 1)^2 block corners of a glimpse are shared by its neighbouring pooled pixels: one
        # gather of them, then each pooled pixel is a difference of four.
        edges = torch.arange(self.size + 1, device=device) * block[:, None]  # (N, size + 1)
        rows = (top_left[:, :1] + edges).clamp_(0, H) * (W + 1)
        cols = (top_left[:, 1:] + edges).clamp_(0, W)
        base = (index[:, None] * C + torch.arange(C, device=device)) * ((H + 1) * (W + 1))  # (N, C)
        v = self.table.take(base[:, :, None, None] + rows[:, None, :, None] + cols[:, None, None, :])
        sums = v[..., 1:, 1:] - v[..., :-1, 1:] - v[..., 1:, :-1] + v[..., :-1, :-1]  # (N, C, size, size)
        return (sums / block.square()[:, None, None, None]).to(self.images.dtype)


def extract_patches(images: torch.Tensor, top_left: torch.Tensor, size, padding: str = "zeros"):
    """Integer crops (B, K, C, h, w) with top-left pixels top_left (B, K, 2) long (row, col).

    size is an int or (h, w). Pixels outside the image are zeros (or the nearest edge pixel with
    padding="border"). Works for any dtype; differentiable in images.
    """
    images = _images(images)
    hw = _pair("size", size)
    top_left = _per_glimpse("top_left", top_left, images.shape[0], 2, integer=True)
    return _window(images, top_left.to(images.device), hw, _padding(padding))


def lattice_top_left(image_size: int = 224, patch: int = 16, n: int = 50, device=None) -> torch.Tensor:
    """BOED's candidate glimpse corners: (n*n, 2) long (row, col); index = row_index * n + col_index.

    The official code uses int(c) for c in np.linspace(0, image_size - patch - 1, n) on both axes
    (0..207 for 224 px and 16 px patches, so the last image row/column is never observed). The
    values are computed exactly in integers: floor(k * (image_size - patch - 1) / (n - 1)).
    """
    image_size, patch, n = _int("image_size", image_size), _int("patch", patch), _int("n", n)
    last = image_size - patch - 1
    if last < 0:
        raise UserError(f"patch ({patch}) must be smaller than image_size ({image_size})")
    k = torch.arange(n, device=device)
    coords = k * last // max(n - 1, 1)
    return torch.stack(torch.meshgrid(coords, coords, indexing="ij"), -1).reshape(n * n, 2)


def patch_boxes(top_left: torch.Tensor, size) -> torch.Tensor:
    """Pixel boxes (..., 4) (y0, x0, y1, x1), long, of patches with top-left corners (..., 2)."""
    h, w = _pair("size", size)
    if not isinstance(top_left, torch.Tensor) or top_left.ndim < 1 or top_left.shape[-1] != 2:
        raise UserError("top_left must be a (..., 2) tensor of (row, col)")
    tl = top_left.long()
    return torch.cat([tl, tl + torch.tensor([h, w], device=tl.device)], -1)


def observation_mask(images: torch.Tensor, top_left: torch.Tensor, size) -> torch.Tensor:
    """BOED's embedding of glimpses (its Figure 4): (B, C+1, H, W) = cat(images * mask, mask).

    mask is 1 at pixels inside any of the K observed patches (top_left (B, K, 2) long (row, col),
    size int or (h, w)) and 0 elsewhere; parts of patches outside the image are ignored. K may be 0.
    """
    images = _images(images)
    h, w = _pair("size", size)
    B, C, H, W = images.shape
    top_left = _per_glimpse("top_left", top_left, B, 2, integer=True).to(images.device).long()
    ys = torch.arange(H, device=images.device)
    xs = torch.arange(W, device=images.device)
    r0, c0 = top_left[..., 0:1], top_left[..., 1:2]
    rows = ((ys >= r0) & (ys < r0 + h)).float()  # (B, K, H)
    cols = ((xs >= c0) & (xs < c0 + w)).float()  # (B, K, W)
    # (H, K) @ (K, W) counts the patches covering each pixel: exact small integers.
    if not images.is_floating_point():
        images = images.to(torch.get_default_dtype())
    mask = (torch.bmm(rows.transpose(1, 2), cols) > 0)[:, None].to(images.dtype)
    return torch.cat([images * mask, mask], 1)


def coverage(boxes: torch.Tensor, image_hw) -> torch.Tensor:
    """Fraction (B,) of the image area covered by the union of boxes (B, K, 4) (y0, x0, y1, x1).

    Boxes are clipped to the image and overlaps count once. Exact for any (also fractional) boxes, so
    for integer boxes it is the number of covered pixels / (H * W). Computed without rasterising: the
    sorted y-edges cut the image into horizontal strips with a fixed set of boxes each, and each
    strip's covered width is the length of a union of x-intervals (sort by start, running max of
    ends). Memory is O(B * K^2), independent of the image size. K may be 0.
    """
    H, W = _pair("image_hw", image_hw)
    if not isinstance(boxes, torch.Tensor) or boxes.ndim != 3 or boxes.shape[-1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise UserError(f"boxes must be a (B, K, 4) tensor of (y0, x0, y1, x1), got {shape}")
    dtype = boxes.dtype if boxes.is_floating_point() else torch.get_default_dtype()
    b = boxes.to(torch.float64)
    y0, y1 = b[..., 0].clamp(0, H), b[..., 2].clamp(0, H)  # (B, K)
    x0, x1 = b[..., 1].clamp(0, W), b[..., 3].clamp(0, W)
    edges = torch.cat([y0, y1], 1).sort(1).values
    lo, hi = edges[:, :-1, None], edges[:, 1:, None]  # strips (B, S, 1)
    active = (y0[:, None] <= lo) & (y1[:, None] >= hi)  # (B, S, K): box spans the whole strip
    zero = b.new_zeros(())
    start = torch.where(active, x0[:, None], zero)
    end = torch.where(active, torch.maximum(x1, x0)[:, None], zero)  # inactive/empty: zero length
    start, order = start.sort(-1)
    end = end.gather(-1, order)
    reach = F.pad(end.cummax(-1).values[..., :-1], (1, 0))  # furthest end among earlier starts
    width = (end - torch.maximum(start, reach)).clamp_min(0).sum(-1)  # (B, S)
    return ((hi[..., 0] - lo[..., 0]) * width).sum(1).div(H * W).to(dtype)


# ----------------------------------------------------------------------------------------------------
# TNet: grids of overlapping cells, crops resized to the base resolution, pyramid bookkeeping.


@dataclass(frozen=True)
class GridSpec:
    """An n x n grid of equal, possibly overlapping cells laid over an image, as in TNet.

    Cell (i, j) (row-major index i * n + j) spans rows [top + i * stride_h, top + i * stride_h + cell_h),
    likewise for columns, where top = -pad_before: when the grid overhangs the image
    ((n - 1) * stride + cell > size) the image is zero-padded by the excess, split with the extra
    pixel *before* (ceil(total / 2) top/left, floor after) as in TNet's code; otherwise the grid is
    anchored at pixel 0.
    """

    image_hw: tuple[int, int]
    grid_size: int
    cell_hw: tuple[int, int]
    stride_hw: tuple[int, int]

    def __post_init__(self):
        object.__setattr__(self, "image_hw", _pair("image_hw", self.image_hw))
        object.__setattr__(self, "grid_size", _int("grid_size", self.grid_size))
        object.__setattr__(self, "cell_hw", _pair("cell_size", self.cell_hw))
        # A 1 x 1 grid has no stride; a larger one needs a positive stride.
        min_stride = 0 if self.grid_size == 1 else 1
        object.__setattr__(self, "stride_hw", _pair("stride", self.stride_hw, minimum=min_stride))

    @classmethod
    def from_fraction(cls, image_hw, grid_size: int, cell_fraction: float) -> GridSpec:
        """TNet's rule: cell = round(size * cell_fraction) (round half to even, like np.round),
        stride = ceil((size - cell) / (grid_size - 1)). ImageNet: (224, 5, 0.34375) -> cell 77,
        stride 37, padded to 225; fMoW: (size, 3, 0.5) -> cells of half the image at 50% overlap."""
        H, W = _pair("image_hw", image_hw)
        n = _int("grid_size", grid_size)
        if not 0 < float(cell_fraction) <= 1:
            raise UserError(f"cell_fraction must be in (0, 1], got {cell_fraction!r}")
        cell = [max(round(s * float(cell_fraction)), 1) for s in (H, W)]
        stride = [math.ceil((s - c) / (n - 1)) if n > 1 else 0 for s, c in zip((H, W), cell, strict=True)]
        return cls((H, W), n, tuple(cell), tuple(stride))

    @classmethod
    def from_overlap(cls, image_hw, grid_size: int, overlap: float) -> GridSpec:
        """Grid whose neighbouring cells overlap by the given fraction of a cell (fMoW: 3x3, 0.5):
        cell_fraction = 1 / ((grid_size - 1) * (1 - overlap) + 1), then `from_fraction`."""
        n = _int("grid_size", grid_size)
        if not 0 <= float(overlap) < 1:
            raise UserError(f"overlap must be in [0, 1), got {overlap!r}")
        return cls.from_fraction(image_hw, n, 1 / ((n - 1) * (1 - float(overlap)) + 1))

    @property
    def pad_before(self) -> tuple[int, int]:
        """Zero padding (top, left) TNet adds before cropping; the cells start at -pad_before."""
        return tuple(math.ceil(max(t, 0) / 2) for t in self._total_pad())

    @property
    def padded_hw(self) -> tuple[int, int]:
        """Image size after TNet's padding (225 x 225 for ImageNet's 224 px)."""
        return tuple(s + max(t, 0) for s, t in zip(self.image_hw, self._total_pad(), strict=True))

    def _total_pad(self):
        n, sizes = self.grid_size, zip(self.image_hw, self.cell_hw, self.stride_hw, strict=True)
        return [(n - 1) * st + c - s for s, c, st in sizes]

    def boxes(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """(n*n, 4) pixel boxes (y0, x0, y1, x1) of the cells, row-major, relative to this image."""
        k = torch.arange(self.grid_size, device=device, dtype=torch.float64)
        (py, px), (ch, cw), (sy, sx) = self.pad_before, self.cell_hw, self.stride_hw
        y0, x0 = torch.meshgrid(k * sy - py, k * sx - px, indexing="ij")
        y0, x0 = y0.reshape(-1), x0.reshape(-1)
        return torch.stack([y0, x0, y0 + ch, x0 + cw], -1).to(dtype)


def grid_boxes(image_hw, grid_size: int, cell_size, stride) -> torch.Tensor:
    """(n*n, 4) float pixel boxes (y0, x0, y1, x1) of an n x n grid, row-major (see `GridSpec`)."""
    return GridSpec(image_hw, grid_size, cell_size, stride).boxes()


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor, out_size, padding: str = "zeros"):
    """Crop integer boxes (B, K, 4) (y0, x0, y1, x1) and resize each to out_size: (B, K, C, oh, ow).

    Equal to F.interpolate(crop, out_size, mode="bilinear", align_corners=False, antialias=False)
    applied to each integer crop, where the crop is zero-padded outside the image (padding="zeros",
    TNet) or edge-replicated (padding="border"). That is TNet's tf.image.resize (bilinear, half-pixel
    centres, no antialias). Boxes must be integer-valued with positive size; a box of the output size
    is copied exactly. When all boxes share one size (TNet: every cell of a level) the crops are
    gathered and resized by a single F.interpolate call; otherwise the 2 x 2 bilinear neighbours of
    every output pixel are gathered with the source-index rule of PyTorch's kernel
    (src = (i + 0.5) * crop / out - 0.5, clamped at 0).
    """
    images = _images(images, floating=True)
    oh, ow = _pair("out_size", out_size)
    padding = _padding(padding)
    B, C, H, W = images.shape
    boxes = _per_glimpse("boxes", boxes, B, 4, integer=False).to(images.device)
    K = boxes.shape[1]
    if K == 0:
        return images.new_zeros(B, 0, C, oh, ow)
    fractional = (boxes != boxes.round()).any() if boxes.is_floating_point() else torch.tensor(False)
    boxes = boxes.long()
    sizes = (boxes[..., 2:] - boxes[..., :2]).reshape(-1, 2)
    # One device sync validates the boxes and picks the path.
    stats = torch.cat([sizes.amin(0), sizes.amax(0), fractional.to(sizes).view(1)])
    hmin, wmin, hmax, wmax, frac = stats.tolist()
    if frac:
        raise UserError("boxes must be integer-valued pixel coordinates for crop_and_resize")
    if hmin <= 0 or wmin <= 0:
        raise UserError("every box must have y1 > y0 and x1 > x0")
    if (hmin, wmin) == (hmax, wmax):
        crops = _window(images, boxes[..., :2], (hmin, wmin), padding)
        if (hmin, wmin) == (oh, ow):
            return crops
        resized = F.interpolate(crops.reshape(B * K, C, hmin, wmin), size=(oh, ow), mode="bilinear",
                                align_corners=False, antialias=False)
        return resized.view(B, K, C, oh, ow)

    # Index math in the interpolation kernel's accumulation type (float32 below float64).
    acc = torch.float64 if images.dtype == torch.float64 else torch.float32

    def axis(start, length, out, limit):
        """Absolute source indices (B, K, 2, out) of the two neighbours and their weights."""
        i = torch.arange(out, device=images.device, dtype=acc)
        src = (length.to(acc)[..., None] / out * (i + 0.5) - 0.5).clamp_min(0)
        last = (length - 1)[..., None]
        i0 = torch.minimum(src.floor().long(), last)
        lam = (src - i0.to(acc)).clamp(0, 1)
        idx = start[..., None, None] + torch.stack([i0, torch.minimum(i0 + 1, last)], 2)
        weight = torch.stack([1 - lam, lam], 2)
        if padding == "zeros":
            weight = weight * ((idx >= 0) & (idx < limit))
        return idx.clamp(0, limit - 1), weight.to(images.dtype)

    rows, wy = axis(boxes[..., 0], boxes[..., 2] - boxes[..., 0], oh, H)
    cols, wx = axis(boxes[..., 1], boxes[..., 3] - boxes[..., 1], ow, W)
    corners = _gather_grid(images, rows.view(B, K, 2 * oh), cols.view(B, K, 2 * ow), "border")
    corners = corners.reshape(B, K, C, 2, oh, 2, ow)
    wx = wx[:, :, None, None, None]  # (B, K, 1, 1, 1, 2, ow)
    along_x = corners[..., 0, :] * wx[..., 0, :] + corners[..., 1, :] * wx[..., 1, :]  # (B, K, C, 2, oh, ow)
    wy = wy[:, :, None, :, :, None]  # (B, K, 1, 2, oh, 1)
    return along_x[:, :, :, 0] * wy[:, :, :, 0] + along_x[:, :, :, 1] * wy[:, :, :, 1]


def child_boxes(parent_boxes: torch.Tensor, grid_size: int, cell_fraction: float) -> torch.Tensor:
    """Boxes (..., n*n, 4) of the grid cells inside each parent box (..., 4), in absolute pixels.

    Each parent gets `GridSpec.from_fraction(parent size, grid_size, cell_fraction)`, offset by the
    parent's top-left, so the recursion reproduces TNet's geometry at every pyramid level. TNet pads
    each *parent crop* with zeros, so child pixels outside the parent box are zeros in TNet even when
    inside the image; cropping recursively (crop_and_resize of the full-resolution parent crop with
    `GridSpec.boxes()`) reproduces that exactly, these absolute boxes serve bookkeeping, coverage and
    plots.
    """
    n = _int("grid_size", grid_size)
    if not 0 < float(cell_fraction) <= 1:
        raise UserError(f"cell_fraction must be in (0, 1], got {cell_fraction!r}")
    if not isinstance(parent_boxes, torch.Tensor) or parent_boxes.ndim < 1 or parent_boxes.shape[-1] != 4:
        raise UserError("parent_boxes must be a (..., 4) tensor of (y0, x0, y1, x1)")
    p = parent_boxes.to(torch.float64)
    start, size = p[..., :2], p[..., 2:] - p[..., :2]  # (..., 2) as (y, x)
    # torch.round is round-half-to-even like Python's round and np.round in TNet's code.
    cell = torch.round(size * float(cell_fraction)).clamp_min(1)
    stride = torch.ceil((size - cell) / (n - 1)) if n > 1 else torch.zeros_like(size)
    pad = torch.ceil(((n - 1) * stride + cell - size).clamp_min(0) / 2)
    k = torch.arange(n, device=p.device, dtype=torch.float64)
    first = (start - pad)[..., None, :]  # (..., 1, 2)
    ys = first[..., 0] + k * stride[..., 0:1]  # (..., n)
    xs = first[..., 1] + k * stride[..., 1:2]
    y0 = ys[..., :, None].expand(*ys.shape, n).flatten(-2)
    x0 = xs[..., None, :].expand(*xs.shape[:-1], n, n).flatten(-2)
    out = torch.stack([y0, x0, y0 + cell[..., 0:1], x0 + cell[..., 1:2]], -1)
    return out.to(parent_boxes.dtype if parent_boxes.is_floating_point() else torch.get_default_dtype())


def _check_index(index, lead: torch.Size, grid_size: int) -> torch.Tensor:
    if not isinstance(index, torch.Tensor) or index.ndim != len(lead) + 1 or index.shape[:-1] != lead:
        shape = tuple(index.shape) if isinstance(index, torch.Tensor) else type(index).__name__
        raise UserError(f"index must be a ({', '.join(map(str, lead))}, k) integer tensor, got {shape}")
    if index.is_floating_point() or index.dtype == torch.bool:
        raise UserError(f"index must be an integer tensor, got {index.dtype}")
    if index.numel() and (index.min() < 0 or index.max() >= grid_size * grid_size):
        raise UserError(f"index values must lie in [0, {grid_size * grid_size})")
    return index.long()


def select_child_boxes(parent_boxes: torch.Tensor, index: torch.Tensor, grid_size: int,
                       cell_fraction: float) -> torch.Tensor:
    """Absolute boxes (..., k, 4) of the selected cells index (..., k) (row-major) of each parent (..., 4)."""
    children = child_boxes(parent_boxes, grid_size, cell_fraction)  # (..., n*n, 4)
    index = _check_index(index, parent_boxes.shape[:-1], grid_size).to(children.device)
    return torch.gather(children, -2, index[..., None].expand(*index.shape, 4))


def child_coords(parent_coords: torch.Tensor, index: torch.Tensor, grid_size: int) -> torch.Tensor:
    """TNet positional coordinates (..., k, 2) (y, x) of the selected cells index (..., k):
    child = parent * grid_size + (index // grid_size, index % grid_size). Level-1 coordinates are (0, 0);
    the scale coordinate of level l is l - 1."""
    n = _int("grid_size", grid_size)
    if not isinstance(parent_coords, torch.Tensor) or parent_coords.ndim < 1 or parent_coords.shape[-1] != 2:
        raise UserError("parent_coords must be a (..., 2) tensor of (y, x)")
    index = _check_index(index, parent_coords.shape[:-1], n).to(parent_coords.device)
    offset = torch.stack([index // n, index % n], -1)
    return parent_coords[..., None, :] * n + offset.to(parent_coords.dtype)


def pyramid_boxes(image_hw, indices: list[torch.Tensor], grid_size: int, cell_fraction: float):
    """Absolute boxes of the attended cells at every pyramid level.

    indices[l] holds the (row-major) cells picked at level l + 2 inside each attended cell of level
    l + 1: indices[0] is (B, k1), indices[1] is (B, k1, k2), and so on. Returns one tensor per level:
    [(B, 4) the whole image, (B, k1, 4), (B, k1, k2, 4), ...].
    """
    H, W = _pair("image_hw", image_hw)
    if not indices or not isinstance(indices[0], torch.Tensor) or indices[0].ndim != 2:
        raise UserError("indices must be a non-empty list starting with a (B, k1) tensor")
    first = indices[0]
    whole = torch.tensor([0.0, 0.0, H, W], device=first.device).expand(first.shape[0], 4)
    levels = [whole]
    for index in indices:
        levels.append(select_child_boxes(levels[-1], index, grid_size, cell_fraction))
    return levels


def pyramid_coords(indices: list[torch.Tensor], grid_size: int) -> list[torch.Tensor]:
    """TNet (y, x) grid coordinates per level, shaped like `pyramid_boxes` with 2 instead of 4:
    [(B, 2) zeros, (B, k1, 2), (B, k1, k2, 2), ...], long."""
    if not indices or not isinstance(indices[0], torch.Tensor) or indices[0].ndim != 2:
        raise UserError("indices must be a non-empty list starting with a (B, k1) tensor")
    levels = [torch.zeros(indices[0].shape[0], 2, dtype=torch.long, device=indices[0].device)]
    for index in indices:
        levels.append(child_coords(levels[-1], index, grid_size))
    return levels
