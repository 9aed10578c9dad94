"""core.glimpse against naive per-sample references (loops, pad-and-slice, F.interpolate per crop),
hand-computed TNet/BOED numbers, and input errors."""

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.errors import UserError
from core.glimpse import (
    GridSpec,
    RetinaSensor,
    child_boxes,
    child_coords,
    coverage,
    crop_and_resize,
    extract_patches,
    glimpse_top_left,
    grid_boxes,
    lattice_top_left,
    observation_mask,
    patch_boxes,
    pyramid_boxes,
    pyramid_coords,
    retina,
    select_child_boxes,
)

pytestmark = pytest.mark.unit
TOL = dict(atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------
# Naive references: one sample (and one glimpse) at a time.


def naive_crop(img, r, c, h, w, border=False):
    """img (C, H, W) -> (C, h, w) rows r..r+h-1, cols c..c+w-1 of the zero/edge-padded image."""
    H, W = img.shape[-2:]
    P = abs(r) + abs(c) + h + w + H + W
    padded = F.pad(img[None], (P, P, P, P), mode="replicate" if border else "constant")[0]
    return padded[:, r + P : r + P + h, c + P : c + P + w]


def naive_retina(images, loc, size, num_scales, f):
    out = []
    H, W = images.shape[-2:]
    for b in range(images.shape[0]):
        x, y = loc[b].tolist()
        scales = []
        for i in range(num_scales):
            s = size * f**i
            r = math.floor((y + 1) / 2 * H - s / 2 + 0.5)
            c = math.floor((x + 1) / 2 * W - s / 2 + 0.5)
            patch = naive_crop(images[b], r, c, s, s)
            scales.append(F.avg_pool2d(patch[None], f**i)[0] if i else patch)
        out.append(torch.stack(scales))
    return torch.stack(out)


def naive_patches(images, top_left, hw, border=False):
    return torch.stack([
        torch.stack([naive_crop(images[b], int(r), int(c), *hw, border=border) for r, c in top_left[b]])
        for b in range(images.shape[0])
    ])


def naive_crop_and_resize(images, boxes, out_hw, border=False):
    out = []
    for b in range(images.shape[0]):
        crops = []
        for y0, x0, y1, x1 in boxes[b].long().tolist():
            crop = naive_crop(images[b], y0, x0, y1 - y0, x1 - x0, border=border)
            crops.append(F.interpolate(crop[None], size=out_hw, mode="bilinear", align_corners=False,
                                       antialias=False)[0])
        out.append(torch.stack(crops))
    return torch.stack(out)


def naive_union(boxes, H, W):
    """(H, W) bool canvas painted box by box (integer boxes)."""
    canvas = torch.zeros(H, W, dtype=torch.bool)
    for y0, x0, y1, x1 in boxes.long().tolist():
        canvas[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return canvas


def rand_images(B, C, H, W, seed=0):
    return torch.rand(B, C, H, W, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------
# extract_patches / lattice / observation_mask (BOED)


@pytest.mark.parametrize("border", [False, True])
@pytest.mark.parametrize("B,C,H,W,hw", [
    (3, 2, 13, 17, (5, 5)), (1, 1, 9, 6, (4, 7)), (2, 3, 16, 16, (16, 16)),
])
def test_extract_patches_matches_naive(B, C, H, W, hw, border):
    images = rand_images(B, C, H, W)
    # inside, partly outside on every side, wholly outside, far away
    corners = torch.tensor([[0, 0], [-3, W - 2], [H - 2, -4], [H + 5, 2], [-50, -60], [2, 1]])
    top_left = corners[torch.arange(B * 4) % len(corners)].view(B, 4, 2)
    out = extract_patches(images, top_left, hw if hw[0] != hw[1] else hw[0],
                          padding="border" if border else "zeros")
    assert out.shape == (B, 4, C, *hw)
    torch.testing.assert_close(out, naive_patches(images, top_left, hw, border), **TOL)


def test_extract_patches_keeps_dtype_and_gradients():
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.uint8).view(2, 3, 5, 5)
    out = extract_patches(images, torch.tensor([[[1, 1]], [[4, 4]]]), 2)
    assert out.dtype == torch.uint8
    assert torch.equal(out[0, 0], images[0, :, 1:3, 1:3])
    assert torch.equal(out[1, 0, :, 0, 0], images[1, :, 4, 4]) and out[1, 0, :, 1].eq(0).all()
    x = rand_images(2, 1, 6, 6).requires_grad_()
    extract_patches(x, torch.tensor([[[0, 0]], [[-1, -1]]]), 3).sum().backward()
    assert x.grad[0, 0, :3, :3].eq(1).all() and x.grad[1, 0, :2, :2].eq(1).all() and x.grad.sum() == 13


def test_lattice_top_left_matches_official_linspace():
    lattice = lattice_top_left()
    assert lattice.shape == (2500, 2) and lattice.dtype == torch.long
    coords = [int(c) for c in np.linspace(0, 224 - 16 - 1, 50)]
    expected = torch.tensor([(r, c) for r in coords for c in coords])
    assert torch.equal(lattice, expected)
    assert lattice[0].tolist() == [0, 0] and lattice[1].tolist() == [0, 4]
    assert lattice[-1].tolist() == [207, 207]
    assert lattice[50 * 3 + 7].tolist() == [coords[3], coords[7]]  # index = row_index * n + col_index
    assert torch.equal(lattice_top_left(10, 4, 1), torch.zeros(1, 2, dtype=torch.long))


def test_observation_mask_values():
    images = rand_images(2, 3, 8, 10) + 0.5  # strictly positive, so masked zeros are visible
    top_left = torch.tensor([[[0, 0], [1, 2]], [[-2, 8], [6, 6]]])
    out = observation_mask(images, top_left, 3)
    assert out.shape == (2, 4, 8, 10)
    mask = out[:, 3]
    assert mask[0].sum() == 9 + 9 - 2  # two 3x3 patches overlapping in 2 pixels
    assert mask[1].sum() == 2 + 6  # 1x2 visible corner + 2x3 visible bottom strip
    for b in range(2):
        expected = naive_union(patch_boxes(top_left[b], 3), 8, 10).float()
        assert torch.equal(mask[b], expected)
        assert torch.equal(out[b, :3], images[b] * expected)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    empty = observation_mask(images, torch.zeros(2, 0, 2, dtype=torch.long), 3)
    assert empty.abs().sum() == 0


def test_observation_mask_boed_lattice():
    images = rand_images(2, 3, 224, 224)
    index = torch.tensor([[0, 2499, 1275, 1276, 49], [10, 10, 10, 10, 10]])
    top_left = lattice_top_left()[index]
    out = observation_mask(images, top_left, 16)
    assert out.shape == (2, 4, 224, 224)
    for b in range(2):
        assert torch.equal(out[b, 3], naive_union(patch_boxes(top_left[b], 16), 224, 224).float())
    assert out[1, 3].sum() == 256  # the same glimpse five times covers one patch


# ---------------------------------------------------------------------------------------------------
# retina (WS-RAM)


@pytest.mark.parametrize("B,C,H,W,size,k,f", [
    (4, 1, 20, 20, 4, 3, 2),
    (3, 3, 17, 23, 5, 2, 3),  # odd size, non-square image, factor 3
    (1, 2, 12, 9, 3, 3, 2),  # batch of one; largest scale (12) exceeds the 9-px width
    (2, 1, 10, 10, 2, 2, 1),  # factor 1: every scale identical
])
def test_retina_matches_naive(B, C, H, W, size, k, f):
    images = rand_images(B, C, H, W)
    locs = torch.tensor([[0.0, 0.0], [-1.0, -1.0], [0.99, -0.7], [1.0, 1.0], [-1.6, 0.3], [0.1234, -0.5678]])
    loc = locs[torch.arange(B) % len(locs)]
    out = retina(images, loc, size, k, f)
    assert out.shape == (B, k, C, size, size) and out.dtype == images.dtype
    torch.testing.assert_close(out, naive_retina(images, loc, size, k, f), **TOL)


def test_retina_random_locations_and_far_outside():
    images = rand_images(8, 2, 28, 28)
    loc = torch.rand(8, 2, generator=torch.Generator().manual_seed(1)) * 2.4 - 1.2
    torch.testing.assert_close(retina(images, loc, 6, 3), naive_retina(images, loc, 6, 3, 2), **TOL)
    far = retina(images[:2], torch.tensor([[5.0, 5.0], [-9.0, 0.0]]), 4, 2)
    assert far.abs().sum() == 0


@pytest.mark.parametrize("C,H,W,size,k,f", [
    (1, 60, 60, 12, 3, 2),  # WS-RAM's cpu sensor
    (3, 17, 23, 5, 2, 3),  # odd size: the scales round their centres differently
    (2, 12, 9, 3, 3, 2),  # largest scale (12) exceeds the 9-px width
])
def test_retina_sensor_matches_retina_at_the_chosen_scale(C, H, W, size, k, f):
    images = rand_images(4, C, H, W)
    gen = torch.Generator().manual_seed(2)
    N = 40
    loc = torch.rand(N, 2, generator=gen) * 2 - 1
    loc[:4] = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [0.0, 0.0]])  # corners: widest overhang
    scale = torch.randint(k, (N,), generator=gen)
    index = torch.randint(4, (N,), generator=gen)
    out = RetinaSensor(images, size, k, f)(loc, scale, index)
    full = retina(images[index], loc, size, k, f)  # (N, k, C, size, size)
    assert out.shape == (N, C, size, size) and out.dtype == images.dtype
    torch.testing.assert_close(out, full[torch.arange(N), scale], **TOL)


