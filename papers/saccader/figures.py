"""Figures from stored results only (no training):

    python papers/saccader/figures.py [--results-dir results] [--scale cpu] [--out results/saccader/figures]
                                      [--logs results/saccader/cpu-logs] [--run-dir DIR]

From results/saccader/<scale>.json (seed means, +-SD error bars as in the paper):
  figure3.png   (a) accuracy vs number of glimpses of the learned policy, the engineered policies on
                BagNet-lowD, the no-pretraining ablation and DRAM, dotted line at the trained number, black
                markers for the whole-image networks; (b) fraction of the image covered (paper Fig. 3).
  figure5.png   (a) accuracy vs area covered; (b) whole-image classifier accuracy with each policy's
                glimpses occluded (paper Fig. 5).
  figure_supp3.png  Saccader with and without location pretraining, and after pretraining only (Fig. Supp.3).
From the training logs <logs>/<run>/seed<S>.jsonl (copied there by `core.reproduce --update`; default
<results-dir>/saccader/<scale>-logs, skipped when absent):
  training.png  every stage's training signal vs updates, mean over seeds: BagNet-lowD's and the
                whole-image classifier's training accuracy (eq. 4), the location network's hit rate of
                eq. 5's targets, and the reward of eq. 6 / DRAM's hybrid loss.
With --run-dir (a train.py directory on which evaluate.py was run): figure4.png, the glimpses of every
policy on test canvases (paper Fig. 4).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from matplotlib.patches import Rectangle

from core.cli import ArgumentParser, main_guard
from core.errors import UserError
from core.figures import plt, save_figure

REPO = Path(__file__).resolve().parents[2]
# (run, policy) -> label, colour, marker; the policy is the metric's middle part.
CURVES = {
    ("saccader", "learned"): ("Saccader", "C0", "o"),
    ("saccader", "no_location_pretraining"): ("Saccader, no location pretraining", "C9", "v"),
    ("saccader", "no_attention_network"): ("Saccader, no attention network", "C8", "<"),
    ("saccader", "ordered_logits"): ("ordered logits", "C1", "s"),
    ("saccader", "random"): ("random", "C7", "x"),
    ("saccader", "sobel_mean"): ("Sobel mean", "C2", "^"),
    ("saccader", "sobel_var"): ("Sobel variance", "C4", "D"),
    ("dram", "learned"): ("DRAM", "C3", "P"),
}


def curve(metrics: dict, run: str, kind: str, policy: str) -> tuple[list[int], list[float], list[float]]:
    """(glimpse counts, seed means, seed SDs) of metrics "<run>/<kind>_<policy>_T<k>"."""
    pattern = re.compile(re.escape(f"{run}/{kind}_{policy}_T") + r"(\d+)")
    points = sorted((int(m[1]), v["mean"], v.get("std", 0.0)) for key, v in metrics.items()
                    if (m := pattern.fullmatch(key)))
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def _trained_glimpses(result: dict) -> int | None:
    """Glimpses the stored runs were trained with (from the resolved configs in the provenance)."""
    configs = result.get("provenance", {}).get("configs", {})
    values = [(c.get("resolved") or {}).get("train_glimpses") for c in configs.values()]
    return next((v for v in values if v), None)


def _legend_right(source, target) -> None:
    """`source`'s legend to the right of `target`, where it hides no curve or reference point."""
    target.legend(*source.get_legend_handles_labels(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))


