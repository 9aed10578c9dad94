"""Headless matplotlib for every figure script (no display on CI or cluster nodes), one way to write a
figure file, one way to read a run's stored per-seed logs and to name where its figures go, and the two
drawing rules every figure follows: point labels never overlap, and seeds are shown as points (a mean +- SD
bar can leave the range a metric lives in)."""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from core.errors import UserError  # noqa: E402

__all__ = ["label_points", "logs_arguments", "plt", "read_seed_logs", "save_figure", "seed_points"]


def read_seed_logs(folder: str | Path, hint: str = "") -> list[list[dict]]:
    """Every seed's log records from <folder>/seed<S>.jsonl (where `core.reproduce --update` copies each
    run's metrics.jsonl), in seed order; a one-line UserError (ending with `hint`) when there are none."""
    folder = Path(folder)
    paths = sorted(folder.glob("seed*.jsonl"), key=lambda p: int(p.stem.removeprefix("seed")))
    if not paths:
        raise UserError(f"no logs under {folder} (expected {folder}/seed<S>.jsonl){hint}")
    return [[json.loads(line) for line in p.read_text().splitlines() if line.strip()] for p in paths]


def logs_arguments(description: str, default_logs: str, argv: list[str] | None = None,
                   **flags: str) -> tuple[argparse.Namespace, Path, str]:
    """A figure script's command line over one stored run's logs: --logs (<results>/<paper>/<scale>-logs),
    --out (default: the logs' parent) and a store_true option per `flags` item (name: help). Returns (args,
    the output folder, now created, and the scale that the logs' folder name gives); a missing --logs is a
    one-line UserError."""
    from core.cli import ArgumentParser  # accelerate loads only for a command line, not for core.compare

    parser = ArgumentParser(description=description)
    parser.add_argument("--logs", type=Path, default=Path(default_logs))
    parser.add_argument("--out", type=Path, default=None, help="default: the parent of --logs")
    for name, help_text in flags.items():
        parser.add_argument(f"--{name.replace('_', '-')}", action="store_true", help=help_text)
    args = parser.parse_args(argv)
    if not args.logs.is_dir():
        raise UserError(f"log directory {args.logs} does not exist (run core.reproduce with --update first)")
    out = args.out or args.logs.parent
    out.mkdir(parents=True, exist_ok=True)
    return args, out, args.logs.name.removesuffix("-logs")


def save_figure(fig, path: str | Path, dpi: int = 120, layout: bool = True) -> Path:
    """Lay out `fig` (unless the caller did, layout=False), write it to `path` (creating its folder) and
    close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def label_points(ax, points: list[tuple[float, float, str]], fontsize: float = 7, gap: float = 1.3) -> None:
    """Write each (x, y, text) beside its point, pushing labels that would overlap apart vertically (with a
    thin leader line to a moved label). Call after the axes' limits and scales are final."""
    ax.autoscale_view()
    fig = ax.figure
    to_points = 72 / fig.dpi
    placed: list[tuple[float, float, float]] = []  # (x, y, width) of labels placed, in points
    height = gap * fontsize
    for x, y, text in sorted(points, key=lambda p: (p[1], p[0])):
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        lx, ly, width = px + 4, py - fontsize / 2, 0.6 * fontsize * len(text)
        for ox, oy, ow in sorted(placed, key=lambda p: p[1]):
            if ox < lx + width and lx < ox + ow and oy - height < ly < oy + height:
                ly = oy + height  # above the label it would overlap
        placed.append((lx, ly, width))
        moved = abs(ly - (py - fontsize / 2)) > 1
        ax.annotate(text, (x, y), xytext=(4, ly - py + fontsize / 2), textcoords="offset points",
                    fontsize=fontsize, va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.4"} if moved else None)


def seed_points(ax, xs: list[float], per_seed: list[list[float]], color, marker: str = "o",
                scale: float = 1.0) -> None:
    """One small hollow marker per seed at each x (per_seed[i] holds x_i's seeds, multiplied by `scale`),
    beside a curve of the seed means that the caller draws in the same colour."""
    pts = [(x, scale * v) for x, seeds in zip(xs, per_seed, strict=True) for v in seeds]
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=16, marker=marker, facecolors="none",
                   edgecolors=color, linewidths=0.8, alpha=0.8)
