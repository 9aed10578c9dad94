"""Saccader's official ImageNet input pipeline (google-research/saccader/data_provider.py:
`preprocess_imagenet`, `_random_crop`, `_center_crop`, `standardize_image`), step by step on float images
(C, H, W) in [0, 1].

Paper scale only: the CPU digit-pairs task has its own made canvases (data.py).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from core.data import tf_image

# `_MEAN_RGB_DICT` / `_STDDEV_RGB_DICT`["imagenet"], "after normalizing to 0 - 1 range".
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)


def standardize(image: torch.Tensor) -> torch.Tensor:
    """`standardize_image`: (x - mean) / std per RGB channel (a grey image: the channels' averages, ours)."""
    mean, std = torch.tensor(MEAN_RGB), torch.tensor(STDDEV_RGB)
    if image.shape[0] == 1:
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    return torch.sub(image, mean[:, None, None]).div_(std[:, None, None])


def center_crop_box(height: int, width: int, size: int, crop_padding: int) -> tuple[int, int, int]:
    """`_center_crop`'s window (top, left, side): side int(size / (size + padding) * min(H, W)), offsets
    ((H - side) + 1) // 2."""
    side = int(size / (size + crop_padding) * min(height, width))
    return (height - side + 1) // 2, (width - side + 1) // 2, side


class TrainTransform:
    """`preprocess_imagenet_for_train`: `_random_crop` (sample_distorted_bounding_box of the whole image:
    >= 10% covered, aspect 3/4-4/3, area 8-100%, 100 attempts) resized by tf.image.resize_bicubic (TF1),
    `standardize_image`, then tf.image.random_flip_left_right."""

    def __init__(self, size: int = 224):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        top, left, h, w = tf_image.sample_distorted_bounding_box(
            *image.shape[-2:], min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0), max_attempts=100)
        image = tf_image.resize(image[:, top:top + h, left:left + w], (self.size, self.size),
                                "legacy_bicubic")
        image = standardize(image)
        return image.flip(-1) if torch.rand(()) < 0.5 else image


class EvalTransform:
    """`preprocess_imagenet_for_eval` (crop=True): the central square of side size / (size + size // 10)
    of the shorter side (224 / 246), resized by tf.image.resize_bicubic, then `standardize_image`."""

    def __init__(self, size: int = 224):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        top, left, side = center_crop_box(*image.shape[-2:], self.size, self.size // 10)
        image = tf_image.resize(image[:, top:top + side, left:left + side], (self.size, self.size),
                                "legacy_bicubic")
        return standardize(image)


class BackgroundShift(Dataset):
    """`preprocess_imagenet`: "Reserve label 0 for background", label + 1 (num_classes = 1001)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label, *rest = self.dataset[i]
        return (image, label + 1, *rest)
