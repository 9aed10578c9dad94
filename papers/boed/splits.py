"""Data of the BOED runs held in memory (the splits of slot-digits or of a hub dataset, and the retrieval
database), the member layout of the supervision experiment and the core.train loop settings."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from core.errors import UserError
from core.runs import micro_batch
from core.train import LoopConfig
from papers.boed import preprocess
from papers.boed.config import BOEDConfig
from papers.boed.data import SlotDigits
from papers.boed.design import Database

# ----------------------------------------------------------------------------------------------------
# Data


@dataclass
class Split:
    """One split held in memory: uint8 images (N, C, H, W), float labels (N, K) in {0, 1}."""

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


def _hub_split(cfg: BOEDConfig, split: str, n: int) -> Split:
    """A real attribute dataset through core.data.build_dataset (hub id or local folder), one label column per
    task. Like the official code, train / val / test are consecutive ranges of its "train" split (CelebA-HQ:
    27,000 / 500 / 2,500 of 30,000, the first design_size training images being the design set). The retrieval
    database is `database` (labels ignored) or, if empty, the database_size training images after the design
    set, which the posterior CNN then does not train on (`posterior_range`): the paper's database (1.5M GAN
    samples) was disjoint from g's training set."""
    from core.data import build_dataset

    if split == "database" and cfg.database:
        ds, offset = build_dataset(cfg.database, "train", image_size=cfg.image_size, channels=cfg.channels), 0
    else:
        ds = build_dataset(cfg.dataset, "train", image_size=cfg.image_size, channels=cfg.channels,
                           label_column=list(cfg.tasks))
        offset = {"train": 0, "val": cfg.train_size, "test": cfg.train_size + cfg.val_size,
                  "database": cfg.design_size}[split]
    if len(ds) < offset + n:
        source = cfg.database if split == "database" and cfg.database else cfg.dataset
        raise UserError(f"{source}: the {split} split needs images {offset}..{offset + n - 1}, "
                        f"the dataset has {len(ds)}")
    images = torch.empty(n, cfg.channels, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    labels = torch.zeros(n, len(cfg.tasks))
    for i in range(n):
        image, attrs = ds[offset + i]
        images[i] = (image * 255).round().clamp(0, 255).to(torch.uint8)
        if split != "database":
            labels[i] = (torch.as_tensor(attrs).float().flatten() > 0).float()  # {-1, 1} or {0, 1} attributes
    return Split(images, labels, normalise=True)


def posterior_range(cfg: BOEDConfig) -> tuple[int, int]:
    """The training images [start, stop) g trains on: outside the design set and the retrieval database."""
    carved = cfg.dataset != "slot-digits" and not cfg.database  # the database is cut from the training range
    return cfg.design_size + (cfg.database_size if carved else 0), cfg.train_size


def check_database(cfg: BOEDConfig) -> None:
    """One-line refusals, before anything is loaded, of a database that cannot be used: one that leaves g no
    training images, or one whose uint8 images (held in host memory; floats exist one chunk at a time)
    exceed 80% of this machine's memory."""
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


def load_data(cfg: BOEDConfig, splits=("train", "val", "test", "database")) -> dict[str, Split]:
    if "database" in splits:
        check_database(cfg)
    sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size,
             "database": cfg.database_size}
    make = _slot_split if cfg.dataset == "slot-digits" else _hub_split
    return {s: make(cfg, s, sizes[s]) for s in splits}


def members(cfg: BOEDConfig) -> list[tuple[str, int]]:
    """(condition, task) of every member network of the supervision experiment: condition-major, then task,
    each `replicates` times."""
    return [(c, k) for c in cfg.conditions for k in range(len(cfg.tasks)) for _ in range(cfg.replicates)]


def loop_config(cfg: BOEDConfig, out: Path, steps: int, batch_size: int, eval_every: int = 0) -> LoopConfig:
    """core.train's batch is per process; the config's batch sizes are images per update (core.runs)."""
    return LoopConfig(max_steps=steps, batch_size=micro_batch(batch_size), seed=cfg.seed,
                      checkpoint_every=cfg.checkpoint_every, eval_every=eval_every, log_every=cfg.log_every,
                      output_dir=str(out), num_workers=cfg.num_workers)



def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
