"""The official input pipelines at paper scale: TF's image ops (core.data.tf_image) and each paper's
pipeline (papers/<paper>/preprocess.py), checked on their distinguishing properties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.data import tf_image

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("method", tf_image.RESIZE_METHODS)
def test_every_resize_method_keeps_a_constant_image_and_the_size(method):
    out = tf_image.resize(torch.full((3, 37, 50), 0.3), (16, 23), method)
    assert out.shape == (3, 16, 23) and torch.allclose(out, torch.tensor(0.3), atol=1e-5)


def test_resize_matches_tf_conventions():
    image = torch.rand(3, 40, 60)
    bilinear = F.interpolate(image[None], size=(20, 24), mode="bilinear", antialias=False)[0]
    assert torch.allclose(tf_image.resize(image, (20, 24), "bilinear"), bilinear, atol=1e-5)
    assert torch.allclose(tf_image.resize(image, (20, 30), "area"), F.avg_pool2d(image, 2), atol=1e-5)
    nearest = F.interpolate(image[None], size=(13, 17), mode="nearest-exact")[0]
    assert torch.equal(tf_image.resize(image, (13, 17), "nearest"), nearest)
    # TF1's legacy bicubic samples input pixel i * scale: upsampling x2 keeps every even output pixel.
    assert torch.allclose(tf_image.resize(image, (80, 120), "legacy_bicubic")[:, ::2, ::2], image, atol=1e-5)
    methods = {m: tf_image.resize(image, (17, 29), m) for m in tf_image.RESIZE_METHODS}
    assert len({round(float(v.sum()), 4) for v in methods.values()}) == len(methods)  # eight distinct methods


TF_REFERENCE = Path(__file__).parent / "fixtures" / "tf_reference" / "tf_image.npz"


def test_every_op_matches_tensorflow_on_stored_outputs():
    """Side by side with TensorFlow itself: tf_image.npz holds TF's outputs (written with tensorflow-cpu by
    tests/fixtures/tf_reference/make.py; its version is stored) of every resize method at three sizes,
    RGB -> HSV and the four colour adjustments. Float32 rounding is all that may differ."""
    reference = np.load(TF_REFERENCE)
    image = torch.from_numpy(reference["image"]).permute(2, 0, 1).double()
    checked = set()
    for key in reference.files:
        op, *args = key.split("/")
        if op == "resize":
            method, size = args
            checked.add(method)
            ours = tf_image.resize(image, tuple(map(int, size.split("x"))), method)
        elif op == "rgb_to_hsv":
            ours = tf_image.rgb_to_hsv(image)
        elif op.startswith("adjust_"):
            checked.add(op)
            ours = getattr(tf_image, op)(image, float(args[0]))
        else:
            continue
        difference = np.abs(ours.permute(1, 2, 0).numpy() - reference[key]).max()
        assert difference < 1e-5, f"{key}: {difference:.1e} from TensorFlow {reference['tensorflow_version']}"
    assert checked == {*tf_image.RESIZE_METHODS, "adjust_hue", "adjust_saturation", "adjust_contrast",
                       "adjust_brightness"}


def test_sample_distorted_bounding_box_respects_its_constraints():
    g = torch.Generator().manual_seed(0)
    box = [(0.6, 0.7, 0.9, 1.0)]  # the object, in the lower right corner
    fallbacks = 0
    for _ in range(200):
        top, left, h, w = tf_image.sample_distorted_bounding_box(
            100, 160, box, min_object_covered=0.5, aspect_ratio_range=(0.5, 2.0), area_range=(0.3, 1.0),
            max_attempts=50, generator=g)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 160
        if (h, w) == (100, 160):
            fallbacks += 1
            continue  # every attempt failed: the whole image (TF's fallback)
        assert 0.3 * 16000 <= h * w and 0.5 <= w / h * (1 + 1e-9) and w / h <= 2 * (1 + 1 / h)
        inter = max(0, min(90, top + h) - max(60, top)) * max(0, min(160, left + w) - max(112, left))
        assert inter >= 0.5 * 30 * 48
    assert fallbacks < 100, fallbacks  # most draws are real samples, not the fallback


def test_hsv_round_trip_and_adjustments():
    image = torch.rand(3, 8, 8)
    assert torch.allclose(tf_image.hsv_to_rgb(tf_image.rgb_to_hsv(image)), image, atol=1e-5)
    assert torch.allclose(tf_image.adjust_hue(image, 1.0), image, atol=1e-5)  # a full turn
    grey = tf_image.adjust_saturation(image, 0.0)
    assert torch.allclose(grey, grey.max(0, keepdim=True).values.expand(3, -1, -1), atol=1e-6)  # s = 0: v
    contrast = tf_image.adjust_contrast(image, 0.0)  # per channel: each channel's mean
    assert torch.allclose(contrast, image.mean((1, 2), keepdim=True).expand(3, 8, 8), atol=1e-6)


# ---- the fast paths against straightforward references (same draws, same outputs) ----

def reference_resize(image, size, method):
    """Dense float64 (out, in) weights from `_taps` (repeated taps added up), applied as two products."""
    def dense(n_in, n_out):
        index, weight = tf_image._taps(n_in, n_out, method)
        matrix = np.zeros((n_out, n_in))
        np.add.at(matrix, (np.arange(n_out)[:, None], index), weight)
        return matrix
    (h, w), (_, H, W) = size, image.shape
    return torch.from_numpy(dense(H, h) @ image.double().numpy() @ dense(W, w).T)


def reference_hsv(image):
    """TF's rgb_to_hsv of adjust_hue_op.cc / adjust_saturation_op.cc, pixel by pixel, in float64."""
    r, g, b = image.double()
    v = torch.maximum(torch.maximum(r, g), b)
    span = v - torch.minimum(torch.minimum(r, g), b)
    s = torch.where(v > 0, span / v, 0.0)
    norm = 1 / (6 * span)
    h = torch.where(r == v, norm * (g - b),
                    torch.where(g == v, norm * (b - r) + 2 / 6, norm * (r - g) + 4 / 6))
    h = torch.where(span > 0, h, 0.0)
    return torch.where(h < 0, h + 1, h), s, v


