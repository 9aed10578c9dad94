"""Evaluation of trained BOED hard-attention networks: test accuracy, the glimpse statistics behind
Figure 6, the adaptive-stopping sweep and cost of Figure 7, and a CLI that re-evaluates a finished run.

    python papers/boed/evaluate.py --run-dir DIR [--split test|val] [--batch-size N]

reads DIR/config.json and the final checkpoint of DIR/attention (or DIR/adaptive for experiment=flops),
and prints the test metrics as JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from core.cli import ArgumentParser, main_guard
from core.errors import UserError
from core.glimpse import coverage, patch_boxes
from core.metrics import correct, count_multiplications
from core.runs import load_config, load_weights
from papers.boed.config import BOEDConfig
from papers.boed.design import glimpse_hits
from papers.boed.model import HardAttentionNet, build_model
from papers.boed.splits import load_data, members


@torch.no_grad()
def rollout_dataset(model: HardAttentionNet, images: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 500, seed: int = 0, samples: int = 1) -> dict[str, torch.Tensor]:
    """`samples` sampled rollouts of every member on each image (N, C, H, W) with labels (N, E), sample-major:
    correct (samples * N, E, S) per classifier, indices (samples * N, E, T), stop predictions
    (samples * N, E, T-1) if adaptive. Glimpse samples come from a forked RNG seeded by `seed`, so
    evaluating never disturbs training and is reproducible."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for s in [s for _ in range(samples) for s in range(0, len(images), batch_size)]:
            out = model(images[s:s + batch_size].to(device))
            y = labels[s:s + batch_size].to(device)[..., None].expand(out["logits"].shape[:-1])
            parts.setdefault("correct", []).append(correct(out["logits"], y).cpu())
            parts.setdefault("indices", []).append(out["indices"].cpu())
            if "stop" in out:
                parts.setdefault("stop", []).append(out["stop"].cpu())
    model.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}


def evaluation_repeat_sd(model: HardAttentionNet, images: torch.Tensor, labels: torch.Tensor, repeats: int,
                         samples: int, seed: int) -> torch.Tensor:
    """(E,) SD of a member's accuracy over `repeats` evaluations of the same parameters with fresh glimpse
    samples (`samples` per image each): the measurement noise of one point of a Fig. 5 curve; training's
    drift between points comes on top of it."""
    accs = [rollout_dataset(model, images, labels, seed=seed + 1 + r, samples=samples)["correct"][..., -1]
            .mean(0) for r in range(repeats)]
    return torch.stack(accs).std(0) if repeats > 1 else torch.zeros(labels.shape[1])


def location_counts(indices: torch.Tensor, num_locations: int) -> torch.Tensor:
    """(E, T, L) how often each member attended each lattice location at each step (Fig. 6 heatmaps)."""
    N, E, T = indices.shape
    flat = indices.permute(1, 2, 0).reshape(E * T, N)
    counts = torch.zeros(E * T, num_locations).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float))
    return counts.view(E, T, num_locations)