def figure3(result: dict, out: Path) -> Path:
    metrics = result["metrics"]
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(13, 4))
    for (run, policy), (label, color, marker) in CURVES.items():
        for ax, kind in ((ax_a, "accuracy"), (ax_b, "coverage")):
            x, y, err = curve(metrics, run, kind, policy)
            if x:
                ax.errorbar(x, [100 * v for v in y], [100 * e for e in err], label=label, color=color,
                            marker=marker, capsize=2)
    for key, label, marker in (("saccader/accuracy_all_locations", "BagNet-lowD, all locations", "*"),
                               ("saccader/accuracy_whole_image", "ResNet-v2-50, whole image", "D")):
        if key in metrics:
            ax_a.errorbar([0.5], [100 * metrics[key]["mean"]], [100 * metrics[key].get("std", 0.0)],
                          color="k", marker=marker, linestyle="none", label=label)
    if (t := _trained_glimpses(result)) is not None:
        for ax in (ax_a, ax_b):
            ax.axvline(t, color="k", linestyle=":", linewidth=1)
    ax_a.set(xlabel="number of glimpses", ylabel="top-1 accuracy (%)", title="(a) accuracy")
    ax_b.set(xlabel="number of glimpses", ylabel="image area covered (%)", title="(b) coverage")
    _legend_right(ax_a, ax_b)
    fig.suptitle(f"Saccader, {result.get('scale', '')} scale (paper Fig. 3)")
    return save_figure(fig, out / "figure3.png")


def figure5(result: dict, out: Path) -> Path:
    metrics = result["metrics"]
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(13, 4))
    for (run, policy), (label, color, marker) in CURVES.items():
        _, acc, _ = curve(metrics, run, "accuracy", policy)
        _, cov, _ = curve(metrics, run, "coverage", policy)
        if acc and len(acc) == len(cov):
            ax_a.plot([100 * c for c in cov], [100 * a for a in acc], label=label, color=color, marker=marker)
        _, occ, err = curve(metrics, run, "occluded_accuracy", policy)
        if occ and len(occ) == len(cov):  # paper's axis: accuracy vs area occluded
            ax_b.errorbar([100 * c for c in cov], [100 * v for v in occ], [100 * e for e in err], label=label,
                          color=color, marker=marker, capsize=2)
    ax_a.set(xlabel="image area covered (%)", ylabel="top-1 accuracy (%)", title="(a) accuracy vs area")
    ax_b.set(xlabel="image area occluded (%)", ylabel="whole-image classifier accuracy (%)",
             title="(b) glimpses occluded")
    _legend_right(ax_a, ax_b)
    fig.suptitle(f"Saccader, {result.get('scale', '')} scale (paper Fig. 5)")
    return save_figure(fig, out / "figure5.png")


