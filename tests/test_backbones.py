"""Backbones: exact paper parameter counts, output shapes, FLOPs (multiplications, TNet eq. 11),
receptive fields, TF padding/init conventions and the registry.

Full-size networks are built on the meta device: shapes, parameter counts and FlopCounterMode work
there without allocating or computing anything, so the paper-scale checks take milliseconds.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from core.backbones import build_backbone, list_backbones
from core.backbones.bagnet import BatchNorm2d, Conv2dSame, PointwiseConv, keras_init_, pad_same
from core.backbones.densenet import DenseNet121, densenet121_from_imagenet
from core.backbones.efficientnet import MBConv, se_multiplications
from core.errors import UserError
from core.metrics import count_multiplications, count_parameters

NAMES = ["bagnet77_tnet", "bagnet77_lowd", "resnet_v2_50", "efficientnet_b0"]


def meta(name, **kwargs):
    with torch.device("meta"):
        return build_backbone(name, **kwargs).eval()


def meta_image(size, channels=3):
    return torch.zeros(1, channels, size, size, device="meta")


def shapes(features):
    return {k: tuple(v.shape) for k, v in features.items()}


# ----------------------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("name, kwargs, total, trainable", [
    ("bagnet77_tnet", {"num_classes": 1000}, 20_546_664, 20_546_664),  # TNet Table 1: 20.55M, no BN
    ("bagnet77_lowd", {"num_classes": 1001}, 20_628_393, 20_574_249),  # Saccader Table Supp.1
    ("resnet_v2_50", {"num_classes": 1001}, 25_615_849, None),  # Saccader Table Supp.1
    ("efficientnet_b0", {"num_classes": 62}, 4_128_986, 4_086_970),  # TNet Table 2: 4.13M
    ("densenet121", {"num_classes": 1000}, 8_062_504, 7_978_856),  # torchvision's densenet121: 7,978,856
])
def test_paper_parameter_counts(name, kwargs, total, trainable):
    model = meta(name, **kwargs)
    assert count_parameters(model) == total
    if trainable is not None:
        assert count_parameters(model, include_bn_stats=False) == trainable
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable


def test_efficientnet_non_trainable_values_are_bn_moving_stats():
    model = meta("efficientnet_b0", num_classes=62)
    bn_channels = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn_channels == 21_008
    assert count_parameters(model) - count_parameters(model, include_bn_stats=False) == 2 * bn_channels


def test_dram_glimpse_network_count():
    # DRAM (45,610,219, Saccader Table Supp.1) = this + LSTM(2048->1024) + LSTM(1024->1024) with TF's
    # single bias per gate + linear 1024->1001 + emission 1024->2.
    glimpse = meta("resnet_v2_50", num_classes=None, in_channels=15)
    lstms = 4 * 1024 * (2048 + 1024 + 1) + 4 * 1024 * (1024 + 1024 + 1)
    assert count_parameters(glimpse) == 23_602_432
    assert count_parameters(glimpse) + lstms + 1024 * 1001 + 1001 + 1024 * 2 + 2 == 45_610_219


@pytest.mark.parametrize("name", NAMES)
def test_width_multiplier_shrinks_params_but_not_the_construction(name):
    kwargs = {"num_classes": 10}
    full, small = meta(name, **kwargs), meta(name, width=0.25, **kwargs)
    assert count_parameters(small) < count_parameters(full) / 4
    layout = [[(type(m).__name__, m.kernel_size, m.stride, m.groups > 1) for m in net.modules()
               if isinstance(m, torch.nn.Conv2d)] for net in (full, small)]
    assert layout[0] == layout[1]
    size = 77 if name.startswith("bagnet") else 224
    full_maps, small_maps = (shapes(net.forward_features(meta_image(size))) for net in (full, small))
    assert full_maps.keys() == small_maps.keys()
    assert all(full_maps[k][2:] == small_maps[k][2:] for k in full_maps)
    assert small(meta_image(size)).shape == (1, 10)


# ----------------------------------------------------------------------------- output shapes

def test_bagnet77_tnet_shapes():
    model = meta("bagnet77_tnet", num_classes=1000)
    assert shapes(model.forward_features(meta_image(77))) == {
        "stage3": (1, 1024, 9, 9), "map": (1, 512, 7, 7), "pooled": (1, 512)}
    assert model(meta_image(77)).shape == (1, 1000)
    assert model.forward_features(meta_image(224))["map"].shape == (1, 512, 25, 25)
    assert meta("bagnet77_tnet", num_classes=None)(meta_image(77)).shape == (1, 512)


def test_bagnet77_lowd_shapes_361_locations():
    model = meta("bagnet77_lowd")
    out = shapes(model.forward_features(meta_image(224)))
    assert out == {"features": (1, 2048, 19, 19), "what": (1, 512, 19, 19), "logits_map": (1, 1001, 19, 19)}
    assert out["logits_map"][2] * out["logits_map"][3] == 361
    assert model(meta_image(224)).shape == (1, 1001)
    assert model.forward_features(meta_image(77))["logits_map"].shape == (1, 1001, 1, 1)


def test_resnet_v2_50_shapes_and_strides():
    model = meta("resnet_v2_50")
    assert shapes(model.forward_features(meta_image(224))) == {"map": (1, 2048, 7, 7), "pooled": (1, 2048)}
    assert model(meta_image(224)).shape == (1, 1001)
    # slim puts the stride in the *last* unit of each block.
    assert [u.stride for u in model.blocks] == [1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    glimpse = meta("resnet_v2_50", num_classes=None, in_channels=15)
    assert glimpse(meta_image(77, channels=15)).shape == (1, 2048)


def test_efficientnet_b0_shapes_and_tnet_location_features():
    model = meta("efficientnet_b0", num_classes=62)
    out = model.forward_features(meta_image(224))
    assert [out[f"stage{i}"].shape[1:] for i in range(1, 8)] == [
        (16, 112, 112), (24, 56, 56), (40, 28, 28), (80, 14, 14), (112, 14, 14), (192, 7, 7), (320, 7, 7)]
    assert out["map"].shape == (1, 1280, 7, 7) and out["pooled"].shape == (1, 1280)
    assert out["stage4"][:, :, 2::4, 2::4].shape == (1, 80, 3, 3)  # TNet fMoW 3x3 grid features
    assert model(meta_image(224)).shape == (1, 62)


@pytest.mark.parametrize("name", NAMES)
def test_real_forward_backward_small_width(name):
    torch.manual_seed(0)
    model = build_backbone(name, width=0.125, num_classes=5)
    x = torch.randn(2, 3, 77, 77)
    logits = model(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_matches_contiguous_forward_and_backward(name):
    # Training runs in channels_last on CPU too. Float64 makes the comparison exact (some gradients are 0 in
    # exact arithmetic, float32 noise in either format); the float32 pass runs the oneDNN kernels, where a
    # strided 1x1 conv's backward segfaulted in torch 2.13 on maps this large (hence PointwiseConv).
    torch.manual_seed(0)
    model = build_backbone(name, width=0.125, num_classes=5, in_channels=1)
    x = torch.randn(2, 1, 160, 160)
    model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last)).sum().backward()
    model, x = model.double(), x.double()
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        model = model.to(memory_format=fmt)
        model.zero_grad()
        torch.manual_seed(1)  # the same drop-path masks
        logits = model(x.contiguous(memory_format=fmt))
        logits.sum().backward()
        results.append((logits, [p.grad.clone() for p in model.parameters()]))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-10)


def test_pointwise_conv_is_a_strided_1x1_conv():
    torch.manual_seed(0)
    conv = PointwiseConv(4, 6, stride=2)
    x = torch.randn(2, 4, 15, 16)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, stride=2))
    assert conv(x).shape == (2, 6, 8, 8)  # ceil(n / 2), as a strided conv


@pytest.mark.parametrize("channels", [4, 32])  # 4: normalised in the contiguous format (speed), 32: as is
def test_batch_norm_keeps_channels_last_and_matches_torch(channels):
    torch.manual_seed(0)
    x = torch.randn(8, channels, 20, 20).contiguous(memory_format=torch.channels_last).requires_grad_()
    ours, ref = BatchNorm2d(channels, momentum=0.1), torch.nn.BatchNorm2d(channels, momentum=0.1)
    for _ in range(2):  # two updates of the moving statistics
        a, b = ours(x), ref(x)
    assert a.is_contiguous(memory_format=torch.channels_last) and a.shape == x.shape
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    w = torch.randn_like(x)  # not a.square().sum(): its gradient through a BN is 0 in exact arithmetic
    (grad_a,), (grad_b,) = torch.autograd.grad((a * w).sum(), x), torch.autograd.grad((b * w).sum(), x)
    torch.testing.assert_close(grad_a, grad_b)
    assert ours.state_dict().keys() == ref.state_dict().keys()


# ----------------------------------------------------------------------------- FLOPs (multiplications)

@pytest.mark.parametrize("size, paper_g", [(77, 1.803), (224, 18.42)])  # FACTS.md; TNet Table 1
def test_bagnet77_tnet_multiplications(size, paper_g):
    mults = count_multiplications(meta("bagnet77_tnet", num_classes=1000), meta_image(size))
    assert mults / 1e9 == pytest.approx(paper_g, rel=0.01)


@pytest.mark.parametrize("size, paper_g", [(224, 0.39), (448, 1.54), (896, 6.18)])  # TNet Table 2
def test_efficientnet_b0_multiplications(size, paper_g):
    # TNet counts eq. 11 over convs/FC plus the element-wise squeeze-excite scaling (see
    # se_multiplications); FlopCounterMode alone gives 0.385 / 1.536 / 6.143 G.
    model, x = meta("efficientnet_b0", num_classes=62), meta_image(size)
    convs, se = count_multiplications(model, x), se_multiplications(model, x)
    n_se = sum(1 for m in model.modules() if isinstance(m, MBConv))
    assert n_se == 16 and 0 < se < 0.01 * convs
    assert (convs + se) / 1e9 == pytest.approx(paper_g, rel=0.01)


# ----------------------------------------------------------------------------- receptive fields

def _input_gradient_support(model, key, size):
    """Rows/cols spanned and count of input pixels with nonzero gradient of the centre output location."""
    x = torch.rand(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    fmap = model.forward_features(x)[key]
    c = fmap.shape[-1] // 2
    fmap[0, :, c, c].sum().backward()
    support = x.grad[0].abs().sum(0) != 0
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    span = lambda idx: (idx.min().item(), idx.max().item())  # noqa: E731
    return c, span(rows), span(cols), support.sum().item()


@pytest.mark.parametrize("size", [77, 224])
def test_bagnet77_lowd_receptive_field_is_77(size):
    torch.manual_seed(0)
    model = build_backbone("bagnet77_lowd", width=1 / 32).double().eval()
    # Gamma 1 and a large BN shift make every ReLU active (the zero-gamma init would hide the residual
    # branches), so each pixel in the receptive field gets a nonzero gradient; the RF is width-free.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.constant_(m.bias, 5.0)
    c, rows, cols, count = _input_gradient_support(model, "logits_map", size)
    assert count == 77 * 77
    assert rows == cols == (8 * c, 8 * c + 76)  # locations are 8 px apart


def test_bagnet77_tnet_receptive_field_is_77():
    torch.manual_seed(0)
    model = build_backbone("bagnet77_tnet", width=1 / 16).double().eval()
    _, rows, cols, count = _input_gradient_support(model, "map", 157)  # centre RF away from the padding
    assert rows[1] - rows[0] + 1 == cols[1] - cols[0] + 1 == 77 and count == 77 * 77  # Table 4


# ----------------------------------------------------------------------------- conventions

def test_tf_same_padding_puts_the_odd_pixel_bottom_right():
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 38, 38)  # TF pads 0 top / 1 bottom here; torch's padding=1 would pad 1 / 1
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert pad_same(torch.zeros(1, 1, 75, 75), 3, 2).shape[-1] == 77  # odd size: symmetric 1 / 1
    assert pad_same(torch.zeros(1, 1, 56, 56), 5, 2).shape[-1] == 59  # 1 top, 2 bottom


def test_keras_init_truncated_normal_and_depthwise_fans():
    torch.manual_seed(0)
    w = torch.empty(512, 2048, 1, 1)
    keras_init_(w, 1.0, "fan_avg", "truncated_normal")  # glorot_normal
    std = math.sqrt(2 / (512 + 2048))
    assert w.std().item() == pytest.approx(std, rel=0.02)
    assert w.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-7
    dw = torch.empty(960, 1, 5, 5)
    keras_init_(dw, 2.0, "fan_out", "truncated_normal", depthwise=True)  # Keras fan_out = k*k
    assert dw.std().item() == pytest.approx(math.sqrt(2.0 / 25), rel=0.02)


def test_lowd_blocks_start_as_their_shortcut():
    torch.manual_seed(0)
    model = build_backbone("bagnet77_lowd", width=1 / 16).eval()
    block = model.stages[0][2]  # 1x1 identity block: gamma-0 last BN -> relu(x + 0) = x for x >= 0
    x = torch.rand(1, block.conv1.in_channels, 9, 9)
    torch.testing.assert_close(block(x), x)
    assert all((b.bn3.weight == 0).all() for stage in model.stages for b in stage)


def test_tnet_spatial_dropout_drops_whole_channels():
    torch.manual_seed(0)
    model = build_backbone("bagnet77_tnet", width=1 / 8, spatial_dropout=0.5, dropout_layers=1)
    x = torch.randn(2, 3, 77, 77)
    fmap = model.forward_features(x)["map"]
    dropped = (fmap == 0).flatten(2).all(-1)
    assert dropped.any() and not dropped.all()
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_efficientnet_drop_path_grows_linearly_on_skip_blocks():
    model = meta("efficientnet_b0", drop_path=0.32)
    blocks = [b for stage in model.stages for b in stage]
    expected = [0.32 * (i + 1) / 16 if b.has_skip else 0.0 for i, b in enumerate(blocks)]
    assert [b.drop_path for b in blocks] == pytest.approx(expected)
    assert sum(b.has_skip for b in blocks) == 9


# ----------------------------------------------------------------------------- registry and errors

def test_registry_lists_all_and_rejects_unknown_names():
    assert set(NAMES) <= set(list_backbones())
    with pytest.raises(UserError, match="unknown backbone 'resnet_v3'.*bagnet77_lowd"):
        build_backbone("resnet_v3")


@pytest.mark.parametrize("name, kwargs", [
    ("bagnet77_tnet", {"width": 0}),
    ("bagnet77_tnet", {"spatial_dropout": 1.0}),
    ("bagnet77_lowd", {"num_classes": None}),
    ("resnet_v2_50", {"width": -1.0}),
    ("efficientnet_b0", {"dropout": 1.5}),
])
def test_bad_arguments_raise_user_error(name, kwargs):
    with pytest.raises(UserError):
        build_backbone(name, **kwargs)


@pytest.mark.parametrize("name, size", [("bagnet77_tnet", 26), ("bagnet77_lowd", 76)])
def test_too_small_input_raises_user_error(name, size):
    with pytest.raises(UserError, match="at least"):
        meta(name)(meta_image(size))


# ------------------------------------------------------------------------ DenseNet-121, BOED's official g

def test_densenet121_has_torchvisions_names_and_shapes():
    model = meta("densenet121", num_classes=1000)
    state = model.state_dict()
    assert tuple(state["features.denseblock4.denselayer16.conv2.weight"].shape) == (32, 128, 3, 3)
    assert tuple(state["features.transition3.conv.weight"].shape) == (512, 1024, 1, 1)
    assert tuple(state["classifier.weight"].shape) == (1000, 1024)
    assert sum(k.startswith("features.denseblock") and k.endswith("conv1.weight") for k in state) == 58
    assert tuple(model(meta_image(224)).shape) == (1, 1000)


def test_densenet121_from_imagenet_keeps_the_features_and_starts_extra_channels_at_zero():
    """BOED's official g: ImageNet weights, a 4th (mask) input channel with zero weights, a new 40-way head.
    Legacy (pre-0.4) key names and missing BN step counters load too; a DenseNet of other sizes does not."""
    torch.manual_seed(0)
    source = DenseNet121().eval()
    state = source.state_dict()
    legacy = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()
              if not k.endswith("num_batches_tracked")}
    for weights in (state, legacy):
        g = densenet121_from_imagenet(weights, 40, in_channels=4).eval()
        assert count_parameters(g, include_bn_stats=False) == 6_997_992  # the official g
        assert g.features.conv0.weight[:, 3].abs().sum() == 0
        image = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            masked = torch.cat([image, torch.rand(2, 1, 64, 64)], 1)
            assert torch.equal(g.features(masked), source.features(image))
    with pytest.raises(UserError, match="no features.norm5"):
        densenet121_from_imagenet({k: v for k, v in state.items() if "norm5" not in k}, 40, 4)
    with pytest.raises(UserError, match="size mismatch for features.norm5.weight"):
        densenet121_from_imagenet(state | {"features.norm5.weight": torch.ones(5)}, 40, 4)
