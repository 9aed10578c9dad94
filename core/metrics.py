"""Metrics shared by the papers: accuracy, the papers' parameter and FLOP conventions, latency,
peak memory, gradient-estimator variance (WS-RAM Fig. 2b) and iterations-to-convergence (BOED Fig. 5).

Conventions (see FACTS.md):
- Parameters are counted like the papers' TensorFlow code: every variable, i.e. parameters plus
  batch-norm moving mean and variance (never `num_batches_tracked`).
- FLOPs are *multiplications* like TNet eq. 11 (Cin*k*k*Hout*Wout*Cout for a conv): half of what
  `torch.utils.flop_counter.FlopCounterMode` reports (it counts a multiply-add as 2 and skips biases).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core.errors import UserError

__all__ = [
    "correct",
    "accuracy",
    "count_parameters",
    "count_multiplications",
    "multiplications_by_module",
    "measure_latency",
    "peak_memory",
    "GradientVariance",
    "iterations_to_within",
]


def correct(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Per-example accuracy, what core.train's eval_fn returns: 1.0 where the target is the highest logit
    (k = 1, argmax's tie-breaking) or among the k highest, else 0.0. logits (..., classes), targets (...)."""
    if targets.shape != logits.shape[:-1]:
        raise UserError(f"accuracy expects logits (..., classes) and targets (...), got "
                        f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    if k > logits.shape[-1]:
        raise UserError(f"top-{k} accuracy needs at least {k} classes, got {logits.shape[-1]}")
    if k == 1:
        return (logits.argmax(-1) == targets).float()
    return (logits.topk(k, -1).indices == targets[..., None]).any(-1).float()


def accuracy(logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Fraction of rows whose target is among the k highest logits, one float per k in `topk`."""
    if logits.ndim != 2:
        raise UserError(f"accuracy expects logits (B, classes), got {tuple(logits.shape)}")
    return [correct(logits, targets, k).mean().item() for k in topk]


def count_parameters(model: nn.Module, include_bn_stats: bool = True,
                     include_other_buffers: bool = False) -> int:
    """Number of values in the papers' convention.

    Counts every parameter (shared ones once, frozen ones too) plus, with `include_bn_stats`, the
    `running_mean`/`running_var` of batch-norm layers (TF "moving" variables). `num_batches_tracked`
    is never counted (TF has no such variable). Other buffers (e.g. an EMA reward baseline, which TNet
    reports separately as "+1 non-trainable") are counted only with `include_other_buffers`.
    """
    total = sum(p.numel() for p in model.parameters())
    bn_stats: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            bn_stats.update(id(b) for b in (module.running_mean, module.running_var) if b is not None)
    for name, buf in model.named_buffers():
        if name.rsplit(".", 1)[-1] == "num_batches_tracked":
            continue
        if include_bn_stats if id(buf) in bn_stats else include_other_buffers:
            total += buf.numel()
    return total


def count_multiplications(fn_or_module: Callable, *inputs) -> int:
    """Multiplications of one call `fn_or_module(*inputs)` (TNet eq. 11), for the whole batch given.

    Only ops FlopCounterMode knows (convolutions, matmuls, attention) count; element-wise ops, pooling
    and biases do not, as in the paper. Pass a batch of one for per-image numbers.
    """
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn_or_module(*inputs)
    return counter.get_total_flops() // 2


def multiplications_by_module(fn_or_module: Callable, *inputs) -> dict[str, int]:
    """Multiplications per module in FlopCounterMode's naming ("ResNet", "ResNet.layer1", ...; nested
    modules are included in their parents), plus "Global" for the whole call."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn_or_module(*inputs)
    return {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}


def _device_of(fn: Callable, inputs: tuple) -> torch.device:
    if isinstance(fn, functools.partial):  # bound inputs (the bench's partial(model, x)) name the device
        return _device_of(fn.func, (*fn.args, *fn.keywords.values(), *inputs))
    for x in inputs:
        if isinstance(x, torch.Tensor):
            return x.device
    if isinstance(fn, nn.Module):
        for p in fn.parameters():
            return p.device
    return torch.device("cpu")


def measure_latency(fn: Callable, *inputs, warmup: int = 5, repeats: int = 20,
                    inference: bool = True) -> dict[str, float]:
    """Wall-clock time of `fn(*inputs)` in milliseconds: {"mean_ms", "median_ms", "std_ms", "min_ms"}.

    Runs under `torch.inference_mode` (unless `inference=False`, e.g. to time a training step) after
    `warmup` untimed calls; on CUDA every call is bracketed by a synchronize so queued kernels count.
    """
    if repeats < 1 or warmup < 0:
        raise UserError(f"measure_latency needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    device = _device_of(fn, inputs)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode(inference):
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            fn(*inputs)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return {
        "mean_ms": statistics.fmean(times),
        "median_ms": statistics.median(times),
        "std_ms": statistics.stdev(times) if len(times) > 1 else 0.0,
        "min_ms": min(times),
    }


def peak_memory(fn: Callable, *inputs, inference: bool = True) -> int:
    """Peak bytes of tensor memory that one call `fn(*inputs)` allocates on top of what was already
    allocated (weights and inputs are not counted; activations, workspaces and outputs are).

    CUDA: `torch.cuda.max_memory_allocated` after resetting the peak. CPU: the CPU allocator's own
    allocation/free records from `torch.profiler` (profile_memory=True), replayed in time order and
    the running total's maximum taken. Both count tensor storage only, not Python objects or allocator
    caching; process RSS is not used because its high-water mark never goes down between calls.
    """
    device = _device_of(fn, inputs)
    with torch.inference_mode(inference):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fn(*inputs)
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - base
        if device.type != "cpu":
            raise UserError(f"peak_memory supports cpu and cuda tensors, got {device.type}")
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
            fn(*inputs)
    records = [e for e in prof.profiler.kineto_results.events()
               if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    running = peak = 0
    for event in sorted(records, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def _flat(grads) -> torch.Tensor:
    """One float64 vector from a tensor, a module (its params' .grad) or an iterable of either."""
    if isinstance(grads, torch.Tensor) and not isinstance(grads, nn.Parameter):
        return grads.detach().reshape(-1).double()
    if isinstance(grads, nn.Parameter):
        grads = [grads]
    elif isinstance(grads, nn.Module):
        grads = [p for p in grads.parameters() if p.requires_grad]
    parts = []
    for g in grads:
        if isinstance(g, nn.Parameter):  # a parameter without a gradient this step contributed zero
            g = g.grad if g.grad is not None else torch.zeros_like(g)
        parts.append(g.detach().reshape(-1).double())
    if not parts:
        raise UserError("GradientVariance.update got no gradients")
    return torch.cat(parts)


class GradientVariance:
    """Variance of a stochastic gradient estimator (WS-RAM Fig. 2b).

    Feed one gradient estimate per step (a tensor, the module after `backward()`, or its parameters).
    Per coordinate it keeps a Welford running mean and sum of squared deviations in float64, and
    `total_variance()` returns the sum over coordinates of the unbiased per-coordinate variance, i.e.
    E||g - E g||^2 = trace of the gradient covariance. With `window=N` the statistics cover
    non-overlapping blocks of N estimates: `update` returns the finished block's total variance and
    starts a new block (memory stays O(number of parameters)).
    """

    def __init__(self, window: int | None = None):
        if window is not None and window < 2:
            raise UserError(f"GradientVariance window must be >= 2 estimates, got {window}")
        self.window = window
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def update(self, grads: torch.Tensor | nn.Module | Iterable) -> float | None:
        g = _flat(grads)
        if self._mean is None:
            self._mean, self._m2 = torch.zeros_like(g), torch.zeros_like(g)
        elif g.shape != self._mean.shape:
            raise UserError(f"gradient size changed from {self._mean.numel()} to {g.numel()}")
        self.count += 1
        delta = g - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (g - self._mean)
        if self.window is not None and self.count == self.window:
            value = self.total_variance()
            self.reset()
            return value
        return None

    def total_variance(self) -> float:
        """Sum of per-coordinate unbiased variances of the estimates seen (NaN before two)."""
        if self.count < 2:
            return math.nan
        return (self._m2.sum() / (self.count - 1)).item()

    def mean_squared_norm(self) -> float:
        """||mean estimate||^2, the signal to compare the variance with (NaN before one)."""
        return math.nan if self._mean is None else self._mean.square().sum().item()


def iterations_to_within(curve: Sequence[float], eps: float,
                         iterations: Sequence[int] | None = None) -> int:
    """First iteration at which a validation-accuracy curve is within `eps` of its best value
    (BOED Fig. 5 uses eps = 0.01). `iterations[i]` is the iteration of `curve[i]` (default: i)."""
    if len(curve) == 0:
        raise UserError("iterations_to_within needs a non-empty curve")
    if iterations is not None and len(iterations) != len(curve):
        raise UserError(f"iterations has {len(iterations)} entries but the curve has {len(curve)}")
    best = max(curve)
    first = next(i for i, v in enumerate(curve) if v >= best - eps)
    return first if iterations is None else int(iterations[first])
