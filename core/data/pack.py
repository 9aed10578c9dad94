"""Pack a prepared image folder into a pre-resized Arrow dataset, once, for fast repeated epochs.

    python -m core.data.pack SRC DST [--max-side 256] [--quality 90] [--workers N]

SRC is a folder `python -m core.data.prepare` wrote for ImageNet or fMoW: split folders (train/,
validation/, test/) of class folders of images. DST is a Hugging Face `datasets` DatasetDict written with
`save_to_disk`: per split an `image` column of JPEG bytes whose shorter side is capped at `max_side`
(Lanczos, re-encoded at `quality`; smaller images keep their own bytes) and a `label` column with the
classes in sorted order, the labels the folder gives. `--set dataset=DST` reads it as it reads the folder
(`core.data.build_dataset`), and fMoW's boxes.csv is copied beside it (its boxes are in [0, 1] image
coordinates, which resizing keeps).

Why (issue #18, feeding a GPU): an epoch reads a few memory-mapped files instead of a million small ones,
and decodes ~256 px images instead of ~500 px (`reproductions/bench.py` measures both per core). The cost:
the paper's crop is taken from the pre-resized image, so the pixels pass through two resamplings instead
of one. A packed dataset is a different, faster pipeline; the official one reads the folder.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

from core.data.prepare import IMAGE_SUFFIXES
from core.errors import UserError

# Split folder -> the split name `datasets`' imagefolder gives it (what the configs' *_split fields use).
SPLITS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
          "val": "validation", "dev": "validation", "eval": "validation", "evaluation": "validation",
          "test": "test", "testing": "test"}


def capped_jpeg(source: str | Path | bytes, max_side: int, quality: int) -> bytes:
    """An image file's (or its bytes') JPEG bytes with the shorter side capped at max_side: its own bytes
    when it is already that small and a JPEG, otherwise Lanczos-resized RGB re-encoded at `quality`."""
    from PIL import Image

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            w, h = image.size
            if min(w, h) <= max_side and image.format == "JPEG":
                return data
            s = min(1.0, max_side / min(w, h))
            image = image.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s))),
                                                Image.Resampling.LANCZOS)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        name = "<bytes>" if isinstance(source, bytes) else source
        raise UserError(f"cannot decode image {name}: {e}") from e
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _split_files(src: Path) -> dict[str, list[tuple[Path, str]]]:
    """{split name: [(image path, class name)]}, sorted, from SRC's split folders of class folders."""
    splits: dict[str, list[tuple[Path, str]]] = {}
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and p.name.lower() in SPLITS):
        name = SPLITS[folder.name.lower()]
        if name in splits:
            raise UserError(f"{src} has two folders for the {name} split; keep one")
        classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise UserError(f"{folder} has no class folders; pack a folder that "
                            f"`python -m core.data.prepare` wrote")
        splits[name] = [(f, c.name) for c in classes for f in sorted(c.iterdir())
                        if f.suffix.lower() in IMAGE_SUFFIXES]
        if not splits[name]:
            raise UserError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    if not splits:
        raise UserError(f"{src} has no split folders ({', '.join(sorted(set(SPLITS)))}); pack a folder "
                        f"`python -m core.data.prepare` wrote")
    return splits


def _rows(tasks: list[tuple[str, str, int, int, int]]):
    """`datasets` rows of one shard of (path, file name, label, max_side, quality) tasks."""
    for path, name, label, max_side, quality in tasks:
        yield {"image": {"bytes": capped_jpeg(path, max_side, quality), "path": name}, "label": label}


def pack(src: str | Path, dst: str | Path, max_side: int = 256, quality: int = 90,
         workers: int = 1) -> dict[str, int]:
    """Write DST (see the module docstring) from the prepared folder SRC; returns images per split.

    Each split streams through `datasets.Dataset.from_generator` (sharded over `workers` processes) into
    an Arrow cache beside DST, which save_to_disk then writes as DST: the disk holds the packed size
    twice while it runs, the memory a batch of images per process."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if max_side < 1 or not 1 <= quality <= 100 or workers < 1:
        raise UserError(f"need max_side >= 1, quality in [1, 100] and workers >= 1, got {max_side}, "
                        f"{quality}, {workers}")
    if not src.is_dir():
        raise UserError(f"source folder {src} does not exist")
    if dst.exists() and any(dst.iterdir()):
        raise UserError(f"{dst} exists and is not empty; pass a new folder")
    splits = _split_files(src)
    import datasets  # after the checks: bad input is refused before this second-long import

    classes = sorted({c for files in splits.values() for _, c in files})
    index = {c: i for i, c in enumerate(classes)}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    dst.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pack-", dir=dst.parent) as cache:
        packed = {}
        for name, files in splits.items():
            tasks = [(str(f), f.name, index[c], max_side, quality) for f, c in files]
            packed[name] = datasets.Dataset.from_generator(
                _rows, features=features, cache_dir=cache, gen_kwargs={"tasks": tasks},
                num_proc=min(workers, len(tasks)) if workers > 1 else None, split=name)
        datasets.DatasetDict(packed).save_to_disk(str(dst))
    if (src / "boxes.csv").is_file():
        shutil.copyfile(src / "boxes.csv", dst / "boxes.csv")
    return {name: len(files) for name, files in splits.items()} | {"classes": len(classes)}


def main(argv: list[str] | None = None) -> None:
    from core.cli import ArgumentParser, main_guard

    parser = ArgumentParser(prog="python -m core.data.pack", description=__doc__.split("\n")[0])
    parser.add_argument("src", help="a folder `python -m core.data.prepare` wrote (imagenet, fmow)")
    parser.add_argument("dst", help="the folder to write (pass it as --set dataset=DST)")
    parser.add_argument("--max-side", type=int, default=256, help="cap of each image's shorter side (px)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the resized images")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes resizing images")
    args = parser.parse_args(argv)
    counts = main_guard(pack, args.src, args.dst, args.max_side, args.quality, args.workers)
    print(f"packed {args.src} into {args.dst}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
          + f"; pass --set dataset={args.dst}")


if __name__ == "__main__":
    main()
