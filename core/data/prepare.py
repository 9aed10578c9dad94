"""Turn a dataset as it is distributed into the folder layout `core.data.build_dataset` reads.

    python -m core.data.prepare imagenet  SRC DST  # ILSVRC2012 -> DST/{train,validation}/<wnid>/
    python -m core.data.prepare fmow      SRC DST  # fMoW-rgb -> DST/{train,validation,test}/<category>/
    python -m core.data.prepare celeba-hq SRC DST  # CelebAMask-HQ -> DST/train/ + metadata.csv (40 attrs)
    python -m core.data.prepare mnist     SRC DST  # MNIST IDX (.gz or not) -> DST/*-ubyte, checked

Then pass `--set dataset=DST`. Inputs read (README.md, "Data"):
- imagenet: train/ as synset folders (or ILSVRC2012_img_train.tar, a tar of per-synset tars); the flat
  validation JPEGs (val/ or ILSVRC2012_img_val.tar) labelled by the devkit (ILSVRC2012_devkit_t12[.tar.gz]:
  data/meta.mat + data/ILSVRC2012_validation_ground_truth.txt), or the Kaggle layout
  (ILSVRC/Data/CLS-LOC/{train,val} + LOC_val_solution.csv).
- fmow: fMoW-rgb's train/ and val/ (<category>/<category>_<n>/<...>_rgb.jpg + .json), test/<id>/ matched to
  its labels through test_gt/ and test_gt_mapping.json (as TNet's fMoW/match_test_gt.py does). Images are
  flattened into category folders with the shorter side capped at `--max-side` (1,000 px, TNet's fMoW input
  pipeline); each image's boxes of its own category (ID != -1, as TNet's fMoW/crop_fMoW.py) go to
  DST/boxes.csv in [0, 1] coordinates (ymin, xmin, ymax, xmax) for the box-constrained crop.
- celeba-hq: CelebAMask-HQ's CelebA-HQ-img/<i>.jpg and CelebAMask-HQ-attribute-anno.txt; images resized to
  `--size` (224, the BOED design code's IMG_DIM; 0 keeps 1024) and named by zero-padded index, so file
  order is index order (BOED's splits are consecutive index ranges).
- mnist: the four IDX files (train/t10k images/labels, gzipped or not).

Files are hard-linked where nothing changes (copied across file systems), so a prepared ImageNet costs no
extra space. Every problem is one line naming the file and what to do (exit 2).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from core.errors import UserError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
WNID = re.compile(r"n\d{8}")
CELEBA_ATTRIBUTES_FILE = "CelebAMask-HQ-attribute-anno.txt"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _extract(tar_path: Path, dst: Path) -> Path:
    """Extract a tar once into `dst` (a marker file records completion)."""
    done = dst / ".extracted"
    if not done.exists():
        dst.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(tar_path) as tar:
                tar.extractall(dst, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise UserError(f"cannot extract {tar_path}: {e}") from e
        done.touch()
    return dst


def _first(src: Path, names: Iterable[str]) -> Path | None:
    return next((src / n for n in names if (src / n).exists()), None)


# ---- ImageNet (ILSVRC2012) ----

def _devkit_labels(devkit: Path) -> list[str]:
    """WNIDs of the 50,000 validation images in file order, from meta.mat and the ground-truth file
    (ILSVRC2012_IDs 1..1000)."""
    import numpy as np
    import scipy.io

    data = devkit / "data"
    meta, truth = data / "meta.mat", data / "ILSVRC2012_validation_ground_truth.txt"
    for f in (meta, truth):
        if not f.is_file():
            raise UserError(f"devkit {devkit} has no {f.relative_to(devkit)}; pass the unpacked "
                            f"ILSVRC2012_devkit_t12")
    synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
    wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in np.atleast_1d(synsets)
            if int(s["num_children"]) == 0}  # the 1,000 leaf classes
    ids = [int(line) for line in truth.read_text().split()]
    if bad := [i for i in ids if i not in wnid]:
        raise UserError(f"{truth}: ILSVRC2012_ID {bad[0]} is not a leaf class of {meta}")
    return [wnid[i] for i in ids]


def _kaggle_labels(solution: Path) -> dict[str, str]:
    """ImageId -> WNID from LOC_val_solution.csv (the first box's synset; all boxes share it)."""
    with solution.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"ImageId", "PredictionString"} <= set(rows[0]):
        raise UserError(f"{solution} needs columns ImageId,PredictionString (Kaggle's LOC_val_solution.csv)")
    return {r["ImageId"]: r["PredictionString"].split()[0] for r in rows}


