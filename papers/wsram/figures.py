"""Draw WS-RAM Figures 2 and 3 from stored training logs (no training).

    python papers/wsram/figures.py [--logs results/wsram/cpu-logs] [--out results/wsram]
    python papers/wsram/figures.py --logs results/wsram-long/cpu-logs --training-curves

Reads <logs>/<run>/seed<S>.jsonl (copied there by `core.reproduce --update`) and writes
  <out>/<scale>-fig2.png  training error, gradient variance and ESS vs updates for the six variants (Fig. 2);
  <out>/<scale>-fig3.png  training error with and without the exploration heuristics of §4.5 (Fig. 3);
or, with --training-curves, only <out>/<scale>-training-error.png: the training error of every run under
<logs> (reproductions/wsram-long.toml's runs, which have no Fig. 3 ablations).
Curves are means over seeds with a +-1 standard deviation band (for the gradient variance, drawn on a log
axis: the geometric mean and a band of +-1 standard deviation of log10).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.cli import main_guard
from core.errors import UserError
from core.figures import logs_arguments, plt, read_seed_logs, save_figure

# run name in reproductions/wsram.toml -> legend label (Fig. 2 / Fig. 3 of the paper)
FIG2_RUNS = {"var": "VAR", "var_c": "VAR+c", "wsram": "WS-RAM", "wsram_c": "WS-RAM+c",
             "wsram_q": "WS-RAM+q", "wsram_qc": "WS-RAM+q+c"}
FIG3_RUNS = {"var_c": "VAR+c", "var_c_noexplore": "VAR+c, no heuristics",
             "wsram_qc": "WS-RAM+q+c", "wsram_qc_noexplore": "WS-RAM+q+c, no heuristics"}
PANELS = [("train_error", "training error", "linear"),
          ("gvar_policy", "policy-gradient variance / |mean|^2\n(all at WS-RAM+q+c's parameters)", "log"),
          ("ess", "effective sample size (max M)", "linear")]
RUN_LABELS = {**FIG2_RUNS, **FIG3_RUNS, "random_var": "random glimpses, VAR objective",
              "random_wsram": "random glimpses, WS-RAM objective"}
SHARED_RUN = "wsram_qc"  # the run that measures every estimator's variance at its parameters


def load_curves(logs: Path, run: str, metrics=tuple(PANELS)) -> dict[str, tuple[np.ndarray, ...]]:
    """{metric: (updates, centre, band low, band high)} over seeds for the logged points of one run."""
    per_seed = [[r for r in rows if "train_error" in r] for rows in read_seed_logs(logs / run)]
    n = min(len(rows) for rows in per_seed)  # seeds log the same steps; guard against a cut-short log
    steps = np.array([r["step"] for r in per_seed[0][:n]])
    out = {}
    for metric, _, yscale in metrics:
        if metric in per_seed[0][0]:
            values = np.array([[r[metric] for r in rows[:n]] for rows in per_seed])
            if yscale == "log":
                logs10 = np.log10(values)
                mean, std = logs10.mean(0), logs10.std(0)
                out[metric] = (steps, 10**mean, 10 ** (mean - std), 10 ** (mean + std))
            else:
                mean, std = values.mean(0), values.std(0)
                out[metric] = (steps, mean, mean - std, mean + std)
    return out


def _plot(ax, steps, centre, low, high, label):
    (line,) = ax.plot(steps / 1000, centre, label=label)
    ax.fill_between(steps / 1000, low, high, color=line.get_color(), alpha=0.15, linewidth=0)


def figure2(logs: Path, path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    shared = load_curves(logs, SHARED_RUN, [(f"gvar_policy_{run}", "", "log") for run in FIG2_RUNS])
    for run, label in FIG2_RUNS.items():
        curves = load_curves(logs, run)
        curves["gvar_policy"] = shared.get(f"gvar_policy_{run}")
        for ax, (metric, _, _) in zip(axes, PANELS, strict=True):
            if curves.get(metric) is not None:
                _plot(ax, *curves[metric], label)
    for ax, (_, title, yscale) in zip(axes, PANELS, strict=True):
        ax.set(xlabel="thousands of updates", yscale=yscale)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"WS-RAM Fig. 2, {logs.name.removesuffix('-logs')} scale", fontsize=10)
    return save_figure(fig, path)


def figure3(logs: Path, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for run, label in FIG3_RUNS.items():
        _plot(ax, *load_curves(logs, run)["train_error"], label)
    ax.set(xlabel="thousands of updates", ylabel="training error", title="exploration heuristics (Fig. 3)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def training_curves(logs: Path, path: Path) -> Path:
    """Training error vs updates of every run under `logs`, labelled as in Fig. 2."""
    runs = sorted(d.name for d in logs.iterdir() if d.is_dir())
    if not runs:
        raise UserError(f"no run folders under {logs}")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for run in runs:
        _plot(ax, *load_curves(logs, run)["train_error"], RUN_LABELS.get(run, run))
    ax.set(xlabel="thousands of updates", ylabel="training error",
           title=f"WS-RAM training error, {logs.name.removesuffix('-logs')} scale")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> list[Path]:
    args, out, scale = logs_arguments(
        __doc__.split("\n")[0], "results/wsram/cpu-logs", argv,
        training_curves="only the training-error curves of every run under --logs")
    if args.training_curves:
        paths = [training_curves(args.logs, out / f"{scale}-training-error.png")]
    else:
        paths = [figure2(args.logs, out / f"{scale}-fig2.png"), figure3(args.logs, out / f"{scale}-fig3.png")]
    for p in paths:
        print(p)
    return paths


if __name__ == "__main__":
    main_guard(main)
