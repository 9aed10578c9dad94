"""Real image datasets as torch Datasets yielding (float image (C, H, W) in [0, 1], label):
`HFImageDataset` over a Hugging Face `datasets.Dataset` (hub cache or local imagefolder) and
`IDXDataset` over an MNIST-layout IDX folder. Both decode and convert channels explicitly, so a
grayscale file in an RGB dataset (common in ImageNet) or a corrupt file is handled, not silently
mis-shaped, and every bad input is a one-line `UserError` naming the culprit.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from core.errors import UserError

from .mnist import load_idx_folder
from .transforms import resize

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, what PIL's convert("L") uses
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16-bit PNGs open as one of these

Transform = Callable[[torch.Tensor], torch.Tensor]


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels}")


def pil_to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """A PIL image as float (channels, H, W) in [0, 1]: colour -> grey by luma, grey -> colour by
    repetition, alpha dropped, 16-bit grey scaled by 1/65535."""
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = torch.from_numpy(np.asarray(image, dtype=np.float32) / 65535)[None]
        return grey.expand(channels, -1, -1).contiguous()
    mode = "RGB" if channels == 3 else "L"
    array = np.asarray(image if image.mode == mode else image.convert(mode), dtype=np.uint8)
    # Channels first while still uint8 (a quarter of the bytes to move), in a writable copy for torch.
    planes = np.array(array.transpose(2, 0, 1) if channels == 3 else array[None], order="C")
    return torch.from_numpy(planes).float().div_(255)


def array_to_tensor(array: Any, channels: int, name: str) -> torch.Tensor:
    """An image stored as an array ((H, W) or (H, W, 1|3|4); uint8 in [0, 255] or float in [0, 1]) as
    float (channels, H, W)."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise UserError(f"image {name} has shape {array.shape}; expected (H, W) or (H, W, 1|3|4)")
    x = torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1)[:3]
    if not torch.isfinite(x).all():
        raise UserError(f"image {name} has non-finite pixel values")
    if array.dtype == np.uint8:
        x = x / 255
    if x.shape[0] == channels:
        return x.contiguous()
    if channels == 3:
        return x.expand(3, -1, -1).contiguous()
    return torch.einsum("c,chw->hw", x.new_tensor(_LUMA), x)[None]


def decode_image(value: Any, channels: int, name: str) -> torch.Tensor:
    """One stored image (a `datasets.Image` dict {"bytes", "path"} with decode=False, a PIL image, or
    an array) as float (channels, H, W) in [0, 1]; an undecodable file is a UserError naming it."""
    if isinstance(value, dict):
        name = value.get("path") or name
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value.get("path")
        if source is None:
            raise UserError(f"image {name} has neither bytes nor a path")
        try:
            with Image.open(source) as image:
                image.load()  # decode now so a truncated file fails here, not later
                return pil_to_tensor(image, channels)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise UserError(f"cannot decode image {name}: {e}") from e
    if isinstance(value, Image.Image):
        return pil_to_tensor(value, channels)
    return array_to_tensor(value, channels, name)


def _finish(image: torch.Tensor, image_size: int | None, transform: Transform | None) -> torch.Tensor:
    if image_size is not None:
        image = resize(image, (image_size, image_size)).clamp_(0, 1)
    return transform(image) if transform else image


def _check_labels(labels: np.ndarray, num_classes: int | None, source: str) -> None:
    if num_classes is None or labels.size == 0:
        return
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise UserError(f"{source}: label {labels[bad[0]]} of example {bad[0]} is outside [0, {num_classes}) "
                        f"({bad.size} such labels)")


