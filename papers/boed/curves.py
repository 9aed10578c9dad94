"""Statistics of the Figure 5 validation curves: the paper's iteration count and how far it can be trusted.

The paper's metric (`core.metrics.iterations_to_within`): the first update at which a net's validation
accuracy is within eps of its own best. It is only meaningful if the curve's noise on its plateau is below
eps (otherwise the count lands at a random point of the plateau) and the plateau is reached well before
training ends (otherwise the count is truncated). So every curve also gets its plateau SD and whether its
count lies in the final part of training; the first update reaching fixed accuracies is a secondary metric
that does not depend on the plateau's noise. Spread ("variance", §5) is over replicate nets: the unbiased
variance of the counts over the replicates of each task, averaged over tasks. Uncertainties are bootstrap
percentiles over nets (resampled within each task and condition).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.metrics import iterations_to_within


def plateau_sd(curve: Sequence[float], steps: Sequence[int], start: int) -> float:
    """SD of the evaluations at steps >= start (the plateau part of a curve)."""
    tail = torch.tensor([a for a, s in zip(curve, steps, strict=True) if s >= start], dtype=torch.float64)
    return tail.std(correction=0).item() if len(tail) > 1 else 0.0


def step_sd(curve: Sequence[float], steps: Sequence[int], start: int) -> float:
    """SD of one validation around its neighbours at steps >= start: the SD of consecutive differences over
    sqrt(2), which a slow trend (a still rising plateau) does not inflate as it does plateau_sd."""
    tail = torch.tensor([a for a, s in zip(curve, steps, strict=True) if s >= start], dtype=torch.float64)
    return (tail.diff().std(correction=0) / 2 ** 0.5).item() if len(tail) > 2 else 0.0


def iterations_to_level(curve: Sequence[float], steps: Sequence[int], level: float) -> int | None:
    """First update at which the curve reaches `level`; None if it never does."""
    return next((int(s) for a, s in zip(curve, steps, strict=True) if a >= level), None)


def pooled_variance(counts: dict[int, list[float]]) -> float:
    """Unbiased variance of the counts over replicate nets of each task, averaged over tasks with >= 2."""
    per_task = [torch.tensor(c, dtype=torch.float64).var().item() for c in counts.values() if len(c) > 1]
    return sum(per_task) / len(per_task) if per_task else float("nan")


def ratios(partial: dict[int, list[float]], unsupervised: dict[int, list[float]]) -> tuple[float, float]:
    """(mean count ratio, pooled-variance ratio), unsupervised over partial (> 1: supervision helps)."""
    mean = lambda c: sum(map(sum, c.values())) / sum(map(len, c.values()))  # noqa: E731
    return (mean(unsupervised) / max(mean(partial), 1.0),
            pooled_variance(unsupervised) / max(pooled_variance(partial), 1.0))


def bootstrap_ratios(partial: dict[int, list[float]], unsupervised: dict[int, list[float]],
                     draws: int = 2000, seed: int = 0, level: float = 0.9) -> dict[str, float]:
    """Percentile intervals (`level`) of both `ratios`, resampling replicate nets with replacement within
    each (condition, task)."""
    g = torch.Generator().manual_seed(seed)

    def resample(c: dict[int, list[float]]) -> dict[int, list[float]]:
        out = {}
        for k, v in c.items():
            idx = torch.randint(len(v), (len(v),), generator=g)
            out[k] = [v[i] for i in idx.tolist()]
        return out

    samples = torch.tensor([ratios(resample(partial), resample(unsupervised)) for _ in range(draws)],
                           dtype=torch.float64)
    lo, hi = torch.nanquantile(samples, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64),
                               dim=0)
    return {"iters_ratio_lo": lo[0].item(), "iters_ratio_hi": hi[0].item(),
            "iters_var_ratio_lo": lo[1].item(), "iters_var_ratio_hi": hi[1].item()}


def curve_stats(curves: dict[int, tuple[list[int], list[float]]], eps: float, max_steps: int,
                levels: Sequence[float], late: float = 0.5) -> list[dict[str, float | None]]:
    """Per net: the paper's count (`iters`), the plateau SD and the step-to-step SD (`step_sd`) over the
    final `late` part of training, whether the count lies in that part (`late`: the plateau may not have
    been reached, the count is truncated) and the first update reaching each fixed accuracy (None: never
    reached)."""
    start = int(max_steps * (1 - late))
    rows = []
    for e in sorted(curves):
        steps, acc = curves[e]
        iters = iterations_to_within(acc, eps, steps)
        row = {"iters": float(iters), "plateau_sd": plateau_sd(acc, steps, start),
               "step_sd": step_sd(acc, steps, start), "late": float(iters >= start)}
        for lv in levels:
            row[f"to_{lv:g}"] = iterations_to_level(acc, steps, lv)
        rows.append(row)
    return rows