def test_retina_sensor_reads_zeros_off_the_image_and_carries_gradients():
    images = rand_images(2, 1, 16, 16).requires_grad_()
    sensor = RetinaSensor(images, 4, 2)
    far = torch.tensor([[5.0, 5.0], [-9.0, 0.0], [1.3, -1.2]])
    scale, index = torch.tensor([1, 0, 1]), torch.tensor([0, 1, 1])
    out = sensor(far, scale, index)
    assert out[:2].abs().sum() == 0  # wholly off the image
    torch.testing.assert_close(out[2], naive_retina(images[1:].detach(), far[2:], 4, 2, 2)[0, 1], **TOL)
    sensor(torch.zeros(2, 2), scale[:2]).sum().backward()
    assert images.grad[0].sum().item() == pytest.approx(16.0)  # 16 pooled pixels, each a mean of 4


def test_retina_hand_values():
    image = torch.arange(64.0).view(1, 1, 8, 8)  # value = 8 * row + col
    out = retina(image, torch.tensor([[0.0, 0.0]]), 2, 2)  # centre u = 4: the corner between pixels 3 and 4
    assert out[0, 0, 0].tolist() == [[27.0, 28.0], [35.0, 36.0]]
    # scale 1: rows/cols 2..5, 2x2 block means
    assert out[0, 1, 0].tolist() == [[22.5, 24.5], [38.5, 40.5]]
    # odd size at the left/top edge: centre pixel (0, 0), one zero row and column
    edge = retina(image, torch.tensor([[-1.0, -1.0]]), 3, 1)[0, 0, 0]
    assert edge.tolist() == [[0, 0, 0], [0, 0, 1], [0, 8, 9]]


