"""TNet's official input pipeline (Tpap/TNet, ImageNet/input_imagenet.py: `distort_image`, `distort_color`,
`preprocess_image`), step by step on float images (C, H, W) in [0, 1] -> (C, size, size) in [-1, 1].

Paper scale only: the CPU digits task has its own made canvases (train.py).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from core.data import tf_image

# `distort_image`: "Select a resize method randomly" among these eight, antialias=False.
RESIZE_METHODS = ("bilinear", "lanczos3", "lanczos5", "bicubic", "gaussian", "nearest", "area",
                  "mitchellcubic")
# `distort_color`: the four fixed orders (0-3); case 4 returns the image undistorted.
COLOR_ORDERS = (("brightness", "saturation", "hue", "contrast"),
                ("saturation", "brightness", "contrast", "hue"),
                ("contrast", "hue", "brightness", "saturation"),
                ("hue", "saturation", "contrast", "brightness"))
COLOR_RANGES = {"brightness": (-32 / 255, 32 / 255), "saturation": (0.5, 1.5), "hue": (-0.2, 0.2),
                "contrast": (0.5, 1.5)}


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


def distort_color(image: torch.Tensor, ordering: int) -> torch.Tensor:
    """`distort_color(image, color_ordering)`: brightness +-32/255, saturation and contrast x[0.5, 1.5],
    hue +-0.2, in the given order, clipped to [0, 1] at the end; ordering 4 = unchanged. Grey images get
    brightness and contrast only (TF's HSV ops need RGB)."""
    if ordering == 4:
        return image
    names = [name for name in COLOR_ORDERS[ordering]
             if image.shape[0] == 3 or name in ("brightness", "contrast")]
    drawn = {name: _uniform(*COLOR_RANGES[name]) for name in names}  # in order, as each op draws in its turn
    steps = []  # saturation and hue next to each other (orderings 0 and 3) commute: one HSV round trip
    for name in names:
        if steps and {steps[-1], name} == {"saturation", "hue"}:
            steps[-1] = "saturation_and_hue"
        else:
            steps.append(name)
    for step in steps:
        image = getattr(tf_image, f"adjust_{step}")(image, *(drawn[name] for name in step.split("_and_")))
    return image.clamp_(0, 1)  # "The random_* ops do not necessarily clamp" (in place: the last op's output)


class TrainTransform:
    """`distort_image` then [-1, 1] (`preprocess_image`): a crop from sample_distorted_bounding_box
    (covering >= 10% of one of the object boxes, fMoW's, or of the whole image without any; aspect 0.5-2;
    area 85-100%; 50 attempts), resized to size x size with one of `RESIZE_METHODS` at random
    (antialias=False), a random left-right flip, then `distort_color` with an ordering drawn from 0-4
    (4: no distortion, 20%)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor, boxes: Sequence[Sequence[float]] = ()) -> torch.Tensor:
        top, left, h, w = tf_image.sample_distorted_bounding_box(
            *image.shape[-2:], boxes, min_object_covered=0.1, aspect_ratio_range=(0.5, 2.0),
            area_range=(0.85, 1.0), max_attempts=50)
        method = RESIZE_METHODS[int(torch.randint(len(RESIZE_METHODS), ()))]
        image = tf_image.resize(image[:, top:top + h, left:left + w], (self.size, self.size), method)
        if torch.rand(()) < 0.5:  # tf.image.random_flip_left_right
            image = image.flip(-1)
        image = distort_color(image, int(torch.randint(5, ())))
        return image.mul_(2).sub_(1)  # "Transform image values from range [0, 1], to [-1, 1]" (in place)


class EvalTransform:
    """`preprocess_image` for evaluation: the whole image resized to size x size, BILINEAR, antialias=False
    (no crop), then [-1, 1]."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=False)[0]
        return image * 2 - 1


def read_boxes(folder: str | Path, split: str) -> dict[str, list[tuple[float, ...]]]:
    """`split`'s object boxes from a prepared fMoW folder's boxes.csv (core.data.prepare), by
    "<category>/<file name>"; {} without the file."""
    path = Path(folder) / "boxes.csv"
    boxes = defaultdict(list)
    if path.is_file():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row["split"] == split:
                    coords = ("ymin", "xmin", "ymax", "xmax")
                    boxes[row["file_name"]].append(tuple(float(row[k]) for k in coords))
    return dict(boxes)


class BoxedTrainSet(Dataset):
    """fMoW training images with `TrainTransform` constrained by each image's boxes (input_fMoW.py
    `distort_image(..., bbox)`), the boxes found by the image's "<category>/<file name>"."""

    def __init__(self, dataset, boxes: dict[str, list[tuple[float, ...]]], transform: TrainTransform):
        self.dataset, self.boxes, self.transform = dataset, boxes, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        # "<category>/<file name>" from the label's class: a packed dataset (core.data.pack) keeps only the
        # file's name, the folder its path.
        name = Path(self.dataset.data[i][self.dataset.image_column]["path"]).name
        return self.transform(image, self.boxes.get(f"{self.dataset.classes[label]}/{name}", ())), label
