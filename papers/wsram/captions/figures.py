"""Draw WS-RAM Figure 4 (training negative log-likelihood vs updates, captioning) from stored logs.

    python papers/wsram/captions/figures.py [--logs results/wsram-captions/cpu-logs] [--out DIR]

Reads <logs>/<run>/seed<S>.jsonl (copied there by `core.reproduce --update`) and writes
<out>/<scale>-fig4.png: the per-word training NLL of each estimator (mean over seeds, +-1 standard
deviation band) and, when the stored results (<logs>/../<scale>.json) are there, the NLL of an
image-blind unigram model for reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.cli import main_guard
from core.errors import UserError
from core.figures import logs_arguments, plt, read_seed_logs, save_figure

# run name in reproductions/wsram-captions.toml -> legend label (Fig. 4 uses Fig. 3's labels)
RUNS = {"var": "VAR", "var_c": "VAR+c", "wsram": "WS-RAM", "wsram_c": "WS-RAM+c", "wsram_q": "WS-RAM+q",
        "wsram_qc": "WS-RAM+q+c"}


def load_curve(logs: Path, run: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(updates, mean, std) over seeds of one run's logged training NLL."""
    per_seed = [[r for r in rows if "train_nll" in r] for rows in read_seed_logs(logs / run)]
    n = min(len(rows) for rows in per_seed)  # seeds log the same steps; guard against a cut-short log
    values = np.array([[r["train_nll"] for r in rows[:n]] for rows in per_seed])
    return np.array([r["step"] for r in per_seed[0][:n]]), values.mean(0), values.std(0)


def figure4(logs: Path, path: Path, reference: float | None = None) -> Path:
    runs = [r for r in RUNS if (logs / r).is_dir()]
    if not runs:
        raise UserError(f"{logs} holds none of the runs {', '.join(RUNS)}")
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for run in runs:
        steps, mean, std = load_curve(logs, run)
        (line,) = ax.plot(steps, mean, label=RUNS[run])
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle=":", label="unigram model (image-blind)")
    ax.set(xlabel="updates", ylabel="training NLL per word (nats)",
           title=f"WS-RAM Fig. 4, {logs.name.removesuffix('-logs')} scale")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _unigram_reference(logs: Path) -> float | None:
    """The image-blind unigram NLL stored with the results (results/<paper>/<scale>.json), if any."""
    stored = logs.parent / f"{logs.name.removesuffix('-logs')}.json"
    if not stored.is_file():
        return None
    metrics = json.loads(stored.read_text()).get("metrics", {})
    values = [v["mean"] for k, v in metrics.items() if k.endswith("/unigram_nll")]
    return values[0] if values else None


def main(argv: list[str] | None = None) -> Path:
    args, out, scale = logs_arguments(__doc__.split("\n")[0], "results/wsram-captions/cpu-logs", argv)
    path = figure4(args.logs, out / f"{scale}-fig4.png", _unigram_reference(args.logs))
    print(path)
    return path


if __name__ == "__main__":
    main_guard(main)