def test_glimpse_top_left_convention():
    # u = 3.7 on a 10-px axis: loc = 2u/W - 1
    loc = torch.tensor([[2 * 3.7 / 10 - 1, 2 * 0.2 / 10 - 1]])
    assert glimpse_top_left(loc, 3, 10).tolist() == [[-1, 2]]  # odd: centre pixels 0 (row) and 3 (col)
    assert glimpse_top_left(loc, 4, 10).tolist() == [[-2, 2]]  # even: centre corners 0 and round(3.7) = 4
    assert glimpse_top_left(torch.tensor([0.0, 0.0]), (5, 4), (9, 8)).tolist() == [2, 2]


# ---------------------------------------------------------------------------------------------------
# crop_and_resize (TNet)


@pytest.mark.parametrize("border", [False, True])
def test_crop_and_resize_matches_interpolate(border):
    images = rand_images(3, 3, 20, 31)
    boxes = torch.tensor([
        [[0, 0, 20, 31], [2, 3, 9, 17], [-4, -5, 6, 8], [15, 25, 40, 44]],  # whole, inside, partly outside
        [[5, 5, 6, 6], [-30, -30, -10, -10], [0, 20, 20, 31], [3, 3, 14, 6]],  # 1 px, wholly outside, thin
        [[1, 1, 8, 8], [10, 0, 30, 31], [0, 0, 4, 4], [7, 9, 19, 30]],
    ], dtype=torch.float32)
    for out_size in (7, (5, 9), 24):  # downsampling, mixed, upsampling
        out = crop_and_resize(images, boxes, out_size, padding="border" if border else "zeros")
        hw = out_size if isinstance(out_size, tuple) else (out_size, out_size)
        assert out.shape == (3, 4, 3, *hw)
        torch.testing.assert_close(out, naive_crop_and_resize(images, boxes, hw, border), **TOL)


