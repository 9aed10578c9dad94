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

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from core.cli import ArgumentParser, main_guard
from core.compare import CONVENTION  # a fact counted by the paper's convention
from core.metrics import count_multiplications, count_parameters, multiplications_by_module
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
from papers.saccader.config import SaccaderConfig
from papers.saccader.config import get_config as saccader_config
from papers.saccader.model import build_model as build_saccader
from papers.tnet.config import get_config as tnet_config
from papers.tnet.flops import table
from papers.tnet.model import build_model as build_tnet
from papers.wsram.config import WSRAMConfig
from papers.wsram.model import build_model as build_wsram

TNET_CONFIGS = ("imagenet", "imagenet-bagnet77", "fmow", "fmow-efficientnet-b0")
SACCADER_CONFIGS = ("imagenet", "imagenet-bagnet77-lowd", "imagenet-resnet-v2-50", "imagenet-dram")
GLIMPSES = {"imagenet": (2, 6, 20, 30), "imagenet-dram": (2, 4, 8, 20)}  # the rows of TNet's Table 1


class _Bottleneck(nn.Module):
    """He et al.'s bottleneck unit (1x1, 3x3, 1x1 convs; projection shortcut when the shape changes), the
    stride on the 3x3 conv (torchvision's layout). BN and ReLU add no multiplications and are left out."""

    def __init__(self, in_channels: int, planes: int, stride: int):
        super().__init__()
        self.residual = nn.Sequential(nn.Conv2d(in_channels, planes, 1, bias=False),
                                      nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
                                      nn.Conv2d(planes, 4 * planes, 1, bias=False))
        self.shortcut = (nn.Identity() if stride == 1 and in_channels == 4 * planes
                         else nn.Conv2d(in_channels, 4 * planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


def he_resnet50(in_channels: int, num_classes: int = 1000) -> nn.Module:
    """The standard ImageNet ResNet-50 (He et al. 2016: 7x7/2 stem, 3x3/2 max pool, units [3, 4, 6, 3],
    stage strides 1, 2, 2, 2, 2048 -> num_classes FC), for counting multiplications only."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1)]
    channels = 64
    for planes, units, stride in zip((64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 2, 2), strict=True):
        for unit in range(units):
            layers.append(_Bottleneck(channels, planes, stride if unit == 0 else 1))
            channels = 4 * planes
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def dram_step_facts(counts: tuple[int, ...]) -> dict[str, int]:
    """DRAM's multiplications per step (the centre step and each of the T glimpses cost the same), ours and
    by the convention of TNet's Table 1, whose DRAM rows are exactly (T + 1) x one step of: a standard
    ResNet-50 (`he_resnet50`, with its 2048 x 1000 FC) on the 15-channel 77 px glimpse plus DRAM's
    1024 x 1001 classifier, without the LSTMs. Ours is the official slim ResNet-v2-50 glimpse network
    (stride in the last unit of each block) + both LSTMs + emission + classifier."""
    cfg = saccader_config("imagenet-dram")
    model = build_saccader(cfg).eval()
    per_module = multiplications_by_module(lambda x: model(x, 1), torch.zeros(1, 3, 224, 224))
    ours = {name: per_module[f"DRAM.{name}"] // 2 for name in  # T = 1: two steps
            ("glimpse_net", "classification_rnn", "location_rnn", "emission", "classifier")}
    glimpse = torch.zeros(1, cfg.dram_resolutions * (cfg.channels + 2), cfg.dram_glimpse, cfg.dram_glimpse)
    table1 = (count_multiplications(he_resnet50(glimpse.shape[1]), glimpse)
              + count_multiplications(model.classifier, torch.zeros(1, model.classifier.in_features)))
    facts = {"saccader/imagenet-dram/step_mults": sum(ours.values()),
             f"saccader/imagenet-dram/step_mults{CONVENTION}": table1}
    facts |= {f"saccader/imagenet-dram/step_mults_{name}": n for name, n in ours.items()}
    facts |= {f"saccader/imagenet-dram/mults_T{t}{CONVENTION}": (t + 1) * table1 for t in counts}
    return facts


def _params(build, config: str) -> int:
    with torch.device("meta"):  # counts need shapes only
        return count_parameters(build(config))


def measure_paper() -> dict[str, float]:
    facts: dict[str, float] = {}
    total = len(TNET_CONFIGS) + 1 + len(SACCADER_CONFIGS) + sum(map(len, GLIMPSES.values()))
    progress = tqdm(total=total, desc="paper-scale facts", unit="fact", dynamic_ncols=True)
    for name in TNET_CONFIGS:
        progress.set_postfix_str(f"tnet/{name} params")
        facts[f"tnet/{name}/params"] = _params(lambda n: build_tnet(tnet_config(n)), name)
        progress.update()
    progress.set_postfix_str("tnet Tables 1-2 multiplications")
    for row in table():
        suffix = "" if row["locations"] == "-" else f"_locs{row['locations']}"
        facts[f"tnet/{row['config']}/mults{suffix}"] = round(row["flops_b"] * 1e9)
    progress.update()
    for name in SACCADER_CONFIGS:
        progress.set_postfix_str(f"saccader/{name} params")
        facts[f"saccader/{name}/params"] = _params(lambda n: build_saccader(saccader_config(n)), name)
        progress.update()
    torch.manual_seed(0)
    images = torch.rand(1, 3, 224, 224) * 2 - 1
    for name, counts in GLIMPSES.items():
        model = build_saccader(saccader_config(name)).eval()
        if name == "imagenet":  # sec. 3.1: 19 x 19 = 361 locations at 224 px
            facts[f"saccader/{name}/locations"] = model(images, 1)["logits_map"][0, 0].numel()
        for t in counts:
            progress.set_postfix_str(f"saccader/{name} multiplications, T={t}")
            glimpses = lambda x, m=model, t=t: m(x, t)  # noqa: E731
            facts[f"saccader/{name}/mults_T{t}"] = count_multiplications(glimpses, images)
            progress.update()
    facts |= dram_step_facts(GLIMPSES["imagenet-dram"])
    progress.close()
    return facts


def _config(cls, resolved: dict):
    """The dataclass config a stored run resolved to (fields the config has since dropped are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return config_from_dict(cls, {k: v for k, v in resolved.items() if k in names})


def _saccader_mults(resolved: dict) -> int:
    """Saccader or DRAM predicting from its trained number of glimpses, as its test_accuracy is measured."""
    cfg = _config(SaccaderConfig, resolved)
    model = build_saccader(cfg).eval()
    images = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)
    return count_multiplications(lambda x: model(x, cfg.train_glimpses), images)


def _wsram_mults(resolved: dict) -> int:
    """WS-RAM's prediction (the mean over num_samples glimpse sequences), as its accuracy is measured."""
    cfg = _config(WSRAMConfig, resolved)
    model = build_wsram(cfg).eval()
    images = torch.zeros(1, 1, cfg.canvas, cfg.canvas)
    return count_multiplications(lambda x: model.predict(x, cfg.num_samples), images)


# Training scripts whose runs report an accuracy but no multiplications -> how to count them.
CPU_COUNTERS: dict[str, Callable[[dict], int]] = {
    "papers/saccader/train.py": _saccader_mults,
    "papers/wsram/train.py": _wsram_mults,
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
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="store the measured facts")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    args = parser.parse_args(argv)
    return main_guard(run, args.results_dir, args.update)


if __name__ == "__main__":
    sys.exit(main())
