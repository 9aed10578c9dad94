"""TNet's paper-scale training end to end (JPEG folder, official input pipeline) against the same training on
images already in memory: does the data path keep up with the model? (issue #18, target >= 80%)

    python reproductions/end_to_end.py [--batch 64] [--steps 60] [--images 1024] [--workers N] [--update]
    ACCELERATE_MIXED_PRECISION=bf16 python reproductions/end_to_end.py ...   # the precision both runs use

Both runs are `papers/tnet/train.py --config imagenet` with the same batch, steps, precision and launcher
settings; run.json's throughput (core.train: images per second from the second step, evaluation and
checkpoints excluded) is read from each. The folder run reads made ImageNet-like JPEGs (500 x 375, quality 90,
as the bench's loader section) from an imagenet-layout folder with `--workers` DataLoader workers; the
in-memory run trains on random 224 px images, so it measures the model alone. With --update the numbers go to
results/bench/end-to-end-<device>.json (with provenance). On 2 CPU cores the model is the bottleneck; the
question is a GPU's.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from bench import made_jpegs  # reproductions/bench.py, beside this script

from core.cli import ArgumentParser, main_guard
from core.data import register_dataset
from core.errors import UserError
from core.results import REPO_ROOT, provenance, save_result
from papers.tnet.train import main as tnet_main

CLASSES = 4
MEMORY_DATASET = "end-to-end-random"


class RandomImages(torch.utils.data.Dataset):
    """n random (channels, canvas, canvas) images in [-1, 1] with labels below CLASSES, made up front."""

    def __init__(self, split: str, n: int, seed: int, canvas: int, channels: int, transform=None):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, channels, canvas, canvas, generator=g) * 2 - 1
        self.labels = torch.randint(CLASSES, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def write_folder(root: Path, images: int) -> Path:
    """An imagenet-layout folder (train/<class>/, validation/<class>/) of made JPEGs, a few distinct files
    repeated (decoding cost does not depend on which)."""
    distinct = made_jpegs(min(images, 64))
    for split, n in (("train", images), ("validation", CLASSES)):
        for i in range(n):
            path = root / split / f"n{i % CLASSES:08d}" / f"{split}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(distinct[i % len(distinct)])
    return root


def train_throughput(dataset: str, out: Path, batch: int, steps: int, workers: int, size: int) -> dict:
    """TNet's imagenet config on `dataset` for `steps` updates: run.json's throughput and settings."""
    sets = [f"dataset={dataset}", f"num_classes={CLASSES}", f"batch_size={batch}", f"max_steps={steps}",
            "checkpoint_every=0", "measure_cost=false", f"num_workers={workers}", f"log_every={steps}",
            f"train_size={size}", f"eval_size={CLASSES}"]
    tnet_main(["--config", "imagenet", "--output-dir", str(out), *sum((["--set", s] for s in sets), [])])
    return json.loads((out / "run.json").read_text())


def run(batch: int, steps: int, images: int, workers: int, update: bool, results_dir: Path) -> dict:
    if min(batch, images) < 1 or steps < 2 or workers < 0:
        raise UserError(f"need batch >= 1, images >= 1, steps >= 2 and workers >= 0, got {batch}, {images}, "
                        f"{steps}, {workers}")
    register_dataset(MEMORY_DATASET)(RandomImages)
    with tempfile.TemporaryDirectory(prefix="end-to-end-") as tmp:
        folder = write_folder(Path(tmp) / "imagenet", images)
        runs = {"folder": train_throughput(str(folder), Path(tmp) / "folder", batch, steps, workers, 0),
                "in_memory": train_throughput(MEMORY_DATASET, Path(tmp) / "memory", batch, steps, 0, images)}
    rates = {name: r["throughput"]["images_per_s"] for name, r in runs.items()}
    result = {"batch": batch, "steps": steps, "images": images, "workers": workers,
              "device": runs["folder"]["device"], "mixed_precision": runs["folder"]["mixed_precision"],
              "runs": runs, "end_to_end_fraction": rates["folder"] / rates["in_memory"], "target": 0.8}
    print(f"{result['device']}, {result['mixed_precision']}, batch {batch}: folder {rates['folder']:.1f} "
          f"images/s (waiting for data {runs['folder']['throughput']['data_wait_fraction']:.0%}), in memory "
          f"{rates['in_memory']:.1f}: end to end {result['end_to_end_fraction']:.0%} of the model alone "
          f"(target {result['target']:.0%})")
    if update:
        result["provenance"] = provenance(configs={"batch": batch, "steps": steps, "images": images,
                                                   "workers": workers})
        path = results_dir / "bench" / f"end-to-end-{result['device']}.json"
        print(f"stored {save_result(path, result)}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="images per update (the issue's table: 64)")
    parser.add_argument("--steps", type=int, default=60, help="updates per run (the first is not timed)")
    parser.add_argument("--images", type=int, default=1024, help="training JPEGs in the made folder")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of the folder run")
    parser.add_argument("--update", action="store_true", help="store the result")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    args = parser.parse_args(argv)
    main_guard(run, args.batch, args.steps, args.images, args.workers, args.update, args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