def figure_supp3(result: dict, out: Path) -> Path:
    metrics = result["metrics"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for policy, label, color in (("learned", "Saccader", "C0"),
                                 ("no_location_pretraining", "no location pretraining", "C9"),
                                 ("no_attention_network", "no attention network", "C8"),
                                 ("learned_pretrained", "after location pretraining only", "C5")):
        x, y, err = curve(metrics, "saccader", "accuracy", policy)
        if x:
            ax.errorbar(x, [100 * v for v in y], [100 * e for e in err], label=label, color=color, marker="o",
                        capsize=2)
    ax.set(xlabel="number of glimpses", ylabel="top-1 accuracy (%)", title="paper Fig. Supp.3")
    ax.legend(fontsize=8)
    return save_figure(fig, out / "figure_supp3.png")


# (stage in train.py's metrics.jsonl, logged statistic) -> panel; the stage prefix names the variant.
TRAINING_PANELS = {"accuracy": ("train_accuracy", "training accuracy (eq. 4 / classifiers)"),
                   "hits": ("target_hit_rate", "eq. 5: targets ranked first"),
                   "reward": ("reward", "reward (eq. 6 / DRAM hybrid loss)")}


def load_logs(logs: Path) -> dict[tuple[str, str], list[list[dict]]]:
    """{(run, stage): per-seed lists of log records, step counted from the stage's start}."""
    out: dict[tuple[str, str], list[list[dict]]] = {}
    for path in sorted(logs.glob("*/seed*.jsonl")):
        stages: dict[str, list[dict]] = {}
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                stages.setdefault(record.get("stage", ""), []).append(record)
        for stage, records in stages.items():
            first = records[0]["step"] - 1
            out.setdefault((path.parent.name, stage), []).append(
                [{**r, "step": r["step"] - first} for r in records])
    return out


def figure_training(logs: Path, out: Path) -> Path:
    runs = load_logs(logs)
    if not runs:
        raise UserError(f"no training logs <run>/seed<S>.jsonl under {logs}")
    fig, axes = plt.subplots(1, len(TRAINING_PANELS), figsize=(15, 3.8))
    for ax, (key, title) in zip(axes, TRAINING_PANELS.values(), strict=True):
        for (run, stage), seeds in runs.items():
            seeds = [[r for r in records if key in r] for records in seeds]
            n = min(len(records) for records in seeds)
            if n:
                steps = [r["step"] for r in seeds[0][:n]]
                mean = [sum(records[i][key] for records in seeds) / len(seeds) for i in range(n)]
                ax.plot(steps, mean, label=f"{run}: {stage}")
        ax.set(xlabel="updates within the stage", title=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    # The logs' spec and scale, not their path: the same logs draw the same figure wherever they lie.
    fig.suptitle(f"training curves, mean over seeds ({logs.parent.name}/{logs.name})", fontsize=9)
    return save_figure(fig, out / "training.png")


def figure4(run_dir: Path, out: Path, num_glimpses: int | None = None) -> Path:
    """Glimpse overlays (paper Fig. 4) from evaluate.py's DIR/glimpses.pt: one row per policy."""
    path = run_dir / "glimpses.pt"
    if not path.is_file():
        raise UserError(f"{path} not found: run `python papers/saccader/evaluate.py --run-dir {run_dir}` "
                        "first")
    data = torch.load(path)
    images, boxes = data["images"], data["boxes"]
    n = images.shape[0]
    fig, axes = plt.subplots(len(boxes), n, figsize=(1.6 * n, 1.7 * len(boxes)), squeeze=False)
    for row, (name, policy_boxes) in enumerate(boxes.items()):
        k = num_glimpses or policy_boxes.shape[1]
        for col in range(n):
            ax = axes[row, col]
            pixels = images[col].permute(1, 2, 0).squeeze(-1).add(1).div(2).numpy()
            ax.imshow(pixels, cmap="gray", vmin=0, vmax=1)
            for t, (y0, x0, y1, x1) in enumerate(policy_boxes[col, :k].tolist()):
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                       color=plt.cm.autumn(t / max(1, k - 1)), linewidth=1))
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(f"first {num_glimpses or 'all'} glimpses per policy (red = first; paper Fig. 4)", fontsize=9)
    return save_figure(fig, out / "figure4.png")


def make_figures(results_dir: str, scale: str, out_dir: str | None, run_dir: str | None = None,
                 logs: str | None = None) -> list[Path]:
    path = Path(results_dir) / "saccader" / f"{scale}.json"
    if not path.is_file():
        raise UserError(f"{path} not found: run `python -m core.reproduce reproductions/saccader.toml "
                        f"--scale {scale} --update` first")
    result = json.loads(path.read_text())
    out = Path(out_dir or Path(results_dir) / "saccader" / "figures")
    out.mkdir(parents=True, exist_ok=True)
    made = [figure3(result, out), figure5(result, out), figure_supp3(result, out)]
    logs_dir = Path(logs) if logs else Path(results_dir) / "saccader" / f"{scale}-logs"
    if logs or logs_dir.is_dir():  # an explicitly named folder must exist
        made.append(figure_training(logs_dir, out))
    if run_dir:
        made.append(figure4(Path(run_dir), out, _trained_glimpses(result)))
    return made


def main(argv: list[str] | None = None) -> list[Path]:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default=str(REPO / "results"))
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--out", default=None, help="default: <results-dir>/saccader/figures")
    parser.add_argument("--logs", default=None, help="default: <results-dir>/saccader/<scale>-logs")
    parser.add_argument("--run-dir", default=None, help="a train.py directory evaluated by evaluate.py")
    args = parser.parse_args(argv)
    made = main_guard(make_figures, args.results_dir, args.scale, args.out, args.run_dir, args.logs)
    for path in made:
        print(path)
    return made


if __name__ == "__main__":
    main()
