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
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from core.cli import main_guard, parse_args
from core.data import DigitCanvas, build_dataset, list_datasets
from core.data.transforms import to_signed
from core.metrics import correct
from core.results import save_result
from core.runs import begin_run, is_main_process, micro_batch
from core.train import LoopConfig, train, unwrap
from papers.tnet import preprocess
from papers.tnet.config import TNetConfig, get_config
from papers.tnet.evaluate import cost_metrics, feature_spread, load_weights, make_eval_fn
from papers.tnet.model import build_model, tnet_loss


def build_datasets(cfg: TNetConfig):
    """(train, eval) datasets yielding (image (C, image_size, image_size) in [-1, 1], label).

    "digits": the CPU task, real MNIST digits (core.data.DigitCanvas) on a black canvas; training
    canvases depend on the seed, the test canvases (held-out digits) are the same for every run; the same
    for a made dataset registered in core.data (e.g. "cluttered-mnist") at image_size px.
    Anything else is a hub id or local folder read by core.data.build_dataset (ImageNet, fMoW) with the
    augmentation of B.2 for training.
    """
    if cfg.dataset == "digits":
        kw = dict(canvas=cfg.image_size, scale_range=cfg.digit_scale, num_clutter=cfg.num_clutter,
                  clutter_size=cfg.clutter_size, channels=cfg.channels, transform=to_signed)
        return (DigitCanvas("train", cfg.train_size, seed=cfg.seed, **kw),
                DigitCanvas("test", cfg.eval_size, seed=0, **kw))
    if cfg.dataset in list_datasets():  # a made task of core.data, e.g. the cross-paper same-footing task
        kw = dict(canvas=cfg.image_size, channels=cfg.channels, transform=to_signed)
        return (build_dataset(cfg.dataset, "train", n=cfg.train_size, seed=cfg.seed, **kw),
                build_dataset(cfg.dataset, "test", n=cfg.eval_size, seed=0, **kw))
    # Paper scale: the official input pipeline (papers/tnet/preprocess.py, input_imagenet.py).
    kw = dict(channels=cfg.channels, num_classes=cfg.num_classes)
    eval_tf = preprocess.EvalTransform(cfg.image_size)
    eval_set = build_dataset(cfg.dataset, cfg.eval_split, transform=eval_tf, **kw)
    if not cfg.augment:
        return build_dataset(cfg.dataset, cfg.train_split, transform=eval_tf, **kw), eval_set
    boxes = preprocess.read_boxes(cfg.dataset, cfg.train_split)  # fMoW: the crop covers >= 10% of a box
    if boxes:
        train_set = build_dataset(cfg.dataset, cfg.train_split, **kw)
        return preprocess.BoxedTrainSet(train_set, boxes, preprocess.TrainTransform(cfg.image_size)), eval_set
    return build_dataset(cfg.dataset, cfg.train_split, transform=preprocess.TrainTransform(cfg.image_size),
                         **kw), eval_set


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
    torch.manual_seed(cfg.seed)
    batch_size = micro_batch(cfg.batch_size)  # before any accelerate state exists (core.runs)
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
    begin_run(cfg, output_dir)
    metrics = train(loop, model, optimizer, train_set, make_step_fn(cfg), eval_set, make_eval_fn(cfg),
                    scheduler=scheduler)
    if not is_main_process():
        return metrics
    metrics.update(health_metrics(model, cfg, eval_set, Path(output_dir) / "metrics.jsonl", max_steps))
    if cfg.measure_cost:
        metrics.update(cost_metrics(model, cfg))
    save_result(Path(output_dir) / "final_metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(get_config, argv, description="Train and evaluate TNet or its baselines.")
    metrics = main_guard(run, cfg, args.output_dir)
    if is_main_process():
        width = max(map(len, metrics), default=0)
        print("\n".join(f"{k:<{width}}  {v:.4f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
