"""Train Saccader in the paper's three stages (sec. 3.2), or one of its baselines, then compare location
policies (Fig. 3a).

    python papers/saccader/train.py --config NAME [--seed N] [--output-dir DIR] [--set field=value ...]
    accelerate launch [--cpu] --num_processes 2 papers/saccader/train.py --config smoke

Stages (cfg.stages, run in order, each in <output-dir>/<stage>/ with its own checkpoints and log):
  representation  eq. 4: cross-entropy of the logits averaged over all locations, L2 lambda;
  location        eq. 5: the location network (attention network, mixing conv, cell) learns to emit
                  the locations in decreasing order of their maximum logit, T = 12, teacher-forced
                  state C, no gradient into the (frozen, eval-mode) representation network;
  policy          eq. 6: REINFORCE on S = 2 sampled trajectories of T = 6 glimpses with the batch-mean
                  accuracy as baseline, + cross-entropy of the mean glimpse logits, L2 lambda and nu.
Writes <output-dir>/config.json, metrics.jsonl (all stages, steps numbered across stages) and
final_metrics.json: test accuracy of every policy at every glimpse count in cfg.eval_glimpses
(accuracy_<policy>_T<k>) and the image area they cover (coverage_<policy>_T<k>).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.nn.functional as F
from accelerate import PartialState

from core.cli import main_guard, parse_args, save_config
from core.data import DigitCanvas, build_dataset
from core.data.transforms import Compose, RandomResizedCrop, Resize, ToSigned
from core.errors import UserError
from core.estimators import batch_mean_baseline, reinforce_loss
from core.glimpse import coverage
from core.results import save_result
from core.train import LoopConfig, train
from papers.saccader.config import SaccaderConfig, get_config
from papers.saccader.model import build_model, classification_loss, location_boxes
from papers.saccader.policies import select_locations

DRAM_REINFORCE_WEIGHT = 0.1  # App. C "DRAM model"


def build_datasets(cfg: SaccaderConfig):
    """(train, eval) datasets of (image in [-1, 1], label). "digits": one real MNIST digit among clutter
    (core.data.DigitCanvas; training canvases follow the seed, test canvases and digits are fixed and
    held out). Otherwise a dataset for core.data.build_dataset, with App. C's random crop for training."""
    if cfg.dataset == "digits":
        kw = dict(canvas=cfg.image_size, scale_range=cfg.digit_scale, num_clutter=cfg.num_clutter,
                  clutter_size=cfg.clutter_size, channels=cfg.channels, transform=ToSigned())
        return (DigitCanvas("train", cfg.train_size, seed=cfg.seed, **kw),
                DigitCanvas("test", cfg.eval_size, seed=0, **kw))
    size = (cfg.image_size, cfg.image_size)
    kw = dict(channels=cfg.channels, num_classes=cfg.num_classes)
    train_tf, eval_tf = Compose([RandomResizedCrop(size), ToSigned()]), Compose([Resize(size), ToSigned()])
    return (build_dataset(cfg.dataset, cfg.train_split, transform=train_tf, **kw),
            build_dataset(cfg.dataset, cfg.eval_split, transform=eval_tf, **kw))


def max_logit_order(num_glimpses: int):
    """Eq. 5 targets: locations by decreasing maximum logit over classes (l_target^1 = the largest)."""
    return lambda logits_map: logits_map.flatten(2).amax(1).topk(num_glimpses, -1).indices


def _unwrap(model):
    return getattr(model, "module", model)


def make_step_fn(cfg: SaccaderConfig, stage: str):
    """step_fn(model, batch, step) -> (loss, stats) of one stage; L2 terms live in the optimiser."""

    def representation(model, batch, step):
        images, targets = batch
        logits = model(images, 0)["logits"][:, 0] if cfg.model == "saccader" else model(images)
        loss = F.cross_entropy(logits, targets)  # eq. 4 (the geometric mean = softmax of the mean logits)
        return loss, {"train_accuracy": (logits.argmax(1) == targets).float().mean().item()}

    def location(model, batch, step):
        _unwrap(model).backbone.eval()  # "fixed from BagNet-77-lowD" (Table Supp.5 *): BN statistics too
        images, _ = batch
        T = cfg.pretrain_glimpses
        out = model(images, T, locations=max_logit_order(T), detach_representation=True)
        loss = -out["log_prob"].sum(1).mean()  # eq. 5
        hits = (out["location_logits"].argmax(-1) == out["locations"]).float().mean()
        return loss, {"target_hit_rate": hits.item()}

    def policy(model, batch, step):
        images, targets = batch
        S, T, B = cfg.mc_samples, cfg.train_glimpses, images.shape[0]
        if cfg.model == "dram":
            out = model(images.repeat(S, 1, 1, 1), T)
        else:
            out = model(images, T, num_samples=S)
        targets = targets.repeat(S)
        reward = (out["logits"].mean(1).argmax(1) == targets).float().view(S, B)
        log_prob = out["log_prob"].sum(1).view(S, B)
        # eq. 6 sums over the S samples (reinforce_loss averages): scale by S.
        pg = S * reinforce_loss(log_prob, reward, batch_mean_baseline(reward))
        if cfg.model == "dram":
            pg = DRAM_REINFORCE_WEIGHT * pg
        ce = classification_loss(out["logits"], targets)
        return pg + ce, {"reward": reward.mean().item(), "cross_entropy": ce.item()}

    return {"representation": representation, "location": location, "policy": policy}[stage]


