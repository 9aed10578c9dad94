"""TNet (papers/tnet): exact paper-scale sizes and FLOPs, the glimpse pyramid, selection, the learning
rule (eqs. 1, 2, 7) and end-to-end training runs."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.errors import UserError
from core.estimators import EMABaseline, log_prob_without_replacement
from core.metrics import count_multiplications, count_parameters
from papers.tnet.config import CONFIGS, get_config, parse_locs, total_locations
from papers.tnet.flops import PAPER_ROWS, multiplications, table
from papers.tnet.model import (
    Baseline,
    LocationModule,
    TNetOutput,
    _select,
    build_model,
    positional_code,
    tnet_loss,
)

REPO = Path(__file__).resolve().parent.parent


def tiny(**kw):
    """A small TNet on 54 px images (base 27, 3x3 grid of half-size cells), fast on CPU."""
    base = dict(width=1 / 16, image_size=54, base_res=27, grid_size=3, cell_fraction=0.5, grid_offset=0,
                grid_step=1, location_hidden=16, feature_dim=32, pos_dim=32, locs_per_grid=(2,),
                eval_locs=("0", "1", "2"))
    return dataclasses.replace(get_config("cpu"), **{**base, **kw})


# ---------------------------------------------------------------------------------------------------
# Paper scale: exact sizes (App. B.1, Tables 1-2) and multiplications (eq. 11)


def _meta(name):
    """The paper-scale model built on the meta device: exact shapes, no memory, no init cost."""
    with torch.device("meta"):
        return build_model(get_config(name))


@pytest.mark.parametrize("name, expected", [
    ("imagenet", 21_859_949),             # FACTS.md: TNet ImageNet (+1 EMA baseline value)
    ("imagenet-bagnet77", 20_546_664),    # Table 1: 20.55M
    ("fmow-efficientnet-b0", 4_128_986),  # Table 2: 4.13M
])
def test_paper_parameter_counts_are_exact(name, expected):
    assert count_parameters(_meta(name)) == expected


def test_imagenet_tnet_has_one_extra_ema_value():
    model = _meta("imagenet")
    assert count_parameters(model, include_other_buffers=True) == 21_859_949 + 1
    assert [name for name, _ in model.named_buffers()] == ["baseline.value"]


def test_fmow_tnet_parameters_match_table2():
    n = count_parameters(_meta("fmow"))
    assert round(n / 1e6, 2) == 4.56  # Table 2 (the paper gives no exact count)
    assert count_parameters(_meta("fmow-896")) == n  # stage 2 fine-tunes the very same weights


@pytest.fixture(scope="module")
def imagenet_tnet():
    torch.manual_seed(0)
    return build_model(get_config("imagenet"))


@pytest.mark.parametrize("setting, paper", [("0", 1.82), ("1", 3.63)])
def test_imagenet_tnet_multiplications_match_table1(imagenet_tnet, setting, paper):
    ours = multiplications(imagenet_tnet, torch.zeros(1, 3, 224, 224), parse_locs(setting, 2)) / 1e9
    assert abs(ours - paper) / paper < 0.01
    assert imagenet_tnet.baseline.value.item() == 0.5  # b_0 (App. A.1)


@pytest.mark.slow
@pytest.mark.parametrize("row", PAPER_ROWS, ids=lambda r: f"{r[2]}-{r[3]}")
def test_every_table_row_within_one_percent(row):
    rows = [r for r in table(row[0]) if r["config"] == row[2]
            and r["locations"] == ("-" if row[3] is None else total_locations(parse_locs(row[3], 3)))]
    assert rows and abs(rows[0]["diff_pct"]) < 1.0


def test_multiplications_grow_by_one_extractor_pass_per_location():
    cfg = tiny()
    model = build_model(cfg)
    x = torch.zeros(1, 1, 54, 54)
    m = [multiplications(model, x, (k,)) for k in range(4)]
    extractor = multiplications(model.extractor, torch.zeros(1, 1, 27, 27))
    positional = count_multiplications(model.positional, torch.zeros(1, 32), torch.zeros(1, 3))
    classifier = 32 * 10  # level 2 adds its own prediction (after every level)
    assert m[1] - m[0] == extractor + positional + classifier
    assert m[2] - m[1] == m[3] - m[2] == extractor + positional


# ---------------------------------------------------------------------------------------------------
# Modules


def test_positional_code_layout():
    coords = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])
    code = positional_code(coords, 64, 100.0)
    n = 64 // 6
    assert code.shape == (2, 64)
    assert torch.equal(code[0, :6 * n].view(3, 2, n)[:, 0], torch.zeros(3, n))  # sin(0)
    assert torch.equal(code[0, :6 * n].view(3, 2, n)[:, 1], torch.ones(3, n))  # cos(0)
    assert torch.equal(code[:, 6 * n:], torch.zeros(2, 64 - 6 * n))  # padding
    # y then x then scale; frequencies 1 ... 1/100
    assert code[1, 0].item() == pytest.approx(math.sin(1.0))
    assert code[1, 2 * n].item() == pytest.approx(math.sin(2.0))
    assert code[1, n - 1].item() == pytest.approx(math.sin(1.0 / 100))


@pytest.mark.parametrize("kind", ["context", "squeeze_excite"])
def test_location_module_logits_are_l2_normalised(kind):
    module = LocationModule(kind, grid_channels=8, context_channels=6, hidden=5)
    logits = module(torch.randn(4, 8, 3, 3), torch.randn(4, 6))
    assert logits.shape == (4, 9)
    assert torch.allclose(logits.norm(dim=1), torch.ones(4), atol=1e-5)


def test_topk_selection_picks_the_most_probable_cells():
    logits = torch.tensor([[0.1, 0.5, -0.2, 0.3], [0.4, -0.1, 0.0, 0.2]])
    index, log_p = _select(logits, 2, sample=False)
    assert index.tolist() == [[1, 3], [0, 3]]
    assert torch.allclose(log_p, torch.log_softmax(logits, 1).gather(1, index))  # A.2: no renormalisation


def test_sampling_without_replacement_matches_eq9():
    torch.manual_seed(0)
    logits = torch.randn(500, 5, requires_grad=True)
    index, log_p = _select(logits, 3, sample=True)
    assert all(len(set(row)) == 3 for row in index.tolist())
    assert torch.allclose(log_p.sum(1), log_prob_without_replacement(logits, index), atol=1e-5)
    # draws differ between rows with identical logits, and cover the cells roughly by probability
    flat = torch.zeros(2000, 4)
    first = _select(flat, 1, sample=True)[0].flatten()
    assert 400 < (first == 0).sum() < 600


def test_training_selection_follows_config_and_eval_is_topk():
    cfg = tiny(selection="sample")
    model = build_model(cfg)
    x = torch.rand(4, 1, 54, 54)
    model.train()
    torch.manual_seed(0)
    picks = {tuple(model(x).indices[0].flatten().tolist()) for _ in range(4)}
    assert len(picks) > 1
    model.eval()
    assert len({tuple(model(x).indices[0].flatten().tolist()) for _ in range(2)}) == 1


# ---------------------------------------------------------------------------------------------------
# The pyramid: shapes, bookkeeping, crops


def test_forward_shapes_and_predictions_after_every_level():
    cfg = tiny()
    model = build_model(cfg).train()
    out = model(torch.rand(4, 1, 54, 54))
    assert out.logits.shape == (4, 10)
    assert [f.shape[1] for f in out.features] == [1, 2]
    assert len(out.level_logits) == 2 and torch.equal(out.level_logits[-1], out.logits)
    assert [lp.shape for lp in out.log_probs] == [(4, 2)]
    assert out.probs[0].shape == (4, 1, 9) and torch.allclose(out.probs[0].sum(-1), torch.ones(4, 1))
    assert [f.shape for f in out.feature_logits] == [(4, 1, 10), (4, 2, 10)]
    model.eval()
    for k in range(4):
        assert model(torch.rand(2, 1, 54, 54), (k,)).features[-1].shape[1] == (k if k else 1)


def test_three_level_bookkeeping_and_exact_crops():
    # base 27, cells of 1/2: level 2 crops are 54 px (resized to 27), level 3 crops 27 px (no resize)
    cfg = tiny(image_size=108, levels=3, locs_per_grid=(2, 2), eval_locs=("1", "2-2"))
    model = build_model(cfg).eval()
    seen = []
    original = model.extractor.forward_features

    def spy(x):
        seen.append(x)
        return original(x)

    model.extractor.forward_features = spy
    images = torch.rand(3, 1, 108, 108)
    out = model(images)
    assert [f.shape[1] for f in out.features] == [1, 2, 4]
    assert [b.shape for b in out.boxes] == [(3, 1, 4), (3, 2, 4), (3, 4, 4)]
    # level-3 boxes: 27 px cells of their 54 px parent, stride 14, the parent padded by 1 px before (official)
    parents = out.boxes[1].repeat_interleave(2, dim=1)
    child = out.boxes[2]
    assert ((child[..., 2:] - child[..., :2]) == 27).all()
    assert (child[..., :2] >= parents[..., :2] - 1).all() and (child[..., 2:] <= parents[..., 2:]).all()
    # level-3 extractor inputs are exactly the image under the level-3 boxes, zero outside the parent crop
    level3 = seen[2].view(3, 4, 1, 27, 27)
    for b in range(3):
        for j in range(4):
            py0, px0, py1, px1 = parents[b, j].long().tolist()
            inside_parent = torch.zeros_like(images[b])
            inside_parent[:, py0:py1, px0:px1] = images[b, :, py0:py1, px0:px1]
            padded = F.pad(inside_parent, (1, 0, 1, 0))  # index shift of 1 so that box -1 is valid
            y0, x0, y1, x1 = (child[b, j].long() + 1).tolist()
            assert torch.equal(level3[b, j], padded[:, y0:y1, x0:x1])
    # positional triplets: level 1 is (0, 0, 0); a child is parent * grid + (row, col), scale = level - 1
    assert torch.equal(out.coords[0], torch.zeros(3, 1, 3))
    for level in (1, 2):
        index = out.indices[level - 1].flatten(1)  # (3, n_l)
        parent = out.coords[level - 1][..., :2].repeat_interleave(2, dim=1)
        expected = parent * 3 + torch.stack([index // 3, index % 3], -1)
        assert torch.equal(out.coords[level][..., :2], expected.float())
        assert (out.coords[level][..., 2] == level).all()


def test_imagenet_geometry_pads_one_pixel_before():
    cfg = get_config("imagenet")
    spec_cell = round(224 * cfg.cell_fraction)
    assert spec_cell == 77
    from core.glimpse import GridSpec

    spec = GridSpec.from_fraction((224, 224), 5, 0.34375)
    assert spec.stride_hw == (37, 37) and spec.pad_before == (1, 1)


def test_baseline_returns_logits_and_resizes_input(monkeypatch):
    cfg = dataclasses.replace(tiny(), model="baseline", input_size=27)
    model = build_model(cfg).eval()
    assert isinstance(model, Baseline)
    seen, features = [], model.extractor.forward_features
    monkeypatch.setattr(model.extractor, "forward_features", lambda x: seen.append(x) or features(x))
    images = torch.rand(2, 1, 54, 54)
    assert model(images).shape == (2, 10)
    resized = F.interpolate(images, size=(27, 27), mode="bilinear", align_corners=False, antialias=False)
    assert torch.equal(seen[0], resized)
    model(resized)  # already at input_size: passed through untouched
    assert seen[1] is resized


def test_location_policy_gets_no_gradient_into_the_extractor():
    model = build_model(tiny()).train()
    out = model(torch.rand(4, 1, 54, 54))
    sum(lp.sum() for lp in out.log_probs).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.extractor.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.location.parameters())


# ---------------------------------------------------------------------------------------------------
# Learning rule: eqs. 1, 2 and 7 on hand-made outputs


def _hand_output(requires_grad=True):
    """2 images, level 1 + 2 attended locations each, 3 classes."""
    torch.manual_seed(0)
    final = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]], requires_grad=requires_grad)  # both correct
    feats = [torch.randn(2, 1, 3, requires_grad=True), torch.tensor(
        [[[3.0, 0, 0], [0, 3.0, 0]], [[0, 3.0, 0], [0, 0, 1.0]]], requires_grad=True)]
    log_p = torch.log(torch.tensor([[0.5, 0.2], [0.3, 0.1]])).requires_grad_(True)
    out = TNetOutput(logits=final, level_logits=[final], feature_logits=feats, log_probs=[log_p])
    return out, feats, log_p


def test_loss_is_eq2_with_official_weighting_and_ema_update():
    cfg = dataclasses.replace(get_config("imagenet"), lambda_c=0.3, lambda_r=0.3, lambda_f=0.1)
    out, feats, log_p = _hand_output()
    targets = torch.tensor([0, 1])
    baseline = EMABaseline(0.9, 0.5)
    loss, stats = tnet_loss(out, targets, baseline, cfg)
    b = 0.5
    reward = torch.tensor([1.0, 1.0])
    ce = F.cross_entropy(out.logits, targets)
    seq = log_p.sum(1)
    all_feats = torch.cat(feats, 1)  # (2, 3, 3)
    per_ce = F.cross_entropy(all_feats.flatten(0, 1), targets.repeat_interleave(3))
    r_k = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # attended features' own top-1 correctness
    expected = (0.3 * ce - 0.1 * 0.3 * ((reward - b) * seq).mean() + 0.7 * per_ce
                - 0.1 * 0.7 * ((r_k - b) * log_p).mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # eq. 7 with the official mixing of the two rewards
    assert baseline.value.item() == pytest.approx(0.9 * 0.5 + 0.1 * (0.3 * 1.0 + 0.7 * 0.5))
    assert stats["baseline"] == 0.5
    # gradient of each location's log-probability: eq. 2a's sequence term plus eq. 2b's own term
    loss.backward()
    grad = -0.1 * 0.3 * (reward - b)[:, None] / 2 - 0.1 * 0.7 * (r_k - b) / 4
    assert torch.allclose(log_p.grad, grad)


def test_without_per_feature_regularisation_the_rule_is_eq1():
    cfg = dataclasses.replace(get_config("imagenet"), lambda_c=1.0, lambda_r=1.0, lambda_f=0.1)
    out, feats, log_p = _hand_output()
    targets = torch.tensor([0, 1])
    baseline = EMABaseline(0.9, 0.5)
    loss, _ = tnet_loss(out, targets, baseline, cfg)
    reward = torch.tensor([1.0, 1.0])
    expected = F.cross_entropy(out.logits, targets) - 0.1 * ((reward - 0.5) * log_p.sum(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert baseline.value.item() == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)  # eq. 7: the mean reward only
    loss.backward()
    assert all(f.grad is None or not f.grad.any() for f in feats)


def test_fmow_stage2_regularises_only_the_first_two_levels():
    cfg = dataclasses.replace(get_config("fmow-896"))
    torch.manual_seed(0)
    feats = [torch.randn(2, n, 4, requires_grad=True) for n in (1, 2, 4)]
    log_probs = [torch.randn(2, 2, requires_grad=True), torch.randn(2, 4, requires_grad=True)]
    out = TNetOutput(logits=torch.randn(2, 4), feature_logits=feats, log_probs=log_probs)
    loss, _ = tnet_loss(out, torch.tensor([0, 1]), EMABaseline(), cfg)
    loss.backward()
    assert feats[2].grad is None and feats[1].grad.any()
    assert log_probs[1].grad.any()  # level-3 picks still get eq. 1's sequence term


# ---------------------------------------------------------------------------------------------------
# Configs and runs


def test_configs_build_and_parse_location_settings():
    for name in CONFIGS:
        cfg = get_config(name)
        assert cfg.name == name
    assert parse_locs("2-1", 3) == (2, 1) and parse_locs("3", 3) == (3, 0)
    assert total_locations((2, 1)) == 4 and total_locations((2, 2)) == 6
    with pytest.raises(UserError):
        parse_locs("1-1", 2)
    with pytest.raises(KeyError):
        get_config("nope")
    with pytest.raises(UserError):
        dataclasses.replace(get_config("imagenet"), locs_per_grid=(1, 1))


def test_cpu_baselines_are_the_same_extractor_with_the_same_budget():
    """The CPU comparison is fair: TNet and both baselines share the extractor's construction and every
    optimisation setting; only the input the extractor sees differs (64 px canvas, 32 px crops/whole)."""
    cfgs = {name: get_config(name) for name in ("cpu", "cpu-bagnet", "cpu-bagnet-base")}
    for field in ("max_steps", "batch_size", "lr", "lr_decay", "lr_decay_at", "width", "feature_dim",
                  "backbone", "train_size", "eval_size", "image_size"):
        assert len({getattr(c, field) for c in cfgs.values()}) == 1, field
    models = {name: build_model(cfg) for name, cfg in cfgs.items()}
    shapes = [{k: v.shape for k, v in m.extractor.state_dict().items()} for m in models.values()]
    assert shapes[0] == shapes[1] == shapes[2]
    assert models["cpu-bagnet"].input_size == 64 and models["cpu-bagnet-base"].input_size == 32
    images = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert models["cpu"](images).logits.shape == (2, 10)
        feats = models["cpu"].extractor.forward_features(images[..., :32, :32])
    assert feats["stage3"].shape[-2:] == (3, 3)  # the 3x3 grid at the 32 px base resolution, taken whole


@pytest.mark.unit
def test_feature_spread_is_zero_when_features_ignore_the_image():
    """The collapse check of the spec's [[health]] rules: a spread at initialisation, 0 for constant
    features."""
    from papers.tnet.evaluate import feature_spread

    torch.manual_seed(0)
    images = torch.rand(32, 1, 64, 64) * 2 - 1
    for name in ("cpu", "cpu-bagnet", "cpu-bagnet-base"):
        cfg = get_config(name)
        model = build_model(cfg)
        assert feature_spread(model, cfg, images) > 0.0005, name
        with torch.no_grad():
            for p in model.extractor.parameters():
                p.zero_()
        assert feature_spread(model, cfg, images) == 0, name


def test_official_augmentation_shapes_and_range():
    from papers.tnet.preprocess import TrainTransform

    torch.manual_seed(0)
    aug = TrainTransform(32)
    for _ in range(10):  # cubic and Lanczos resizing overshoot a little; only distortion clips (official)
        out = aug(torch.rand(3, 40, 57))
        assert out.shape == (3, 32, 32) and out.min() >= -1.5 and out.max() <= 1.5


@pytest.mark.smoke
def test_smoke_training_run_writes_metrics(tmp_path, capsys):
    from papers.tnet.train import main

    out = tmp_path / "run"
    returned = main(["--config", "smoke", "--output-dir", str(out)])
    metrics = json.loads((out / "final_metrics.json").read_text())
    assert metrics == pytest.approx(returned)
    for key in ("accuracy", "accuracy_locs0", "accuracy_locs3", "coverage", "accuracy_level1",
                "accuracy_level2"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["coverage_level2_locs3"] > metrics["coverage_level2_locs1"] > 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and "loss" in log[-1]
    assert metrics["train_accuracy_end"] == log[-1]["train_accuracy"]  # the last 10% of 4 updates: step 4
    assert metrics["feature_spread"] > 0
    assert json.loads((out / "config.json").read_text())["name"] == "smoke"


@pytest.mark.smoke  # runs the CLI in a subprocess: seconds
def test_cli_rejects_unknown_config_in_one_line():
    proc = subprocess.run([sys.executable, "papers/tnet/train.py", "--config", "nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: unknown config 'nope' (choose from imagenet, ")
    assert "cpu-bagnet" in proc.stderr


@pytest.mark.slow
def test_paper_scale_imagenet_train_and_eval_step(tmp_path, tiny_imagenet, training_log):
    """One training step and one evaluation step of the full ImageNet config at 224 px on a tiny image
    folder made here (4 classes x 2 images)."""
    from papers.tnet.train import run

    cfg = dataclasses.replace(get_config("imagenet"), dataset=str(tiny_imagenet), max_steps=1, num_classes=4,
                              batch_size=2, eval_locs=("0", "3"), measure_cost=False, log_every=1)
    metrics = run(cfg, str(tmp_path / "out"))
    assert training_log(tmp_path / "out") == ([None], 1)
    assert set(metrics) >= {"accuracy", "accuracy_locs0", "accuracy_locs3", "coverage"}
    assert metrics["coverage"] > 0 and "top5_locs3" not in metrics  # top-5 only from 10 classes


def test_standardized_made_task_has_zero_mean_unit_variance_training_pixels():
    from papers.tnet.data import build_datasets
    cfg = dataclasses.replace(get_config("smoke"), dataset="cluttered-mnist", image_size=64, train_size=12,
                              eval_size=4, standardize_images=True)
    train, test = build_datasets(cfg)
    pixels = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(pixels.mean().item()) < 1e-5 and abs(pixels.std().item() - 1) < 1e-3
    raw_test = build_datasets(dataclasses.replace(cfg, standardize_images=False))[1]
    assert torch.allclose(test[0][0] * train.std + train.mean, raw_test[0][0], atol=1e-5)


def test_standardized_real_dataset_is_refused_before_loading():
    from papers.tnet.data import build_datasets
    cfg = dataclasses.replace(get_config("imagenet"), dataset="no/such-dataset", standardize_images=True)
    with pytest.raises(UserError, match="made tasks only"):
        build_datasets(cfg)
