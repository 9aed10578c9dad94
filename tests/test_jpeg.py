"""core/data/jpeg.py: reduced-size JPEG decoding for crops far smaller than the file."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.jpeg import decode_crop
from core.errors import UserError


def _jpeg(width=500, height=375, fmt="JPEG") -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.unit
@pytest.mark.parametrize("width, height", [(500, 375), (375, 500), (333, 501)])
def test_draft_decode_returns_the_box_at_the_largest_reduction_that_keeps_the_output_size(width, height):
    data = _jpeg(width, height)
    whole = lambda h, w: (0, 0, h, w)  # noqa: E731
    crop, factor = decode_crop(data, (77, 77), whole)
    assert factor == 4 and crop.shape[0] == 3  # 1/8 would leave fewer than 77 px on the short side
    assert min(crop.shape[1:]) >= 77 and crop.shape[1:] == (-(-height // 4), -(-width // 4))
    crop, factor = decode_crop(data, (224, 224), lambda h, w: (10, 20, h // 2, w // 2))
    assert factor == 1 and crop.shape[1:] == (height // 2, width // 2)  # a 224 px crop of half: full decode
    crop, factor = decode_crop(data, (40, 40), lambda h, w: (31, 45, 200, 180))
    assert factor == 4 and min(crop.shape[1:]) >= 40
    full = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1) / 255
    # The reduced decode is the box at lower resolution: its mean colour matches the full decode's box.
    box = full[:, 31 // 4 * 4:-(-(31 + 200) // 4) * 4, 45 // 4 * 4:-(-(45 + 180) // 4) * 4]
    assert torch.allclose(crop.mean((1, 2)), box.mean((1, 2)), atol=0.02)


@pytest.mark.unit
def test_non_jpeg_files_decode_in_full_and_bad_files_are_user_errors():
    crop, factor = decode_crop(_jpeg(fmt="PNG"), (77, 77), lambda h, w: (0, 0, h, w))
    assert factor == 1 and crop.shape == (3, 375, 500)
    with pytest.raises(UserError, match="cannot decode"):
        decode_crop(_jpeg()[:200], (77, 77), lambda h, w: (0, 0, h, w))
