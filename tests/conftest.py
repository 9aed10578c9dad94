"""Fixtures shared by several test files."""

import pytest
import torch
from PIL import Image


@pytest.fixture
def tiny_imagenet(tmp_path):
    """An ImageNet-like image folder made here for the paper-scale configs: <root>/{train,validation}/
    class<c>/<i>.png, 4 classes x 2 random 300 x 250 RGB images per split (resized and cropped to 224 px)."""
    root = tmp_path / "data"
    for split in ("train", "validation"):
        for c in range(4):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(2):
                pixels = torch.randint(0, 255, (250, 300, 3), dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root