def reference_rgb(h, s, v):
    """TF's hsv_to_rgb of the same kernels: chroma c, x = c (1 - |dh mod 2 - 1|), one case per sextant."""
    c = s * v
    dh = h * 6
    x = c * (1 - (dh % 2 - 1).abs())
    zero = torch.zeros_like(c)
    cases = ((c, x, zero), (x, c, zero), (zero, c, x), (zero, x, c), (x, zero, c), (c, zero, x))
    sextant = dh.floor() % 6
    rgb = torch.zeros(3, *c.shape, dtype=c.dtype)
    for k, case in enumerate(cases):
        rgb = torch.where(sextant == k, torch.stack(case), rgb)
    return rgb + (v - c)


def reference_adjust(image, name, factor):
    if name == "brightness":
        return image + factor
    if name == "contrast":
        mean = image.mean((-2, -1), keepdim=True)
        return (image - mean) * factor + mean
    h, s, v = reference_hsv(image)
    if name == "hue":
        return reference_rgb((h + factor) % 1, s, v)
    return reference_rgb(h, (s * factor).clamp(0, 1), v)  # saturation


def reference_distort_color(image, ordering):
    """distort_color as the official code runs it: op by op, each drawing its factor in its turn."""
    from papers.tnet.preprocess import COLOR_ORDERS, COLOR_RANGES

    if ordering == 4:
        return image
    for name in COLOR_ORDERS[ordering]:
        if image.shape[0] == 3 or name in ("brightness", "contrast"):
            lo, hi = COLOR_RANGES[name]
            image = reference_adjust(image, name, lo + (hi - lo) * torch.rand(()).item())
    return image.clamp(0, 1)


