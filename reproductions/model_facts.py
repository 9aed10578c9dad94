"""Paper-scale model facts, measured: parameter counts and multiplications of every paper-scale model whose
paper (or TNet's Table 1, which also lists Saccader and DRAM) reports them. Writes
results/model-facts/paper.json (with --update), which `python -m core.compare` sets beside the
papers' numbers; without --update the measured facts are checked against that file, exactly.

    python reproductions/model_facts.py [--update] [--results-dir results]      (nox -s model-facts)

Parameters follow the papers' convention (parameters + BN moving statistics; models built on the meta
device). Multiplications follow TNet's eq. 11 on one image (`core.metrics.count_multiplications`, via
papers/tnet/flops.py for TNet and its baselines); Saccader and DRAM are measured in eval mode at 224 px
with T glimpses. Deterministic: the same code gives the same numbers on any machine, so the file has one
"seed" and its check is exact. The tests assert the same counts (tests/test_tnet.py, test_saccader.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from core.cli import main_guard
from core.metrics import count_multiplications, count_parameters
from core.results import (
    REPO_ROOT,
    aggregate,
    compare,
    format_comparison,
    load_result,
    provenance,
    save_result,
)
from papers.saccader.config import get_config as saccader_config
from papers.saccader.model import build_model as build_saccader
from papers.tnet.config import get_config as tnet_config
from papers.tnet.flops import table
from papers.tnet.model import build_model as build_tnet

TNET_CONFIGS = ("imagenet", "imagenet-bagnet77", "fmow", "fmow-efficientnet-b0")
SACCADER_CONFIGS = ("imagenet", "imagenet-bagnet77-lowd", "imagenet-resnet-v2-50", "imagenet-dram")
GLIMPSES = {"imagenet": (2, 6, 20, 30), "imagenet-dram": (2, 4, 8, 20)}  # the rows of TNet's Table 1


def _params(build, config: str) -> int:
    with torch.device("meta"):  # counts need shapes only
        return count_parameters(build(config))


def measure() -> dict[str, float]:
    facts: dict[str, float] = {}
    for name in TNET_CONFIGS:
        facts[f"tnet/{name}/params"] = _params(lambda n: build_tnet(tnet_config(n)), name)
    for row in table():
        suffix = "" if row["locations"] == "-" else f"_locs{row['locations']}"
        facts[f"tnet/{row['config']}/mults{suffix}"] = round(row["flops_b"] * 1e9)
    for name in SACCADER_CONFIGS:
        facts[f"saccader/{name}/params"] = _params(lambda n: build_saccader(saccader_config(n)), name)
    torch.manual_seed(0)
    images = torch.rand(1, 3, 224, 224) * 2 - 1
    for name, counts in GLIMPSES.items():
        model = build_saccader(saccader_config(name)).eval()
        if name == "imagenet":  # sec. 3.1: 19 x 19 = 361 locations at 224 px
            facts[f"saccader/{name}/locations"] = model(images, 1)["logits_map"][0, 0].numel()
        for t in counts:
            glimpses = lambda x, m=model, t=t: m(x, t)  # noqa: E731
            facts[f"saccader/{name}/mults_T{t}"] = count_multiplications(glimpses, images)
    return facts


def run(results_dir: Path, update: bool) -> int:
    start = time.perf_counter()
    with torch.no_grad():
        measured = aggregate([{k: float(v) for k, v in measure().items()}])
    path = results_dir / "model-facts" / "paper.json"
    if update:
        save_result(path, {
            "paper": "model-facts", "scale": "paper",
            "description": "parameters and multiplications (eq. 11) of the paper-scale models, measured",
            "provenance": provenance(wall_time_s=time.perf_counter() - start), "metrics": measured,
            "claims": []})
        print(f"stored {path} ({len(measured)} facts)")
        return 0
    rows = compare(measured, load_result(path)["metrics"], [])  # no tolerance: every fact is exact
    print(format_comparison(rows, measured))
    failed = [r.metric for r in rows if r.status != "PASS"]
    print(f"\n{'FAIL: ' + ', '.join(failed) if failed else f'PASS: {len(rows)} facts as stored in {path}'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="store the measured facts")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    args = parser.parse_args(argv)
    return main_guard(run, args.results_dir, args.update)


if __name__ == "__main__":
    sys.exit(main())
