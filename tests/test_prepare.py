"""core.data.prepare on tiny fakes of each dataset's real distribution layout (built here, offline),
and the prepared folders read back by core.data.build_dataset."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import build_dataset
from core.data.pack import pack
from core.data.prepare import prepare
from core.errors import UserError

pytestmark = pytest.mark.unit

WNIDS = ("n01440764", "n01443537", "n01484850")  # devkit IDs 3, 1, 2 below: not alphabetical


def _jpeg(path: Path, size=(12, 9), value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def fake_ilsvrc(root: Path, kaggle: bool = False) -> list[str]:
    """ILSVRC2012 as distributed: train/<wnid>/, 6 flat validation JPEGs, labels in the devkit (or the
    Kaggle solution file). Returns the true WNID of each validation image; image i has pixel value 40 * i."""
    truth = [WNIDS[i % 3] for i in (2, 0, 1, 1, 0, 2)]
    base = root / "ILSVRC/Data/CLS-LOC" if kaggle else root
    for w in WNIDS:
        for k in range(2):
            _jpeg(base / "train" / w / f"{w}_{k}.JPEG")
    for i in range(len(truth)):
        _jpeg(base / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG", value=40 * i)
    if kaggle:
        with (root / "LOC_val_solution.csv").open("w") as f:
            f.write("ImageId,PredictionString\n")
            for i, w in enumerate(truth):
                f.write(f"ILSVRC2012_val_{i + 1:08d},{w} 1 2 3 4 {w} 5 6 7 8\n")
        return truth
    import scipy.io

    ids = {WNIDS[0]: 3, WNIDS[1]: 1, WNIDS[2]: 2}
    synsets = np.array([(ids[w], w, 0) for w in WNIDS] + [(1001, "n00001740", 3)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w in truth))
    return truth


@pytest.mark.parametrize("kaggle", [False, True])
def test_imagenet_validation_sorted_into_synsets(tmp_path, kaggle):
    truth = fake_ilsvrc(tmp_path / "src", kaggle)
    counts = prepare("imagenet", tmp_path / "src", tmp_path / "dst")
    assert counts == {"train": 6, "validation": 6, "classes": 3}
    val = build_dataset(str(tmp_path / "dst"), "validation", num_classes=3)
    assert val.classes == sorted(WNIDS)
    for image, label in (val[i] for i in range(len(val))):
        i = round(float(image[0, 0, 0]) * 255 / 40)  # which validation file this is
        assert val.classes[label] == truth[i]
    assert len(build_dataset(str(tmp_path / "dst"), "train", num_classes=3)) == 6


def test_imagenet_needs_labels(tmp_path):
    fake_ilsvrc(tmp_path / "src")
    (tmp_path / "src/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").unlink()
    with pytest.raises(UserError, match="ILSVRC2012_validation_ground_truth"):
        prepare("imagenet", tmp_path / "src", tmp_path / "dst")


def fake_fmow(root: Path) -> None:
    """fMoW-rgb: train/val/<cat>/<cat>_<n>/<cat>_<n>_<k>_rgb.{jpg,json}, test/<id>/ + test_gt + mapping."""
    def annotated(folder: Path, stem: str, category: str | None, size=(40, 20)):
        _jpeg(folder / f"{stem}_rgb.jpg", size)
        boxes = [{"box": [4, 2, 10, 8], "ID": 7, **({"category": category} if category else {})},
                 {"box": [0, 0, 1, 1], "ID": -1, **({"category": category} if category else {})}]
        (folder / f"{stem}_rgb.json").write_text(json.dumps({"bounding_boxes": boxes}))

    for split in ("train", "val"):
        for cat in ("airport", "zoo"):
            for n in range(2):
                annotated(root / split / cat / f"{cat}_{n}", f"{cat}_{n}_0", cat, size=(2400, 1200))
    mapping = []
    for n, cat in enumerate(("airport", "zoo")):
        test_id = f"00119{n}"
        annotated(root / "test" / test_id, f"{test_id}_0", None)
        annotated(root / "test_gt" / cat / f"{cat}_{n}", f"{cat}_{n}_0", cat)
        mapping.append({"input": f"test_gt/{cat}/{cat}_{n}", "output": f"test/{test_id}"})
    (root / "test_gt_mapping.json").write_text(json.dumps(mapping))


def test_fmow_category_folders_matched_test_capped_side_and_boxes(tmp_path):
    fake_fmow(tmp_path / "src")
    counts = prepare("fmow", tmp_path / "src", tmp_path / "dst", max_side=100)
    assert counts == {"train": 4, "validation": 4, "test": 2, "classes": 2}
    dst = tmp_path / "dst"
    assert sorted(p.name for p in (dst / "train").iterdir()) == ["airport", "zoo"]  # no instance folders
    assert (dst / "test/zoo/zoo_1_0_rgb.jpg").is_file()  # test image named and filed by its ground truth
    with Image.open(dst / "train/airport/airport_0_0_rgb.jpg") as image:
        assert image.size == (200, 100)  # shorter side capped, aspect kept
    rows = list(csv.DictReader((dst / "boxes.csv").open()))
    assert len(rows) == 10  # one box per image: the ID -1 box is dropped
    row = next(r for r in rows if r["file_name"] == "airport/airport_0_0_rgb.jpg" and r["split"] == "train")
    assert [float(row[k]) for k in ("ymin", "xmin", "ymax", "xmax")] == pytest.approx(
        [2 / 1200, 4 / 2400, 10 / 1200, 14 / 2400], abs=1e-6)
    test = build_dataset(str(dst), "test", num_classes=2)
    assert test.classes == ["airport", "zoo"] and len(test) == 2


def test_fmow_test_needs_ground_truth(tmp_path):
    fake_fmow(tmp_path / "src")
    (tmp_path / "src/test_gt_mapping.json").unlink()
    with pytest.raises(UserError, match="--no-test"):
        prepare("fmow", tmp_path / "src", tmp_path / "dst")


def fake_celeba_hq(root: Path, n: int = 12) -> np.ndarray:
    """CelebAMask-HQ: CelebA-HQ-img/<i>.jpg and the attribute file ({-1, 1}); returns the attributes."""
    from papers.boed.config import CELEBA_ATTRIBUTES

    rng = np.random.default_rng(0)
    attrs = rng.choice([-1, 1], size=(n, 40))
    for i in range(n):
        _jpeg(root / "CelebA-HQ-img" / f"{i}.jpg", (32, 32), value=10 * i)
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES)] + [f"{i}.jpg " + " ".join(map(str, a))
                                                    for i, a in enumerate(attrs)]
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text("\n".join(lines) + "\n")
    return attrs


def test_celeba_hq_imagefolder_with_attributes_in_index_order(tmp_path):
    from papers.boed.config import CELEBA_ATTRIBUTES

    attrs = fake_celeba_hq(tmp_path / "src")
    counts = prepare("celeba-hq", tmp_path / "src", tmp_path / "dst", size=16)
    assert counts == {"train": 12, "attributes": 40}
    ds = build_dataset(str(tmp_path / "dst"), "train", label_column=list(CELEBA_ATTRIBUTES))
    assert len(ds) == 12
    for i in (0, 3, 10, 11):  # 10 and 11 would come before 2 if names were not zero-padded
        image, labels = ds[i]
        assert image.shape == (3, 16, 16)
        assert labels.tolist() == (attrs[i] > 0).astype(float).tolist()


def _boed_config(dataset: Path, **kw):
    import dataclasses

    from papers.boed.config import get_config

    return dataclasses.replace(get_config("celeba-hq"), dataset=str(dataset), tasks=("Smiling", "Male"),
                               image_size=32, train_size=10, design_size=4, sequences_per_task=2, val_size=2,
                               test_size=4, database_size=3, **kw)


def test_boed_paper_scale_loader_decodes_once_in_workers_into_a_file_backed_array(tmp_path, monkeypatch):
    """BOED at paper scale: the train / val / test ranges and the retrieval database carved from the
    training range are decoded once (each image read once), by DataLoader workers, into an array backed by a
    deleted file in the run folder (so the page cache, not the process, holds the pixels, and nothing is left
    behind), with the values the in-memory path had."""
    import core.data
    from papers.boed.config import CELEBA_ATTRIBUTES
    from papers.boed.splits import load_data

    attrs = fake_celeba_hq(tmp_path / "src", n=16)
    prepare("celeba-hq", tmp_path / "src", tmp_path / "celeba", size=32)
    reads, build = [], core.data.build_dataset

    class Counting(torch.utils.data.Dataset):
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            reads.append(i)
            return self.ds[i]

    def counting(*args, **kw):
        return Counting(build(*args, **kw))

    (tmp_path / "run").mkdir()
    monkeypatch.setattr(core.data, "build_dataset", counting)  # num_workers=0: reads counted in-process
    data = load_data(_boed_config(tmp_path / "celeba", num_workers=0), folder=tmp_path / "run")
    assert sorted(reads) == list(range(16))  # 10 + 2 + 4 images once each; the database (4..6) not again
    monkeypatch.setattr(core.data, "build_dataset", build)
    assert data["database"].images.data_ptr() == data["train"].images[4].data_ptr()  # a view, no copy
    smiling, male = CELEBA_ATTRIBUTES.index("Smiling"), CELEBA_ATTRIBUTES.index("Male")
    assert data["test"].labels.tolist() == (attrs[12:16][:, [smiling, male]] > 0).astype(float).tolist()
    assert not data["database"].labels.any()  # database labels are never used
    ds = build(str(tmp_path / "celeba"), "train", image_size=32, channels=3, label_column=["Smiling", "Male"])
    assert torch.equal(data["val"].images[1], (ds[11][0] * 255).round().to(torch.uint8))

    workers = load_data(_boed_config(tmp_path / "celeba", num_workers=1), folder=tmp_path / "run")
    for split in ("train", "val", "test", "database"):
        assert torch.equal(workers[split].images, data[split].images)
        assert torch.equal(workers[split].labels, data[split].labels)
    maps = Path("/proc/self/maps").read_text().splitlines()
    assert any(f"{tmp_path / 'run'}/" in m and m.endswith("(deleted)") for m in maps)  # file-backed, unlinked
    assert not any((tmp_path / "run").iterdir())


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_mnist(root: Path, n_train: int = 20, n_test: int = 10) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_mnist_idx_decompressed_and_checked(tmp_path):
    fake_mnist(tmp_path / "src")
    assert prepare("mnist", tmp_path / "src", tmp_path / "dst") == {"train": 20, "test": 10}
    assert (tmp_path / "dst/train-images-idx3-ubyte").is_file()
    assert len(build_dataset(str(tmp_path / "dst"), "test", num_classes=10)) == 10


FLICKR_WORDS = ("dog", "runs", "on", "grass", "child", "climbs", "stairs")


def fake_flickr8k(root: Path, n: int = 6) -> list[str]:
    """Flickr8k_Dataset.zip and Flickr8k_text.zip unpacked into one folder as distributed: the images in
    Flicker8k_Dataset/ (sic, with the archive's __MACOSX/ beside it), and in Flickr8k_text/ the tab-separated
    "<image>#<k>\\t<caption>" token file (with its stray "<image>.jpg.1" group of an image no split lists,
    CRLF line ends), the split lists, the lemmatised captions and readme. Returns the image names."""
    names = [f"{1000268201 + i}_{i:010x}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        _jpeg(root / "Flicker8k_Dataset" / name, (50 + 4 * i, 37), value=30 * i)
    _jpeg(root / "__MACOSX" / "Flicker8k_Dataset" / f"._{names[0]}")
    text = root / "Flickr8k_text"
    text.mkdir()
    lines = [f"{name}#{k}\tA {FLICKR_WORDS[(i + k) % 7]} {FLICKR_WORDS[k % 7]} , {i} ."
             for i, name in enumerate(names) for k in range(5)]
    lines += [f"2258277193_586949ec62.jpg.1#{k}\tA stray caption ." for k in range(5)]
    (text / "Flickr8k.token.txt").write_bytes("\r\n".join(lines).encode() + b"\r\n")
    (text / "Flickr8k.lemma.token.txt").write_text("\n".join(lines) + "\n")
    (text / "readme.txt").write_text("Flickr8k\n")
    for split, chosen in (("train", names[:-2]), ("dev", names[-2:-1]), ("test", names[-1:])):
        (text / f"Flickr_8k.{split}Images.txt").write_text("\n".join(chosen) + "\n")
    return names


def test_flickr8k_read_as_distributed(tmp_path):
    from core.data.captions import build_caption_dataset

    names = fake_flickr8k(tmp_path / "flickr8k")
    train = build_caption_dataset(str(tmp_path / "flickr8k"), "train", image_size=16, min_count=1)
    assert train.num_images == 4 and len(train) == 20  # 5 (image, caption) pairs per listed image
    assert train.references(1)[2] == ["a", FLICKR_WORDS[3], FLICKR_WORDS[2], "1"]  # lower case, no "," or "."
    assert "stray" not in train.vocab.stoi  # the unlisted .jpg.1 group is ignored
    image, _, _ = train[0]
    assert image.shape == (3, 16, 16)
    test = build_caption_dataset(str(tmp_path / "flickr8k"), "test", image_size=16, vocab=train.vocab,
                                 pairs=False)
    assert len(test) == 1 and len(test.references(0)) == 5
    assert float(test[0][0].mean()) == pytest.approx(30 * (len(names) - 1) / 255, abs=0.02)


def test_cli_one_line_error(tmp_path):
    (tmp_path / "src").mkdir()
    r = subprocess.run([sys.executable, "-m", "core.data.prepare", "celeba-hq", str(tmp_path / "src"),
                        str(tmp_path / "dst")], capture_output=True, text=True)
    assert r.returncode == 2 and "CelebA-HQ-img" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---- loaders refuse what they cannot read correctly (one line naming the problem and the fix) ----

def test_flat_split_folder_is_refused_naming_it(tmp_path):
    fake_ilsvrc(tmp_path / "src")  # train/<wnid>/ and the flat val/ as downloaded
    with pytest.raises(UserError, match=r"val holds images but no class subfolders.*prepare imagenet"):
        build_dataset(str(tmp_path / "src"), "train")


def test_fmow_as_downloaded_is_refused(tmp_path):
    fake_fmow(tmp_path / "src")
    with pytest.raises(UserError, match=r"airport holds folders.*prepare fmow"):
        build_dataset(str(tmp_path / "src"), "train")
    for name in ("airport_0", "airport_1", "zoo_0"):  # instance folders used as classes
        _jpeg(tmp_path / "inst" / "train" / name / "a.jpg")
    with pytest.raises(UserError, match=r"airport_0, airport_1, \.\.\.\) are instances"):
        build_dataset(str(tmp_path / "inst"), "train")
    for c in range(3):  # one prefix, numbered: a legitimate naming of classes
        _jpeg(tmp_path / "digits" / "train" / f"digit_{c}" / "a.jpg")
    assert build_dataset(str(tmp_path / "digits"), "train", num_classes=3).classes == ["digit_0", "digit_1",
                                                                                      "digit_2"]


def test_class_count_must_match_num_classes(tmp_path):
    fake_ilsvrc(tmp_path / "src")
    prepare("imagenet", tmp_path / "src", tmp_path / "dst")
    with pytest.raises(UserError, match="has 3 classes .* num_classes = 1000; set num_classes=3"):
        build_dataset(str(tmp_path / "dst"), "train", num_classes=1000)


@pytest.mark.parametrize("name", ["imagenet", "celeba-hq", "fmow", "ILSVRC/imagenet-1k"])
def test_dataset_names_point_to_the_preparation(tmp_path, name):
    kind = {"ILSVRC/imagenet-1k": "imagenet"}.get(name, name)
    with pytest.raises(UserError, match=rf"python -m core.data.prepare {kind} SRC DST.*--set dataset=DST"):
        build_dataset(name, "train", cache_dir=str(tmp_path / "cache"))


# ---- one training step of the paper-scale configs on prepared fakes ----

@pytest.mark.smoke
def test_wsram_paper_config_trains_on_a_real_mnist_idx_folder(tmp_path, training_log):
    from papers.wsram.config import get_config
    from papers.wsram.train import build_datasets, main

    fake_mnist(tmp_path / "src", n_train=30, n_test=12)
    prepare("mnist", tmp_path / "src", tmp_path / "mnist")
    cfg = get_config("paper")
    cfg.dataset, cfg.train_size, cfg.test_size = str(tmp_path / "mnist"), 50, 10
    train_set, test_set = build_datasets(cfg)
    assert train_set[0][0].shape == (1, 100, 100) and len(train_set._pool) == 30 and len(test_set._pool) == 12
    out = tmp_path / "run"
    sets = [f"dataset={tmp_path / 'mnist'}", "train_size=8", "test_size=4", "max_steps=1", "batch_size=2",
            "log_every=1", "eval_every=1", "train_probe_size=2", "grad_probes=2", "checkpoint_every=0"]
    main(["--config", "paper", "--output-dir", str(out), *sum((["--set", s] for s in sets), [])])
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["steps"] == 1 and 0 <= final["test_error"] <= 1 and training_log(out) == ([None], 1)
    with pytest.raises(UserError, match="nor an MNIST IDX folder"):
        get_config("paper").__class__(dataset=str(tmp_path / "src/nothing"))


def _train(paper: str, config: str, out: Path, sets: list[str]) -> dict:
    import importlib

    main = importlib.import_module(f"papers.{paper}.train").main
    main(["--config", config, "--output-dir", str(out), *sum((["--set", s] for s in sets), [])])
    return json.loads((out / "final_metrics.json").read_text())


@pytest.mark.slow
def test_tnet_imagenet_and_fmow_paper_configs_train_one_step_on_prepared_and_packed_fakes(tmp_path,
                                                                                          training_log):
    fake_ilsvrc(tmp_path / "ilsvrc")
    prepare("imagenet", tmp_path / "ilsvrc", tmp_path / "imagenet")
    common = ["batch_size=2", "max_steps=1", "measure_cost=false", "checkpoint_every=0", "log_every=1"]
    fake_fmow(tmp_path / "fmow_src")
    prepare("fmow", tmp_path / "fmow_src", tmp_path / "fmow", max_side=100)
    pack(tmp_path / "fmow", tmp_path / "fmow_packed", max_side=64)  # the faster pipeline reads the same
    runs = (("imagenet", "imagenet", 3), ("fmow", "fmow", 2), ("fmow", "fmow_packed", 2))
    for config, data, classes in runs:
        out = tmp_path / f"run_{data}"
        sets = [f"dataset={tmp_path / data}", f"num_classes={classes}", *common]
        metrics = _train("tnet", config, out, sets)
        assert 0 <= metrics["accuracy"] <= 1 and training_log(out) == ([None], 1), data
        assert json.loads((out / "config.json").read_text())["dataset"] == str(tmp_path / data)


@pytest.mark.slow
def test_saccader_imagenet_paper_config_trains_every_stage_on_a_prepared_fake(tmp_path, training_log):
    fake_ilsvrc(tmp_path / "ilsvrc")
    prepare("imagenet", tmp_path / "ilsvrc", tmp_path / "imagenet")
    metrics = _train("saccader", "imagenet", tmp_path / "run", [
        f"dataset={tmp_path / 'imagenet'}", "num_classes=3", "batch_size=2", "representation.steps=1",
        "location.steps=1", "policy.steps=1", "checkpoint_every=0", "log_every=1"])
    assert 0 <= metrics["test_accuracy"] <= 1
    stages, _ = training_log(tmp_path / "run")
    assert stages == ["representation", "saccader/location", "saccader/policy"], stages


@pytest.mark.slow
def test_boed_celeba_hq_paper_config_trains_on_a_prepared_fake(tmp_path, training_log):
    fake_celeba_hq(tmp_path / "src", n=16)
    prepare("celeba-hq", tmp_path / "src", tmp_path / "celeba", size=32)
    metrics = _train("boed", "celeba-hq", tmp_path / "run", [
        f"dataset={tmp_path / 'celeba'}", "tasks=Smiling,Male", "image_size=32", "lattice=5",
        "sequences_per_task=2", "design_size=4", "train_size=10", "val_size=2", "test_size=4",
        "database_size=2", "num_samples=4", "posterior_steps=1", "posterior_batch_size=4", "max_steps=1",
        "batch_size=4", "eval_every=1", "replicates=1", "heatmap_images=2", "num_workers=1",
        "checkpoint_every=0", "log_every=1"])
    assert 0 <= metrics["accuracy"] <= 1 and metrics["glimpses"] > 0 and metrics["mults"] > 0
    stages, _ = training_log(tmp_path / "run")
    assert stages == ["attention", "posterior", "summary"], stages
    for task in ("Smiling", "Male"):  # the designed glimpse sequences, 2 per task
        assert len(list((tmp_path / "run" / "sequences" / task).glob("*.txt"))) == 2, task


@pytest.mark.slow
def test_wsram_flickr8k_paper_config_trains_one_step_on_the_download_as_distributed(tmp_path):
    fake_flickr8k(tmp_path / "flickr8k")  # read as downloaded: Flickr8k needs no preparation
    metrics = _train("wsram.captions", "flickr8k", tmp_path / "run", [
        f"dataset={tmp_path / 'flickr8k'}", "batch_size=2", "max_steps=1", "probe_size=2", "log_every=1",
        "checkpoint_every=0", "num_workers=0"])
    assert metrics["steps"] == 1 and 0 <= metrics["bleu1"] <= 100 and metrics["test_nll"] > 0
