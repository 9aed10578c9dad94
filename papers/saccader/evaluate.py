"""Evaluate Saccader, its location policies and DRAM (sec. 4, Figs. 3-5).

    python papers/saccader/evaluate.py --run-dir DIR [--images 8] [--occlusion-value V]

DIR is a train.py output directory (config.json + one folder per stage with checkpoints/). The CLI
reloads the trained networks, recomputes every metric of train.py's final evaluation on the test set
into DIR/evaluation.json and stores the first `--images` test canvases with every policy's glimpses in
DIR/glimpses.pt (for figures.py's overlays, Fig. 4). The functions here are what train.py evaluates with.

Metrics (per example, averaged over the test set), for a policy P and k glimpses:
  accuracy_P_Tk            the prediction from the first k glimpses is right (Fig. 3a);
  coverage_P_Tk            fraction of the image inside the union of the k 77 px fields (Fig. 3b, 5a);
  occluded_accuracy_P_Tk   a whole-image classifier is right on the image with those fields set to the
                           config's occlusion_value (sec. 4.2, Fig. 5b; --occlusion-value overrides it);
  parts_seen_P_Tk          fraction of the two key digits lying whole inside some field (CPU task only).
For a learned policy L with a whole-image classifier, Fig. 5b on its axis (accuracy vs area occluded):
  occluded_accuracy_random_at_area_L_Tk  per image, the classifier's accuracy with 1, 2, ... random
                           fields occluded, interpolated linearly in the area occluded at the area L's
                           k fields occlude;
  occlusion_gap_L_Tk       that minus occluded_accuracy_L_Tk (> 0: occluding L's fields hurts more);
  occlusion_gap_se_L_Tk    its standard error over the test images (train.py, from occlusion_gap_sq_L_Tk).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor, nn

from core.cli import ArgumentParser, main_guard
from core.glimpse import coverage, glimpse_top_left, patch_boxes
from core.metrics import correct
from core.results import save_result
from core.runs import load_config, load_weights
from papers.saccader.config import SaccaderConfig
from papers.saccader.data import build_datasets
from papers.saccader.model import Saccader, build_model, location_boxes, whole_image_classifier
from papers.saccader.policies import select_locations

LEARNED_NAME = {"saccader": "learned", "no_location_pretraining": "no_location_pretraining",
                "no_attention_network": "no_attention_network"}


def occlude(images: Tensor, boxes: Tensor, value: float = 0.0) -> Tensor:
    """images (B, C, H, W) with the pixel boxes (B, K, 4) (y0, x0, y1, x1) set to `value` (sec. 4.2: "set
    the pixels to 0", in the classifier's input space)."""
    H, W = images.shape[-2:]
    rows, cols = torch.arange(H, device=images.device), torch.arange(W, device=images.device)
    y0, x0, y1, x1 = (boxes[..., i, None] for i in range(4))
    inside = ((rows >= y0) & (rows < y1))[..., :, None] & ((cols >= x0) & (cols < x1))[..., None, :]
    return images.masked_fill(inside.any(1)[:, None], value)


def parts_seen(boxes: Tensor, parts: Tensor) -> Tensor:
    """Fraction (B,) of the part boxes (B, P, 4) lying wholly inside at least one field box (B, K, 4)."""
    f, p = boxes[:, :, None], parts[:, None]
    inside = ((f[..., :2] <= p[..., :2]) & (f[..., 2:] >= p[..., 2:])).all(-1)
    return inside.any(1).float().mean(1)


def glimpse_metrics(name: str, boxes: Tensor, predictions: Tensor, targets: Tensor, images: Tensor,
                    counts: list[int], classifier: nn.Module | None = None, parts: Tensor | None = None,
                    occlusion_value: float = 0.0) -> dict[str, Tensor]:
    """Per-example metrics of one policy: boxes (B, T, 4) of its fields in glimpse order, predictions
    (B, T) its class after 1..T glimpses; `classifier` adds the occlusion analysis (fields set to
    `occlusion_value`), `parts` parts_seen."""
    out = {}
    for k in counts:
        out[f"accuracy_{name}_T{k}"] = (predictions[:, k - 1] == targets).float()
        out[f"coverage_{name}_T{k}"] = coverage(boxes[:, :k], images.shape[-2:]).float()
        if classifier is not None:
            occluded = classifier(occlude(images, boxes[:, :k], occlusion_value))
            out[f"occluded_accuracy_{name}_T{k}"] = correct(occluded, targets)
        if parts is not None:
            out[f"parts_seen_{name}_T{k}"] = parts_seen(boxes[:, :k], parts)
    return out


def interpolate(x: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Per row, the piecewise-linear y at x (B,) through the points (xs, ys) (B, K), xs non-decreasing;
    x outside [xs[:, 0], xs[:, -1]] takes the end value."""
    out = torch.where(x <= xs[:, 0], ys[:, 0], ys[:, -1])
    for j in range(1, xs.shape[1]):
        lo, hi = xs[:, j - 1], xs[:, j]
        weight = (x - lo) / (hi - lo).clamp_min(1e-12)
        out = torch.where((x > lo) & (x <= hi), ys[:, j - 1] + weight * (ys[:, j] - ys[:, j - 1]), out)
    return out


def occlusion_at_equal_area(name: str, boxes: Tensor, own: dict[int, Tensor], random_boxes: Tensor,
                            targets: Tensor, images: Tensor, classifier: nn.Module,
                            occlusion_value: float = 0.0) -> dict[str, Tensor]:
    """Fig. 5b's comparison at equal area occluded (Supp. 2: "accuracy vs. area covered/occluded"): the
    random comparator (boxes (B, K, 4), nested in k) interpolated per image at the area policy `name`'s
    first k boxes occlude. own: {k: the classifier's per-image accuracy with those k boxes occluded}."""
    def occluded(b: Tensor) -> Tensor:
        return correct(classifier(occlude(images, b, occlusion_value)), targets)

    K = random_boxes.shape[1]
    areas = torch.stack([images.new_zeros(len(images))] + [coverage(random_boxes[:, :k], images.shape[-2:])
                                                           for k in range(1, K + 1)], 1).float()
    accuracies = torch.stack([occluded(random_boxes[:, :k]) for k in range(K + 1)], 1)
    out = {}
    for k, accuracy in own.items():
        random = interpolate(coverage(boxes[:, :k], images.shape[-2:]).float(), areas, accuracies)
        out[f"occluded_accuracy_random_at_area_{name}_T{k}"] = random
        out[f"occlusion_gap_{name}_T{k}"] = random - accuracy
        out[f"occlusion_gap_sq_{name}_T{k}"] = (random - accuracy).square()
    return out


def saccader_glimpses(model: Saccader, policy: str, images: Tensor, num_glimpses: int,
                      logits_map: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(field boxes (B, T, 4), predictions (B, T) after 1..T glimpses) of a policy on a Saccader."""
    if logits_map is None:
        logits_map = model.backbone.forward_features(images)["logits_map"]
    locations, logits = select_locations(policy, model, images, num_glimpses, logits_map=logits_map)
    boxes = location_boxes(locations, logits_map.shape[-1], model.stride, model.receptive_field)
    steps = torch.arange(1, logits.shape[1] + 1, device=logits.device)[:, None]
    return boxes, (logits.cumsum(1) / steps).argmax(-1)  # the mean logits over the first k glimpses


def dram_glimpses(model: nn.Module, images: Tensor, num_glimpses: int) -> tuple[Tensor, Tensor]:
    """(high-resolution field boxes (B, T, 4), predictions (B, T) after each glimpse) of DRAM."""
    out = model(images, num_glimpses)
    top_left = glimpse_top_left(out["locations"], model.glimpse, images.shape[-2:])
    return patch_boxes(top_left, model.glimpse).float(), out["logits"].argmax(-1)


def make_eval_fn(cfg: SaccaderConfig, names: list[str], classifier: nn.Module | None = None,
                 whole_image: bool = False):
    """eval_fn(model, batch) -> per-example metrics, for core.train.train.

    names: the policies to evaluate; for a Saccader "learned" (its own cell) or any engineered policy of
    policies.py, renamed by LEARNED_NAME-style aliases "alias=policy"; for DRAM ["learned"].
    whole_image: also the representation network's accuracy from all locations (eq. 4's prediction).
    The occlusion analysis sets the attended fields to cfg.occlusion_value."""
    counts, occlusion_value = sorted(set(cfg.eval_glimpses)), cfg.occlusion_value

    def eval_fn(model, batch):
        images, targets = batch[0], batch[1]
        parts = batch[2] if len(batch) > 2 else None
        out = {}
        if cfg.model == "dram":
            boxes, predictions = dram_glimpses(model, images, max(counts))
            return glimpse_metrics("learned", boxes, predictions, targets, images, counts, classifier, parts,
                                   occlusion_value)
        logits_map = model.backbone.forward_features(images)["logits_map"]
        if whole_image:
            out["accuracy_all_locations"] = correct(logits_map.mean((2, 3)), targets)
        for entry in names:
            alias, _, policy = entry.partition("=")
            boxes, predictions = saccader_glimpses(model, policy or alias, images, max(counts), logits_map)
            out |= glimpse_metrics(alias, boxes, predictions, targets, images, counts, classifier, parts,
                                   occlusion_value)
            if classifier is not None and (policy or alias) == "learned":
                # random fields up to one more than the largest count, to bracket the learned policy's area
                random_boxes, _ = saccader_glimpses(model, "random", images, max(counts) + 1, logits_map)
                own = {k: out[f"occluded_accuracy_{alias}_T{k}"] for k in counts}
                out |= occlusion_at_equal_area(alias, boxes, own, random_boxes, targets, images, classifier,
                                               occlusion_value)
        return out

    return eval_fn


def occlusion_standard_errors(metrics: dict[str, float], n: int) -> dict[str, float]:
    """Replace each mean occlusion_gap_sq_X over n images by occlusion_gap_se_X, the standard error of the
    mean occlusion_gap_X."""
    out = {k: v for k, v in metrics.items() if not k.startswith("occlusion_gap_sq_")}
    for key, mean_sq in metrics.items():
        if key.startswith("occlusion_gap_sq_"):
            name = key.removeprefix("occlusion_gap_sq_")
            variance = max(mean_sq - metrics[f"occlusion_gap_{name}"] ** 2, 0.0) * n / max(n - 1, 1)
            out[f"occlusion_gap_se_{name}"] = (variance / n) ** 0.5
    return out


def classifier_eval_fn(model, batch) -> dict[str, Tensor]:
    """Whole-image accuracy of a plain classifier (BagNet-77-lowD, ResNet-v2-50)."""
    return {"accuracy": correct(model(batch[0]), batch[1])}


# ----------------------------------------------------------------------------------------------------
# CLI: re-evaluate a finished run


def load_stage(model: nn.Module, stage_dir: Path) -> nn.Module:
    """Load the last checkpoint of one training stage (core.train layout) into model."""
    load_weights(model, stage_dir)
    return model.eval()


def evaluate_run(run_dir: str, num_images: int = 8, occlusion_value: float | None = None) -> dict[str, float]:
    run = Path(run_dir)
    cfg = load_config(run, SaccaderConfig)
    if occlusion_value is not None:
        cfg = dataclasses.replace(cfg, occlusion_value=occlusion_value)
    _, test_set = build_datasets(cfg)
    loader = torch.utils.data.DataLoader(test_set, batch_size=cfg.batch_size)
    classifier = None
    if cfg.occlusion_classifier:
        classifier = load_stage(whole_image_classifier(cfg), run / "classifier")
    evaluations = []  # (model, eval_fn, policies for the overlays)
    if cfg.model == "dram":
        dram = load_stage(build_model(cfg), run / "policy")
        evaluations.append((dram, make_eval_fn(cfg, [], classifier), []))
    else:
        representation = load_stage(build_model(cfg), run / "representation")
        evaluations.append((representation, make_eval_fn(cfg, list(cfg.eval_policies), classifier, True),
                            list(cfg.eval_policies)))
        for variant in cfg.variants:
            model = build_model(cfg, attention_network=variant != "no_attention_network")
            name = LEARNED_NAME[variant]
            evaluations.append((load_stage(model, run / variant / "policy"),
                                make_eval_fn(cfg, [f"{name}=learned"], classifier), [name]))
    metrics, sums, n = {}, {}, 0
    glimpses = {"images": None, "boxes": {}}
    with torch.no_grad():
        for batch in loader:
            for model, eval_fn, _ in evaluations:
                for k, v in eval_fn(model, batch).items():
                    sums[k] = sums.get(k, 0.0) + v.double().sum().item()
            n += len(batch[1])
        images = next(iter(loader))[0][:num_images]
        glimpses["images"] = images
        for model, _, names in evaluations:
            for name in names or ["learned"]:
                if cfg.model == "dram":
                    boxes, _ = dram_glimpses(model, images, max(cfg.eval_glimpses))
                else:
                    boxes, _ = saccader_glimpses(model, "learned" if name in LEARNED_NAME.values() else name,
                                                 images, max(cfg.eval_glimpses))
                glimpses["boxes"][name] = boxes
    metrics = occlusion_standard_errors({k: v / n for k, v in sums.items()}, n)
    if classifier is not None:
        metrics["occlusion_value"] = cfg.occlusion_value
    save_result(run / "evaluation.json", metrics)
    torch.save(glimpses, run / "glimpses.pt")
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--images", type=int, default=8, help="test canvases stored with their glimpses")
    parser.add_argument("--occlusion-value", type=float, default=None, metavar="V",
                        help="value of the occluded pixels in the classifier's [-1, 1] input (default: the "
                             "run's occlusion_value; paper 0, mid grey on ImageNet; -1 the CPU canvases' "
                             "background)")
    args = parser.parse_args(argv)
    metrics = main_guard(evaluate_run, args.run_dir, args.images, args.occlusion_value)
    for k in sorted(k for k in metrics if k.startswith("accuracy")):
        print(f"{k:<40} {metrics[k]:.4f}")
    run = Path(args.run_dir)
    print(f"every metric: {run / 'evaluation.json'}; glimpses for the overlays: {run / 'glimpses.pt'}")
    return metrics


if __name__ == "__main__":
    main()
