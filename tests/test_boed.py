"""BOED (papers/boed): the design pipeline (EPE with a known answer, retrieval, greedy search, sequence
format), the member-batched hard-attention network and its loss, adaptive stopping, the low-power CNNs, the
data proxy, configs and end-to-end smoke runs of train.py, evaluate.py and figures.py."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from core.backbones.densenet import DenseNet121
from core.errors import UserError
from core.glimpse import lattice_top_left, observation_mask
from core.metrics import count_multiplications, count_parameters
from papers.boed.config import CELEBA_ATTRIBUTES, get_config
from papers.boed.curves import (
    bootstrap_ratios,
    curve_stats,
    iterations_to_level,
    plateau_sd,
    pooled_variance,
    ratios,
)
from papers.boed.data import SlotDigits, parse_task
from papers.boed.design import (
    Database,
    PosteriorCNN,
    bernoulli_entropy,
    design_sequence,
    effective_samples,
    expected_posterior_entropy,
    glimpse_hits,
    heuristic_log_probs,
    lattice_index,
    random_glimpses,
    read_sequence,
    retrieval_log_weights,
    sample_images,
    write_sequence,
)
from papers.boed.design_phase import build_posterior
from papers.boed.evaluate import adaptive_sweep, location_counts, region_entropies, stop_times
from papers.boed.lowpower import LowPowerCNN, scaled
from papers.boed.model import HardAttentionNet, hard_attention_loss

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite shares 2 cores; oversubscribed OpenMP is many times slower
    yield
    torch.set_num_threads(threads)


class PixelOracle(nn.Module):
    """An exact posterior for images whose label is pixel (0, 0) (1 = bright): certain once that pixel is
    observed, 50/50 otherwise. Input: the (C+1, H, W) embedding of Figure 4."""

    def forward(self, embedding):
        observed = embedding[:, -1, 0, 0]
        bright = embedding[:, 0, 0, 0] > 0.5
        return (observed * torch.where(bright, 30.0, -30.0))[:, None]


# ---------------------------------------------------------------------------------------------------
# Design pipeline


def test_epe_known_answer_revealing_location_is_lower():
    """The location that reveals the label has EPE 0, one that does not has EPE log 2 (eq. 2)."""
    samples = torch.zeros(4, 1, 8, 8)
    samples[:2, 0, 0, 0] = 1.0  # two bright, two dark completions
    weights = torch.full((4,), 0.25, dtype=torch.float64)
    candidates = torch.tensor([[0, 0], [4, 4], [0, 4]])
    epe = expected_posterior_entropy(PixelOracle(), samples[0], torch.zeros(0, 2, dtype=torch.long),
                                     candidates, samples, weights, size=3)[:, 0]
    assert epe[0] < epe[1] and epe[0] < epe[2]
    assert epe[0].item() == pytest.approx(0.0, abs=1e-6)
    assert epe[1].item() == pytest.approx(math.log(2), abs=1e-6)


def test_epe_uses_true_pixels_where_already_observed():
    """Once the deciding pixel was observed on the true image, every candidate has EPE 0."""
    image = torch.zeros(1, 8, 8)
    image[0, 0, 0] = 1.0
    samples = torch.zeros(3, 1, 8, 8)  # completions that disagree with the observation must not matter there
    epe = expected_posterior_entropy(PixelOracle(), image, torch.tensor([[0, 0]]),
                                     torch.tensor([[4, 4], [2, 5]]), samples,
                                     torch.full((3,), 1 / 3, dtype=torch.float64), size=3)
    assert torch.allclose(epe, torch.zeros_like(epe), atol=1e-6)


def test_epe_matches_a_loop_over_samples_and_candidates():
    torch.manual_seed(0)
    g = PosteriorCNN(2, 3, 16, (4, 8)).eval()
    image, samples = torch.rand(1, 16, 16), torch.rand(5, 1, 16, 16)
    weights = torch.softmax(torch.randn(5, dtype=torch.float64), 0)
    candidates, observed = lattice_top_left(16, 4, 4), torch.tensor([[2, 3]])
    fast = expected_posterior_entropy(g, image, observed, candidates, samples, weights, 4, chunk=7)
    slow = torch.zeros(len(candidates), 3, dtype=torch.float64)
    for i, cand in enumerate(candidates):
        for w, x in zip(weights, samples, strict=True):
            truth = observation_mask(image[None], observed[None], 4)
            new = observation_mask(x[None], cand[None, None], 4)
            keep = truth[:, -1:] > 0
            emb = torch.where(keep, truth, new)  # true pixels where observed before, the sample's elsewhere
            emb[:, -1:] = torch.maximum(truth[:, -1:], new[:, -1:])
            with torch.no_grad():
                slow[i] += w * bernoulli_entropy(g(emb)[0].double())
    assert torch.allclose(fast.double(), slow, atol=1e-5)


@pytest.mark.unit
def test_epe_keeps_the_inputs_device_and_dtype():
    """Masks are built on the image's device (the meta device stands in for CUDA: mixing it with a CPU
    tensor raises as CUDA would) and the map comes back in the samples' dtype."""
    samples = torch.zeros(4, 1, 8, 8, dtype=torch.float64, device="meta")
    weights = torch.full((4,), 0.25, dtype=torch.float64)
    epe = expected_posterior_entropy(PixelOracle(), samples[0], torch.tensor([[0, 0]]),
                                     torch.tensor([[0, 0], [4, 4]]), samples, weights, size=3)
    assert epe.device.type == "meta" and epe.dtype == torch.float64 and epe.shape == (2, 1)