def made_image(seed, channels=3, size=(37, 52)):
    """Random pixels with the cases the HSV ops branch on: grey (chroma 0), black, and pure 0/1 channels."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(channels, *size, generator=g)
    image[:, :3] = image[:1, :3]  # grey
    image[:, 3, :5] = 0
    image[0, 4], image[-1, 5], image[-1, 6, :4] = 1, 0, 1
    return image


@pytest.mark.parametrize("method", tf_image.RESIZE_METHODS)
def test_resize_matches_dense_reference_on_crops_and_sizes(method):
    image = made_image(0, size=(75, 100))
    for top, left, h, w in ((0, 0, 75, 100), (3, 7, 60, 81), (10, 20, 5, 3), (0, 0, 1, 1)):
        crop = image[:, top:top + h, left:left + w]  # a view, as the pipelines pass it
        for size in ((32, 32), (17, 45), (90, 120), (1, 3)):
            ours = tf_image.resize(crop, size, method)
            assert ours.shape == (3, *size) and ours.is_contiguous()
            assert (ours - reference_resize(crop, size, method)).abs().max() <= 1e-5, (method, h, w, size)
        # its sparse matrices are coalesced as built (the flag is set, not checked, in _matrix)
        for n_out in (1, 32, 150):
            matrix = tf_image._matrix(h, n_out, method, torch.float32)
            assert torch.equal(matrix.indices(), torch.sparse_coo_tensor(
                matrix.indices(), matrix.values(), matrix.shape, check_invariants=True).coalesce().indices())


@pytest.mark.parametrize("delta", [-0.45, -0.2, 0.0, 0.13, 0.2, 1.3])
def test_hsv_ops_match_tf_kernels_pixel_by_pixel(delta):
    image = made_image(1) * 1.3 - 0.15  # brightness takes pixels out of [0, 1]; TF's ops do not clip
    factor = 1 + delta  # 0.55 to 2.3
    for ours, reference in (
            (tf_image.adjust_hue(image, delta), reference_adjust(image, "hue", delta)),
            (tf_image.adjust_saturation(image, factor), reference_adjust(image, "saturation", factor)),
            (tf_image.adjust_saturation_and_hue(image, factor, delta),
             reference_adjust(reference_adjust(image, "saturation", factor), "hue", delta)),
            (tf_image.adjust_saturation_and_hue(image, factor, delta),
             reference_adjust(reference_adjust(image, "hue", delta), "saturation", factor)),
            (tf_image.adjust_contrast(image, factor), reference_adjust(image, "contrast", factor))):
        assert (ours - reference).abs().max() <= 1e-5


@pytest.mark.parametrize("channels", [3, 1])
def test_distort_color_matches_the_op_by_op_reference_with_the_same_draws(channels):
    from papers.tnet.preprocess import distort_color

    for ordering in range(5):
        for seed in range(3):
            image = made_image(seed, channels)
            torch.manual_seed(seed)
            ours, next_ours = distort_color(image.clone(), ordering), torch.rand(())
            torch.manual_seed(seed)
            reference, next_reference = reference_distort_color(image, ordering), torch.rand(())
            assert (ours - reference).abs().max() <= 1e-5, (ordering, seed)
            assert next_ours == next_reference  # as many draws, in the same order


def test_tnet_and_saccader_train_transforms_match_their_references_seed_for_seed():
    from papers.saccader import preprocess as saccader
    from papers.tnet import preprocess as tnet

    def tnet_reference(image, size):
        top, left, h, w = tf_image.sample_distorted_bounding_box(
            *image.shape[-2:], (), min_object_covered=0.1, aspect_ratio_range=(0.5, 2.0),
            area_range=(0.85, 1.0), max_attempts=50)
        method = tnet.RESIZE_METHODS[int(torch.randint(len(tnet.RESIZE_METHODS), ()))]
        out = reference_resize(image[:, top:top + h, left:left + w], (size, size), method)
        out = out.flip(-1) if torch.rand(()) < 0.5 else out
        ordering = int(torch.randint(5, ()))
        return reference_distort_color(out, ordering) * 2 - 1, (method, ordering)

    def saccader_reference(image, size):
        top, left, h, w = tf_image.sample_distorted_bounding_box(
            *image.shape[-2:], min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0), max_attempts=100)
        out = reference_resize(image[:, top:top + h, left:left + w], (size, size), "legacy_bicubic")
        mean, std = torch.tensor(saccader.MEAN_RGB).double(), torch.tensor(saccader.STDDEV_RGB).double()
        out = (out - mean[:, None, None]) / std[:, None, None]
        return (out.flip(-1) if torch.rand(()) < 0.5 else out), None

    drawn = set()
    for transform, reference in ((tnet.TrainTransform(24), tnet_reference),
                                 (saccader.TrainTransform(24), saccader_reference)):
        for seed in range(60):
            image = made_image(seed)
            torch.manual_seed(seed)
            ours, next_ours = transform(image.clone()), torch.rand(())
            torch.manual_seed(seed)
            (expected, case), next_reference = reference(image, 24), torch.rand(())
            assert (ours - expected).abs().max() <= 1e-5 and next_ours == next_reference, seed
            drawn.add(case)
    drawn.discard(None)
    assert {m for m, _ in drawn} == set(tnet.RESIZE_METHODS) and {k for _, k in drawn} == set(range(5))


# ---- TNet (input_imagenet.py) ----

def test_tnet_colour_schedule_leaves_a_fifth_undistorted(monkeypatch):
    from papers.tnet import preprocess

    drawn = []
    original = preprocess.distort_color
    monkeypatch.setattr(preprocess, "distort_color", lambda x, k: drawn.append(k) or original(x, k))
    torch.manual_seed(0)
    transform = preprocess.TrainTransform(8)
    for _ in range(1000):
        transform(torch.rand(3, 10, 12))
    counts = torch.bincount(torch.tensor(drawn), minlength=5).float() / len(drawn)
    assert counts.shape == (5,) and abs(counts[4] - 0.2) < 0.04 and counts.min() > 0.15
    image = torch.rand(3, 6, 6)
    assert torch.equal(original(image, 4), image)  # case 4: untouched
    torch.manual_seed(1)
    a = original(image, 0)
    torch.manual_seed(1)
    assert not torch.allclose(a, original(image, 3))  # the orders differ


def test_tnet_eval_resize_is_not_antialiased():
    from papers.tnet.preprocess import EvalTransform

    stripes = torch.zeros(3, 90, 90)
    stripes[..., ::3] = 1.0  # one bright column in three
    out = (EvalTransform(30)(stripes) + 1) / 2
    sharp = F.interpolate(stripes[None], size=(30, 30), mode="bilinear", antialias=False)[0]
    smooth = F.interpolate(stripes[None], size=(30, 30), mode="bilinear", antialias=True)[0]
    assert torch.allclose(out, sharp, atol=1e-6) and not torch.allclose(out, smooth, atol=0.05)


# ---- Saccader (data_provider.py) ----

def test_saccader_eval_is_the_central_224_of_246_crop_resized_bicubically():
    from papers.saccader.preprocess import MEAN_RGB, STDDEV_RGB, EvalTransform, center_crop_box

    assert center_crop_box(300, 400, 224, 22) == (14, 64, 273)  # int(224/246 * 300), ((H - side) + 1) // 2
    image = torch.zeros(3, 300, 400)  # zero outside the crop window, MEAN_RGB + STDDEV_RGB inside it
    window = (torch.tensor(MEAN_RGB) + torch.tensor(STDDEV_RGB))[:, None, None]
    image[:, 14:14 + 273, 64:64 + 273] = window
    out = EvalTransform(224)(image)
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out, torch.ones(()), atol=1e-5)  # nothing from outside the window


def test_saccader_train_standardises_and_flips():
    from papers.saccader.preprocess import MEAN_RGB, TrainTransform

    torch.manual_seed(0)
    constant = torch.tensor(MEAN_RGB)[:, None, None].expand(3, 50, 70)
    assert torch.allclose(TrainTransform(32)(constant), torch.zeros(()), atol=1e-5)  # (x - mean) / std
    ramp = torch.linspace(0, 1, 64).expand(3, 64, 64)  # brighter to the right
    slopes = [float(torch.sign(out[0, :, -1].mean() - out[0, :, 0].mean()))
              for out in (TrainTransform(16)(ramp) for _ in range(200))]
    assert 60 < slopes.count(-1.0) < 140  # flipped about half the time


@pytest.mark.smoke
def test_saccader_labels_shift_by_one_for_the_background_class(tmp_path):
    import numpy as np
    from PIL import Image

    from papers.saccader.config import get_config
    from papers.saccader.data import build_datasets

    for c in range(1000):  # ImageNet's 1,000 classes, one tiny image each, in train/ and validation/
        for split in ("train", "validation"):
            (tmp_path / split / f"n{c:08d}").mkdir(parents=True)
            Image.fromarray(np.full((8, 10, 3), c % 256, np.uint8)).save(tmp_path / split / f"n{c:08d}/0.png")
    cfg = get_config("imagenet")
    cfg.dataset, cfg.image_size = str(tmp_path), 16
    train_set, eval_set = build_datasets(cfg)
    labels = {eval_set[i][1] for i in range(len(eval_set))}
    assert labels == set(range(1, 1001)) and len(train_set) == 1000  # 0 = background, never a target
    image, label = eval_set[0]
    assert image.shape == (3, 16, 16) and label == 1  # class n00000000


# ---- BOED (ps-nogs: mea/dataset.py, mea/variational_cnn/loader.py, hq_loader.py) ----

def test_boed_design_and_hard_attention_normalisations_and_flips():
    from papers.boed.preprocess import DESIGN_MEAN, DESIGN_STD, random_hflip
    from papers.boed.splits import Split

    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    x = images.float() / 255
    split = Split(images, torch.zeros(4, 1), normalise=True)
    mean, std = torch.tensor(DESIGN_MEAN)[:, None, None], torch.tensor(DESIGN_STD)[:, None, None]
    assert torch.allclose(split.images_float(design=True), (x - mean) / std, atol=1e-6)  # g, retrieval, EPE
    assert torch.allclose(split.images_float(), (x - 0.5) / 0.5)  # the hard-attention network
    assert torch.equal(Split(images, torch.zeros(4, 1)).images_float(design=True), x)  # CPU proxy: [0, 1]
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, 8).expand(400, 1, 8, 8)
    flipped = (random_hflip(ramp)[..., 0] > 0.5).all(-1).flatten().float().mean()
    assert 0.4 < flipped < 0.6


def test_tnet_fmow_training_crop_is_constrained_by_the_prepared_boxes(tmp_path, monkeypatch):
    from core.data.prepare import prepare
    from papers.tnet.config import get_config
    from papers.tnet.data import build_datasets
    from tests.test_prepare import fake_fmow

    fake_fmow(tmp_path / "src")
    prepare("fmow", tmp_path / "src", tmp_path / "fmow", max_side=100)
    seen = []
    original = tf_image.sample_distorted_bounding_box
    monkeypatch.setattr(tf_image, "sample_distorted_bounding_box", lambda h, w, boxes, **kw: seen.append(
        [tuple(round(v, 4) for v in b) for b in boxes]) or original(h, w, boxes, **kw))
    cfg = get_config("fmow")
    cfg.dataset, cfg.num_classes, cfg.image_size, cfg.base_res = str(tmp_path / "fmow"), 2, 32, 16
    train_set, eval_set = build_datasets(cfg)
    image, label = train_set[0]
    assert image.shape == (3, 32, 32) and label in (0, 1) and eval_set[0][0].shape == (3, 32, 32)
    assert seen == [[(round(2 / 1200, 4), round(4 / 2400, 4), round(10 / 1200, 4), round(14 / 2400, 4))]]