def make_eval_fn(cfg: SaccaderConfig, final: bool):
    """eval_fn(model, batch) -> per-example metrics. During training: accuracy of the model's own
    prediction; `final`: every policy of cfg.eval_policies at every count of cfg.eval_glimpses."""
    counts = sorted(set(cfg.eval_glimpses))

    def baseline_eval(model, batch):
        images, targets = batch
        if cfg.model == "dram":
            logits = model(images, cfg.train_glimpses)["logits"].mean(1)
        else:
            logits = model(images)
        return {"accuracy": (logits.argmax(1) == targets).float()}

    def saccader_eval(model, batch):
        images, targets = batch
        logits_map = model(images, 0)["logits_map"]
        hw = images.shape[-2:]
        out = {"accuracy_all_locations": (logits_map.mean((2, 3)).argmax(1) == targets).float()}
        learned_T = counts if final else [cfg.train_glimpses]
        for policy in cfg.eval_policies if final else ["learned"]:
            # Every policy's first k picks are its picks for k glimpses (greedy / sorted / a permutation).
            locations, logits = select_locations(policy, model, images, max(learned_T), logits_map=logits_map)
            for k in learned_T:
                out[f"accuracy_{policy}_T{k}"] = (logits[:, :k].mean(1).argmax(1) == targets).float()
                if final:
                    boxes = location_boxes(locations[:, :k], logits_map.shape[-1], model.stride,
                                           model.receptive_field)
                    out[f"coverage_{policy}_T{k}"] = coverage(boxes, hw).float()
        return out

    return saccader_eval if cfg.model == "saccader" else baseline_eval


def make_optimizer(cfg: SaccaderConfig, model, stage: str) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (App. C). L2 (lambda/2 sum w^2, gradient lambda w) on kernels:
    eq. 4 lambda on the representation; eq. 5 nu = 0 and only the location weights; eq. 6 both."""
    if cfg.model != "saccader":
        groups = [(list(model.parameters()), cfg.l2)]
    elif stage == "representation":
        groups = [(model.representation_parameters(), cfg.l2)]
    elif stage == "location":
        groups = [(model.location_parameters(), 0.0)]
    else:
        groups = [(model.representation_parameters(), cfg.l2), (model.location_parameters(), cfg.l2_location)]
    lr = {"representation": cfg.lr_representation, "location": cfg.lr_location,
          "policy": cfg.lr_policy}[stage]
    param_groups = []
    for params, decay in groups:
        param_groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": decay},
                         {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum, nesterov=True)


def cosine_with_warmup(max_steps: int, warmup_steps: int):
    """Linear warm-up to the base rate, then a cosine decay to zero (App. C)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, max_steps - warmup_steps)))
    return factor


def run(cfg: SaccaderConfig, output_dir: str) -> dict[str, float]:
    torch.manual_seed(cfg.seed)
    state = PartialState()
    if cfg.batch_size % state.num_processes:
        raise UserError(f"batch_size {cfg.batch_size} is not divisible by {state.num_processes} processes")
    if cfg.model != "saccader" and "location" in cfg.stages:
        raise UserError(f"the location stage (eq. 5) needs model=saccader, got {cfg.model}")
    stages = [s for s in cfg.stages if s != "location" or cfg.location_pretraining]
    train_set, eval_set = build_datasets(cfg)
    max_steps = cfg.steps_per_stage or math.ceil(cfg.epochs * len(train_set) / cfg.batch_size)
    warmup = math.ceil(max_steps * cfg.warmup_epochs / cfg.epochs)
    model = build_model(cfg)
    if state.is_main_process:
        save_config(cfg, output_dir)
    out, log = Path(output_dir), []
    metrics: dict[str, float] = {}
    for i, stage in enumerate(stages):
        optimizer = make_optimizer(cfg, model, stage)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(max_steps, warmup))
        loop = LoopConfig(max_steps=max_steps, batch_size=cfg.batch_size // state.num_processes,
                          seed=cfg.seed + i, checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every,
                          log_every=cfg.log_every, output_dir=str(out / stage), num_workers=cfg.num_workers)
        final = i == len(stages) - 1
        metrics = train(loop, model, optimizer, train_set, make_step_fn(cfg, stage), eval_set,
                        make_eval_fn(cfg, final), scheduler=scheduler)
        if state.is_main_process:
            for line in (out / stage / "metrics.jsonl").read_text().splitlines():
                record = json.loads(line)
                log.append({**record, "step": record["step"] + i * max_steps, "stage": stage})
    if not state.is_main_process:
        return metrics
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    if cfg.model == "saccader":
        metrics["test_accuracy"] = metrics[f"accuracy_learned_T{cfg.train_glimpses}"] \
            if f"accuracy_learned_T{cfg.train_glimpses}" in metrics else metrics["accuracy_all_locations"]
    else:
        metrics["test_accuracy"] = metrics["accuracy"]
    save_result(out / "final_metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    cfg, args = parse_args(get_config, argv, description=__doc__.splitlines()[0])
    return main_guard(run, cfg, args.output_dir)


if __name__ == "__main__":
    main()