def test_bernoulli_entropy_is_stable_and_exact():
    logits = torch.tensor([-1000.0, -2.0, 0.0, 3.0, 1000.0])
    p = torch.sigmoid(logits[1:4])
    expected = -(p * p.log() + (1 - p) * (1 - p).log())
    h = bernoulli_entropy(logits)
    assert torch.isfinite(h).all()
    assert h[0] == pytest.approx(0, abs=1e-6) and h[-1] == pytest.approx(0, abs=1e-6)
    assert torch.allclose(h[1:4], expected, atol=1e-6)


def test_retrieval_weights_favour_agreement_and_prior_is_uniform():
    torch.manual_seed(0)
    database = torch.rand(6, 1, 8, 8)
    image = database[3].clone()
    image[:, 6:, 6:] = 0.0  # differs from its database twin only outside the observed glimpse
    log_w = retrieval_log_weights(database, image, torch.tensor([[0, 0]]), 4, noise_var=0.1)
    assert log_w.argmax().item() == 3 and log_w[3].item() == pytest.approx(0.0)
    assert torch.equal(retrieval_log_weights(database, image, torch.zeros(0, 2, dtype=torch.long), 4, 1.0),
                       torch.zeros(6))


@pytest.mark.unit
def test_database_chunks_shifts_and_flips_and_the_design_logs_sample_diversity():
    images = torch.randint(1, 256, (3, 1, 6, 6), dtype=torch.uint8)
    plain = Database(images, lambda x: x.float() / 255, chunk=2)
    assert len(plain) == 3 and torch.equal(plain.get(torch.tensor([2, 0])), images[[2, 0]].float() / 255)
    db = Database(images, lambda x: x.float() / 255, chunk=2, shift=1, flip=True)
    assert len(db) == 3 * 9 * 2
    v = db.variants.index((1, 0, False))  # moved down one pixel, the top row filled with pixel 0
    moved = db.get(torch.tensor([v * 3 + 1]))[0, 0]
    assert torch.equal(moved[1:], images[1, 0, :-1].float() / 255) and (moved[0] == 0).all()
    v = db.variants.index((0, 0, True))
    assert torch.equal(db.get(torch.tensor([v * 3])), images[:1].float().flip(-1) / 255)
    image, observed = images[1].float() / 255, torch.tensor([[0, 0]])
    every = db.get(torch.arange(len(db)))
    assert torch.allclose(db.log_weights(image, observed, 3, 0.5),
                          retrieval_log_weights(every, image, observed, 3, 0.5))
    log = []
    design_sequence(PixelOracle(), image, db, 0, torch.tensor([[0, 0], [3, 3]]), 3, 3, 8, (1.0, 1.0),
                    generator=torch.Generator().manual_seed(0), log=log)
    assert [r["t"] for r in log] == [0, 1, 2] and all(1 <= r["distinct"] <= 8 and r["ess"] >= 1 for r in log)
    assert effective_samples(torch.tensor([0.0, 0.0, -1e9])) == pytest.approx(2.0)


