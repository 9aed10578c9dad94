"""Saccader (papers/saccader): exact model sizes, the cell's equations and no-revisit state, the location
policies, the three training stages."""

import dataclasses
import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from core.cli import check_learning_rates, override
from core.errors import UserError
from core.metrics import count_parameters
from core.reproduce import REPO_ROOT
from core.reproduce import main as reproduce
from core.results import load_result
from core.runs import config_from_dict, config_to_dict
from papers.saccader import figures
from papers.saccader.config import STAGES, Stage, get_config
from papers.saccader.data import DigitPairs, build_datasets
from papers.saccader.dram import DRAM, TFLSTMCell
from papers.saccader.evaluate import (
    evaluate_run,
    interpolate,
    make_eval_fn,
    occlude,
    occlusion_standard_errors,
    parts_seen,
)
from papers.saccader.model import (
    Saccader,
    SaccaderCell,
    build_model,
    patch_classifier,
    whole_image_classifier,
)
from papers.saccader.policies import POLICIES, select_locations
from papers.saccader.train import (
    check_dram_pretraining,
    main,
    make_optimizer,
    make_step_fn,
    max_logit_order,
)


@pytest.fixture(autouse=True)
def one_thread():
    """The CI machine is small and shared: one intra-op thread is faster than two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name, expected", [
    ("imagenet", 35_583_913),                # Table Supp.1
    ("imagenet-bagnet77-lowd", 20_628_393),
    ("imagenet-resnet-v2-50", 25_615_849),
    ("imagenet-dram", 45_610_219),
])
def test_paper_scale_counts(name, expected):
    with torch.device("meta"):  # counts need shapes only
        model = build_model(get_config(name))
    assert count_parameters(model) == expected


def test_tf_lstm_has_one_bias_per_gate():
    cell = TFLSTMCell(2048, 1024)
    assert sum(p.numel() for p in cell.parameters()) == (2048 + 1024) * 4096 + 4096


def small_saccader(**kw) -> Saccader:
    torch.manual_seed(0)
    return Saccader(num_classes=10, width=0.0625, in_channels=1, **kw)


def test_361_locations_at_224px():
    model = small_saccader().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 224, 224), 3)
    assert out["logits_map"].shape[-2:] == (19, 19)
    assert out["location_logits"].shape == (1, 3, 361)


def test_receptive_field_is_77px():
    model = small_saccader().double().eval()
    for m in model.modules():  # the zero-init last BN of every block would hide the residual branches
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    x = torch.randn(2, 1, 101, 101, dtype=torch.float64, requires_grad=True)
    logits_map = model.backbone.forward_features(x)["logits_map"]
    logits_map[:, :, 1, 2].sum().backward()
    seen = x.grad.abs().sum((0, 1)) > 0
    rows, cols = seen.any(1).nonzero()[:, 0], seen.any(0).nonzero()[:, 0]
    assert int(seen.sum()) == 77 * 77
    assert (rows.min().item(), rows.max().item()) == (8, 8 + 76)  # location (1, 2): 8 px stride
    assert (cols.min().item(), cols.max().item()) == (16, 16 + 76)


def test_cell_matches_equations_1_to_3():
    torch.manual_seed(0)
    cell = SaccaderCell(6).requires_grad_(False)
    F_ = torch.randn(2, 6, 5)
    C = torch.tensor([[0, 1, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.float)
    out = cell(F_, C)
    for b in range(2):
        G = torch.tensor([sum(F_[b, p, n] * cell.a[p] for p in range(6)) / math.sqrt(6) - 1e5 * C[b, n]
                          for n in range(5)])
        h = (F_[b] * torch.softmax(G, 0)).sum(1)
        R = (F_[b] * torch.softmax(h, 0)[:, None]).sum(0) - 1e5 * C[b]
        torch.testing.assert_close(out[b], R)


@pytest.mark.parametrize("training", [True, False])
def test_cell_never_revisits(training):
    model = small_saccader().train(training)
    with torch.no_grad():
        out = model(torch.randn(3, 1, 112, 112), 25, num_samples=2)  # 5 x 5 grid: every location once
    assert out["locations"].shape == (6, 25)
    assert (out["locations"].sort(1).values == torch.arange(25)).all()


def test_policies_return_distinct_valid_locations():
    model = small_saccader().eval()
    images = torch.rand(4, 1, 128, 128)
    for policy in POLICIES:
        locations, logits = select_locations(policy, model, images, 6)
        assert locations.shape == (4, 6) and logits.shape == (4, 6, 10), policy
        assert ((locations >= 0) & (locations < 49)).all(), policy
        assert (locations.sort(1).values.diff(dim=1) > 0).all(), policy


def test_ordered_logits_follows_the_predicted_class():
    model = small_saccader().eval()
    images = torch.rand(2, 1, 128, 128)
    locations, _ = select_locations("ordered_logits", model, images, 49)
    logits_map = model.backbone.forward_features(images)["logits_map"].detach()
    predicted = logits_map.mean((2, 3)).argmax(1)
    for b in range(2):
        scores = logits_map[b, predicted[b]].flatten()[locations[b]]
        assert (scores.diff() <= 0).all()


def test_location_pretraining_leaves_representation_untouched():
    cfg = get_config("smoke")
    model = small_saccader().train()
    stats = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    images, targets = torch.randn(4, 1, 112, 112), torch.randint(0, 10, (4,))
    loss, _ = make_step_fn(cfg, "location")(model, (images, targets), 1)
    loss.backward()
    assert all(p.grad is None for p in model.representation_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.location_parameters())
    for k, v in model.backbone.state_dict().items():  # BN statistics frozen too
        assert torch.equal(v, stats[k]), k
    # The forced picks are the locations by decreasing maximum logit.
    out = model(images, 4, locations=max_logit_order(4))
    best = model.backbone.forward_features(images)["logits_map"].flatten(2).amax(1)
    assert torch.equal(out["locations"], best.topk(4, -1).indices)


def test_policy_stage_reinforce_reaches_the_location_network():
    cfg = get_config("smoke")
    torch.manual_seed(0)
    model = Saccader(num_classes=2, width=0.0625, in_channels=1).train()  # 2 classes: rewards vary
    images, targets = torch.randn(8, 1, 112, 112), torch.randint(0, 2, (8,))
    loss, stats = make_step_fn(cfg, "policy")(model, (images, targets), 1)
    loss.backward()
    assert 0 < stats["reward"] < 1
    assert model.cell.a.grad is not None and model.cell.a.grad.abs().sum() > 0


@pytest.mark.unit
def test_official_loss_scales_and_the_paper_text_switches():
    """Eq. 5 and eq. 6's REINFORCE term average over glimpses (and samples) as the official losses do; the
    paper-text switches sum them: T x eq. 5, S x T x the REINFORCE term, the cross-entropy unchanged."""
    cfg = dataclasses.replace(get_config("smoke"), pretrain_glimpses=3, train_glimpses=2, mc_samples=2)
    model = Saccader(num_classes=2, width=0.0625, in_channels=1).train()
    images, targets = torch.randn(8, 1, 112, 112), torch.randint(0, 2, (8,))
    losses = {}
    for form in ("mean", "sum"):
        variant = dataclasses.replace(cfg, location_loss=form, policy_gradient=form)
        losses[form, "location"] = make_step_fn(variant, "location")(model, (images, targets), 1)[0]
        torch.manual_seed(0)
        loss, stats = make_step_fn(variant, "policy")(model, (images, targets), 1)
        losses[form, "policy"] = loss - stats["cross_entropy"]
    assert torch.allclose(losses["sum", "location"], 3 * losses["mean", "location"])
    assert torch.allclose(losses["sum", "policy"], 2 * 2 * losses["mean", "policy"], atol=1e-6)


@pytest.mark.unit
def test_normalized_l2_divides_by_the_regularised_values_and_includes_the_cell_vector():
    cfg = get_config("smoke")
    model = Saccader(num_classes=2, width=0.0625, in_channels=1)
    groups = make_optimizer(cfg, model, "policy").param_groups
    location = next(g for g in groups if any(p is model.cell.a for p in g["params"]))
    count = sum(p.numel() for p in location["params"])
    assert location["weight_decay"] == pytest.approx(2 * cfg.l2_location / count)
    assert not any(p is model.mix.bias for p in location["params"])
    decays = {g["weight_decay"] for g in make_optimizer(cfg, model, "representation").param_groups}
    assert decays == {cfg.l2, 0.0}  # eq. 4's BagNet keeps plain weight decay
    groups = make_optimizer(dataclasses.replace(cfg, l2_form="sum"), model, "policy").param_groups
    assert next(g for g in groups if any(p is model.cell.a for p in g["params"]))["weight_decay"] == 0.0


@pytest.mark.unit
def test_dram_policy_stage_refuses_a_classifier_near_chance():
    cfg = get_config("cpu-dram")  # 10 classes: the floor is 0.2
    check_dram_pretraining(cfg, {"pretrain_wide_accuracy": 0.1, "pretrain_narrow_accuracy": 0.25})
    with pytest.raises(UserError, match="pretrain_narrow.*0.150 < 2 x chance"):
        check_dram_pretraining(cfg, {"pretrain_narrow_accuracy": 0.15})
    unchecked = dataclasses.replace(cfg, dram_min_pretrain_accuracy=0)
    check_dram_pretraining(unchecked, {"pretrain_narrow_accuracy": 0.1})


@pytest.mark.unit
def test_occlusion_comparator_is_interpolated_at_equal_area():
    xs = torch.tensor([[0.0, 0.2, 0.4], [0.0, 0.3, 0.3]])
    ys = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(interpolate(torch.tensor([0.3, 0.15]), xs, ys), torch.tensor([0.25, 0.5]))
    assert torch.allclose(interpolate(torch.tensor([0.9, 0.0]), xs, ys), torch.tensor([0.0, 1.0]))
    se = occlusion_standard_errors({"occlusion_gap_x": 0.5, "occlusion_gap_sq_x": 0.5}, 5)
    assert set(se) == {"occlusion_gap_x", "occlusion_gap_se_x"}
    assert se["occlusion_gap_se_x"] == pytest.approx((0.25 * 5 / 4 / 5) ** 0.5)


def test_no_attention_network_ablation():
    model = small_saccader(attention_network=False)
    assert model.attention is None
    # official attention_groups = 0: the 2048-d features (128 at width 1/16) are the "where" features
    assert model.mix.in_channels == 128 + 32
    out = model(torch.randn(2, 1, 112, 112), 2)
    assert out["logits"].shape == (2, 2, 10)


def test_dram_glimpses_and_log_probs():
    torch.manual_seed(0)
    model = DRAM(num_classes=10, width=0.0625, in_channels=1)
    images = torch.rand(2, 1, 128, 128)
    out = model(images, 3)
    assert out["logits"].shape == (2, 3, 10) and out["log_prob"].shape == (2, 3)
    scale = 1 - 77 / 128
    assert (out["locations"].abs() <= scale + 1e-6).all()
    out["log_prob"].sum().backward()
    assert model.emission.weight.grad.abs().sum() > 0
    # Fields of view 77, 150 (int(0.67 * 224)), 224 px at the centre, each resized to 77, + 2 coordinates.
    views = model.fields_of_view(torch.rand(1, 1, 224, 224), torch.zeros(1, 2))
    assert [tuple(v.shape[1:]) for v in views] == [(3, 77, 77)] * 3
    coords = [v[0, 2, 38, :] for v in views]  # column-coordinate channel along the middle row
    widths = [float(c.max() - c.min()) for c in coords]
    assert widths[0] < widths[1] < widths[2] and widths[2] > 1.9  # the widest view spans the whole image


def test_dram_classification_sees_only_the_high_resolution_view():
    torch.manual_seed(0)
    model = DRAM(num_classes=10, width=0.0625, in_channels=1).eval()
    images = torch.rand(2, 1, 128, 128)
    views = model.fields_of_view(images, torch.zeros(2, 2))
    noise = torch.rand_like(views[1])  # change the middle view but not its spatial mean
    changed = [views[0], views[1] + noise - noise.mean((2, 3), keepdim=True), views[2]]
    high_only = (True, False, False)
    with torch.no_grad():
        torch.testing.assert_close(model.glimpse_features(views, high_only),
                                   model.glimpse_features(changed, high_only))
        assert not torch.allclose(model.glimpse_features(views, (True,) * 3),
                                  model.glimpse_features(changed, (True,) * 3))


def test_dram_pretraining_averages_every_combination_of_views():
    torch.manual_seed(0)
    model = DRAM(num_classes=10, width=0.0625, in_channels=1)
    logits = model(torch.rand(3, 1, 128, 128), 2, pretrain_glimpse=110)["logits"]
    assert logits.shape == (3, 7 * 2, 10)  # 2^3 - 1 view combinations x 2 random glimpses
    logits.mean(1).sum().backward()
    assert model.classifier.weight.grad.abs().sum() > 0 and model.emission.weight.grad is None


@pytest.mark.parametrize("loss", ["mean_logits", "per_combination"])
def test_dram_pretraining_loss_forms(loss):
    """App. C: one cross-entropy of the averaged logits (default), or Sermanet et al.'s one per
    combination of views and step."""
    cfg = dataclasses.replace(get_config("smoke-dram"), dram_pretraining_loss=loss)
    model = build_model(cfg).eval()  # eval: BN in running statistics, so both calls see the same net
    images, targets = torch.rand(3, cfg.channels, cfg.image_size, cfg.image_size), torch.tensor([0, 1, 2])
    torch.manual_seed(0)
    got, _ = make_step_fn(cfg, "pretrain_narrow")(model, (images, targets), 0)
    torch.manual_seed(0)
    every = model(images, cfg.dram_pretrain_glimpses, pretrain_glimpse=cfg.dram_glimpse)["logits"]
    each = torch.stack([F.cross_entropy(every[:, j], targets) for j in range(every.shape[1])])
    expected = each.mean() if loss == "per_combination" else F.cross_entropy(every.mean(1), targets)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(each.mean(), F.cross_entropy(every.mean(1), targets))  # the forms differ


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_dram_pretraining_root_terms_equal_a_glimpse_network_call_per_combination(memory_format):
    """pretraining_logits sums the root conv's per-view parts; each combination through glimpse_features
    (its own call, so its own BN batch statistics in training mode) must give the same logits."""
    torch.manual_seed(0)
    model = DRAM(num_classes=10, width=0.0625, in_channels=1).to(memory_format=memory_format)
    images = torch.rand(3, 1, 128, 128).contiguous(memory_format=memory_format)
    torch.manual_seed(1)
    logits = model.pretraining_logits(images, 90, 2)
    torch.manual_seed(1)
    combos = [c for c in itertools.product((True, False), repeat=3) if any(c)]
    state, expected = model._zero_state(images, 3 * len(combos)), []
    for _ in range(2):
        views = model.fields_of_view(images, (torch.rand(3, 2) * 2 - 1) * (1 - 90 / 128), 90)
        state = model.classification_rnn(torch.cat([model.glimpse_features(views, c) for c in combos]), state)
        expected.append(model.classifier(state[1]).view(len(combos), 3, -1).transpose(0, 1))
    # float32 sums in another order, through BN over 3 images: a wrong term would move logits by ~0.1
    torch.testing.assert_close(logits, torch.cat(expected, 1), rtol=1e-3, atol=1e-4)


def test_digit_pairs_task():
    kw = dict(canvas=160, num_clutter=0, seed=3)
    data = DigitPairs("train", 64, **kw)
    assert data.num_classes == 10 and data.labels.min() >= 0 and data.labels.max() < 10
    assert torch.equal(data.images, DigitPairs("train", 64, **kw).images)  # a function of (seed, split, n)
    assert not torch.equal(data.images, DigitPairs("test", 64, **kw).images)
    image, label, boxes = data[0]
    assert image.shape == (1, 160, 160) and 0 <= image.min() and image.max() <= 1
    # both key digits are drawn where their boxes say, far apart, inside the margin
    corners = data.key_boxes[:, :, :2]
    assert ((corners[:, 0] - corners[:, 1]).abs().amax(-1) >= 50).all()
    assert corners.min() >= 24 and data.key_boxes[..., 2:].max() <= 160 - 24
    y0, x0, y1, x1 = boxes[0].long().tolist()
    assert image[0, y0:y1, x0:x1].sum() > 0 and image.sum() > image[0, y0:y1, x0:x1].sum()
    assert 0 <= label < len(data.pairs) == data.num_classes  # label = index of the unordered pair (a < b)
    assert data.pairs == [(a, b) for a in range(5) for b in range(a + 1, 5)]


def test_standardized_canvases_use_the_training_pixels_statistics():
    cfg = dataclasses.replace(get_config("smoke-dram"), train_size=16, eval_size=8)
    raw_train, raw_test = build_datasets(cfg)
    train, test = build_datasets(dataclasses.replace(cfg, standardize_images=True))
    pixels = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(pixels.mean().item()) < 1e-5 and abs(pixels.std().item() - 1) < 1e-3
    assert train.mean == pytest.approx(torch.stack([raw_train[i][0] for i in range(16)]).mean().item())
    image, label, boxes = test[3]  # the test set: the training pixels' statistics
    assert torch.allclose(image, (raw_test[3][0] - train.mean) / train.std, atol=1e-5)
    assert label == raw_test[3][1] and torch.equal(boxes, raw_test[3][2])
    with pytest.raises(UserError, match="made tasks only"):  # paper scale keeps the official pipeline
        build_datasets(dataclasses.replace(get_config("imagenet"), standardize_images=True))


def test_occlusion_and_parts_seen():
    images = torch.ones(2, 1, 10, 10)
    boxes = torch.tensor([[[0, 0, 2, 3]], [[5, 5, 10, 10]]], dtype=torch.float)
    occluded = occlude(images, boxes)
    assert occluded[0, 0, :2, :3].eq(0).all() and occluded[0].sum() == 100 - 6
    assert occluded[1, 0, 5:, 5:].eq(0).all() and occluded[1].sum() == 100 - 25
    assert occlude(images, boxes, -1.0)[0].sum() == 100 - 2 * 6  # the CPU canvases' background
    parts = torch.tensor([[[0, 0, 2, 2], [6, 6, 8, 8]], [[6, 6, 8, 8], [0, 0, 2, 2]]], dtype=torch.float)
    assert parts_seen(boxes, parts).tolist() == [0.5, 0.5]


def test_occlusion_fills_with_the_configured_value():
    cfg = get_config("smoke")
    model = build_model(cfg).eval()
    images = torch.full((2, cfg.channels, cfg.image_size, cfg.image_size), -1.0)
    targets = torch.ones(2, dtype=torch.long)

    class SeesTheFill(torch.nn.Module):  # class 1 exactly when some pixel holds the value 0.5
        def forward(self, x):
            hit = (x == 0.5).flatten(1).any(1).float()
            return torch.stack([1 - hit, hit], 1)

    for value, expected in ((0.5, 1.0), (-1.0, 0.0)):
        eval_fn = make_eval_fn(dataclasses.replace(cfg, occlusion_value=value), ["learned"], SeesTheFill())
        with torch.no_grad():
            out = eval_fn(model, (images, targets))
        assert out["occluded_accuracy_learned_T1"].tolist() == [expected, expected]


def test_figures_from_a_stored_result(tmp_path):
    metrics = {}
    for run, policy in (("saccader", "learned"), ("saccader", "random"), ("dram", "learned")):
        for kind in ("accuracy", "coverage", "occluded_accuracy"):
            for k in (1, 2, 4):
                metrics[f"{run}/{kind}_{policy}_T{k}"] = {"per_seed": [0.5], "mean": 0.5, "std": 0.0}
    result = {"paper": "saccader", "scale": "cpu", "metrics": metrics,
              "provenance": {"configs": {"saccader": {"resolved": {"train_glimpses": 2}}}}}
    (tmp_path / "saccader").mkdir()
    (tmp_path / "saccader" / "cpu.json").write_text(json.dumps(result))
    made = figures.make_figures(str(tmp_path), "cpu", str(tmp_path / "figs"))
    assert [p.name for p in made] == ["figure3.png", "figure5.png", "figure_supp3.png"]
    assert all(p.stat().st_size > 0 for p in made)
    assert figures.curve(metrics, "saccader", "accuracy", "learned")[0] == [1, 2, 4]
    # with the runner's logs (<run>/seed<S>.jsonl): the training curves of every stage too
    logged = (("saccader", "representation", "train_accuracy"), ("saccader", "saccader/policy", "reward"),
              ("dram", "policy", "reward"))
    for run, stage, key in logged:
        for seed in (0, 1):
            log = tmp_path / "saccader" / "cpu-logs" / run / f"seed{seed}.jsonl"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as f:
                for step in (10, 20):
                    f.write(json.dumps({"step": step, "stage": stage, key: 0.1 * seed + step / 100}) + "\n")
    made = figures.make_figures(str(tmp_path), "cpu", str(tmp_path / "figs"))
    assert made[-1].name == "training.png" and made[-1].stat().st_size > 0
    curves = figures.load_logs(tmp_path / "saccader" / "cpu-logs")
    assert [r["step"] for r in curves["saccader", "saccader/policy"][1]] == [1, 11]  # counted per stage
    with pytest.raises(UserError):
        figures.make_figures(str(tmp_path), "cpu", str(tmp_path / "figs"), logs=str(tmp_path / "none"))


@pytest.mark.smoke
def test_smoke_training_run(tmp_path):
    metrics = main(["--config", "smoke", "--output-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "final_metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    for policy in ("learned", "no_location_pretraining", "learned_pretrained", *POLICIES[1:]):
        assert 0 <= saved[f"accuracy_{policy}_T2"] <= 1, policy
        assert 0 < saved[f"coverage_{policy}_T2"] <= 1, policy
    for policy in ("learned", "random"):
        assert 0 <= saved[f"occluded_accuracy_{policy}_T2"] <= 1
    stages = [json.loads(line)["stage"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert list(dict.fromkeys(stages)) == ["classifier", "representation", "saccader/location",
                                           "saccader/policy", "no_location_pretraining/policy",
                                           "patch_classifier"]
    assert 0 <= saved["accuracy_patch_classifier_T2"] <= 1  # Saccader-NASNet's analogue (sec. 4.3)
    # evaluate.py reloads the trained networks and reproduces the (deterministic) final metrics; figure 4
    evaluated = evaluate_run(str(tmp_path), num_images=2)
    for key in ("accuracy_learned_T2", "accuracy_ordered_logits_T1", "occluded_accuracy_learned_T2"):
        assert evaluated[key] == pytest.approx(saved[key])
    assert evaluated["occlusion_value"] == 0.0
    background = evaluate_run(str(tmp_path), num_images=2, occlusion_value=-1.0)
    assert background["occlusion_value"] == -1.0
    assert background["accuracy_learned_T2"] == evaluated["accuracy_learned_T2"]  # only occlusion changes
    assert figures.figure4(tmp_path, tmp_path, 2).stat().st_size > 0


@pytest.mark.smoke
def test_smoke_dram_run(tmp_path):
    saved = main(["--config", "smoke-dram", "--output-dir", str(tmp_path)])
    for k in (1, 2):
        assert 0 <= saved[f"accuracy_learned_T{k}"] <= 1 and 0 < saved[f"coverage_learned_T{k}"] <= 1
    stages = [json.loads(line)["stage"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert list(dict.fromkeys(stages)) == ["pretrain_wide", "pretrain_narrow", "policy"]


def test_cli_rejects_unknown_config(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--config", "nope"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config 'nope' (choose from ") and "cpu-dram" in err


def test_cli_rejects_evaluation_without_the_trained_glimpse_count(capsys):
    """test_accuracy is the accuracy at train_glimpses, so evaluating without that count is refused."""
    with pytest.raises(SystemExit) as e:
        main(["--config", "smoke", "--set", "eval_glimpses=1,3"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: eval_glimpses 1,3 must include train_glimpses = 2 "
                                               "(test_accuracy is the accuracy there)")


@pytest.mark.smoke
def test_ablations_spec_trains_both_ablations(tmp_path):
    """reproductions/saccader-ablations.toml: no attention network (Fig. Supp.3), patch classifier (4.3)."""
    spec = REPO_ROOT / "reproductions" / "saccader-ablations.toml"
    # The smoke scale checks no claim (a few updates learn nothing) and needs nothing stored.
    assert reproduce([str(spec), "--scale", "smoke", "--workdir", str(tmp_path / "work"),
                      "--results-dir", str(tmp_path / "results")]) == 0
    metrics = load_result(tmp_path / "work" / "saccader" / "seed0" / "final_metrics.json")
    assert {"accuracy_learned_T2", "accuracy_no_attention_network_T2", "accuracy_patch_classifier_T2",
            "accuracy_random_T2"} <= set(metrics)


@pytest.mark.unit
def test_digit_scale_rescales_the_made_digits_and_is_checked():
    """digit_scale rescales a made single-digit task (reproductions/saccader-dram.toml: 70 px digits)."""
    from papers.saccader.data import build_datasets

    cfg = dataclasses.replace(get_config("cpu-dram"), dataset="cluttered-mnist", image_size=128, train_size=4,
                              eval_size=3)
    boxes = {}
    for scale in (0.0, 2.0):
        made = build_datasets(dataclasses.replace(cfg, digit_scale=scale))[1]
        boxes[scale] = made.boxes
    assert (boxes[0.0][:, 2] - boxes[0.0][:, 0]).tolist() == pytest.approx([28.0] * 3)
    assert (boxes[2.0][:, 2] - boxes[2.0][:, 0]).tolist() == pytest.approx([56.0] * 3)
    with pytest.raises(UserError, match="digit_scale=2 needs a made single-digit task"):
        dataclasses.replace(get_config("cpu"), digit_scale=2.0)  # the digit pairs have their own layout
    with pytest.raises(UserError, match="holds a 28 x 5 px digit"):
        dataclasses.replace(cfg, digit_scale=5.0)  # 140 px > 128


@pytest.mark.smoke
def test_dram_spec_trains_saccader_and_dram_on_large_digits(tmp_path):
    """reproductions/saccader-dram.toml: DRAM's claims (Fig. 3a, sec. 4.1) where its view holds a digit."""
    spec = REPO_ROOT / "reproductions" / "saccader-dram.toml"
    assert reproduce([str(spec), "--scale", "smoke", "--workdir", str(tmp_path / "work"),
                      "--results-dir", str(tmp_path / "results")]) == 0
    for run, metric in (("saccader", "accuracy_learned_T2"), ("dram", "accuracy_learned_T2")):
        metrics = load_result(tmp_path / "work" / run / "seed0" / "final_metrics.json")
        config = load_result(tmp_path / "work" / run / "seed0" / "config.json")
        assert metric in metrics and config["digit_scale"] == 2.5 and config["dataset"] == "cluttered-mnist"


