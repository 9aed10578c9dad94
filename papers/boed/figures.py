"""Figures 2, 5, 6 and 7 of BOED, redrawn from stored results only (no training).

    python papers/boed/figures.py [--scale cpu] [--results-dir results] [--out DIR]

Reads results/boed/<scale>-logs/<run>/seed<S>.jsonl (copied there by `core.reproduce --update`), whose last
record (stage "summary") holds each run's figure data, and writes into DIR (default results/boed/figures):
  fig2_first_epe.png   EPE of the first glimpse at every candidate location, per task (Fig. 2, panel 4)
  fig5_iterations.png  iterations to within 0.01 of the best validation accuracy per task, partially
                       supervised vs unsupervised: the mean (bar) and every net of seeds x replicates
                       (dots); and the mean validation curves of the trained weights (solid) and of
                       their moving average where the run kept one (dashed) (Fig. 5)
  fig6_heatmaps.png    per task, condition and time step: the fraction of test glimpses covering each
                       pixel, on one colour scale (square-root, with its colour bar) (Fig. 6)
  fig7_flops.png       test accuracy vs multiplications per image: the adaptive-stopping hard-attention net
                       (threshold swept) and every low-power CNN (c, r) (Fig. 7)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import PowerNorm

from core.cli import ArgumentParser, main_guard
from core.errors import UserError
from core.figures import plt, read_seed_logs, save_figure
from core.glimpse import lattice_top_left
from papers.boed.design import candidate_masks

COLORS = {"partial": "tab:blue", "unsupervised": "tab:orange"}


def load_summaries(logs: Path, run: str) -> list[dict]:
    """The summary record of every seed of a run, seed order."""
    out = []
    hint = " (run `python -m core.reproduce reproductions/boed.toml --update`)"
    for rows in read_seed_logs(logs / run, hint):
        summary = [r for r in rows if r.get("stage") == "summary"]
        if not summary:
            raise UserError(f"a log under {logs / run} has no summary record (was the run cut short?)")
        out.append(summary[-1])
    return out


def fig2(summaries: list[dict], out: Path) -> Path:
    names = summaries[0]["task_names"]
    epe = np.mean([np.array(s["epe_first"]) for s in summaries], 0)  # (L, K)
    n = int(round(len(epe) ** 0.5))
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.6), squeeze=False)
    for k, ax in enumerate(axes[0]):
        im = ax.imshow(epe[:, k].reshape(n, n), cmap="viridis")
        ax.set_title(f"{names[k]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("First-glimpse EPE over the candidate lattice (nats; low = informative)", fontsize=10)
    return save_figure(fig, out / "fig2_first_epe.png")


def fig5(summaries: list[dict], out: Path) -> Path:
    names = summaries[0]["task_names"]
    conditions = list(dict.fromkeys(c for c, _ in summaries[0]["members"]))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.3, 1]})
    width = 0.8 / len(conditions)
    for j, cond in enumerate(conditions):
        per_task = [[it for s in summaries for (c, k), it in zip(s["members"], s["iters"], strict=True)
                     if c == cond and k == task] for task in range(len(names))]
        x = np.arange(len(names)) + (j - (len(conditions) - 1) / 2) * width
        ax.bar(x, [np.mean(v) for v in per_task], width, color=COLORS.get(cond), label=cond)
        for xi, v in zip(x, per_task, strict=True):
            ax.plot([xi] * len(v), v, "k.", markersize=3, alpha=0.6)
        for key, style, label in (("curves", "-", cond), ("ema_curves", "--", f"{cond}, moving average")):
            curves = [s[key][str(e)] for s in summaries if key in s
                      for e, (c, _) in enumerate(s["members"]) if c == cond]
            if curves:
                ax2.plot(curves[0][0], np.mean([c[1] for c in curves], 0), style, color=COLORS.get(cond),
                         label=label)
    ax.set_xticks(np.arange(len(names)), names, rotation=30, fontsize=8)
    ax.set_ylabel("iterations to within 0.01 of best val. acc.")
    ax.set_title("bars: mean over nets; dots: each net (seeds x replicates)", fontsize=8)
    ax.margins(y=0.15)  # headroom for the legend above the tallest net
    ax.legend(fontsize=8, loc="upper left", ncol=len(conditions))
    ax2.set_xlabel("training iteration")
    ax2.set_ylabel("validation accuracy (mean over nets)")
    ax2.legend(fontsize=8)
    return save_figure(fig, out / "fig5_iterations.png")


def fig6(summaries: list[dict], out: Path) -> Path:
    s0 = summaries[0]
    names, size, image_size, n = s0["task_names"], s0["glimpse_size"], s0["image_size"], s0["lattice"]
    masks = candidate_masks((image_size, image_size), lattice_top_left(image_size, size, n), size).float()
    conditions = list(dict.fromkeys(c for c, _ in s0["members"]))
    T = len(s0["location_counts"][0])
    rows = [(k, c) for k in range(len(names)) for c in conditions]
    fig, axes = plt.subplots(len(rows), T, figsize=(1.6 * T + 1.2, 1.6 * len(rows)), squeeze=False)
    # One colour scale for every panel, so that panels compare; square-root, so that a glimpse spread
    # thinly over the image stays visible beside the first step's single location.
    norm = PowerNorm(0.5, vmin=0, vmax=1)
    for r, (k, cond) in enumerate(rows):
        counts = sum(torch.tensor(s["location_counts"][e]) for s in summaries
                     for e, (c, kk) in enumerate(s["members"]) if c == cond and kk == k)  # (T, L)
        for t in range(T):
            frac = torch.einsum("l,lhw->hw", counts[t] / counts[t].sum(), masks).numpy()
            ax = axes[r, t]
            image = ax.imshow(frac, cmap="magma", norm=norm)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t = {t + 1}", fontsize=9)
            if t == 0:
                ax.set_ylabel(f"{names[k]}\n{cond}", fontsize=7)
    fig.suptitle("Fraction of test glimpses covering each pixel", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    bar = fig.colorbar(image, cax=fig.add_axes((0.89, 0.3, 0.025, 0.4)))
    bar.set_label("fraction of test glimpses", fontsize=8)
    return save_figure(fig, out / "fig6_heatmaps.png", dpi=110, layout=False)


def fig7(summaries: list[dict], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    sweep = np.array([[[r["mults"], r["accuracy"]] for r in s["attention"]] for s in summaries]).mean(0)
    order = np.argsort(sweep[:, 0])
    ax.plot(sweep[order, 0], 100 * sweep[order, 1], "k-o", label="hard attention (adaptive stopping)",
            zorder=3)
    cnns = {}
    for s in summaries:
        for c in s["cnns"]:
            cnns.setdefault((c["arch"], c["c"], c["r"]), []).append((c["mults"], c["accuracy"]))
    markers = {"shufflenet": "s", "mobilenet": "^"}
    for (arch, c, r), pts in sorted(cnns.items()):
        m, a = np.mean(pts, 0)
        ax.scatter(m, 100 * a, marker=markers.get(arch, "o"), s=25, alpha=0.8,
                   label=f"{arch}, c = {c:g}, r = {r}")
    ax.set_xscale("log")
    ax.set_xlabel("multiplications per image")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, out / "fig7_flops.png")


def main(argv: list[str] | None = None) -> list[Path]:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).resolve().parents[2] / "results")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logs = args.results_dir / "boed" / f"{args.scale}-logs"
    out = args.out or args.results_dir / "boed" / "figures"
    out.mkdir(parents=True, exist_ok=True)
    supervision = load_summaries(logs, "supervision")
    paths = [fig5(supervision, out), fig6(supervision, out)]
    if "epe_first" in supervision[0]:
        paths.append(fig2(supervision, out))
    if (logs / "flops").is_dir():
        paths.append(fig7(load_summaries(logs, "flops"), out))
    for p in paths:
        print(p)
    return paths


if __name__ == "__main__":
    main_guard(main)