def test_sample_images_counts_are_an_n_sample_average():
    index, weights = sample_images(torch.tensor([0.0, 0.0, -50.0]), 20, torch.Generator().manual_seed(0))
    assert set(index.tolist()) <= {0, 1} and weights.sum().item() == pytest.approx(1.0)
    assert all((w * 20).item() == pytest.approx(round((w * 20).item())) for w in weights)


def test_design_finds_the_revealing_glimpse_and_writes_the_official_format(tmp_path):
    database = torch.zeros(4, 1, 8, 8)
    database[:2, 0, 0, 0] = 1.0
    candidates = torch.tensor([[4, 4], [0, 4], [0, 0], [4, 0]])
    seq, maps = design_sequence(PixelOracle(), database[0], database, 0, candidates, size=3,
                                num_glimpses=3, num_samples=8, noise_var=(1.0, 1.0),
                                generator=torch.Generator().manual_seed(0))
    assert seq.shape == (3,) and seq[0].item() == 2  # the only candidate covering pixel (0, 0)
    assert maps.shape == (3, 4) and maps[0, 2] < maps[0, [0, 1, 3]].min()
    path = tmp_path / "odd@0" / "0.txt"
    write_sequence(path, candidates[seq])
    assert path.read_text().splitlines()[0] == "0, 0" and len(path.read_text().splitlines()) == 3
    assert torch.equal(read_sequence(path), candidates[seq])
    assert torch.equal(lattice_index(read_sequence(path), candidates), seq)


def test_official_sequence_files_parse():
    """The released optimal-sequences files: one "row, col" line per glimpse (birds add an image path)."""
    text = "40, 48\n80, 32\n40, 64\n80, 72\n0, 96\ndata/birds/train/images/1.png"
    path = Path(__import__("tempfile").mkdtemp()) / "0.txt"
    path.write_text(text)
    assert read_sequence(path).tolist() == [[40, 48], [80, 32], [40, 64], [80, 72], [0, 96]]


def test_celeba_geometry_matches_the_official_lattice():
    cfg = get_config("celeba-hq")
    lattice = lattice_top_left(cfg.image_size, cfg.glimpse_size, cfg.lattice)
    coords = [int(c) for c in torch.linspace(0, 207, 50, dtype=torch.float64)]
    assert len(lattice) == 2500 and sorted(set(lattice[:, 0].tolist())) == coords
    assert lattice[1].tolist() == [0, coords[1]]  # index = row_index * 50 + col_index


def test_paper_geometry_design_gives_five_lattice_corners(tmp_path):
    """The pipeline at CelebA-HQ geometry (224 px RGB, 16 px glimpses, T = 5, corners of the official
    linspace(0, 207, 50)^2 lattice) writes 5 "row, col" lines per image, each an official corner.
    Posterior and database are stand-ins; every 5th lattice row/column is searched to keep it fast."""
    cfg = get_config("celeba-hq")
    lattice = lattice_top_left(cfg.image_size, cfg.glimpse_size, cfg.lattice)
    grid = lattice.view(cfg.lattice, cfg.lattice, 2)[::5, ::5].reshape(-1, 2)
    g = nn.Sequential(nn.AvgPool2d(32), nn.Flatten(), nn.Linear(4 * 7 * 7, 2)).eval()
    torch.manual_seed(0)
    database = torch.rand(3, 3, 224, 224)
    seq, _ = design_sequence(g, database[0], database, 1, grid, 16, cfg.num_glimpses, 2, cfg.noise_var)
    write_sequence(tmp_path / "0.txt", grid[seq])
    lines = (tmp_path / "0.txt").read_text().splitlines()
    assert len(lines) == 5
    allowed = set(lattice[:, 0].tolist())
    for line in lines:
        r, c = (int(v) for v in line.split(", "))
        assert r in allowed and c in allowed


def test_random_glimpses_and_heuristic():
    lattice = lattice_top_left(48, 8, 10)
    top_left = random_glimpses(500, 5, lattice, 8, torch.Generator().manual_seed(0))
    used = (top_left >= 0).all(-1)
    assert top_left.shape == (500, 5, 2) and used[:, 0].all()
    assert set(used.sum(1).tolist()) == {1, 2, 3, 4, 5}
    assert (observation_mask(torch.ones(500, 1, 48, 48), top_left, 8)[:, -1].sum((1, 2)) > 0).all()
    logp = heuristic_log_probs(torch.tensor([[0.1, 0.6, 0.6]]), 10.0)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(1)) and logp[0, 0] > logp[0, 1]


