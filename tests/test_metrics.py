"""Metrics against hand-computed values: multiplications (TNet eq. 11), the parameter convention
(params + BN moving statistics), top-k accuracy, gradient variance, iterations-to-within, and the
latency / peak-memory probes."""

import functools
import math

import pytest
import torch
from torch import nn

from core.errors import UserError
from core.metrics import (
    GradientVariance,
    _device_of,
    accuracy,
    correct,
    count_multiplications,
    count_parameters,
    iterations_to_within,
    measure_latency,
    peak_memory,
)

# ----------------------------------------------------------------------------- multiplications

def test_conv_multiplications_follow_tnet_eq_11():
    # Cin * k * k * Hout * Wout * Cout = 3 * 3 * 3 * 8 * 8 * 8 (no padding: 10 - 3 + 1 = 8), bias free.
    conv = nn.Conv2d(3, 8, 3)
    assert count_multiplications(conv, torch.zeros(1, 3, 10, 10)) == 3 * 3 * 3 * 8 * 8 * 8 == 13_824
    assert count_multiplications(conv, torch.zeros(2, 3, 10, 10)) == 2 * 13_824  # the whole batch


def test_linear_multiplications_are_in_times_out_per_example():
    linear = nn.Linear(20, 7)
    assert count_multiplications(linear, torch.zeros(1, 20)) == 20 * 7
    assert count_multiplications(linear, torch.zeros(4, 20)) == 4 * 20 * 7
    # Element-wise ops and pooling are not multiplications in the paper's convention.
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 5))
    assert count_multiplications(model, torch.zeros(1, 3, 10, 10)) == 13_824 + 8 * 5


# ----------------------------------------------------------------------------- parameters

def test_count_parameters_includes_bn_moving_stats_only():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    conv, bn_affine, bn_stats, linear = 3 * 4 * 9 + 4, 4 + 4, 4 + 4, 4 * 2 + 2
    assert count_parameters(model) == conv + bn_affine + bn_stats + linear == 138  # no num_batches_tracked
    assert count_parameters(model, include_bn_stats=False) == 130
    model.register_buffer("baseline", torch.zeros(1))  # e.g. an EMA reward baseline
    assert count_parameters(model) == 138
    assert count_parameters(model, include_other_buffers=True) == 139


def test_count_parameters_counts_shared_and_frozen_once():
    shared = nn.Linear(3, 3)  # 12 values
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.BatchNorm1d(3, affine=False))
    model[0].weight.requires_grad_(False)
    assert count_parameters(model) == 12 + 3 + 3


# ----------------------------------------------------------------------------- accuracy

def test_accuracy_top1_top5_by_hand():
    logits = torch.tensor([
        [0.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # ranks: 1, 6, 5, 4, 3, ...
        [9.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # class 1 is last
        [1.0, 2.0, 9.0, 0.0, 3.0, 4.0, 5.0],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],  # class 2 is 5th
    ])
    targets = torch.tensor([1, 1, 6, 2])
    top1, top5 = accuracy(logits, targets, topk=(1, 5))
    assert top1 == pytest.approx(1 / 4)  # only row 0
    assert top5 == pytest.approx(3 / 4)  # rows 0, 2 (6 is 2nd) and 3 (2 is 5th); row 1's target is last
    assert accuracy(logits, targets) == [pytest.approx(0.25)]
    with pytest.raises(UserError):
        accuracy(logits, targets, topk=(8,))
    with pytest.raises(UserError):
        accuracy(logits, targets[:3])


def test_correct_is_per_example_and_keeps_leading_dimensions():
    logits = torch.tensor([[[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]],
                           [[1.0, 1.0, 0.0], [0.0, 1.0, 2.0]]])  # (2, 2, 3)
    targets = torch.tensor([[1, 2], [1, 1]])
    assert correct(logits, targets).tolist() == [[1.0, 0.0], [0.0, 0.0]]  # a tie goes to the first class
    assert correct(logits, targets, k=2).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    with pytest.raises(UserError, match="targets"):
        correct(logits, targets[0])


# ----------------------------------------------------------------------------- gradient variance

def test_gradient_variance_on_known_samples():
    gv = GradientVariance()
    assert math.isnan(gv.total_variance())
    for g in ([1.0, 10.0], [2.0, 10.0], [3.0, 13.0], [4.0, 7.0]):
        assert gv.update(torch.tensor(g)) is None
    # Unbiased variance per coordinate: var(1,2,3,4) = 5/3, var(10,10,13,7) = 18/3 = 6; summed.
    assert gv.total_variance() == pytest.approx(5 / 3 + 6)
    assert gv.mean_squared_norm() == pytest.approx(2.5**2 + 10.0**2)


def test_gradient_variance_windows_and_module_grads():
    gv = GradientVariance(window=2)
    assert gv.update(torch.tensor([0.0])) is None
    assert gv.update(torch.tensor([2.0])) == pytest.approx(2.0)  # var(0, 2) = 2, block done
    assert gv.count == 0 and gv.update(torch.tensor([5.0])) is None  # a new block starts

    layer = nn.Linear(2, 1, bias=False)
    gv = GradientVariance()
    for x in (torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 0.0]])):
        layer.zero_grad()
        layer(x).sum().backward()  # grad of the weight = x
        gv.update(layer)
    assert gv.total_variance() == pytest.approx(2.0)  # var(1, 3) + var(0, 0)
    with pytest.raises(UserError):
        GradientVariance(window=1)


# ----------------------------------------------------------------------------- iterations to within

def test_iterations_to_within_by_hand():
    curve = [0.1, 0.5, 0.895, 0.9, 0.88]  # best 0.9: first value >= 0.89 is at index 2
    assert iterations_to_within(curve, 0.01) == 2
    assert iterations_to_within(curve, 0.01, iterations=[0, 100, 200, 300, 400]) == 200
    assert iterations_to_within(curve, 0.0) == 3
    assert iterations_to_within(curve, 1.0) == 0
    with pytest.raises(UserError):
        iterations_to_within([], 0.01)
    with pytest.raises(UserError):
        iterations_to_within(curve, 0.01, iterations=[1, 2])


# ----------------------------------------------------------------------------- latency, memory

def test_measure_latency_returns_positive_times():
    calls = []

    def fn(x):
        calls.append(1)
        return x @ x

    stats = measure_latency(fn, torch.ones(16, 16), warmup=2, repeats=3)
    assert set(stats) == {"mean_ms", "median_ms", "std_ms", "min_ms"}
    assert len(calls) == 5
    assert stats["min_ms"] > 0 and stats["mean_ms"] >= stats["min_ms"] and stats["std_ms"] >= 0


def test_peak_memory_is_nonnegative_int_and_sees_allocations():
    mib = 2**20
    small = peak_memory(lambda: None)
    big = peak_memory(lambda: torch.ones(mib // 4))  # a 1 MiB float32 tensor
    assert isinstance(small, int) and isinstance(big, int) and small >= 0
    assert big >= mib


@pytest.mark.unit
def test_peak_memory_finds_the_device_of_a_partials_bound_inputs():
    # The bench measures partial(model, x): its device is x's, not the default CPU (issue #18: CUDA read 0).
    x = torch.empty(2, device="meta")
    assert _device_of(functools.partial(torch.add, x), ()).type == "meta"
    assert _device_of(functools.partial(functools.partial(torch.add), other=x), ()).type == "meta"


@pytest.mark.unit
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_memory_on_cuda_sees_the_allocations_of_a_partial():
    x = torch.ones(2**18, device="cuda")
    assert peak_memory(functools.partial(torch.mul, x, 2.0)) >= 2**20
