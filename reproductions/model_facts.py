"""Model facts, measured, at two scales; `python -m core.compare` reads both.
- paper: parameter counts and multiplications of every paper-scale model whose paper (or TNet's Table 1,
  which also lists Saccader and DRAM) reports them -> results/model-facts/paper.json, set beside the
  papers' numbers;
- cpu: multiplications per image of every stored CPU-scale run whose training script does not measure
  them (Saccader, DRAM, WS-RAM), on the model its stored resolved config builds, predicting as its
  accuracy was measured -> results/model-facts/cpu.json, the common axes' `mults` for those runs.
With --update the files are written; without, the measured facts are checked against them, exactly.

    python reproductions/model_facts.py [--update] [--results-dir results]      (nox -s model-facts)

Parameters follow the papers' convention (parameters + BN moving statistics; models built on the meta
device). Multiplications follow TNet's eq. 11 on one image (`core.metrics.count_multiplications`, via
papers/tnet/flops.py for TNet and its baselines); Saccader and DRAM are measured in eval mode at 224 px
with T glimpses. Deterministic: the same code gives the same numbers on any machine, so each file has one
"seed" and its check is exact. The tests assert the same counts (tests/test_tnet.py, test_saccader.py).
A CPU fact goes stale when its result is stored again with another config; the check then fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from core.cli import main_guard
from core.metrics import count_multiplications, count_parameters
from core.registry import Paper, get_paper
from core.reproduce import load_spec
from core.results import (
    REPO_ROOT,
    aggregate,
    compare,
    format_comparison,
    load_result,
    provenance,
    save_result,
)
from core.runs import config_from_dict
from papers.tnet.flops import table

TNET, SACCADER, WSRAM = (get_paper(name) for name in ("tnet", "saccader", "wsram"))

TNET_CONFIGS = ("imagenet", "imagenet-bagnet77", "fmow", "fmow-efficientnet-b0")
SACCADER_CONFIGS = ("imagenet", "imagenet-bagnet77-lowd", "imagenet-resnet-v2-50", "imagenet-dram")
GLIMPSES = {"imagenet": (2, 6, 20, 30), "imagenet-dram": (2, 4, 8, 20)}  # the rows of TNet's Table 1


def _params(paper: Paper, config: str) -> int:
    with torch.device("meta"):  # counts need shapes only
        return count_parameters(paper.build_model(paper.get_config(config)))


def measure_paper() -> dict[str, float]:
    facts: dict[str, float] = {}
    total = len(TNET_CONFIGS) + 1 + len(SACCADER_CONFIGS) + sum(map(len, GLIMPSES.values()))
    progress = tqdm(total=total, desc="paper-scale facts", unit="fact", dynamic_ncols=True)
    for name in TNET_CONFIGS:
        progress.set_postfix_str(f"tnet/{name} params")
        facts[f"tnet/{name}/params"] = _params(TNET, name)
        progress.update()
    progress.set_postfix_str("tnet Tables 1-2 multiplications")
    for row in table():
        suffix = "" if row["locations"] == "-" else f"_locs{row['locations']}"
        facts[f"tnet/{row['config']}/mults{suffix}"] = round(row["flops_b"] * 1e9)
    progress.update()
    for name in SACCADER_CONFIGS:
        progress.set_postfix_str(f"saccader/{name} params")
        facts[f"saccader/{name}/params"] = _params(SACCADER, name)
        progress.update()
    torch.manual_seed(0)
    images = torch.rand(1, 3, 224, 224) * 2 - 1
    for name, counts in GLIMPSES.items():
        model = SACCADER.build_model(SACCADER.get_config(name)).eval()
        if name == "imagenet":  # sec. 3.1: 19 x 19 = 361 locations at 224 px
            facts[f"saccader/{name}/locations"] = model(images, 1)["logits_map"][0, 0].numel()
        for t in counts:
            progress.set_postfix_str(f"saccader/{name} multiplications, T={t}")
            glimpses = lambda x, m=model, t=t: m(x, t)  # noqa: E731
            facts[f"saccader/{name}/mults_T{t}"] = count_multiplications(glimpses, images)
            progress.update()
    progress.close()
    return facts


def _config(paper: Paper, resolved: dict):
    """The dataclass config a stored run resolved to (fields the config has since dropped are ignored)."""
    names = {f.name for f in dataclasses.fields(paper.config_cls)}
    return config_from_dict(paper.config_cls, {k: v for k, v in resolved.items() if k in names})


def _saccader_mults(resolved: dict) -> int:
    """Saccader or DRAM predicting from its trained number of glimpses, as its test_accuracy is measured."""
    cfg = _config(SACCADER, resolved)
    model = SACCADER.build_model(cfg).eval()
    images = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)
    return count_multiplications(lambda x: model(x, cfg.train_glimpses), images)


def _wsram_mults(resolved: dict) -> int:
    """WS-RAM's prediction (the mean over num_samples glimpse sequences), as its accuracy is measured."""
    cfg = _config(WSRAM, resolved)
    model = WSRAM.build_model(cfg).eval()
    images = torch.zeros(1, 1, cfg.canvas, cfg.canvas)
    return count_multiplications(lambda x: model.predict(x, cfg.num_samples), images)


