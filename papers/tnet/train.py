"""Train TNet or one of its fully convolutional baselines, then evaluate accuracy vs. attended locations.

    python papers/tnet/train.py --config NAME [--seed N] [--output-dir DIR] [--set field=value ...]
    accelerate launch [--cpu] --num_processes 2 papers/tnet/train.py --config smoke

Writes <output-dir>/config.json, metrics.jsonl (training log), checkpoints/ (resumed when present) and
final_metrics.json: accuracy (and top-5 with >= 10 classes), coverage of the finest level (sec. 5.3),
multiplications (eq. 11), latency and peak memory per setting of attended locations, plus the
prediction after every level. Config names and fields: papers/tnet/config.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from core.cli import run_paper
from core.metrics import correct
from core.runs import is_main_process, load_weights, micro_batch
from core.train import LoopConfig, train, unwrap
from papers.tnet.config import TNetConfig, get_config
from papers.tnet.data import build_datasets
from papers.tnet.evaluate import cost_metrics, feature_spread, make_eval_fn
from papers.tnet.model import build_model, tnet_loss


def make_step_fn(cfg: TNetConfig):
    """step_fn(model, batch, step) -> (loss, stats) for core.train: eq. 2 for TNet, cross-entropy
    (+ L2 on kernels, B.3) for the baselines."""

    def tnet_step(model, batch, step):
        images, targets = batch
        if cfg.mc_samples > 1:  # M Monte Carlo samples per image = the batch repeated (eq. 1)
            images, targets = images.repeat(cfg.mc_samples, 1, 1, 1), targets.repeat(cfg.mc_samples)
        out = model(images)
        loss, stats = tnet_loss(out, targets, unwrap(model).baseline, cfg)
        stats["train_accuracy"] = stats.pop("reward")
        return loss, stats

    def baseline_step(model, batch, step):
        images, targets = batch
        logits = model(images)
        loss = F.cross_entropy(logits, targets)
        if cfg.l2:
            kernels = [p for p in model.parameters() if p.ndim > 1]
            loss = loss + cfg.l2 * sum(p.square().sum() for p in kernels)
        return loss, {"train_accuracy": correct(logits, targets).mean().item()}

    return tnet_step if cfg.model == "tnet" else baseline_step


def lr_schedule(cfg: TNetConfig, max_steps: int):
    """Drop the learning rate once by lr_decay at lr_decay_at of training (sec. 5.1, B.3)."""
    boundary = math.floor(cfg.lr_decay_at * max_steps)
    return lambda step: 1.0 if step < boundary else cfg.lr_decay


HEALTH_IMAGES = 256
"""Test images on which feature_spread is measured."""


def health_metrics(model, cfg: TNetConfig, eval_set, log_path: Path, max_steps: int) -> dict[str, float]:
    """What the spec's [[health]] rules read: train_accuracy_end, the logged train accuracy averaged over
    the last 10% of updates (still chance = the run never learned), and feature_spread (evaluate.py)."""
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    end = [r["train_accuracy"] for r in records if r["step"] > 0.9 * max_steps and "train_accuracy" in r]
    images = torch.stack([eval_set[i][0] for i in range(min(HEALTH_IMAGES, len(eval_set)))])
    return {"train_accuracy_end": sum(end) / max(len(end), 1),
            "feature_spread": feature_spread(model, cfg, images)}


def run(cfg: TNetConfig, output_dir: str) -> dict[str, float]:
    """Train and evaluate; the final metrics (core.cli.run_paper records the config and writes them)."""
    batch_size = micro_batch(cfg.batch_size)
    train_set, eval_set = build_datasets(cfg)
    max_steps = cfg.max_steps or math.ceil(cfg.epochs * len(train_set) / cfg.batch_size)
    model = build_model(cfg)
    if cfg.init_from:
        load_weights(model, cfg.init_from)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=cfg.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg, max_steps))
    loop = LoopConfig(max_steps=max_steps, batch_size=batch_size, seed=cfg.seed,
                      checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every,
                      log_every=cfg.log_every,
                      output_dir=output_dir, num_workers=cfg.num_workers, channels_last=cfg.channels_last)
    metrics = train(loop, model, optimizer, train_set, make_step_fn(cfg), eval_set, make_eval_fn(cfg),
                    scheduler=scheduler)
    if not is_main_process():
        return metrics
    metrics.update(health_metrics(model, cfg, eval_set, Path(output_dir) / "metrics.jsonl", max_steps))
    if cfg.measure_cost:
        metrics.update(cost_metrics(model, cfg))
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run_paper(get_config, run, argv, description="Train and evaluate TNet or its baselines.")


if __name__ == "__main__":
    main()
