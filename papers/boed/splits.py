"""Data of the BOED runs (the splits of slot-digits, held in memory, or of a hub dataset or folder, decoded
once into a file-backed array, and the retrieval database), the member layout of the supervision experiment
and the core.train loop settings."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.errors import UserError
from core.runs import micro_batch
from core.train import LoopConfig, data_workers
from papers.boed import preprocess
from papers.boed.config import BOEDConfig
from papers.boed.data import SlotDigits
from papers.boed.design import Database

# ----------------------------------------------------------------------------------------------------
# Data


@dataclass
class Split:
    """One split: uint8 images (N, C, H, W) (in memory, or a view of a file-backed array: `_decode`), float
    labels (N, K) in {0, 1}."""

    images: torch.Tensor
    labels: torch.Tensor
    normalise: bool = False
    boxes: list[torch.Tensor] | None = None  # per task, the (n, 4) boxes deciding it (slot-digits)

    def images_float(self, index=slice(None), design: bool = False) -> torch.Tensor:
        """In [0, 1], or with `normalise` as the official code has it: the design's ImageNet mean/std
        (`design`) or the hard-attention network's (x - 0.5) / 0.5 (papers/boed/preprocess.py)."""
        return self.to_float(self.images[index], design)

    def to_float(self, images: torch.Tensor, design: bool = False) -> torch.Tensor:
        x = images.float() / 255
        if not self.normalise:
            return x
        return preprocess.design_input(x) if design else preprocess.hard_attention_input(x)

    def database(self, cfg: BOEDConfig, device) -> Database:
        """These images as r_img's retrieval database for the design (floats made chunk by chunk)."""
        return Database(self.images, lambda x: self.to_float(x, design=True), device, cfg.design_chunk,
                        cfg.retrieval_shift, cfg.retrieval_shift_step, cfg.retrieval_flip)


