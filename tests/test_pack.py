"""core.data.pack: a prepared image folder packed into a pre-resized Arrow dataset reads back through
core.data.build_dataset with the folder's labels, capped image sides and fMoW's boxes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import build_dataset
from core.data.pack import pack
from core.errors import UserError

pytestmark = pytest.mark.unit

# (split, class, file, (width, height)): one image larger than the cap in each class, a PNG, a small JPEG.
FILES = [("train", "n01", "a.JPEG", (80, 60)), ("train", "n01", "b.png", (40, 50)),
         ("train", "n02", "c.JPEG", (20, 24)), ("train", "n02", "d.JPEG", (64, 100)),
         ("validation", "n01", "e.JPEG", (90, 45)), ("validation", "n02", "f.JPEG", (16, 16))]


def fake_prepared(root: Path) -> Path:
    """A folder as `core.data.prepare imagenet` writes it: split folders of class folders."""
    rng = np.random.default_rng(0)
    for split, cls, name, (w, h) in FILES:
        path = root / split / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return root


def test_packed_splits_keep_the_folders_labels_and_cap_the_shorter_side(tmp_path):
    src = fake_prepared(tmp_path / "prepared")
    (src / "boxes.csv").write_text("split,file_name,ymin,xmin,ymax,xmax\ntrain,n01/a.JPEG,0,0,1,1\n")
    counts = pack(src, tmp_path / "packed", max_side=32, workers=2)
    assert counts == {"train": 4, "validation": 2, "classes": 2}
    assert (tmp_path / "packed" / "boxes.csv").read_text() == (src / "boxes.csv").read_text()
    for split in ("train", "validation"):
        folder, packed = (build_dataset(str(p), split) for p in (src, tmp_path / "packed"))
        assert packed.classes == folder.classes == ["n01", "n02"]
        by_path = {Path(r["image"]["path"]).name: r["label"] for r in folder.data}
        assert len(packed) == len(folder) == len(by_path)
        for i, row in enumerate(packed.data):
            name = row["image"]["path"]
            assert by_path[name] == row["label"] == packed[i][1]  # the imagefolder's label
            split_, cls, file, (w, h) = next(f for f in FILES if f[2] == name)
            image = Image.open(io.BytesIO(row["image"]["bytes"]))
            assert image.format == "JPEG"
            scale = min(1.0, 32 / min(w, h))
            assert image.size == (round(w * scale), round(h * scale)), name
            if scale == 1 and file.endswith(".JPEG"):  # small JPEGs keep their own bytes
                assert row["image"]["bytes"] == (src / split_ / cls / file).read_bytes()
            assert packed[i][0].shape == (3, image.size[1], image.size[0])


def test_fmow_boxes_reach_the_training_crop_from_the_folder_and_from_the_packed_copy(tmp_path):
    from papers.tnet.preprocess import BoxedTrainSet, read_boxes

    src = fake_prepared(tmp_path / "prepared")
    (src / "boxes.csv").write_text("split,file_name,ymin,xmin,ymax,xmax\ntrain,n01/a.JPEG,0.1,0.2,0.5,0.6\n"
                                   "train,n02/d.JPEG,0,0,1,1\ntrain,n02/d.JPEG,0.5,0.5,1,1\n"
                                   "validation,n01/e.JPEG,0,0,1,1\n")
    pack(src, tmp_path / "packed", max_side=32)
    seen = []
    for folder in (src, tmp_path / "packed"):
        boxes = read_boxes(folder, "train")
        dataset = BoxedTrainSet(build_dataset(str(folder), "train"), boxes,
                                lambda image, b: seen.append(tuple(b)) or image)
        got = {}
        for i in range(len(dataset)):
            dataset[i]
            got[Path(dataset.dataset.data[i]["image"]["path"]).name] = seen[-1]
        assert got == {"a.JPEG": ((0.1, 0.2, 0.5, 0.6),), "b.png": (), "c.JPEG": (),
                       "d.JPEG": ((0.0, 0.0, 1.0, 1.0), (0.5, 0.5, 1.0, 1.0))}, folder


def test_bad_input_is_one_line(tmp_path):
    src = fake_prepared(tmp_path / "prepared")
    with pytest.raises(UserError, match="no split folders"):
        pack(src / "train", tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError, match="not empty"):
        pack(src, tmp_path / "full")
    (tmp_path / "empty" / "train" / "n01").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no images"):
        pack(tmp_path / "empty", tmp_path / "d")
    with pytest.raises(UserError, match="max_side >= 1"):
        pack(src, tmp_path / "b", max_side=0)
    pack(src, tmp_path / "packed", max_side=32)
    with pytest.raises(UserError, match=r"has no split 'test'; it has train, validation"):
        build_dataset(str(tmp_path / "packed"), "test")
    command = [sys.executable, "-m", "core.data.pack", str(tmp_path / "missing"), str(tmp_path / "c")]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "does not exist" in proc.stderr