@pytest.mark.parametrize("border", [False, True])
def test_crop_and_resize_equal_sized_boxes_match_interpolate(border):
    """Boxes of one size take the single-F.interpolate path; check it like the general one."""
    images = rand_images(2, 3, 14, 19)
    corners = torch.tensor([[[0, 0], [-5, 10], [8, -3]], [[-40, 0], [3, 4], [6, 12]]])
    boxes = torch.cat([corners, corners + torch.tensor([12, 9])], -1)
    for out_hw in ((5, 4), (12, 9), (20, 31)):
        out = crop_and_resize(images, boxes, out_hw, padding="border" if border else "zeros")
        torch.testing.assert_close(out, naive_crop_and_resize(images, boxes, out_hw, border), **TOL)


def test_crop_and_resize_batch_of_one_long_boxes_and_identity():
    images = rand_images(1, 2, 11, 13)
    boxes = torch.tensor([[[2, 3, 9, 10], [-2, 8, 5, 15]]])
    out = crop_and_resize(images, boxes, 7)
    assert torch.equal(out[0, 0], images[0, :, 2:9, 3:10])  # same size: an exact copy
    torch.testing.assert_close(out, naive_patches(images, boxes[..., :2], (7, 7)), **TOL)
    x = images.clone().requires_grad_()
    crop_and_resize(x, boxes, 3).sum().backward()
    assert x.grad.abs().sum() > 0
    assert crop_and_resize(images, torch.zeros(1, 0, 4), 5).shape == (1, 0, 2, 5, 5)


def test_crop_and_resize_float64():
    images = rand_images(2, 1, 15, 15).double()
    boxes = torch.tensor([[[0, 0, 15, 15]], [[-3, 2, 10, 12]]])
    out = crop_and_resize(images, boxes, 6)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, naive_crop_and_resize(images, boxes, (6, 6)), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------------
# TNet grids and pyramid


def test_tnet_imagenet_grid_numbers():
    spec = GridSpec.from_fraction(224, 5, 0.34375)
    assert spec.cell_hw == (77, 77) and spec.stride_hw == (37, 37)
    assert spec.padded_hw == (225, 225) and spec.pad_before == (1, 1)
    boxes = grid_boxes(224, 5, 77, 37)
    assert boxes.shape == (25, 4) and boxes.dtype == torch.float32
    assert torch.equal(boxes, spec.boxes())
    starts = [-1, 36, 73, 110, 147]
    expected = torch.tensor([[r, c, r + 77, c + 77] for r in starts for c in starts], dtype=torch.float32)
    assert torch.equal(boxes, expected)
    assert boxes[:, 2:].max() == 224  # the last cell ends exactly at the image edge


