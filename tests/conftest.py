"""Fixtures shared by several test files, and the tier of every test."""

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


TIERS = ("unit", "smoke", "slow")


def pytest_collection_modifyitems(items):
    """Every test has a tier: one marked unit, smoke or slow (by itself or by its file's `pytestmark`) keeps
    it, any other is a unit test. A test that runs for seconds must say smoke, for minutes slow: only the
    marker keeps it out of the default tier (`-m "not slow"`)."""
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)
