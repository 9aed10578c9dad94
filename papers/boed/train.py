"""Run one BOED experiment: design near-optimal glimpse sequences and train hard-attention networks with and
without them, or the adaptive-stopping vs low-power-CNN comparison.

    accelerate launch papers/boed/train.py --config cpu [--seed N] [--output-dir DIR] [--set field=value ...]

experiment=supervision (§3-§5, Figs. 2, 5, 6):
  1. train the posterior CNN g on uniformly random glimpse sets of the training images outside the design set;
  2. design `sequences_per_task` sequences per task by Algorithm 1 (retrieval from the database, eq. 2 over
     the whole candidate lattice, greedy), written to DIR/sequences/<task>/<image>.txt in the official format;
  3. train one hard-attention network per (condition, task, replicate) on the same batches: "partial" members
     have the design images supervised (eq. 3), "unsupervised" ones learn by REINFORCE only; the validation
     accuracy of every member is logged every eval_every updates (the Fig. 5 curves).
  Steps 1-2 are skipped when conditions=unsupervised.
experiment=flops (§5, Fig. 7): g as in step 1, its first-step EPE map gives the heuristic supervision of an
  adaptive-stopping network on task `flops_task`; ShuffleNet / MobileNet are trained on the same task at every
  (c, r); thresholds are swept on the test set.
Modules: splits.py (data, member layout, loop settings), design_phase.py (g, Algorithm 1 over all images,
claim (a)), supervision.py (the Fig. 5 / 6 trainings and statistics), flops.py (adaptive stopping and
low-power CNNs).
Every sub-training is a core.train run in its own folder (resumable); DIR/metrics.jsonl gathers their logs
(each record tagged with its "stage") and ends with a "summary" record holding the figures' data;
DIR/final_metrics.json holds the flat metrics the reproduction spec checks.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from core.cli import run_paper
from core.runs import process_state
from papers.boed.config import BOEDConfig, get_config
from papers.boed.flops import run_flops
from papers.boed.splits import load_data, read_log
from papers.boed.supervision import run_supervision

EXPERIMENTS = {"supervision": run_supervision, "flops": run_flops}


def gather_logs(out: Path, summary: dict) -> None:
    """DIR/metrics.jsonl: every sub-training's log, each record tagged with its stage, then the summary."""
    lines = []
    for path in sorted(out.rglob("metrics.jsonl")):
        if path.parent == out:
            continue
        stage = path.parent.relative_to(out).as_posix()
        lines += [json.dumps({**r, "stage": stage}) for r in read_log(path)]
    last = max((json.loads(line)["step"] for line in lines), default=0)
    lines.append(json.dumps({"step": last, "stage": "summary", **summary}))
    tmp = out / "metrics.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out / "metrics.jsonl")


def run(cfg: BOEDConfig, output_dir: str) -> dict[str, float]:
    """The configured experiment, then its final metrics (core.cli.run_paper records the config and writes
    them); rank 0 also joins every sub-training's log into metrics.jsonl with the figures' data."""
    state = process_state()
    out = Path(output_dir)
    needs_design = cfg.experiment == "flops" or "partial" in cfg.conditions
    splits = ("train", "val", "test") + (("database",) if needs_design else ())
    data = load_data(cfg, splits, out)
    start = time.perf_counter()
    metrics, figure = EXPERIMENTS[cfg.experiment](cfg, data, out, state)
    if not state.is_main_process:
        return {}
    final = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
    gather_logs(out, {"experiment": cfg.experiment, "task_names": list(cfg.tasks), "final": final,
                      "image_size": cfg.image_size, "glimpse_size": cfg.glimpse_size, "lattice": cfg.lattice,
                      "wall_seconds": time.perf_counter() - start, **figure})
    return final


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run_paper(get_config, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    main()