def _imagenet_train(src: Path, work: Path) -> Path:
    """The train folder of synset folders (extracting ILSVRC2012_img_train.tar's per-synset tars)."""
    folder = _first(src, ["train", "ILSVRC/Data/CLS-LOC/train"])
    if folder is not None and folder.is_dir():
        return folder
    tar_path = src / "ILSVRC2012_img_train.tar"
    if not tar_path.is_file():
        raise UserError(f"{src} has neither train/ (synset folders) nor ILSVRC2012_img_train.tar")
    outer = _extract(tar_path, work / "train_tars")
    for inner in sorted(outer.glob("n*.tar")):
        _extract(inner, work / "train" / inner.stem)
    return work / "train"


def prepare_imagenet(src: Path, dst: Path, workers: int = 1) -> dict[str, int]:
    """DST/train/<wnid>/ and DST/validation/<wnid>/ (hard links), the validation set sorted into synset
    folders from the devkit ground truth or Kaggle's LOC_val_solution.csv."""
    work = dst / ".work"
    solution = _first(src, ["LOC_val_solution.csv"])
    val = _first(src, ["val", "ILSVRC/Data/CLS-LOC/val"])
    if val is None and (src / "ILSVRC2012_img_val.tar").is_file():
        val = _extract(src / "ILSVRC2012_img_val.tar", work / "val")
    if val is None:
        raise UserError(f"{src} has no validation images: need val/ (or ILSVRC/Data/CLS-LOC/val) or "
                        f"ILSVRC2012_img_val.tar")
    files = _images(val)
    if not files:
        if any(p.is_dir() and WNID.fullmatch(p.name) for p in val.iterdir()):
            raise UserError(f"{val} is already sorted into synset folders: pass --set dataset={src}")
        raise UserError(f"{val} holds no JPEG files")
    if solution is not None:
        by_id = _kaggle_labels(solution)
        missing = [f.name for f in files if f.stem not in by_id]
        if missing:
            raise UserError(f"{solution} has no label for {missing[0]} ({len(missing)} images unlabelled)")
        labels = [by_id[f.stem] for f in files]
    else:
        devkit = _first(src, ["ILSVRC2012_devkit_t12"])
        if devkit is None and (src / "ILSVRC2012_devkit_t12.tar.gz").is_file():
            devkit = _extract(src / "ILSVRC2012_devkit_t12.tar.gz", work / "devkit") / "ILSVRC2012_devkit_t12"
        if devkit is None:
            raise UserError(f"{src} has no validation labels: need ILSVRC2012_devkit_t12[.tar.gz] or "
                            f"LOC_val_solution.csv (Kaggle)")
        labels = _devkit_labels(devkit)
        if len(labels) != len(files):  # the ground truth is in file order: all 50,000 must be there
            raise UserError(f"{val} holds {len(files)} images but the devkit labels {len(labels)}; "
                            f"extract the whole ILSVRC2012_img_val.tar")
    for f, wnid in zip(files, labels, strict=True):
        _link(f, dst / "validation" / wnid / f.name)
    train = _imagenet_train(src, work)
    classes = sorted(p for p in train.iterdir() if p.is_dir() and WNID.fullmatch(p.name))
    if not classes:
        raise UserError(f"{train} holds no synset folders (n########)")
    n_train = 0
    for c in classes:
        for f in _images(c):
            _link(f, dst / "train" / c.name / f.name)
            n_train += 1
    if missing := sorted(set(labels) - {c.name for c in classes}):
        raise UserError(f"validation synset {missing[0]} has no training folder in {train}")
    shutil.rmtree(work, ignore_errors=True)
    return {"train": n_train, "validation": len(files), "classes": len(classes)}


# ---- fMoW-rgb ----

def _save_capped(task: tuple[str, str, int]) -> tuple[int, int]:
    """Copy one image with its shorter side capped at max_side (Lanczos); returns the source (w, h)."""
    from PIL import Image

    src, dst, max_side = task
    with Image.open(src) as image:
        w, h = image.size
        if min(w, h) <= max_side:
            _link(Path(src), Path(dst))
            return w, h
        s = max_side / min(w, h)
        image.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s))),
                                    Image.Resampling.LANCZOS).save(dst, quality=95)
    return w, h


def _fmow_boxes(meta: Path, category: str) -> list[list[int]]:
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read fMoW annotation {meta}: {e}") from e
    boxes = data.get("bounding_boxes", [])
    boxes = boxes if isinstance(boxes, list) else [boxes]
    return [b["box"] for b in boxes if b.get("category", category) == category and b.get("ID", 0) != -1]


