"""experiment=flops (§5, Fig. 7): adaptive stopping with heuristic supervision vs low-power CNNs."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState

from core.metrics import correct, count_multiplications, count_parameters
from core.train import train
from papers.boed.config import BOEDConfig
from papers.boed.design import (
    heuristic_log_probs,
)
from papers.boed.design_phase import first_step_epe, train_posterior
from papers.boed.evaluate import (
    adaptive_sweep,
    attention_mults,
    rollout_dataset,
)
from papers.boed.lowpower import LowPowerCNN
from papers.boed.splits import Indexed, Split, loop_config
from papers.boed.supervision import Supervision, train_attention


def train_cnn(cfg: BOEDConfig, data: dict[str, Split], out: Path, arch: str, c: float, r: int) -> dict:
    torch.manual_seed(cfg.seed)
    task = cfg.flops_task
    model = LowPowerCNN(arch, c, r, 2, cfg.channels)

    def step_fn(model, batch, step):
        images, labels, _ = batch
        logits = model(images)
        y = labels[:, task].long()
        return F.cross_entropy(logits, y), {"acc": correct(logits, y).mean().item()}

    def eval_fn(model, batch):
        images, labels, _ = batch
        return {"acc": correct(model(images), labels[:, task].long())}

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.cnn_lr)
    loop = loop_config(cfg, out, cfg.cnn_steps, cfg.batch_size)
    train(loop, model, optimizer, Indexed(data["train"]), step_fn)
    model.eval()
    test = data["test"]
    with torch.no_grad():
        acc = torch.cat([eval_fn(model, (test.images_float(slice(s, s + 500)), test.labels[s:s + 500], None))
                         ["acc"] for s in range(0, len(test.images), 500)]).mean().item()
    image = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)
    return {"arch": arch, "c": c, "r": r, "accuracy": acc,
            "mults": float(count_multiplications(model, image)), "params": float(count_parameters(model))}


def run_flops(cfg: BOEDConfig, data: dict[str, Split], out: Path, state: PartialState):
    g = train_posterior(cfg, data, out / "posterior")
    epe0 = first_step_epe(cfg, g.to(state.device), data, state.device)
    heuristic = heuristic_log_probs(epe0.T, cfg.heuristic_scale)  # (K, L)
    task = cfg.flops_task
    supervision = Supervision([task], cfg.num_glimpses, heuristic=heuristic, fraction=cfg.heuristic_fraction)
    model, curves, _, _ = train_attention(cfg, data, out / "adaptive", [task], supervision, adaptive=True)
    test = data["test"]
    rolled = rollout_dataset(model, test.images_float(), test.labels[:, [task]].long(), seed=cfg.seed,
                             samples=cfg.eval_samples)
    per_glimpse, classifier = attention_mults(cfg, adaptive=True)
    sweep = adaptive_sweep(rolled["correct"], rolled["stop"], cfg.stop_thresholds, per_glimpse, classifier)
    specs = [(arch, float(c), int(r)) for arch, c, r in (spec.split(":") for spec in cfg.cnns)]
    cnns = [train_cnn(cfg, data, out / "cnn" / f"{arch}_c{c:g}_r{r}", arch, c, r) for arch, c, r in specs]
    full = max(sweep, key=lambda row: row["glimpses"])  # no stopping: every glimpse taken

    p = test.labels[:, task].mean().item()
    majority = max(p, 1 - p)

    def best_cnn(budget: float) -> float:  # no CNN that cheap: the best it can do is the majority class
        return max((n["accuracy"] for n in cnns if n["mults"] <= budget), default=majority)

    wins = [row["accuracy"] > best_cnn(row["mults"]) for row in sweep]
    m = {"accuracy": full["accuracy"], "mults": full["mults"], "glimpses": full["glimpses"],
         "cnn_best_acc_at_budget": best_cnn(full["mults"]),
         "cnn_best_acc": max(n["accuracy"] for n in cnns),
         "cnn_min_mults": min(n["mults"] for n in cnns),
         "attention_wins_frac": sum(wins) / len(wins),
         "adaptive_min_glimpses": min(row["glimpses"] for row in sweep),
         "heuristic_entropy": -(heuristic[task].exp() * heuristic[task]).sum().item(),
         "posterior_val_acc": g.val_metrics["acc"],
         "majority_acc": majority}
    m["attention_gain_at_budget"] = m["accuracy"] - m["cnn_best_acc_at_budget"]
    figure = {"task": task, "attention": sweep, "cnns": cnns, "curves": {str(e): curves[e] for e in curves},
              "epe_first": epe0.tolist()}
    return m, figure