def test_tnet_crops_equal_padded_unfold():
    """Cropping all 25 cells equals TF's extract_patches on the image padded 224 -> 225 (1 px before)."""
    image = rand_images(1, 1, 224, 224)
    boxes = GridSpec.from_fraction(224, 5, 0.34375).boxes()[None]
    crops = crop_and_resize(image, boxes, 77)
    unfolded = F.pad(image, (1, 0, 1, 0)).unfold(2, 77, 37).unfold(3, 77, 37)  # (1, 1, 5, 5, 77, 77)
    assert torch.equal(crops[0, :, 0], unfolded[0, 0].reshape(25, 77, 77))


def test_fmow_grid_numbers():
    for size in (448, 896):
        spec = GridSpec.from_fraction(size, 3, 0.5)
        assert spec == GridSpec.from_overlap(size, 3, 0.5)
        assert spec.cell_hw == (size // 2,) * 2 and spec.stride_hw == (size // 4,) * 2
        assert spec.pad_before == (0, 0) and spec.padded_hw == (size, size)
        boxes = spec.boxes()
        starts = [0, size // 4, size // 2]
        assert torch.equal(boxes, torch.tensor([[r, c, r + size // 2, c + size // 2]
                                                for r in starts for c in starts], dtype=torch.float32))
        # neighbouring cells overlap by half a cell
        assert boxes[0, 3] - boxes[1, 1] == (boxes[0, 3] - boxes[0, 1]) / 2


def test_non_square_grid_and_plain_grid_boxes():
    spec = GridSpec.from_fraction((100, 60), 3, 0.5)
    assert spec.cell_hw == (50, 30) and spec.stride_hw == (25, 15)
    boxes = grid_boxes((10, 12), 2, (4, 6), (3, 5))  # grid smaller than the image: anchored at 0
    assert boxes.tolist() == [[0, 0, 4, 6], [0, 5, 4, 11], [3, 0, 7, 6], [3, 5, 7, 11]]
    odd = GridSpec((10, 10), 3, 5, 3)  # 2 * 3 + 5 = 11 -> 1 px padding, before
    assert odd.pad_before == (1, 1) and odd.boxes()[0].tolist() == [-1, -1, 4, 4]
    assert GridSpec((10, 10), 2, 5, 2).pad_before == (0, 0)  # 7 < 10: no padding
    assert GridSpec((8, 8), 2, 5, 5).pad_before == (1, 1)  # total padding 2: 1 before, 1 after


def test_pyramid_boxes_imagenet_three_levels():
    idx2 = torch.tensor([[0, 24, 12]])  # top-left, bottom-right and centre cells
    idx3 = torch.tensor([[[0, 6], [24, 24], [12, 0]]])
    level1, level2, level3 = pyramid_boxes(224, [idx2, idx3], 5, 0.34375)
    assert level1.tolist() == [[0, 0, 224, 224]]
    assert level2.tolist() == [[[-1, -1, 76, 76], [147, 147, 224, 224], [73, 73, 150, 150]]]
    # level 3 inside a 77-px cell: cell round(77 * 0.34375) = 26, stride ceil(51 / 4) = 13, 1 px pad before
    assert level3.tolist() == [[
        [[-2, -2, 24, 24], [11, 11, 37, 37]],  # cells (0, 0) and (1, 1) of the parent at -1
        [[198, 198, 224, 224], [198, 198, 224, 224]],  # cell (4, 4) of the parent at 147: 146 + 52
        [[98, 98, 124, 124], [72, 72, 98, 98]],  # centre (2, 2) and (0, 0) of the parent at 73
    ]]
    coords = pyramid_coords([idx2, idx3], 5)
    assert coords[0].tolist() == [[0, 0]]
    assert coords[1].tolist() == [[[0, 0], [4, 4], [2, 2]]]
    assert coords[2].tolist() == [[[[0, 0], [1, 1]], [[24, 24], [24, 24]], [[12, 12], [10, 10]]]]


def test_pyramid_boxes_fmow_and_batch():
    idx2 = torch.tensor([[4], [2]])
    idx3 = torch.tensor([[[4]], [[6]]])
    _, level2, level3 = pyramid_boxes(896, [idx2, idx3], 3, 0.5)
    assert level2.tolist() == [[[224, 224, 672, 672]], [[0, 448, 448, 896]]]
    assert level3.tolist() == [[[[336, 336, 560, 560]]], [[[224, 448, 448, 672]]]]
    assert child_boxes(torch.tensor([0.0, 0.0, 448.0, 448.0]), 3, 0.5).shape == (9, 4)


def test_child_boxes_agree_with_gridspec_for_many_parent_sizes():
    """The tensor recursion and GridSpec.from_fraction round and pad identically (half to even:
    round(0.25 * 10) = 2, round(0.25 * 14) = 4) for every parent size."""
    for fraction in (0.34375, 0.5, 0.25, 0.46):
        for n in (2, 3, 5):
            sizes = torch.arange(8, 90)
            parents = torch.stack([sizes * 0 + 3, sizes * 0 - 2, sizes + 3, 2 * sizes - 2], -1).double()
            children = child_boxes(parents, n, fraction)
            for parent, got in zip(parents.long().tolist(), children, strict=True):
                spec = GridSpec.from_fraction((parent[2] - parent[0], parent[3] - parent[1]), n, fraction)
                expected = spec.boxes(dtype=torch.float64) + torch.tensor(parent[:2] * 2).double()
                assert torch.equal(got, expected), (parent, n, fraction)
    assert GridSpec.from_fraction(10, 3, 0.25).cell_hw == (2, 2)
    assert GridSpec.from_fraction(14, 3, 0.25).cell_hw == (4, 4)


def test_child_coords_and_select():
    assert child_coords(torch.tensor([1, 2]), torch.tensor([7]), 5).tolist() == [[6, 12]]
    parents = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    chosen = select_child_boxes(parents, torch.tensor([[5, 0]]), 3, 0.5)
    # rows: cell 5, stride ceil(5 / 2) = 3, 2 * 3 + 5 = 11 -> 1 px pad before; cols: cell 10, stride 5
    assert chosen.tolist() == [[[2, 10, 7, 20], [-1, 0, 4, 10]]]


def test_recursive_crop_matches_absolute_boxes_inside_parent():
    """A child cell inside its parent gives the same pixels whether cropped from the full-resolution
    parent crop (TNet's recursion) or from the image at its absolute box."""
    image = rand_images(1, 2, 224, 224)
    parent = torch.tensor([[[36.0, 73.0, 113.0, 150.0]]])
    parent_crop = crop_and_resize(image, parent, 77)[:, 0]  # full resolution
    relative = GridSpec.from_fraction(77, 5, 0.34375).boxes()[None, [12, 18]]
    absolute = select_child_boxes(parent[:, 0], torch.tensor([[12, 18]]), 5, 0.34375)
    torch.testing.assert_close(crop_and_resize(parent_crop, relative, 20),
                               crop_and_resize(image, absolute, 20), **TOL)


# ---------------------------------------------------------------------------------------------------
# coverage


def test_coverage_hand_values():
    boxes = torch.tensor([
        [[0, 0, 5, 5], [3, 3, 8, 8]],  # 25 + 25 - 4 overlap
        [[-2, -2, 3, 3], [-2, -2, 3, 3]],  # clipped to 3x3, duplicate counted once
        [[20, 20, 30, 30], [0, 0, 10, 10]],  # outside + whole image
        [[0, 0, 0, 5], [4, 4, 5, 5]],  # empty box + single pixel
    ], dtype=torch.float32)
    cov = coverage(boxes, 10)
    torch.testing.assert_close(cov, torch.tensor([0.46, 0.09, 1.0, 0.01]), **TOL)
    assert coverage(torch.zeros(2, 0, 4), (4, 6)).tolist() == [0.0, 0.0]
    # fractional boxes: exact area, (0.5..2.5) x (0..4) and (1.5..3) x (1..5) on a 4x6 image
    frac = coverage(torch.tensor([[[0.5, 0.0, 2.5, 4.0], [1.5, 1.0, 3.0, 5.0]]]), (4, 6))
    assert frac.item() == pytest.approx((8 + 6 - 1 * 3) / 24)
    assert coverage(torch.tensor([[[0, 0, 2, 20]]]), (10, 20)).item() == pytest.approx(0.2)  # long boxes


def test_coverage_matches_naive_union():
    g = torch.Generator().manual_seed(3)
    y0 = torch.randint(-10, 30, (5, 7, 2), generator=g)
    size = torch.randint(1, 15, (5, 7, 2), generator=g)
    boxes = torch.cat([y0, y0 + size], -1)
    cov = coverage(boxes, (24, 37))
    expected = torch.stack([naive_union(b, 24, 37).float().mean() for b in boxes])
    torch.testing.assert_close(cov, expected, **TOL)


# ---------------------------------------------------------------------------------------------------
# errors


IMG = torch.zeros(2, 1, 8, 8)
TL = torch.zeros(2, 1, 2, dtype=torch.long)
BOX = torch.tensor([[[0, 0, 4, 4]], [[0, 0, 4, 4]]])


@pytest.mark.parametrize("call", [
    lambda: retina(torch.zeros(1, 8, 8), torch.zeros(1, 2), 2, 1),  # wrong ndim
    lambda: retina(IMG, torch.zeros(2, 2), 0, 1),  # size <= 0
    lambda: retina(IMG, torch.zeros(2, 2), 2, 0),  # num_scales <= 0
    lambda: retina(IMG, torch.zeros(2, 2), 2, 1, scale_factor=0),
    lambda: retina(IMG, torch.zeros(2, 2), 2.5, 1),  # non-integer size
    lambda: retina(IMG, torch.zeros(2, 2), True, 1),  # bool is not a size
    lambda: retina(IMG, torch.zeros(3, 2), 2, 1),  # batch mismatch
    lambda: retina(IMG, torch.zeros(2, 3), 2, 1),
    lambda: retina(IMG.long(), torch.zeros(2, 2), 2, 1),  # integer images cannot be averaged
    lambda: extract_patches(IMG, TL.float(), 2),  # float corners
    lambda: extract_patches(IMG, torch.zeros(2, 1, 3, dtype=torch.long), 2),
    lambda: extract_patches(IMG, TL, -1),
    lambda: extract_patches(IMG, TL, (2, 2, 2)),
    lambda: extract_patches(IMG, TL, 2, padding="reflect"),
    lambda: extract_patches(IMG[0], TL, 2),
    lambda: crop_and_resize(IMG, BOX.float() + 0.5, 4),  # non-integer box
    lambda: crop_and_resize(IMG, torch.tensor([[[0, 0, 0, 4]], [[0, 0, 4, 4]]]), 4),  # empty box
    lambda: crop_and_resize(IMG, BOX[..., :3], 4),
    lambda: crop_and_resize(IMG, BOX, 0),
    lambda: observation_mask(IMG, TL[0], 2),
    lambda: observation_mask(IMG, TL, 0),
    lambda: coverage(torch.zeros(2, 4), 8),
    lambda: coverage(BOX, 0),
    lambda: GridSpec.from_fraction(224, 5, 0.0),
    lambda: GridSpec.from_fraction(224, 0, 0.5),
    lambda: GridSpec.from_overlap(224, 3, 1.0),
    lambda: GridSpec((10, 10), 3, 4, 0),  # zero stride
    lambda: grid_boxes(-1, 3, 4, 2),
    lambda: lattice_top_left(16, 16, 50),
    lambda: select_child_boxes(torch.zeros(1, 4), torch.tensor([[25]]), 5, 0.3),  # index out of range
    lambda: child_coords(torch.zeros(1, 2), torch.tensor([[0.5]]), 5),
    lambda: child_boxes(torch.zeros(1, 3), 5, 0.3),
    lambda: pyramid_boxes(224, [], 5, 0.3),
    lambda: pyramid_coords([torch.zeros(3, dtype=torch.long)], 5),
    lambda: glimpse_top_left(torch.zeros(2, 3), 4, 8),
])
def test_bad_inputs_raise_user_error(call):
    with pytest.raises(UserError):
        call()


# ---------------------------------------------------------------------------------------------------
# device equality and speed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_gpu_agree():
    images = rand_images(4, 3, 40, 52)
    loc = torch.rand(4, 2, generator=torch.Generator().manual_seed(5)) * 2.2 - 1.1
    top_left = torch.tensor([[[-5, 3], [30, 40]]] * 4)
    uniform = torch.tensor([[[-3, -3, 20, 30], [10, 12, 33, 45]]] * 4)
    mixed = torch.tensor([[[-3, -3, 20, 30], [10, 12, 40, 52]]] * 4)
    ops = {
        "retina even": lambda x, d: retina(x, loc.to(d), 6, 3),
        "retina odd": lambda x, d: retina(x, loc.to(d), 5, 3),
        "crop uniform": lambda x, d: crop_and_resize(x, uniform.to(d), 13),
        "crop mixed": lambda x, d: crop_and_resize(x, mixed.to(d), 13),
        "crop border": lambda x, d: crop_and_resize(x, uniform.to(d), 13, padding="border"),
        "crop mixed border": lambda x, d: crop_and_resize(x, mixed.to(d), 13, padding="border"),
        "patches": lambda x, d: extract_patches(x, top_left.to(d), 16),
        "patches border": lambda x, d: extract_patches(x, top_left.to(d), 16, padding="border"),
        "top left": lambda x, d: glimpse_top_left(loc.to(d), 7, (40, 52)),
        "mask": lambda x, d: observation_mask(x, top_left.to(d), 16),
        "lattice": lambda x, d: lattice_top_left(device=d),
        "child boxes": lambda x, d: child_boxes(uniform.to(d).double(), 3, 0.5),
        "child coords": lambda x, d: child_coords(torch.zeros(4, 2, 2, device=d), torch.tensor(
            [[[1], [7]]] * 4, device=d), 3),
        "coverage": lambda x, d: coverage(mixed.to(d), (40, 52)),
        "pyramid": lambda x, d: pyramid_boxes(224, [torch.tensor([[3, 7]], device=d)], 5, 0.34375)[1],
    }
    for name, op in ops.items():
        cpu, gpu = op(images, "cpu"), op(images.cuda(), "cuda")
        assert gpu.is_cuda, name
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-6, rtol=0, msg=name)


def _best_time(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.slow
def test_vectorised_ops_beat_per_sample_references_at_batch_64():
    """The vectorised ops against the per-sample reference loops above (RAM, TNet and BOED shapes)."""
    torch.set_num_threads(1)
    mnist = rand_images(64, 1, 100, 100)
    loc = torch.rand(64, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rgb = rand_images(64, 3, 224, 224)
    boxes = GridSpec.from_fraction(224, 5, 0.34375).boxes()[torch.arange(64 * 3) % 25].view(64, 3, 4)
    top_left = lattice_top_left()[torch.arange(64 * 5).view(64, 5) * 7]
    cases = {
        "retina": (lambda: naive_retina(mnist, loc, 12, 3, 2), lambda: retina(mnist, loc, 12, 3)),
        "crop_and_resize": (lambda: naive_crop_and_resize(rgb, boxes, (77, 77)),
                            lambda: crop_and_resize(rgb, boxes, 77)),
        "extract_patches": (lambda: naive_patches(rgb, top_left, (16, 16)),
                            lambda: extract_patches(rgb, top_left, 16)),
    }
    for name, (naive, vectorised) in cases.items():
        speedup = _best_time(naive) / _best_time(vectorised)
        assert speedup >= 20, f"{name} only {speedup:.1f}x faster than the per-sample loop"