# Training scripts whose runs report an accuracy but no multiplications -> how to count them.
CPU_COUNTERS: dict[str, Callable[[dict], int]] = {
    SACCADER.train_script: _saccader_mults,
    WSRAM.train_script: _wsram_mults,
}


def measure_cpu(results_dir: Path) -> dict[str, float]:
    """'<spec paper>/cpu/<run>/mults' for every run of a stored CPU-scale result that CPU_COUNTERS covers."""
    todo = []  # (fact, counter, resolved config)
    for spec_path in sorted((REPO_ROOT / "reproductions").glob("*.toml")):
        spec = load_spec(spec_path, "cpu")
        stored = results_dir / spec.paper / "cpu.json"
        if not stored.is_file():
            continue
        result = load_result(stored)
        configs, metrics = result["provenance"]["configs"], result["metrics"]
        for run in spec.runs:
            count = CPU_COUNTERS.get((run.script or spec.script).relative_to(REPO_ROOT).as_posix())
            reports_accuracy = any(f"{run.name}/{m}" in metrics for m in ("accuracy", "test_accuracy"))
            if count and reports_accuracy and f"{run.name}/mults" not in metrics:
                todo.append((f"{spec.paper}/cpu/{run.name}/mults", count, configs[run.name]["resolved"]))
    facts: dict[str, float] = {}
    for fact, count, resolved in tqdm(todo, desc="CPU-scale facts", unit="fact", dynamic_ncols=True):
        facts[fact] = count(resolved)
    return facts


DESCRIPTIONS = {
    "paper": "parameters and multiplications (eq. 11) of the paper-scale models, measured",
    "cpu": "multiplications per image of the stored CPU-scale runs whose training does not measure them",
}


def run(results_dir: Path, update: bool) -> int:
    measured, seconds = {}, {}
    for scale, measure in (("paper", measure_paper), ("cpu", lambda: measure_cpu(results_dir))):
        start = time.perf_counter()
        with torch.no_grad():
            measured[scale] = aggregate([{k: float(v) for k, v in measure().items()}])
        seconds[scale] = time.perf_counter() - start
    paths = {scale: results_dir / "model-facts" / f"{scale}.json" for scale in measured}
    if update:
        # Provenance before either file is written, or the second would record a dirty tree.
        records = {scale: provenance(wall_time_s=seconds[scale]) for scale in measured}
        for scale, facts in measured.items():
            save_result(paths[scale], {"paper": "model-facts", "scale": scale,
                                       "description": DESCRIPTIONS[scale], "provenance": records[scale],
                                       "metrics": facts, "claims": []})
            print(f"stored {paths[scale]} ({len(facts)} facts)")
        return 0
    failed, checked = [], 0
    for scale, facts in measured.items():
        rows = compare(facts, load_result(paths[scale])["metrics"], [])  # no tolerance: every fact is exact
        print(format_comparison(rows, facts))
        failed += [r.metric for r in rows if r.status != "PASS"]
        checked += len(rows)
    print(f"\n{'FAIL: ' + ', '.join(failed) if failed else f'PASS: {checked} facts as stored'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="store the measured facts")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    args = parser.parse_args(argv)
    return main_guard(run, args.results_dir, args.update)


if __name__ == "__main__":
    sys.exit(main())