@pytest.mark.unit
def test_patch_classifier_uses_the_configured_bn_decay():
    """At TF-slim's 0.997 a few hundred updates leave BN's moving statistics those of the untrained
    network (the CPU-scale patch classifier then evaluated at ~0.15 while training at ~0.7)."""
    cfg = dataclasses.replace(get_config("smoke"), resnet_bn_decay=0.9)
    bns = [m for m in patch_classifier(cfg).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == pytest.approx(0.1) for m in bns)


@pytest.mark.unit
def test_occlusion_classifier_width_defaults_to_the_config_width():
    def params(**kw):
        return count_parameters(whole_image_classifier(dataclasses.replace(get_config("smoke"), **kw)))
    assert params(occlusion_classifier_width=0.0) == params(occlusion_classifier_width=0.0625)  # smoke width
    assert params(occlusion_classifier_width=0.125) > params()
    assert get_config("cpu").occlusion_classifier_width == 0.125 and get_config("imagenet").width == 1.0
    with pytest.raises(UserError, match="occlusion_classifier_width >= 0"):
        dataclasses.replace(get_config("cpu"), occlusion_classifier_width=-1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["imagenet", "imagenet-dram"])
def test_paper_scale_train_and_eval_step(name, tmp_path, tiny_imagenet, training_log):
    """Every stage of the exact ImageNet config (Saccader: eqs. 4, 5, 6 and the whole-image classifier;
    DRAM: both pretraining stages and the hybrid loss) takes one update at 224 px on a tiny image folder
    made here (4 classes x 2 images per split), then the final evaluation runs."""
    stages = ("representation", "location", "policy", "pretrain_wide", "pretrain_narrow", "classifier")
    overrides = [f"dataset={tiny_imagenet}", "batch_size=2", "eval_glimpses=1,6", "eval_policies=random",
                 "occlusion_classifier=true", "log_every=1", "checkpoint_every=0", "num_classes=4",
                 "dram_min_pretrain_accuracy=0",  # one update learns nothing
                 *(f"{stage}.steps=1" for stage in stages)]
    metrics = main(["--config", name, "--output-dir", str(tmp_path / "out"),
                    *(a for o in overrides for a in ("--set", o))])
    assert 0 <= metrics["test_accuracy"] <= 1
    assert metrics["test_accuracy"] == metrics["accuracy_learned_T6"]  # T = 6 (eq. 6, App. C)
    assert 0 < metrics["coverage_learned_T6"] <= 1 and 0 <= metrics["occluded_accuracy_learned_T6"] <= 1
    trained = {"imagenet": ["classifier", "representation", "saccader/location", "saccader/policy"],
               "imagenet-dram": ["classifier", "pretrain_wide", "pretrain_narrow", "policy"]}[name]
    assert training_log(tmp_path / "out") == (trained, len(trained))  # 1 update each, steps run across stages


@pytest.mark.unit
def test_every_stage_is_one_nested_config_set_with_dots():
    """Each stage (its learning rate and updates) is one Stage field named as the stage, reached on the
    command line as `--set policy.lr=...`; the others stay as they were, and config.json round-trips."""
    cfg = get_config("cpu")
    names = {s for model in STAGES.values() for s in model} | {"classifier", "patch_classifier"}
    assert all(isinstance(getattr(cfg, name), Stage) for name in names)
    changed = override(override(cfg, "policy.lr", "0.02"), "policy.steps", "7")
    assert changed.policy == Stage(lr=0.02, steps=7) and changed.location == cfg.location
    assert config_from_dict(type(cfg), config_to_dict(changed)) == changed
    with pytest.raises(UserError, match="policy.lr must be a non-negative"):
        check_learning_rates(override(cfg, "policy.lr", "-1"))
