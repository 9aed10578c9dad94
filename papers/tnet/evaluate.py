"""Evaluate a trained TNet (or baseline): accuracy vs. attended locations, top-5, fraction of the image
seen at each finer level (sec. 5.3), multiplications (eq. 11), latency and peak memory per image, the
prediction after every level, and attended-location overlays (Figures 3 and 5).

    python papers/tnet/evaluate.py --run-dir DIR [--locs 0,1,2,3,5] [--overlays 16] [--set field=value ...]

DIR is a train.py output directory (config.json + checkpoints/); results go to DIR/evaluation.json and
DIR/overlays.png. The functions here are also what train.py uses for its final evaluation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.cli import ArgumentParser, main_guard, override
from core.errors import UserError
from core.glimpse import coverage
from core.metrics import correct, measure_latency, peak_memory
from core.results import save_result
from core.runs import load_config, load_weights
from papers.tnet.config import TNetConfig, parse_locs, total_locations
from papers.tnet.data import build_datasets
from papers.tnet.flops import multiplications
from papers.tnet.model import TNet, build_model


def eval_settings(cfg: TNetConfig) -> dict[int, tuple[int, ...]]:
    """{total attended locations: per-level counts} of every evaluated setting, the trained one included."""
    settings = {}
    for counts in [parse_locs(s, cfg.levels) for s in cfg.eval_locs] + [tuple(cfg.locs_per_grid)]:
        n = total_locations(counts)
        if settings.get(n, counts) != counts:
            raise UserError(f"eval_locs has two settings with {n} locations in total")
        settings[n] = counts
    return dict(sorted(settings.items()))


def _hits(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    return correct(logits, targets, min(k, logits.shape[1]))


def make_eval_fn(cfg: TNetConfig):
    """eval_fn(model, batch) -> {metric: per-example tensor}; core.train averages over the eval set."""
    top5 = cfg.num_classes >= 10

    def tnet_eval(model: TNet, batch):
        images, targets = batch
        trained = total_locations(tuple(cfg.locs_per_grid))
        res = {}
        for n, counts in eval_settings(cfg).items():
            out = model(images, counts)
            res[f"accuracy_locs{n}"] = _hits(out.logits, targets, 1)
            if top5:
                res[f"top5_locs{n}"] = _hits(out.logits, targets, 5)
            for level, boxes in enumerate(out.boxes[1:], start=2):  # fraction seen at each finer level
                res[f"coverage_level{level}_locs{n}"] = coverage(boxes, images.shape[-2:]).double()
            if n == trained:
                res["accuracy"] = res[f"accuracy_locs{n}"]
                res["coverage"] = (coverage(out.boxes[-1], images.shape[-2:]).double() if n
                                   else torch.zeros_like(res["accuracy"], dtype=torch.float64))
                for level, logits in enumerate(out.level_logits, start=1):
                    res[f"accuracy_level{level}"] = _hits(logits, targets, 1)
        return res

    def baseline_eval(model, batch):
        images, targets = batch
        logits = model(images)
        res = {"accuracy": _hits(logits, targets, 1)}
        if top5:
            res["top5"] = _hits(logits, targets, 5)
        return res

    return tnet_eval if cfg.model == "tnet" else baseline_eval


def cost_metrics(model: nn.Module, cfg: TNetConfig, batch: int | None = None) -> dict[str, float]:
    """Multiplications per image (eq. 11), inference latency per image (ms, measured on a batch as in
    sec. 5.1) and peak activation memory of that batch (MB), for every evaluated setting."""
    batch = batch or cfg.batch_size
    device = next(model.parameters()).device
    images = torch.rand(batch, cfg.channels, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    was_training = model.training
    model.eval()
    out = {}
    try:
        settings = eval_settings(cfg) if isinstance(model, TNet) else {None: None}
        for n, counts in settings.items():
            fn = (lambda x, c=counts: model(x, c)) if counts is not None else model
            suffix = "" if n is None else f"_locs{n}"
            out[f"mults{suffix}"] = float(multiplications(model, images[:1], counts))
            out[f"latency_ms{suffix}"] = measure_latency(fn, images, warmup=1, repeats=3)["median_ms"] / batch
            out[f"peak_mem_mb{suffix}"] = peak_memory(fn, images) / 2**20
        if isinstance(model, TNet):
            trained = total_locations(tuple(cfg.locs_per_grid))
            out["mults"] = out[f"mults_locs{trained}"]
            out["glimpses"] = float(trained)
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def feature_spread(model: nn.Module, cfg: TNetConfig, images: torch.Tensor) -> float:
    """Between-image std of the extractor's pooled features, averaged over features, on the input the
    extractor sees first (TNet: the whole image at base resolution; a baseline: its input). It falls ~30x
    when the features stop depending on the image, the learning-rate-induced collapse of issue 16 (CPU
    configs at initialisation: ~0.01 at 32 px, ~0.0015 at 64 px, where pooling averages more background)."""
    size = cfg.base_res if isinstance(model, TNet) else model.input_size
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=False)
    was_training = model.training
    model.eval()
    pooled = model.extractor.forward_features(images)["pooled"]
    model.train(was_training)
    return pooled.std(0).mean().item()


@torch.no_grad()
def attended_boxes(model: TNet, images: torch.Tensor, locs: tuple[int, ...] | None = None):
    """(predictions (B,), [boxes (B, n_l, 4) per level >= 2]) for overlays."""
    was_training = model.training
    model.eval()
    out = model(images, locs)
    model.train(was_training)
    return out.logits.argmax(1), out.boxes[1:]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="a train.py output directory")
    parser.add_argument("--locs", default=None, help="comma-separated settings, e.g. 0,1,2,3,5 or 2-1,2-2")
    parser.add_argument("--overlays", type=int, default=16, help="images drawn with attended boxes (0: none)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field")
    args = parser.parse_args(argv)
    return main_guard(_evaluate, args)


def _evaluate(args) -> int:
    from papers.tnet.figures import draw_overlays

    cfg = load_config(args.run_dir, TNetConfig)
    if args.locs:
        cfg = override(cfg, "eval_locs", args.locs)
    for item in args.set:
        key, _, value = item.partition("=")
        cfg = override(cfg, key.strip(), value.strip())
    model = build_model(cfg)
    load_weights(model, args.run_dir)
    model.eval()
    _, eval_set = build_datasets(cfg)
    loader = torch.utils.data.DataLoader(eval_set, batch_size=cfg.batch_size)
    eval_fn, sums, count = make_eval_fn(cfg), {}, 0
    with torch.no_grad():
        for batch in loader:
            for name, v in eval_fn(model, batch).items():
                sums[name] = sums.get(name, 0.0) + v.double().sum().item()
            count += len(batch[1])
    metrics = {k: v / count for k, v in sums.items()}
    metrics.update(cost_metrics(model, cfg))
    save_result(args.run_dir / "evaluation.json", metrics)
    width = max(map(len, metrics))
    print("\n".join(f"{k:<{width}}  {v:.4f}" for k, v in metrics.items()))
    if args.overlays and isinstance(model, TNet):
        images, labels = next(iter(torch.utils.data.DataLoader(eval_set, batch_size=args.overlays)))
        preds, boxes = attended_boxes(model, images)
        path = draw_overlays(images, labels, preds, boxes, args.run_dir / "overlays.png")
        print(f"overlays: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
