"""The CPU-scale task: made canvases on which several small parts matter (real MNIST digits).

Each canvas holds two "key" digits of different classes (from `key_digits`), `num_distractors` digits
of other classes and `num_clutter` random digit fragments. The label is the unordered pair of key
classes (C(k, 2) classes): one part says which pairs are possible, only both together say which one it
is. Digits are placed so that no two of them fit in one receptive field (`min_separation` between
top-left corners, Chebyshev distance), so a glimpse sees at most one of them whole: a policy must send
its glimpses to *different* key digits, as Saccader is meant to (sec. 4.1: ordered logits "cluster
around a few top features", the learned policy "captures more diverse features").

Train and test canvases draw their digits from core.data's disjoint train / test MNIST digits.

build_datasets gives train.py and evaluate.py the datasets of a config (the CPU task, a made task of
core.data or, at paper scale, ImageNet through the official input pipeline of preprocess.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from core.data import build_dataset, list_datasets, load_mnist_digits, made_splits, standardized
from core.data.transforms import ToSigned
from core.errors import UserError
from papers.saccader import preprocess
from papers.saccader.config import SaccaderConfig

_SPLIT_CODE = {"train": 1, "test": 3}


class DigitPairs(Dataset):
    """`n` canvases (1 or 3 channels, H = W = `canvas`) in [0, 1] with labels in [0, C(k, 2)).

    Attributes: `labels` (n,), `key_boxes` (n, 2, 4) pixel boxes (y0, x0, y1, x1) of the two key digits,
    `images` (n, canvas, canvas) uint8. Everything is a function of (seed, split, n)."""

    def __init__(self, split: str = "train", n: int = 1024, canvas: int = 128,
                 key_digits: Sequence[int] = (0, 1, 2, 3, 4), num_distractors: int = 1,
                 num_clutter: int = 8, clutter_size: int = 10, min_separation: int = 50,
                 margin: int = 24, channels: int = 1, seed: int = 0,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if split not in _SPLIT_CODE:
            raise UserError(f"split must be 'train' or 'test', got {split!r}")
        key_digits = tuple(int(d) for d in key_digits)
        distractor_digits = [d for d in range(10) if d not in key_digits]
        if len(set(key_digits)) < 2 or not set(key_digits) <= set(range(10)):
            raise UserError(f"key_digits must be >= 2 distinct digits in 0-9, got {key_digits}")
        if num_distractors and not distractor_digits:
            raise UserError("distractors need a digit class outside key_digits")
        if canvas < 28 or n < 1 or channels not in (1, 3) or not 1 <= clutter_size <= 28:
            raise UserError(f"need canvas >= 28, n >= 1, channels 1 or 3 and clutter_size in [1, 28], got "
                            f"{canvas}, {n}, {channels}, {clutter_size}")
        self.pairs = list(itertools.combinations(key_digits, 2))
        self.num_classes, self.channels, self.transform = len(self.pairs), channels, transform
        pool, pool_labels = load_mnist_digits(split)
        by_class = {d: np.flatnonzero(pool_labels.numpy() == d) for d in range(10)}
        pool = pool.numpy()
        rng = np.random.default_rng([seed, _SPLIT_CODE[split]])
        span = canvas - 28 - 2 * margin
        if span < 0:
            raise UserError(f"a {canvas} px canvas has no room for a 28 px digit {margin} px from its edges")
        num_digits = 2 + num_distractors
        images = np.zeros((n, canvas, canvas), np.uint8)
        labels = rng.integers(len(self.pairs), size=n)
        key_boxes = np.zeros((n, 2, 4), np.float32)
        for i in range(n):
            for _ in range(10_000):  # rejection sampling of well-separated digit positions
                pos = margin + rng.integers(0, span + 1, (num_digits, 2))
                gaps = np.abs(pos[:, None] - pos[None]).max(-1) + np.eye(num_digits, dtype=int) * canvas
                if gaps.min() >= min_separation:
                    break
            else:
                raise UserError(f"cannot place {num_digits} digits {min_separation} px apart on a "
                                f"{canvas} px canvas")
            image = images[i]
            for _ in range(num_clutter):  # fragments first: the digits are drawn over them (max)
                src = pool[rng.integers(len(pool))]
                sy, sx = rng.integers(0, 29 - clutter_size, 2)  # fragment inside its digit
                py, px = rng.integers(0, canvas - clutter_size + 1, 2)  # its place on the canvas
                window = image[py:py + clutter_size, px:px + clutter_size]
                np.maximum(window, src[sy:sy + clutter_size, sx:sx + clutter_size], out=window)
            classes = list(self.pairs[labels[i]]) + list(rng.choice(distractor_digits, num_distractors))
            for k, (digit, (y, x)) in enumerate(zip(classes, pos, strict=True)):
                window = image[y:y + 28, x:x + 28]
                np.maximum(window, pool[rng.choice(by_class[digit])], out=window)
                if k < 2:
                    key_boxes[i, k] = (y, x, y + 28, x + 28)
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels)
        self.key_boxes = torch.from_numpy(key_boxes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        """(image (C, H, W), label, key digit boxes (2, 4)): the boxes serve the analysis only."""
        image = (self.images[i].float() / 255).expand(self.channels, -1, -1)
        return (self.transform(image) if self.transform else image), int(self.labels[i]), self.key_boxes[i]


def build_datasets(cfg: SaccaderConfig):
    """(train, test) datasets of (image in [-1, 1], label, ...). "digit-pairs": the CPU task (data.py;
    training canvases follow the seed, test canvases are fixed and use held-out digits), or likewise a
    made dataset registered in core.data at image_size px. Otherwise a dataset for
    core.data.build_dataset, with App. C's random crop for training."""
    if cfg.dataset == "digit-pairs":
        kw = dict(canvas=cfg.image_size, key_digits=cfg.key_digits, num_distractors=cfg.num_distractors,
                  num_clutter=cfg.num_clutter, clutter_size=cfg.clutter_size,
                  min_separation=cfg.min_separation, margin=cfg.margin, channels=cfg.channels,
                  transform=ToSigned())
        train_set = DigitPairs("train", cfg.train_size, seed=cfg.seed, **kw)
        if train_set.num_classes != cfg.num_classes:
            raise UserError(f"{len(cfg.key_digits)} key digits make {train_set.num_classes} classes, "
                            f"but num_classes = {cfg.num_classes}")
        made = train_set, DigitPairs("test", cfg.eval_size, seed=0, **kw)
        return standardized(*made) if cfg.standardize_images else made
    if cfg.dataset in list_datasets():  # a made task of core.data, e.g. the cross-paper same-footing task
        kw = dict(canvas=cfg.image_size, channels=cfg.channels, transform=ToSigned())
        if cfg.digit_scale:
            kw["scale_range"] = (cfg.digit_scale, cfg.digit_scale)
        return made_splits(lambda split, n, seed: build_dataset(cfg.dataset, split, n=n, seed=seed, **kw),
                           cfg.train_size, cfg.eval_size, cfg.seed, cfg.standardize_images)
    if cfg.standardize_images:
        raise UserError(f"standardize_images applies to the made tasks only, not to dataset {cfg.dataset!r} "
                        "(paper scale keeps the official input pipeline)")
    # Paper scale: the official input pipeline (papers/saccader/preprocess.py, data_provider.py), with
    # label 0 kept for the background class when num_classes = 1001 (labels shifted by one).
    shift = cfg.num_classes == 1001
    kw = dict(channels=cfg.channels, num_classes=cfg.num_classes - shift)
    train_tf, eval_tf = preprocess.TrainTransform(cfg.image_size), preprocess.EvalTransform(cfg.image_size)
    train_set = build_dataset(cfg.dataset, cfg.train_split, transform=train_tf, **kw)
    eval_set = build_dataset(cfg.dataset, cfg.eval_split, transform=eval_tf, **kw)
    if shift:
        return preprocess.BackgroundShift(train_set), preprocess.BackgroundShift(eval_set)
    return train_set, eval_set
