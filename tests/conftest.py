"""Fixtures shared by several test files, and the tier of every test."""

import json
import math
from pathlib import Path

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


@pytest.fixture
def training_log():
    """read(run_dir) -> (stages in the order they first logged, highest step): a run's metrics.jsonl, after
    checking that it logged a loss and that every logged loss is finite (a staged paper tags each record with
    its stage; a single-stage run's only stage is None)."""
    def read(run_dir):
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if "loss" in r]
        assert losses and all(math.isfinite(x) for x in losses), losses
        return list(dict.fromkeys(r.get("stage") for r in records)), max(r["step"] for r in records)
    return read


TIERS = ("unit", "smoke", "slow")


def pytest_collection_modifyitems(items):
    """Every test has a tier: one marked unit, smoke or slow (by itself or by its file's `pytestmark`) keeps
    it, any other is a unit test. A test that runs for seconds must say smoke, for minutes slow: only the
    marker keeps it out of the default tier (`-m "not slow"`)."""
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)