class HFImageDataset(Dataset):
    """A Hugging Face `datasets.Dataset` of images as (float (channels, H, W) in [0, 1], label).

    Columns are found by name ("image"/"img", "label"/"labels") unless given. Images are decoded here
    (the column is cast to `Image(decode=False)`), so a corrupt file raises a UserError naming it and
    every image gets exactly `channels` channels. With `image_size` each image is resized (bilinear,
    antialiased) to a square before `transform`. Scalar labels are ints (checked against
    `[0, num_classes)` up front when `num_classes` is given); multi-label rows (a list, or several
    `label_column`s) are float tensors. `classes` holds the ClassLabel names when the dataset has them.
    """

    def __init__(self, data, channels: int = 3, transform: Transform | None = None,
                 image_size: int | None = None, num_classes: int | None = None,
                 image_column: str | None = None, label_column: str | Sequence[str] | None = None,
                 source: str | None = None):
        import datasets

        _check_channels(channels)
        self.source = source or "dataset"
        if len(data) == 0:
            raise UserError(f"{self.source} has no examples")
        columns = data.column_names
        self.image_column = image_column or next((c for c in IMAGE_COLUMNS if c in columns), None)
        if label_column is None:
            label_column = next((c for c in LABEL_COLUMNS if c in columns), None)
        self.label_columns = [label_column] if isinstance(label_column, str) else list(label_column or [])
        missing = [c for c in [self.image_column, *self.label_columns] if c not in columns]
        if self.image_column is None or not self.label_columns or missing:
            raise UserError(f"{self.source}: need an image column ({'/'.join(IMAGE_COLUMNS)}) and a label "
                            f"column ({'/'.join(LABEL_COLUMNS)}; an imagefolder needs class subfolders), "
                            f"found columns {columns}")
        if isinstance(data.features[self.image_column], datasets.Image):
            data = data.cast_column(self.image_column, datasets.Image(decode=False))
        self.data = data.select_columns([self.image_column, *self.label_columns])
        self.channels, self.transform, self.image_size = channels, transform, image_size
        feature = data.features[self.label_columns[0]]
        self.classes = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        dtype = feature.dtype if isinstance(feature, datasets.Value) else None
        if dtype in ("string", "large_string"):
            raise UserError(f"{self.source}: labels in column {self.label_columns[0]!r} are strings; "
                            f"map them to ints")
        self.scalar_labels = len(self.label_columns) == 1 and (
            isinstance(feature, datasets.ClassLabel) or dtype is not None and "int" in dtype)
        if self.scalar_labels:
            labels = self.data.with_format("arrow")[self.label_columns[0]]  # respects select()/shuffle()
            _check_labels(labels.to_numpy(), num_classes, self.source)
        if self.classes is not None and num_classes is not None and len(self.classes) != num_classes:
            raise UserError(f"{self.source} has {len(self.classes)} classes ({self.classes[0]}, ...) but the "
                            f"config says num_classes = {num_classes}; set num_classes={len(self.classes)} "
                            f"or pass the complete dataset")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        row = self.data[i]
        image = decode_image(row[self.image_column], self.channels, f"{self.source} example {i}")
        labels = [row[c] for c in self.label_columns]
        label = int(labels[0]) if self.scalar_labels else torch.tensor(labels, dtype=torch.float32).flatten()
        return _finish(image, self.image_size, self.transform), label


class IDXDataset(Dataset):
    """An MNIST-layout IDX folder's split as (float (channels, H, W) in [0, 1], int label); images
    stay uint8 in memory. Options as for `HFImageDataset`."""

    def __init__(self, folder: str | Path, split: str, channels: int = 1, transform: Transform | None = None,
                 image_size: int | None = None, num_classes: int | None = None):
        _check_channels(channels)
        if channels != 1:  # the format is grayscale only: colour requested means the wrong dataset or config
            raise UserError(f"{folder} is an IDX folder of grayscale images, but {channels} channels were "
                            "asked for; set channels=1")
        self.images, self.labels = load_idx_folder(folder, split)
        if len(self.images) == 0:
            raise UserError(f"{folder} has no {split} examples")
        _check_labels(self.labels.numpy(), num_classes, str(folder))
        self.channels, self.transform, self.image_size = channels, transform, image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = (self.images[i].float() / 255)[None]
        return _finish(image, self.image_size, self.transform), int(self.labels[i])