def marginal_entropy(counts: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of the location marginal over images, per (member, step): low = one place for all
    images, high = broad (Fig. 6 contrasts them at later steps)."""
    p = counts / counts.sum(-1, keepdim=True)
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def region_entropies(counts: torch.Tensor, on_region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy in nats of the location marginal renormalised within the deciding region and outside it, per
    (member, step) (counts (E, T, L), on_region (E, L) bool; 0 where a side gets no glimpse): separates
    reading the deciding region at several offsets from scattering glimpses over the rest of the image,
    which the whole marginal entropy mixes (Fig. 6)."""
    on = on_region[:, None, :]
    return marginal_entropy(counts * on).nan_to_num(), marginal_entropy(counts * ~on).nan_to_num()


def hit_rates(indices: torch.Tensor, lattice: torch.Tensor, size: int,
              boxes: list[torch.Tensor]) -> torch.Tensor:
    """(E, T) fraction of rollouts whose glimpse lands on the member's deciding region (boxes[e] (n, 4))."""
    top_left = lattice[indices]  # (N, E, T, 2)
    hits = torch.stack([glimpse_hits(top_left[:, e], size, boxes[e]) for e in range(len(boxes))], 1)
    return hits.float().mean(0)


def glimpse_coverage(indices: torch.Tensor, lattice: torch.Tensor, size: int, image_hw) -> float:
    """Mean fraction of the image covered by the union of a rollout's glimpses."""
    boxes = patch_boxes(lattice[indices], size).flatten(0, 1)  # (N*E, T, 4)
    return coverage(boxes, image_hw).mean().item()


def stop_times(stop: torch.Tensor, threshold: float) -> torch.Tensor:
    """Adaptive stopping (§5): after glimpse t the net stops if the predicted accuracy gain of one more
    glimpse is below `threshold`; returns the number of glimpses taken (..., ) in 1..T."""
    T = stop.shape[-1] + 1
    below = stop < threshold
    first = torch.where(below.any(-1), below.float().argmax(-1), torch.full(below.shape[:-1], T - 1))
    return first + 1


def adaptive_sweep(correct: torch.Tensor, stop: torch.Tensor, thresholds, per_glimpse: int,
                   classifier: int) -> list[dict[str, float]]:
    """Accuracy and mean multiplications per image at every threshold (one Fig. 7 line).
    correct (N, E, T) per-step correctness, stop (N, E, T-1)."""
    rows = []
    for th in thresholds:
        n = stop_times(stop, th)  # (N, E)
        acc = correct.gather(-1, (n - 1)[..., None])[..., 0]
        glimpses = n.float().mean().item()
        rows.append({"threshold": float(th), "accuracy": acc.mean().item(), "glimpses": glimpses,
                     "mults": glimpses * per_glimpse + classifier})
    return rows


def attention_mults(cfg: BOEDConfig, adaptive: bool) -> tuple[int, int]:
    """(multiplications per glimpse, of the classifier) of one network at inference, batch of one: a
    glimpse costs the location network, the glimpse and location embeddings, the GRU and (adaptive) the
    stopping module; the baseline is only used in training."""
    net = build_model(cfg, adaptive=adaptive).eval()
    image = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)
    h = net.init_hidden.expand(1, -1, -1)
    index = torch.zeros(1, 1, dtype=torch.long)

    def one_glimpse():
        net.location_net(h)
        h2 = net.step(image, h, index)
        if adaptive:
            net.stop_nets[0](h2)

    return count_multiplications(one_glimpse), count_multiplications(net.classifiers[0], h)


def evaluate_run(run_dir: Path, split: str, batch_size: int) -> dict[str, float]:
    cfg = load_config(run_dir, BOEDConfig)
    adaptive = cfg.experiment == "flops"
    layout = [("adaptive", cfg.flops_task)] if adaptive else members(cfg)
    tasks = [k for _, k in layout]
    model = build_model(cfg, members=len(tasks), adaptive=adaptive)
    step = load_weights(model, run_dir / ("adaptive" if adaptive else "attention"), strict=False)
    data = load_data(cfg, (split,), run_dir)[split]
    labels = data.labels[:, tasks].long()
    out = rollout_dataset(model, data.images_float(), labels, batch_size, cfg.seed, cfg.eval_samples)
    result = {"step": float(step)}
    for cond in dict.fromkeys(c for c, _ in layout):
        sel = [e for e, (c, _) in enumerate(layout) if c == cond]
        result[f"{cond}_accuracy"] = out["correct"][:, sel, -1].mean().item()
    # as train.py: the headline accuracy is the partially supervised nets' (the paper's method)
    result["accuracy"] = result.get("partial_accuracy", result[f"{layout[0][0]}_accuracy"])
    for e, (cond, k) in enumerate(layout):
        result[f"accuracy_member{e}_{cond}_task{k}"] = out["correct"][:, e, -1].mean().item()
    if adaptive:
        per_glimpse, classifier = attention_mults(cfg, True)
        for row in adaptive_sweep(out["correct"], out["stop"], cfg.stop_thresholds, per_glimpse, classifier):
            result[f"accuracy_at_{row['threshold']:g}"] = row["accuracy"]
            result[f"glimpses_at_{row['threshold']:g}"] = row["glimpses"]
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="output dir of a finished train.py run")
    parser.add_argument("--split", default="test", choices=("test", "val"))
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args(argv)
    if not (args.run_dir / "config.json").exists():
        raise UserError(f"{args.run_dir} has no config.json (not a train.py output dir)")
    result = evaluate_run(args.run_dir, args.split, args.batch_size)
    print(json.dumps({k: (v if math.isfinite(v) else None) for k, v in result.items()}, indent=1))
    return result


if __name__ == "__main__":
    main_guard(main)
