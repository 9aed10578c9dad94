"""Multiplications (paper eq. 11) and parameter counts of the paper-scale models beside Tables 1 and 2.

    python -m papers.tnet.flops [--table 1|2]

Eq. 11 counts Cin * k * k * Hout * Wout * Cout multiplications per convolution (k = 1 and a 1x1 output for
a fully connected layer) and nothing else: `core.metrics.count_multiplications` measures exactly that on
a real forward pass of one image (FlopCounterMode / 2, biases free). The only element-wise product the
paper's EfficientNet numbers include is the squeeze-excite channel scaling (one multiplication per
element of every expanded map, see `core.backbones.efficientnet.se_multiplications`); it is added here
for every EfficientNet call, which reproduces Table 2 (0.387 / 1.546 / 6.180 G for B0 at 224/448/896).
Parameters follow the papers' convention: parameters + batch-norm moving statistics.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from core.backbones.efficientnet import MBConv
from core.cli import ArgumentParser
from core.metrics import count_multiplications, count_parameters
from papers.tnet.config import get_config, parse_locs, total_locations
from papers.tnet.model import TNet, build_model

# (table, model label, config, eval setting or None for a baseline, paper FLOPs in billions,
#  paper parameters in millions or None where the table leaves the cell empty)
PAPER_ROWS = [
    (1, "TNet", "imagenet", "0", 1.82, 21.86),
    (1, "TNet", "imagenet", "1", 3.63, None),
    (1, "TNet", "imagenet", "2", 5.43, None),
    (1, "TNet", "imagenet", "3", 7.24, None),
    (1, "TNet", "imagenet", "5", 10.84, None),
    (1, "BagNet-77", "imagenet-bagnet77", None, 18.42, 20.55),
    (2, "EfficientNet-B0", "fmow-efficientnet-b0", None, 0.39, 4.13),
    (2, "EfficientNet-B0", "fmow-efficientnet-b0-448", None, 1.54, None),
    (2, "EfficientNet-B0", "fmow-efficientnet-b0-896", None, 6.18, None),
    (2, "TNet", "fmow", "0", 0.39, 4.56),
    (2, "TNet", "fmow", "1", 0.77, None),
    (2, "TNet", "fmow", "2", 1.16, None),
    (2, "TNet", "fmow", "3", 1.55, None),
    (2, "TNet", "fmow-896", "2-1", 1.94, None),
    (2, "TNet", "fmow-896", "2-2", 2.71, None),
]


def multiplications(model: nn.Module, images: torch.Tensor, locs: tuple[int, ...] | None = None) -> int:
    """Eq. 11 multiplications of one forward pass on `images` (pass one image for per-image numbers).
    `locs` (per-level location counts) applies to TNet; baselines ignore it."""
    se = 0

    def count_se(module, inputs, output):
        nonlocal se
        se += output.numel()

    hooks = [m.depthwise.register_forward_hook(count_se) for m in model.modules() if isinstance(m, MBConv)]
    was_training = model.training
    model.eval()
    try:
        fn = (lambda x: model(x, locs)) if isinstance(model, TNet) else model
        total = count_multiplications(fn, images)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total + se


def table(which: int | None = None) -> list[dict]:
    """Our multiplications and parameter counts for the rows of Tables 1 and 2 (builds the models)."""
    rows, models = [], {}
    torch.manual_seed(0)
    for tab, label, name, setting, paper_flops, paper_params in PAPER_ROWS:
        if which is not None and tab != which:
            continue
        cfg = get_config(name)
        if name not in models:
            models[name] = build_model(cfg)
        model = models[name]
        locs = parse_locs(setting, cfg.levels) if setting is not None else None
        images = torch.rand(1, cfg.channels, cfg.image_size, cfg.image_size) * 2 - 1
        ours = multiplications(model, images, locs) / 1e9
        rows.append({"table": tab, "model": label, "config": name, "input": cfg.image_size,
                     "locations": "-" if locs is None else total_locations(locs),
                     "paper_flops_b": paper_flops, "flops_b": ours,
                     "diff_pct": 100 * (ours - paper_flops) / paper_flops,
                     "paper_params_m": paper_params, "params": count_parameters(model)})
    return rows


def format_rows(rows: list[dict]) -> str:
    head = (f"{'table':>5}  {'model':<16} {'config':<25} {'input':>5} {'locs':>4}  {'paper FLOPs':>11} "
            f"{'ours':>8} {'diff':>7}  {'paper params':>12} {'ours':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        pp = "" if r["paper_params_m"] is None else f"{r['paper_params_m']:.2f}M"
        lines.append(f"{r['table']:>5}  {r['model']:<16} {r['config']:<25} {r['input']:>5} "
                     f"{r['locations']!s:>4}  "
                     f"{r['paper_flops_b']:>10.2f}B {r['flops_b']:>7.3f}B {r['diff_pct']:>+6.2f}%  "
                     f"{pp:>12} {r['params']:>12,}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description="TNet multiplications (eq. 11) vs. Tables 1 and 2")
    parser.add_argument("--table", type=int, choices=(1, 2), default=None, help="only this table")
    args = parser.parse_args(argv)
    print(format_rows(table(args.table)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