class Indexed(Dataset):
    """(float image, labels (K,), index) items of a Split, for core.train."""

    def __init__(self, split: Split, indices: torch.Tensor | None = None, design: bool = False):
        self.split, self.design = split, design
        self.indices = torch.arange(len(split.images)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        return self.split.images_float(j, self.design), self.split.labels[j], j


def _slot_split(cfg: BOEDConfig, split: str, n: int) -> Split:
    ds = SlotDigits(split, n, cfg.tasks, cfg.grid, cfg.cell, cfg.seed)
    if ds.image_size != cfg.image_size or cfg.channels != 1:
        raise UserError(f"slot-digits canvases are {ds.image_size} px grey: set image_size={ds.image_size} "
                        f"channels=1")
    return Split(ds.images, ds.labels, boxes=ds.deciding_boxes())


class _Decoding(Dataset):
    """Items start.. of a core.data dataset as (uint8 image, labels (K,) in {0, 1}, or zeros without
    labels), for the DataLoader workers of `_decode`."""

    def __init__(self, ds: Dataset, start: int, stop: int, num_labels: int, labelled: bool):
        self.ds, self.start, self.stop, self.num_labels, self.labelled = ds, start, stop, num_labels, labelled

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        image, attrs = self.ds[self.start + i]
        labels = ((torch.as_tensor(attrs).float().flatten() > 0).float() if self.labelled  # {-1, 1} or {0, 1}
                  else torch.zeros(self.num_labels))
        return (image * 255).round().clamp(0, 255).to(torch.uint8), labels


def _decode(cfg: BOEDConfig, ds: Dataset, start: int, stop: int, labelled: bool,
            folder: str | Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images start..stop-1 of `ds` decoded once, in DataLoader workers (`cfg.num_workers`; None: from the
    cores), into a uint8 array backed by an unlinked temporary file in `folder` (default: the system's
    temporary folder): the page cache holds the pixels, not this process (CelebA-HQ at 224 px: 4.5 GB), and
    nothing is left behind, even by a killed run. Labels (small) are held in memory."""
    n, shape = stop - start, (cfg.channels, cfg.image_size, cfg.image_size)
    with tempfile.TemporaryFile(dir=folder) as f:  # the map keeps the pages after the file is gone
        f.truncate(n * int(np.prod(shape)))
        images = torch.from_numpy(np.memmap(f, dtype=np.uint8, mode="r+", shape=(n, *shape)))
    labels = torch.zeros(n, len(cfg.tasks))
    loader = DataLoader(_Decoding(ds, start, stop, len(cfg.tasks), labelled), batch_size=64,
                        num_workers=data_workers(cfg.num_workers))
    i = 0
    for x, y in loader:
        images[i:i + len(x)], labels[i:i + len(x)] = x, y
        i += len(x)
    return images, labels


def _hub_splits(cfg: BOEDConfig, sizes: dict[str, int], folder: str | Path | None) -> dict[str, Split]:
    """A real attribute dataset through core.data.build_dataset (hub id or local folder), one label column per
    task. Like the official code, train / val / test are consecutive ranges of its "train" split (CelebA-HQ:
    27,000 / 500 / 2,500 of 30,000, the first design_size training images being the design set). The retrieval
    database is `database` (labels ignored) or, if empty, the database_size training images after the design
    set, which the posterior CNN then does not train on (`posterior_range`): the paper's database (1.5M GAN
    samples) was disjoint from g's training set. The span of the requested ranges is decoded once
    (`_decode`); each split is a view of it."""
    from core.data import build_dataset

    external = "database" in sizes and bool(cfg.database)
    offsets = {"train": 0, "val": cfg.train_size, "test": cfg.train_size + cfg.val_size,
               "database": cfg.design_size}
    ranges = {s: (offsets[s], offsets[s] + n) for s, n in sizes.items() if not (s == "database" and external)}
    sources = {}
    if ranges:
        sources[cfg.dataset] = build_dataset(cfg.dataset, "train", image_size=cfg.image_size,
                                             channels=cfg.channels, label_column=list(cfg.tasks))
    if external:
        sources[cfg.database] = build_dataset(cfg.database, "train", image_size=cfg.image_size,
                                              channels=cfg.channels)
    for split, (a, b) in [*ranges.items(), *([("database", (0, sizes["database"]))] if external else [])]:
        source = cfg.database if split == "database" and external else cfg.dataset
        if len(sources[source]) < b:  # refused before anything is decoded
            raise UserError(f"{source}: the {split} split needs images {a}..{b - 1}, "
                            f"the dataset has {len(sources[source])}")
    out = {}
    if ranges:
        start, stop = min(a for a, _ in ranges.values()), max(b for _, b in ranges.values())
        images, labels = _decode(cfg, sources[cfg.dataset], start, stop, True, folder)
        for split, (a, b) in ranges.items():
            rows = slice(a - start, b - start)
            split_labels = torch.zeros_like(labels[rows]) if split == "database" else labels[rows]
            out[split] = Split(images[rows], split_labels, normalise=True)
    if external:
        images, labels = _decode(cfg, sources[cfg.database], 0, sizes["database"], False, folder)
        out["database"] = Split(images, labels, normalise=True)
    return {s: out[s] for s in sizes}


def posterior_range(cfg: BOEDConfig) -> tuple[int, int]:
    """The training images [start, stop) g trains on: outside the design set and the retrieval database."""
    carved = cfg.dataset != "slot-digits" and not cfg.database  # the database is cut from the training range
    return cfg.design_size + (cfg.database_size if carved else 0), cfg.train_size


def check_database(cfg: BOEDConfig) -> None:
    """One-line refusals, before anything is loaded, of a database that cannot be used: one that leaves g no
    training images, or one whose uint8 images (read whole at every retrieval step, so they must stay in the
    page cache; floats exist one chunk at a time) exceed 80% of this machine's memory."""
    start, stop = posterior_range(cfg)
    if start >= stop:
        raise UserError(f"database is empty, so the database_size={cfg.database_size} images after the "
                        f"design set are the retrieval database and g would have no training image left: set "
                        f"database=<hub id or folder> (the paper: 1.5M GAN samples) or database_size < "
                        f"{cfg.train_size - cfg.design_size}")
    need = cfg.database_size * cfg.channels * cfg.image_size ** 2
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > 0.8 * have:
        raise UserError(f"database_size={cfg.database_size:,} images of {cfg.channels}x{cfg.image_size}^2 "
                        f"need {need / 1e9:.0f} GB as uint8, this machine has {have / 1e9:.0f} GB: lower "
                        f"database_size or shard the design over machines (papers/boed/README.md)")


def load_data(cfg: BOEDConfig, splits=("train", "val", "test", "database"),
              folder: str | Path | None = None) -> dict[str, Split]:
    """The requested splits; a real dataset's are decoded into a file-backed array in `folder` (`_decode`;
    train.py: the run's output folder)."""
    if "database" in splits:
        check_database(cfg)
    sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size,
             "database": cfg.database_size}
    if cfg.dataset != "slot-digits":
        return _hub_splits(cfg, {s: sizes[s] for s in splits}, folder)
    return {s: _slot_split(cfg, s, sizes[s]) for s in splits}


def members(cfg: BOEDConfig) -> list[tuple[str, int]]:
    """(condition, task) of every member network of the supervision experiment: condition-major, then task,
    each `replicates` times."""
    return [(c, k) for c in cfg.conditions for k in range(len(cfg.tasks)) for _ in range(cfg.replicates)]


def loop_config(cfg: BOEDConfig, out: Path, steps: int, batch_size: int, eval_every: int = 0,
                ema_decay: float = 0.0) -> LoopConfig:
    """core.train's batch is per process; the config's batch sizes are images per update (core.runs)."""
    return LoopConfig(max_steps=steps, batch_size=micro_batch(batch_size), seed=cfg.seed,
                      checkpoint_every=cfg.checkpoint_every, eval_every=eval_every, log_every=cfg.log_every,
                      output_dir=str(out), num_workers=cfg.num_workers, ema_decay=ema_decay)



def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
