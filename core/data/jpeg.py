"""JPEG decoding at reduced size for crops far smaller than the file (issue #18: feeding a GPU).

A JPEG can be decoded at 1/2, 1/4 or 1/8 of its size for a fraction of the full cost (PIL's draft mode
scales the DCT blocks). An Inception-style training crop of a 500 x 375 ImageNet photo resized to 77 or
224 px rarely needs every source pixel: `decode_crop` draws the crop box on the file's full size (read
from its header, so the box distribution is the same as after a full decode), decodes at the largest
reduction that still leaves the box at least the output size, and returns the box's pixels at that scale.
The pixels differ from a full decode followed by an antialiased resize by the DCT-domain filter, so a
pipeline that switches to it is a different (faster) pipeline, not the same one.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from core.data.sources import pil_to_tensor
from core.errors import UserError

Box = tuple[int, int, int, int]


def decode_crop(source: str | Path | bytes, out_hw: tuple[int, int], box_fn: Callable[[int, int], Box],
                channels: int = 3) -> tuple[torch.Tensor, int]:
    """(float (channels, h', w') in [0, 1] of the box, the decode reduction 1/2/4/8).

    box_fn(height, width) -> (top, left, h, w) picks the crop on the full-size image. The reduction is the
    largest DCT scale keeping the box at least out_hw (h' >= out_h and w' >= out_w, up to the rounding of
    the scaled box edges); 1 for non-JPEG files, where draft mode does nothing.
    """
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(data) as image:
            width, height = image.size
            top, left, h, w = box_fn(height, width)
            need = max(out_hw[0] / h, out_hw[1] / w)  # the fraction of the file's resolution the crop needs
            if image.format == "JPEG" and need <= 0.5:
                mode = "RGB" if channels == 3 else "L"
                image.draft(mode, (math.ceil(width * need), math.ceil(height * need)))
            # Reduced pixel i covers source pixels [i * factor, (i + 1) * factor); sizes round up.
            factor = next(f for f in (8, 4, 2, 1) if -(-width // f) == image.size[0])
            image.load()
            pixels = pil_to_tensor(image, channels)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        name = "<bytes>" if isinstance(source, bytes) else source
        raise UserError(f"cannot decode image {name}: {e}") from e
    # The box in reduced pixels: edges rounded outwards so no needed source pixel is lost.
    y0, x0 = top // factor, left // factor
    y1, x1 = -(-(top + h) // factor), -(-(left + w) // factor)
    return pixels[:, y0:y1, x0:x1], factor