def _fmow_split(folder: Path) -> list[tuple[Path, Path, str, str]]:
    """(image, annotation, category, output name) of a train/val folder <category>/<category>_<n>/."""
    items = []
    for cat in sorted(p for p in folder.iterdir() if p.is_dir()):
        for inst in sorted(p for p in cat.iterdir() if p.is_dir()):
            for img in sorted(inst.glob("*_rgb.jpg")):
                items.append((img, img.with_suffix(".json"), cat.name, img.name))
    return items


def _fmow_test(src: Path) -> list[tuple[Path, Path, str, str]]:
    """Test images matched to their labels: test_gt_mapping.json maps test_gt/<cat>/<cat>_<n> ("input")
    to test/<id> ("output"); file <id>_<k>_rgb.jpg's annotation is <cat>_<n>_<k>_rgb.json."""
    mapping = _first(src, ["test_gt_mapping.json"])
    if mapping is None:
        raise UserError(f"{src}/test has no labels: put test_gt/ and test_gt_mapping.json (fMoW's ground "
                        f"truth download) next to it, or pass --no-test")
    items = []
    for entry in json.loads(mapping.read_text()):
        gt_dir, test_dir = src / entry["input"], src / entry["output"]
        category, gt_prefix, test_prefix = gt_dir.parent.name, gt_dir.name, test_dir.name
        for img in sorted(test_dir.glob("*_rgb.jpg")):
            name = gt_prefix + img.name[len(test_prefix):]
            meta = gt_dir / Path(name).with_suffix(".json").name
            if not meta.is_file():
                raise UserError(f"test image {img} has no ground truth {meta}")
            items.append((img, meta, category, name))
    return items


def prepare_fmow(src: Path, dst: Path, max_side: int = 1000, workers: int = 1,
                 test: bool = True) -> dict[str, int]:
    """DST/{train,validation,test}/<category>/<name>_rgb.jpg with the shorter side <= max_side, and
    DST/boxes.csv (split, file_name, ymin, xmin, ymax, xmax in [0, 1])."""
    splits = {"train": src / "train", "validation": src / "val"}
    for name, folder in splits.items():
        if not folder.is_dir():
            raise UserError(f"{src} has no {folder.name}/ (fMoW-rgb's {name} images)")
    items = {name: _fmow_split(folder) for name, folder in splits.items()}
    if test:
        if not (src / "test").is_dir():
            raise UserError(f"{src} has no test/; pass --no-test to prepare train and validation only")
        items["test"] = _fmow_test(src)
    counts, rows = {}, []
    with ProcessPoolExecutor(max(1, workers)) as pool:
        for split, entries in items.items():
            if not entries:
                raise UserError(f"{src}: no *_rgb.jpg images for the {split} split")
            tasks = []
            for img, _, category, name in entries:
                out = dst / split / category / name
                out.parent.mkdir(parents=True, exist_ok=True)
                tasks.append((str(img), str(out), max_side))
            sizes = list(pool.map(_save_capped, tasks, chunksize=64))
            for (_, meta, category, name), (w, h) in zip(entries, sizes, strict=True):
                for x, y, bw, bh in _fmow_boxes(meta, category):
                    rows.append([split, f"{category}/{name}", y / h, x / w, (y + bh) / h, (x + bw) / w])
            counts[split] = len(entries)
    with (dst / "boxes.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "file_name", "ymin", "xmin", "ymax", "xmax"])
        writer.writerows([r[:2] + [f"{v:.6f}" for v in r[2:]] for r in rows])
    counts["classes"] = len({p.name for p in (dst / "train").iterdir()})
    return counts


# ---- CelebA-HQ (CelebAMask-HQ) ----

def _resize_square(task: tuple[str, str, int]) -> None:
    from PIL import Image

    src, dst, size = task
    if not size:
        _link(Path(src), Path(dst))
        return
    with Image.open(src) as image:
        image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS).save(dst, quality=95)