def test_region_entropies_split_reading_the_region_from_scattering_outside_it():
    on_region = torch.tensor([[True, True, True, True, False, False, False, False]]).repeat(2, 1)
    counts = torch.tensor([[[5., 5., 5., 5., 20., 0., 0., 0.]],   # reads the region at 4 offsets
                           [[20., 0., 0., 0., 5., 5., 5., 5.]]])  # one offset in, scattered outside
    within, outside = region_entropies(counts, on_region)
    assert torch.allclose(within[:, 0], torch.tensor([math.log(4), 0.0]))
    assert torch.allclose(outside[:, 0], torch.tensor([0.0, math.log(4)]))
    none_outside = region_entropies(torch.tensor([[[1., 1., 0., 0., 0., 0., 0., 0.]]]), on_region[:1])[1]
    assert none_outside.item() == 0.0  # no glimpse outside the region: 0, not nan


def test_glimpse_hits_needs_half_the_glimpse_inside():
    box = torch.tensor([0, 0, 16, 16])
    assert glimpse_hits(torch.tensor([8, 8]), 8, box) and glimpse_hits(torch.tensor([12, 0]), 8, box)
    assert not glimpse_hits(torch.tensor([13, 0]), 8, box)
    assert not glimpse_hits(torch.tensor([20, 20]), 8, box)
    two = torch.tensor([[0, 0, 16, 16], [16, 16, 32, 32]])
    assert glimpse_hits(torch.tensor([[20, 20], [0, 30]]), 8, two).tolist() == [True, False]


# ---------------------------------------------------------------------------------------------------
# Hard-attention network


