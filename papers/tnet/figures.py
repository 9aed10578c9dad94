"""Figures from stored results only (no training):

    python papers/tnet/figures.py [--results-dir results] [--out results/tnet/figures]

figure2.png: accuracy vs. multiplications per image (paper Figure 2): left, the paper's ImageNet numbers
(Table 1, points annotated with the number of attended locations); right, our CPU-scale runs from
results/tnet/cpu.json (TNet for each number of locations, without per-feature regularisation, and the
fully convolutional extractor at full and at base resolution): seed means joined by lines, every seed as a
small hollow marker.
`draw_overlays` draws attended locations on images (Figures 3 and 5); evaluate.py calls it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch

from core.cli import ArgumentParser, main_guard
from core.errors import UserError
from core.figures import label_points, plt, save_figure, seed_points

REPO = Path(__file__).resolve().parents[2]
RUN_STYLE = {"tnet": ("TNet", "C0", "o"), "tnet_noreg": ("TNet, no per-feature reg.", "C3", "s"),
             "bagnet_full": ("extractor, full resolution", "C2", "D"),
             "bagnet_base": ("extractor, base resolution", "C1", "^")}


def paper_panel(ax, paper: dict) -> None:
    values = paper["values"]
    labels = []
    for model, color, marker in (("saccader", "C1", "s"), ("dram", "C3", "^"), ("tnet", "C0", "o")):
        pts = sorted((values[f"imagenet/{model}/flops_locs{n}"]["value"], values[k]["value"], n)
                     for k in values for n in [_locs(k, f"imagenet/{model}/top1_locs")] if n is not None)
        if not pts:
            continue
        ax.plot([p[0] / 1e9 for p in pts], [100 * p[1] for p in pts], marker=marker, color=color,
                label={"tnet": "TNet", "saccader": "Saccader", "dram": "DRAM"}[model])
        labels += [(x / 1e9, 100 * y, str(n)) for x, y, n in pts]
    bagnet = values["imagenet/bagnet77/flops"]["value"] / 1e9, 100 * values["imagenet/bagnet77/top1"]["value"]
    ax.scatter([bagnet[0]], [bagnet[1]], color="C2", marker="D", label="BagNet-77")
    ax.set(xlabel="multiplications per image (billions, eq. 11)", ylabel="top-1 accuracy (%)",
           title="ImageNet, paper (Table 1 / Figure 2)")
    ax.legend(fontsize=8, loc="lower right", title="labels: locations / glimpses", title_fontsize=7)
    label_points(ax, labels)


def _locs(key: str, prefix: str) -> int | None:
    m = re.fullmatch(re.escape(prefix) + r"(\d+)", key)
    return int(m[1]) if m else None


def ours_panel(ax, result: dict) -> None:
    metrics = result["metrics"]
    labels = []
    for run, (label, color, marker) in RUN_STYLE.items():
        if f"{run}/accuracy" not in metrics:
            continue
        locs = sorted(n for k in metrics for n in [_locs(k, f"{run}/accuracy_locs")] if n is not None)
        keys = ([(f"{run}/mults_locs{n}", f"{run}/accuracy_locs{n}") for n in locs]
                or [(f"{run}/mults", f"{run}/accuracy")])
        keys = [(m, a) for m, a in keys if m in metrics]
        xs = [metrics[m]["mean"] / 1e6 for m, _ in keys]
        ys = [100 * metrics[a]["mean"] for _, a in keys]
        ax.plot(xs, ys, marker=marker, color=color, label=label, linestyle="-" if len(xs) > 1 else "none")
        seed_points(ax, xs, [metrics[a]["per_seed"] for _, a in keys], color, marker, scale=100)
        labels += [(x, y, str(n)) for x, y, n in zip(xs, ys, locs, strict=False)]
    seeds = len(next(iter(metrics.values()))["per_seed"]) if metrics else 0
    ax.set(xlabel="multiplications per image (millions, eq. 11)", ylabel="top-1 accuracy (%)",
           title=f"CPU scale, ours (means of {seeds} seeds; hollow: each seed)", ylim=(0, 100))
    ax.axhline(10, color="0.6", linestyle=":", linewidth=1, label="chance")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: hides no seed
    label_points(ax, labels)


def figure2(results_dir: Path, out: Path) -> Path:
    paper_path, ours_path = results_dir / "papers" / "tnet.json", results_dir / "tnet" / "cpu.json"
    if not paper_path.is_file():
        raise UserError(f"missing {paper_path}")
    paper = json.loads(paper_path.read_text())
    ours = json.loads(ours_path.read_text()) if ours_path.is_file() else None
    fig, axes = plt.subplots(1, 2 if ours else 1, figsize=(14 if ours else 6, 4.5), squeeze=False)
    paper_panel(axes[0, 0], paper)
    if ours:
        ours_panel(axes[0, 1], ours)
    return save_figure(fig, out / "figure2.png", dpi=130)


def draw_overlays(images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, boxes: list[torch.Tensor],
                  path: Path, columns: int = 8) -> Path:
    """Images in [-1, 1] with the attended boxes of each level (level 2 red, level 3 yellow, ...) and
    "label/prediction" titles (Figures 3 and 5)."""
    n = len(images)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows), squeeze=False)
    colors = ("red", "yellow", "cyan", "magenta")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = ((images[i] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray")
        for level, level_boxes in enumerate(boxes):
            for y0, x0, y1, x1 in level_boxes[i].tolist():
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.2,
                                           edgecolor=colors[level % len(colors)]))
        ax.set_title(f"{int(labels[i])}/{int(preds[i])}", fontsize=8,
                     color="black" if int(labels[i]) == int(preds[i]) else "red")
    return save_figure(fig, Path(path), dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=REPO / "results")
    parser.add_argument("--out", type=Path, default=None, help="default: <results-dir>/tnet/figures")
    args = parser.parse_args(argv)
    path = main_guard(figure2, args.results_dir, args.out or args.results_dir / "tnet" / "figures")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