def prepare_celeba_hq(src: Path, dst: Path, size: int = 224, workers: int = 1) -> dict[str, int]:
    """DST/train/<index:05d>.jpg and DST/train/metadata.csv (file_name + 40 attribute columns in {0, 1})."""
    anno = _first(src, [CELEBA_ATTRIBUTES_FILE])
    images = _first(src, ["CelebA-HQ-img"])
    if anno is None or images is None:
        raise UserError(f"{src} must hold CelebA-HQ-img/ and {CELEBA_ATTRIBUTES_FILE} (the CelebAMask-HQ "
                        f"download)")
    lines = anno.read_text().splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise UserError(f"{anno}: expected the image count, then the attribute names, then one row per image")
    names = lines[1].split()
    rows = [line.split() for line in lines[2:] if line.strip()]
    if int(lines[0]) != len(rows) or any(len(r) != len(names) + 1 for r in rows):
        raise UserError(f"{anno}: {len(rows)} rows of {len(names)} attributes, header says "
                        f"{lines[0].strip()}")
    out = dst / "train"
    out.mkdir(parents=True, exist_ok=True)
    tasks, table = [], []
    for row in rows:
        image = images / row[0]
        if not image.is_file():
            raise UserError(f"{anno} lists {row[0]}, which is not in {images}")
        name = f"{int(Path(row[0]).stem):05d}.jpg"
        tasks.append((str(image), str(out / name), size))
        table.append([name] + [int(int(v) > 0) for v in row[1:]])  # {-1, 1} -> {0, 1}
    with ProcessPoolExecutor(max(1, workers)) as pool:
        list(pool.map(_resize_square, tasks, chunksize=64))
    table.sort()
    with (out / "metadata.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", *names])
        writer.writerows(table)
    return {"train": len(table), "attributes": len(names)}


# ---- MNIST ----

def prepare_mnist(src: Path, dst: Path, workers: int = 1) -> dict[str, int]:
    """DST/{train,t10k}-{images-idx3,labels-idx1}-ubyte, decompressed, read back and checked."""
    from .mnist import find_idx_file, load_idx_folder

    dst.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for kind, dims in (("images", 3), ("labels", 1)):
            path = find_idx_file(src, split, kind)
            if path is None:
                raise UserError(f"{src} has no {prefix}-{kind}-idx{dims}-ubyte[.gz]")
            out = dst / f"{prefix}-{kind}-idx{dims}-ubyte"
            if path.suffix == ".gz":
                with gzip.open(path, "rb") as f_in, out.open("wb") as f_out:
                    shutil.copyfileobj(f_in, f_out)
            elif path.resolve() != out.resolve():
                _link(path, out)
        images, labels = load_idx_folder(dst, split)
        if images.shape[1:] != (28, 28) or int(labels.max()) > 9 or int(labels.min()) < 0:
            raise UserError(f"{src}: {split} holds {tuple(images.shape)} images with labels "
                            f"{int(labels.min())}..{int(labels.max())}; expected 28x28 digits 0-9")
        counts[split] = len(labels)
    return counts


PREPARERS: dict[str, Callable[..., dict[str, int]]] = {
    "imagenet": prepare_imagenet, "fmow": prepare_fmow, "celeba-hq": prepare_celeba_hq,
    "mnist": prepare_mnist,
}


def prepare(dataset: str, src: str | Path, dst: str | Path, **kw) -> dict[str, int]:
    """Run one preparer; returns the number of images per split (and classes / attributes)."""
    if dataset not in PREPARERS:
        raise UserError(f"unknown dataset {dataset!r}; choose from {', '.join(PREPARERS)}")
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise UserError(f"source folder {src} does not exist")
    if dst.resolve() == src.resolve():
        raise UserError("DST must differ from SRC")
    return PREPARERS[dataset](src, dst, **kw)


def main(argv: list[str] | None = None) -> None:
    from core.cli import ArgumentParser, main_guard

    parser = ArgumentParser(prog="python -m core.data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=sorted(PREPARERS))
    parser.add_argument("src", help="the folder holding the download as distributed")
    parser.add_argument("dst", help="the folder to write (pass it as --set dataset=DST)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes resizing images")
    parser.add_argument("--max-side", type=int, default=1000, help="fmow: cap of the shorter side (px)")
    parser.add_argument("--no-test", action="store_true", help="fmow: skip the test split")
    parser.add_argument("--size", type=int, default=224, help="celeba-hq: square side (0 keeps 1024)")
    args = parser.parse_args(argv)
    kw = {"workers": args.workers}
    if args.dataset == "fmow":
        kw.update(max_side=args.max_side, test=not args.no_test)
    if args.dataset == "celeba-hq":
        kw["size"] = args.size
    counts = main_guard(prepare, args.dataset, args.src, args.dst, **kw)
    print(f"prepared {args.dataset} in {args.dst}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
          + f"; pass --set dataset={args.dst}")


if __name__ == "__main__":
    main()