def official_reference(channels=3, glimpse=16, hidden=64, locations=2500):
    """The official network in stock torch layers (FACTS.md): glimpse CNN 1-16-1-32-0-32 with BN and
    ReLU6, FC 512-128-64 + BN, location embedding, GRUCell, location net, baseline, final classifier."""
    glimpse_net = nn.Sequential(
        nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(32 * (glimpse // 4) ** 2, 128), nn.ReLU(), nn.Linear(128, hidden), nn.BatchNorm1d(hidden))
    init_hidden = nn.ParameterList([nn.Parameter(torch.zeros(hidden))])
    return nn.ModuleList([glimpse_net, nn.Linear(2, 32), nn.Linear(32, hidden), nn.BatchNorm1d(hidden),
                          nn.GRUCell(hidden, hidden), nn.Linear(hidden, 32), nn.Linear(32, locations),
                          nn.Linear(hidden, 1), nn.Linear(hidden, 2), init_hidden])


def test_paper_network_has_the_official_size():
    cfg = get_config("celeba-hq")
    net = HardAttentionNet(3, cfg.image_size, cfg.glimpse_size, cfg.lattice, cfg.num_glimpses, cfg.conv_depth,
                           cfg.fc_hidden, cfg.hidden, cfg.location_hidden)
    assert count_parameters(net) == count_parameters(official_reference())
    assert net.glimpse_net.flat == 512


def test_members_are_independent_networks():
    """Member e of a 3-member net computes exactly what a 1-member net with member e's parameters does."""
    torch.manual_seed(0)
    big = HardAttentionNet(1, 24, 8, 4, 3, (1, 4, 1, 8, 0, 8), 16, 8, 8, members=3).eval()
    small = HardAttentionNet(1, 24, 8, 4, 3, (1, 4, 1, 8, 0, 8), 16, 8, 8, members=1).eval()
    e = 1
    # Every member-held tensor is member-major along dim 0 (grouped convs, BatchNorm channels, stacked
    # linear weights), so member e's slice is a view; num_batches_tracked is shared.
    state = {name: value if value.ndim == 0 else value.view(3, -1, *value.shape[1:])[e]
             for name, value in big.state_dict().items()}
    small.load_state_dict(state)
    images = torch.rand(5, 1, 24, 24)
    forced = torch.randint(16, (5, 3, 3))
    force = torch.ones(5, 3, dtype=torch.bool)
    a = big(images, forced, force)
    b = small(images, forced[:, e:e + 1], force[:, e:e + 1])
    assert torch.allclose(a["logits"][:, e], b["logits"][:, 0], atol=1e-5)
    assert torch.allclose(a["log_pi"][:, e], b["log_pi"][:, 0], atol=1e-5)


def test_loss_masks_reinforce_on_supervised_examples():
    torch.manual_seed(0)
    net = HardAttentionNet(1, 24, 8, 4, 3, (1, 4, 1, 8, 0, 8), 16, 8, 8, members=2)
    images, labels = torch.rand(6, 1, 24, 24), torch.randint(2, (6, 2))
    forced = torch.randint(16, (6, 2, 3))
    everyone = torch.ones(6, 2, dtype=torch.bool)
    loss, _ = hard_attention_loss(net(images, forced, everyone), labels, everyone, supervision_weight=0.0)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in net.location_net.parameters())
    net.zero_grad()
    loss, _ = hard_attention_loss(net(images, forced, everyone), labels, everyone, supervision_weight=1.0)
    loss.backward()
    assert net.location_net[-1].weight.grad.abs().max() > 0
    net.zero_grad()
    nobody = torch.zeros(6, 2, dtype=torch.bool)
    loss, stats = hard_attention_loss(net(images), labels, nobody, supervision_weight=1.0)
    loss.backward()
    assert net.location_net[-1].weight.grad.abs().max() > 0 and 0 <= stats["train_acc"] <= 1


def test_forced_locations_are_used():
    torch.manual_seed(0)
    net = HardAttentionNet(1, 24, 8, 4, 3, (1, 4, 1, 8, 0, 8), 16, 8, 8, members=2)
    images, forced = torch.rand(4, 1, 24, 24), torch.randint(16, (4, 2, 3))
    force = torch.tensor([[True, False]] * 4)
    torch.manual_seed(1)
    out = net(images, forced, force)
    assert torch.equal(out["indices"][:, 0], forced[:, 0])
    # member 1 is not forced: its own policy samples (same draws), whatever the forced tensor holds there
    torch.manual_seed(1)
    other = net(images, (forced + 1) % 16, force)["indices"]
    assert torch.equal(other[:, 1], out["indices"][:, 1])
    assert torch.equal(other[:, 0], (forced[:, 0] + 1) % 16)


def test_adaptive_stopping_sweep():
    stop = torch.tensor([[[0.5, -0.1]], [[0.0, 0.3]]])  # (N=2, E=1, T-1=2)
    assert stop_times(stop, 0.1).tolist() == [[2], [1]]
    assert stop_times(stop, -1.0).tolist() == [[3], [3]]
    correct = torch.tensor([[[0.0, 1.0, 1.0]], [[1.0, 0.0, 0.0]]])
    rows = adaptive_sweep(correct, stop, (-1.0, 0.1, 2.0), per_glimpse=10, classifier=1)
    assert [r["glimpses"] for r in rows] == [3.0, 1.5, 1.0]
    assert [r["accuracy"] for r in rows] == [0.5, 1.0, 0.5] and rows[1]["mults"] == 16.0
    net = HardAttentionNet(1, 24, 8, 4, 3, (1, 4, 1, 8, 0, 8), 16, 8, 8, adaptive=True)
    out = net(torch.rand(4, 1, 24, 24))
    assert out["logits"].shape == (4, 1, 3, 2) and out["stop"].shape == (4, 1, 2)
    counts = location_counts(out["indices"], 16)
    assert counts.shape == (1, 3, 16) and torch.equal(counts.sum(-1), torch.full((1, 3), 4.0))


# ---------------------------------------------------------------------------------------------------
# Fig. 5 curve statistics


@pytest.mark.unit
def test_curve_stats_count_plateau_noise_truncation_and_levels():
    steps = list(range(0, 1001, 100))
    fast = [0.5, 0.8, 0.9, 0.91, 0.9, 0.91, 0.9, 0.91, 0.9, 0.91, 0.9]  # plateau from step 300
    slow = [0.5, 0.5, 0.6, 0.6, 0.7, 0.7, 0.8, 0.8, 0.85, 0.88, 0.9]  # still rising at the end
    rows = curve_stats({0: (steps, fast), 1: (steps, slow)}, 0.01, 1000, (0.85, 0.95))
    assert rows[0]["iters"] == 200 and rows[0]["late"] == 0.0 and rows[0]["to_0.85"] == 200
    assert rows[0]["plateau_sd"] == pytest.approx(0.005, abs=1e-9)  # alternating 0.91, 0.90 from step 500
    assert rows[1]["iters"] == 1000 and rows[1]["late"] == 1.0  # truncated: best at the last point
    # A steady rise inflates the plateau SD but not the step-to-step SD; alternation inflates both.
    ramp = curve_stats({0: (steps, [0.5 + 0.04 * i for i in range(11)])}, 0.01, 1000, ())[0]
    assert ramp["plateau_sd"] > 0.05 and ramp["step_sd"] == pytest.approx(0.0, abs=1e-9)
    assert rows[0]["step_sd"] == pytest.approx(0.0098 / 2 ** 0.5, abs=1e-4)  # diffs -+0.01, SD 0.0098
    assert rows[1]["to_0.85"] == 800 and rows[1]["to_0.95"] is None
    assert iterations_to_level([0.1, 0.2], [0, 5], 0.2) == 5 and plateau_sd([0.3], [9], 0) == 0.0


@pytest.mark.unit
def test_variance_is_over_replicates_within_tasks_with_bootstrap_intervals():
    partial = {0: [100.0, 110.0, 90.0], 1: [300.0, 310.0, 290.0]}  # tasks differ, replicates agree
    unsup = {0: [200.0, 400.0, 300.0], 1: [600.0, 400.0, 500.0]}
    assert pooled_variance(partial) == pytest.approx(100.0)  # the task difference does not count
    mean_ratio, var_ratio = ratios(partial, unsup)
    assert mean_ratio == pytest.approx(2.0) and var_ratio == pytest.approx(100.0)
    ci = bootstrap_ratios(partial, unsup, draws=300, seed=0)
    assert ci["iters_ratio_lo"] <= mean_ratio <= ci["iters_ratio_hi"]
    assert ci["iters_ratio_lo"] < ci["iters_ratio_hi"]
    assert ci["iters_var_ratio_lo"] <= ci["iters_var_ratio_hi"]
    same = bootstrap_ratios({0: [5.0, 5.0]}, {0: [10.0, 10.0]}, draws=20)
    assert same["iters_ratio_lo"] == same["iters_ratio_hi"] == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------------
# Low-power CNNs, data, configs


def test_lowpower_cnns_scale_with_c_and_r():
    assert scaled(32, 0.01) == 8 and scaled(1280, 1.0) == 1280 and scaled(116, 0.5) == 56
    for arch in ("shufflenet", "mobilenet"):
        small = count_multiplications(LowPowerCNN(arch, 0.05, 16, 2, 1).eval(), torch.rand(1, 1, 48, 48))
        wider = count_multiplications(LowPowerCNN(arch, 0.5, 16, 2, 1).eval(), torch.rand(1, 1, 48, 48))
        bigger = count_multiplications(LowPowerCNN(arch, 0.05, 48, 2, 1).eval(), torch.rand(1, 1, 48, 48))
        assert small < wider and small < bigger
        assert LowPowerCNN(arch, 0.05, 24, 2, 1)(torch.rand(3, 1, 48, 48)).shape == (3, 2)


def test_slot_digits_layout_and_labels():
    tasks = ("odd@0", "ge5@4", "odd@2+6")
    ds = SlotDigits("train", 50, tasks, grid=3, cell=16, seed=1)
    again = SlotDigits("train", 50, tasks, grid=3, cell=16, seed=1)
    assert torch.equal(ds.images, again.images) and ds.images.shape == (50, 1, 48, 48)
    assert torch.equal(ds.labels[:, 0], (ds.digits[:, 0] % 2 == 1).float())
    assert torch.equal(ds.labels[:, 1], (ds.digits[:, 4] >= 5).float())
    assert torch.equal(ds.labels[:, 2], ((ds.digits[:, 2] % 2 == 1) | (ds.digits[:, 6] % 2 == 1)).float())
    boxes = ds.deciding_boxes()
    assert boxes[0].tolist() == [[0, 0, 16, 16]] and boxes[2].tolist() == [[0, 32, 16, 48], [32, 0, 48, 16]]
    # the digit of cell 4 is really drawn there: its pixels are those of a resampled real digit
    assert ds.images[:, :, 16:32, 16:32].float().mean() > 10
    other = SlotDigits("val", 50, ("odd@0",), seed=1)
    assert not torch.equal(other.images, ds.images)
    with pytest.raises(ValueError):
        parse_task("prime@3", 9)


def test_configs_cite_the_paper_setting():
    paper = get_config("celeba-hq")
    geometry = (paper.num_glimpses, paper.glimpse_size, paper.lattice, paper.sequences_per_task)
    assert geometry == (5, 16, 50, 600)
    assert paper.tasks == CELEBA_ATTRIBUTES and len(paper.tasks) == 40 and paper.image_size == 224
    cpu = get_config("cpu")
    assert cpu.dataset == "slot-digits" and cpu.num_glimpses == 5 and cpu.replicates >= 2
    with pytest.raises(KeyError):
        get_config("nope")


def test_paper_posterior_is_the_official_densenet121_from_local_imagenet_weights(tmp_path):
    """celeba-hq's g is DenseNet-121 on image + mask with one output per attribute (6,997,992 parameters, as
    the official get_densenet builds it); posterior_weights starts it from a local torchvision state dict."""
    paper = get_config("celeba-hq")
    with torch.device("meta"):
        g = build_posterior(paper)
    assert isinstance(g, DenseNet121) and count_parameters(g, include_bn_stats=False) == 6_997_992
    assert g.features.conv0.in_channels == 4 and g.classifier.out_features == 40
    imagenet = DenseNet121()
    torch.save(imagenet.state_dict(), tmp_path / "densenet121.pth")
    g = build_posterior(dataclasses.replace(paper, posterior_weights=str(tmp_path / "densenet121.pth")))
    assert torch.equal(g.features.conv0.weight[:, :3], imagenet.features.conv0.weight)
    assert torch.equal(g.features.norm5.running_var, imagenet.features.norm5.running_var)
    assert isinstance(build_posterior(get_config("cpu")), PosteriorCNN)
    with pytest.raises(UserError, match="posterior_weights: no file at"):
        dataclasses.replace(paper, posterior_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="need posterior_net=densenet121"):
        dataclasses.replace(get_config("cpu"), posterior_weights=str(tmp_path / "densenet121.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth is not a readable state dict"):
        build_posterior(dataclasses.replace(paper, posterior_weights=str(tmp_path / "junk.pth")))


@pytest.mark.smoke  # runs the CLI in a subprocess: seconds
def test_cli_rejects_bad_input_in_one_line():
    proc = subprocess.run([sys.executable, "papers/boed/train.py", "--config", "smoke", "--set", "lattice=x"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and len(proc.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.smoke
def test_smoke_runs_write_metrics_sequences_and_figures(tmp_path):
    from papers.boed import evaluate, figures, train

    sup = train.main(["--config", "smoke", "--output-dir", str(tmp_path / "supervision")])
    for key in ("first_glimpse_hit_rate", "partial_iters_mean", "unsupervised_iters_mean", "iters_ratio",
                "accuracy", "mults", "glimpses", "coverage", "ema_iters_ratio", "ema_plateau_sd"):
        assert key in sup and math.isfinite(sup[key])
    cfg = get_config("smoke")
    seq = (tmp_path / "supervision" / "sequences" / cfg.tasks[0] / "0.txt").read_text().splitlines()
    assert len(seq) == cfg.num_glimpses and all(len(line.split(", ")) == 2 for line in seq)
    saved = json.loads((tmp_path / "supervision" / "final_metrics.json").read_text())
    assert saved == pytest.approx(sup)
    flops = train.main(["--config", "smoke", "--output-dir", str(tmp_path / "flops"),
                        "--set", "experiment=flops"])
    assert {"accuracy", "mults", "cnn_best_acc_at_budget", "attention_wins_frac"} <= set(flops)

    again = evaluate.main(["--run-dir", str(tmp_path / "supervision")])
    assert again["accuracy"] == pytest.approx(sup["accuracy"])

    logs = tmp_path / "results" / "boed" / "cpu-logs"
    for run in ("supervision", "flops"):
        (logs / run).mkdir(parents=True)
        (logs / run / "seed0.jsonl").write_text((tmp_path / run / "metrics.jsonl").read_text())
    paths = figures.main(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "figs")])
    assert {p.name for p in paths} == {"fig2_first_epe.png", "fig5_iterations.png", "fig6_heatmaps.png",
                                       "fig7_flops.png"}


def test_real_dataset_path_reads_a_local_imagefolder(tmp_path):
    """The paper-scale data path (core.data.build_dataset on a folder, one label column per task, the
    official consecutive train / val / test ranges; without a database, the images after the design set are
    the database and g trains only on the rest, so the two are disjoint)."""
    from PIL import Image

    from papers.boed.splits import check_database, load_data, posterior_range

    rng = torch.Generator().manual_seed(0)
    for i in range(10):
        folder = tmp_path / "faces" / str(i % 2)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(16, 16, 3, generator=rng) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    cfg = dataclasses.replace(get_config("smoke"), dataset=str(tmp_path / "faces"), tasks=("label",),
                              image_size=16, channels=3, glimpse_size=4, lattice=3, train_size=6,
                              design_size=2, sequences_per_task=2, val_size=2, test_size=2, database_size=3)
    data = load_data(cfg)
    assert data["train"].images.shape == (6, 3, 16, 16) and data["test"].images.shape == (2, 3, 16, 16)
    assert data["database"].images.shape == (3, 3, 16, 16)  # training images 2..4
    assert torch.equal(data["database"].images, data["train"].images[2:5])
    assert posterior_range(cfg) == (5, 6)  # g trains on image 5 only
    with pytest.raises(UserError, match="no training image left"):
        load_data(dataclasses.replace(cfg, database_size=4))
    with pytest.raises(UserError, match="GB as uint8"):
        check_database(dataclasses.replace(get_config("celeba-hq"), database="gan-samples",
                                           database_size=10**8))  # 15 TB
    assert set(data["train"].labels.flatten().tolist()) <= {0.0, 1.0}
    x = data["val"].images_float()
    assert x.min() >= -1 and x.max() <= 1 and x.min() < 0  # official normalisation to [-1, 1]


@pytest.mark.unit
def test_gradient_probe_leaves_training_alone_and_separates_the_objectives_only_by_the_sequences(tmp_path):
    from papers.boed.splits import Indexed, load_data, members
    from papers.boed.supervision import GradientProbe, Supervision, train_attention

    cfg = get_config("smoke")
    data = load_data(cfg, ("train", "val", "test"))
    layout = members(cfg)
    tasks = [k for _, k in layout]
    n = len(data["train"].images)
    sequences = torch.randint(cfg.lattice ** 2, (n, len(cfg.tasks), cfg.num_glimpses),
                              generator=torch.Generator().manual_seed(0))

    def supervision(designed: int) -> Supervision:
        has = torch.zeros(n, len(cfg.tasks), dtype=torch.bool)
        has[:designed] = True
        return Supervision(tasks, cfg.num_glimpses, sequences=sequences, has_sequence=has,
                           supervised=[c == "partial" for c, _ in layout])

    runs = {}
    for steps in ((), (3,)):
        run_cfg = dataclasses.replace(cfg, grad_probe_steps=steps)
        runs[steps] = train_attention(run_cfg, data, tmp_path / f"probe{len(steps)}", tasks,
                                      supervision(n // 2))
    (plain, curves, _, none), (probed, probed_curves, _, gradient) = runs[()], runs[(3,)]
    assert none == {} and list(gradient) == [3] and set(gradient[3]) == {"partial", "unsupervised"}
    assert probed_curves == curves  # probing consumed no training randomness and kept the BN statistics
    for a, b in zip(plain.state_dict().values(), probed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # Shared parameters and batches: without a designed sequence the two objectives are one estimator.
    same = GradientProbe(cfg, Indexed(data["train"]), tasks, supervision(0))(plain, 3)
    assert same["gvar_partial"] == same["gvar_unsupervised"] > 0
    differ = GradientProbe(cfg, Indexed(data["train"]), tasks, supervision(n))(plain, 3)
    assert differ["gvar_partial"] != differ["gvar_unsupervised"]
    assert differ["gvar_unsupervised"] == same["gvar_unsupervised"]
