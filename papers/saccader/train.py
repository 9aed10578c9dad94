"""Train Saccader in the paper's three stages (sec. 3.2) with its ablations, DRAM (App. C) or a CNN
baseline, then evaluate every location policy (sec. 4).

    python papers/saccader/train.py --config NAME [--seed N] [--output-dir DIR] [--set field=value ...]
    accelerate launch [--cpu] --num_processes 2 papers/saccader/train.py --config smoke

Saccader (cfg.model = "saccader"), each step in its own <output-dir>/<folder>/ (checkpoints, log):
  classifier/       (cfg.occlusion_classifier) the whole-image ResNet-v2-50 of the occlusion analysis;
  representation/   eq. 4: cross-entropy of the logits averaged over all locations, L2 lambda; then the
                    engineered policies (random, ordered logits, Sobel) are evaluated on this BagNet;
  <variant>/location/  eq. 5: the location network (attention network, mixing conv, cell) learns to emit
                    the locations in decreasing order of their maximum logit, T = 12, teacher-forced
                    state C, no gradient into the (frozen, eval-mode) representation network; averaged
                    over glimpses (official) or summed (cfg.location_loss);
  <variant>/policy/ eq. 6: REINFORCE on S = 2 sampled trajectories of T = 6 glimpses with the batch-mean
                    accuracy as baseline (averaged as officially, or summed: cfg.policy_gradient),
                    + cross-entropy of the mean glimpse logits, L2 lambda and nu (cfg.l2_form).
  Every variant of cfg.variants starts from the same representation network (the ablations of
  Fig. Supp.3 skip eq. 5 or the attention network).
DRAM (cfg.model = "dram"): pretrain_wide/ and pretrain_narrow/ (classification pretraining on 200 then
77 px fields of view, random policy, App. C; cfg.dram_pretraining_schedule: a schedule each or one over
both), policy/ (hybrid loss: cross-entropy + 0.1 x REINFORCE with S = 2 and the accuracy baseline;
refused below cfg.dram_min_pretrain_accuracy x chance). BagNet / ResNet baselines: representation/ (eq. 7).

Writes <output-dir>/config.json, metrics.jsonl (every stage, steps numbered across stages) and
final_metrics.json (evaluate.py's metrics, e.g. accuracy_<policy>_T<k>, and test_accuracy).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.cli import run_paper
from core.errors import UserError
from core.estimators import batch_mean_baseline, reinforce_loss
from core.metrics import correct
from core.runs import micro_batch, process_state
from core.train import LoopConfig, train, unwrap
from papers.saccader.config import SaccaderConfig, get_config
from papers.saccader.data import build_datasets
from papers.saccader.evaluate import (
    LEARNED_NAME,
    classifier_eval_fn,
    make_eval_fn,
    occlusion_standard_errors,
    saccader_glimpses,
)
from papers.saccader.model import (
    build_model,
    classification_loss,
    patch_classifier,
    whole_image_classifier,
)


def max_logit_order(num_glimpses: int):
    """Eq. 5 targets: locations by decreasing maximum logit over classes (l_target^1 = the largest)."""
    return lambda logits_map: logits_map.flatten(2).amax(1).topk(num_glimpses, -1).indices


def make_step_fn(cfg: SaccaderConfig, stage: str, saccader=None):
    """step_fn(model, batch, step) -> (loss, stats) of one stage; L2 terms live in the optimiser.
    `saccader`: the trained Saccader whose glimpses the patch classifier learns from."""

    def representation(model, batch, step):  # eq. 4 (Saccader), eq. 7 (CNN baselines)
        images, targets = batch[0], batch[1]
        logits = model(images, 0)["logits"][:, 0] if cfg.model == "saccader" else model(images)
        loss = F.cross_entropy(logits, targets)  # the geometric mean over locations = softmax of mean logits
        return loss, {"train_accuracy": correct(logits, targets).mean().item()}

    def location(model, batch, step):  # eq. 5
        unwrap(model).backbone.eval()  # "fixed from BagNet-77-lowD" (Table Supp.5 *): BN statistics too
        T = cfg.pretrain_glimpses
        out = model(batch[0], T, locations=max_logit_order(T), detach_representation=True)
        loss = -out["log_prob"].mean() * (T if cfg.location_loss == "sum" else 1)
        hits = correct(out["location_logits"], out["locations"]).mean()
        return loss, {"target_hit_rate": hits.item()}

    def policy(model, batch, step):  # eq. 6
        images, targets = batch[0], batch[1]
        S, T, B = cfg.mc_samples, cfg.train_glimpses, images.shape[0]
        out = model(images, T, num_samples=S)
        targets = targets.repeat(S)
        reward = correct(out["logits"].mean(1), targets).view(S, B)
        # Officially averaged over samples, glimpses and images; eq. 6's text sums over S and T.
        pg = reinforce_loss(out["log_prob"].mean(1).view(S, B), reward, batch_mean_baseline(reward))
        pg = pg * (S * T if cfg.policy_gradient == "sum" else 1)
        ce = classification_loss(out["logits"], targets)
        return pg + ce, {"reward": reward.mean().item(), "cross_entropy": ce.item()}

    def dram_pretrain(glimpse):  # App. C: random policy, every combination of views, one cross-entropy
        def step_fn(model, batch, step):
            images, targets = batch[0], batch[1]
            every = model(images, cfg.dram_pretrain_glimpses, pretrain_glimpse=glimpse)["logits"]  # B, V*T, K
            logits = every.mean(1)
            if cfg.dram_pretraining_loss == "per_combination":
                loss = F.cross_entropy(every.flatten(0, 1), targets.repeat_interleave(every.shape[1]))
            else:
                loss = F.cross_entropy(logits, targets)
            return loss, {"train_accuracy": correct(logits, targets).mean().item()}
        return step_fn

    def dram_policy(model, batch, step):
        # Ba et al.'s hybrid loss as the official losses.reinforce_loss_continuous: the reward of the
        # location used at step t is whether the prediction after it is right, the baseline the mean
        # reward over the batch, S samples and steps; cross-entropy at every step.
        images, targets = batch[0], batch[1]
        S, T = cfg.mc_samples, cfg.train_glimpses
        out = model(images.repeat(S, 1, 1, 1), T)
        targets = targets.repeat(S)
        reward = correct(out["logits"], targets[:, None].expand(out["logits"].shape[:-1]))  # (S*B, T)
        pg = reinforce_loss(out["log_prob"], reward, batch_mean_baseline(reward))
        ce = F.cross_entropy(out["logits"].flatten(0, 1), targets.repeat_interleave(T))
        return ce + cfg.dram_reinforce_weight * pg, {"reward": reward[:, -1].mean().item(),
                                                     "cross_entropy": ce.item()}

    def patch_classifier(model, batch, step):  # sec. 4.3: cross-entropy of the mean patch logits
        images, targets = batch[0], batch[1]
        boxes, _ = saccader_glimpses(saccader, "learned", images, cfg.train_glimpses)
        logits = model(images, boxes).mean(1)
        return F.cross_entropy(logits, targets), {
            "train_accuracy": correct(logits, targets).mean().item()}

    if stage == "patch_classifier":
        return patch_classifier
    if cfg.model == "dram":
        return {"pretrain_wide": dram_pretrain(cfg.dram_pretrain_glimpse),
                "pretrain_narrow": dram_pretrain(cfg.dram_glimpse), "policy": dram_policy}[stage]
    return {"representation": representation, "location": location, "policy": policy,
            "classifier": representation}[stage]


def make_optimizer(cfg: SaccaderConfig, model, stage: str) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (App. C), the L2 terms as weight decay: eq. 4 lambda on the
    representation; eq. 5 nu = 0 and only the location weights; eq. 6 both; DRAM lambda on the
    classification weights and nu on the location weights. cfg.l2_form "sum": lambda/2 sum w^2 over
    kernels (gradient lambda w); "normalized": lambda sum w^2 / n over the n values of every weight but
    biases and BN (gradient 2 lambda w / n), per term as the official normalized_l2_loss."""
    if cfg.model == "saccader" and stage == "representation":
        groups = [(model.representation_parameters(), cfg.l2)]
    elif cfg.model == "saccader" and stage == "location":
        groups = [(model.location_parameters(), 0.0)]
    elif stage == "patch_classifier":
        groups = [(list(model.parameters()), cfg.l2)]
    elif cfg.model == "saccader" and stage == "policy":
        groups = [(model.representation_parameters(), cfg.l2), (model.location_parameters(), cfg.l2_location)]
    elif cfg.model == "dram" and stage != "policy":  # classification pretraining
        groups = [(model.classification_parameters(), cfg.l2)]
    elif cfg.model == "dram":
        groups = [(model.classification_parameters(), cfg.l2), (model.location_parameters(), cfg.l2_location)]
    else:
        groups = [(list(model.parameters()), cfg.l2)]
    unregularised = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                     for p in m.parameters()}
    unregularised |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    # The official normalised L2 belongs to Saccader's and DRAM's losses (losses.py); the separately
    # trained CNNs (eq. 4's BagNet, the occlusion and patch classifiers) keep plain weight decay.
    form = cfg.l2_form if stage in ("location", "policy") or cfg.model == "dram" else "sum"
    param_groups = []
    for params, decay in groups:
        if form == "sum":
            decayed = [p for p in params if p.ndim > 1]
        else:  # the cell's vector `a` is a dense kernel officially, so it is decayed too
            decayed = [p for p in params if id(p) not in unregularised]
        count = sum(p.numel() for p in decayed)
        if form == "normalized" and count:
            decay = 2 * decay / count
        kept = {id(p) for p in decayed}
        param_groups += [{"params": decayed, "weight_decay": decay},
                         {"params": [p for p in params if id(p) not in kept], "weight_decay": 0.0}]
    return torch.optim.SGD(param_groups, lr=getattr(cfg, stage).lr, momentum=cfg.momentum, nesterov=True)


def cosine_with_warmup(max_steps: int, warmup_steps: int):
    """Linear warm-up to the base rate, then a cosine decay to zero (App. C)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, max_steps - warmup_steps)))
    return factor


class Pipeline:
    """Runs the stages one after the other through core.train.train (each resumable in its own folder)
    and joins their logs into one metrics.jsonl with steps numbered across stages."""

    def __init__(self, cfg: SaccaderConfig, output_dir: str):
        self.cfg, self.out, self.state = cfg, Path(output_dir), process_state()
        self.train_set, self.eval_set = build_datasets(cfg)
        self.log: list[dict] = []
        self.metrics: dict[str, float] = {}
        self.fits = 0

    def steps(self, stage: str) -> int:
        cfg = self.cfg
        return getattr(cfg, stage).steps or math.ceil(cfg.epochs * len(self.train_set) / cfg.batch_size)

    def fit(self, model, stage: str, folder: str, eval_fn, opt_cfg: SaccaderConfig | None = None,
            saccader=None, schedule: tuple[int, int] | None = None):
        """schedule: (offset, length) of the stage in a schedule it shares with others (default: its own)."""
        cfg = self.cfg
        max_steps = self.steps(stage)
        optimizer = make_optimizer(opt_cfg or cfg, model, stage)
        offset, length = schedule or (0, max_steps)
        warmup = math.ceil(length * cfg.warmup_epochs / cfg.epochs)
        factor = cosine_with_warmup(length, warmup)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step + offset))
        loop = LoopConfig(max_steps=max_steps, batch_size=micro_batch(cfg.batch_size),
                          seed=cfg.seed + self.fits, checkpoint_every=cfg.checkpoint_every,
                          eval_every=cfg.eval_every, log_every=cfg.log_every,
                          output_dir=str(self.out / folder),
                          num_workers=cfg.num_workers, channels_last=cfg.channels_last)
        step_fn = make_step_fn(opt_cfg or cfg, stage, saccader)
        # Only the optimised weights require gradients: DDP (accelerate launch) rejects parameters that
        # get none, e.g. the location network in eq. 4 or the representation network in eq. 5.
        trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for p in model.parameters():
            p.requires_grad_(id(p) in trained)
        metrics = train(loop, model, optimizer, self.train_set, step_fn, self.eval_set, eval_fn,
                        scheduler=scheduler)
        model.requires_grad_(True)
        self.fits += 1
        if self.state.is_main_process:
            offset = self.log[-1]["step"] if self.log else 0
            for line in (self.out / folder / "metrics.jsonl").read_text().splitlines():
                record = json.loads(line)
                self.log.append({**record, "step": record["step"] + offset, "stage": folder})
        self.metrics.update(metrics)
        return metrics

    def finish(self) -> dict[str, float]:
        self.metrics = occlusion_standard_errors(self.metrics, len(self.eval_set))
        if self.state.is_main_process:
            (self.out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.log))
        return self.metrics


def run(cfg: SaccaderConfig, output_dir: str) -> dict[str, float]:
    """Every stage of cfg, then the final metrics (core.cli.run_paper records the config and writes them)."""
    pipe = Pipeline(cfg, output_dir)
    train_glimpses = f"T{cfg.train_glimpses}"

    if cfg.model in ("bagnet", "resnet"):
        pipe.fit(build_model(cfg), "representation", "representation", classifier_eval_fn)
        pipe.metrics["test_accuracy"] = pipe.metrics["accuracy"]
        return pipe.finish()

    classifier = None
    if cfg.occlusion_classifier:  # sec. 4.2: a separately trained whole-image classifier
        classifier = whole_image_classifier(cfg)
        classifier_cfg = SaccaderConfig(**{**vars(cfg), "model": "resnet", "stages": ("representation",)})
        pipe.fit(classifier, "classifier", "classifier", classifier_eval_fn, classifier_cfg)
        pipe.metrics["accuracy_whole_image"] = pipe.metrics.pop("accuracy")
        classifier.eval()

    if cfg.model == "dram":
        model = build_model(cfg)
        pretraining = [s for s in cfg.stages if s != "policy"]
        length, offset = sum(pipe.steps(s) for s in pretraining), 0
        for stage in cfg.stages:
            if stage == "policy":
                check_dram_pretraining(cfg, pipe.metrics)
                pipe.fit(model, stage, stage, make_eval_fn(cfg, [], classifier))
                continue
            shared = (offset, length) if cfg.dram_pretraining_schedule == "one" else None
            pipe.fit(model, stage, stage, _dram_pretrain_eval(cfg, stage), schedule=shared)
            offset += pipe.steps(stage)
        if f"accuracy_learned_{train_glimpses}" in pipe.metrics:
            pipe.metrics["test_accuracy"] = pipe.metrics[f"accuracy_learned_{train_glimpses}"]
        return pipe.finish()

    representation = build_model(cfg)
    if "representation" in cfg.stages:
        pipe.fit(representation, "representation", "representation",
                 make_eval_fn(cfg, list(cfg.eval_policies), classifier, whole_image=True))
    weights = representation.backbone.state_dict()
    trained = {}
    for variant in cfg.variants:
        name = LEARNED_NAME[variant]
        model = build_model(cfg, attention_network=variant != "no_attention_network")
        model.backbone.load_state_dict(weights)
        if "location" in cfg.stages and variant != "no_location_pretraining":
            pipe.fit(model, "location", f"{variant}/location",
                     make_eval_fn(cfg, [f"{name}_pretrained=learned"]))
        if "policy" in cfg.stages:
            pipe.fit(model, "policy", f"{variant}/policy", make_eval_fn(cfg, [f"{name}=learned"], classifier))
        trained[variant] = model.eval()
    if cfg.patch_backbone and "saccader" in trained:  # sec. 4.3, on the full Saccader's glimpses
        pipe.fit(patch_classifier(cfg), "patch_classifier", "patch_classifier",
                 patch_eval_fn(cfg, trained["saccader"]), saccader=trained["saccader"])
    if f"accuracy_learned_{train_glimpses}" in pipe.metrics:
        pipe.metrics["test_accuracy"] = pipe.metrics[f"accuracy_learned_{train_glimpses}"]
    return pipe.finish()


def patch_eval_fn(cfg: SaccaderConfig, saccader):
    """Accuracy of the patch classifier on the trained Saccader's first k glimpses (sec. 4.3, Fig. 6)."""
    counts = sorted(set(cfg.eval_glimpses))

    def eval_fn(model, batch):
        images, targets = batch[0], batch[1]
        boxes, _ = saccader_glimpses(saccader, "learned", images, max(counts))
        logits = model(images, boxes)
        return {f"accuracy_patch_classifier_T{k}": correct(logits[:, :k].mean(1), targets)
                for k in counts}
    return eval_fn


def check_dram_pretraining(cfg: SaccaderConfig, metrics: dict[str, float]) -> None:
    """Refuse DRAM's policy stage when its pretraining left the classifier near chance."""
    done = [s for s in ("pretrain_narrow", "pretrain_wide") if f"{s}_accuracy" in metrics]
    if not done or not cfg.dram_min_pretrain_accuracy:
        return
    accuracy, floor = metrics[f"{done[0]}_accuracy"], cfg.dram_min_pretrain_accuracy / cfg.num_classes
    if accuracy < floor:
        raise UserError(f"DRAM's pretraining ({done[0]}) reached test accuracy {accuracy:.3f} < "
                        f"{cfg.dram_min_pretrain_accuracy:g} x chance = {floor:.3f}: no policy stage")


def _dram_pretrain_eval(cfg: SaccaderConfig, stage: str):
    """Test accuracy of a DRAM pretraining stage's objective (random policy, every combination of views)."""
    glimpse = cfg.dram_pretrain_glimpse if stage == "pretrain_wide" else cfg.dram_glimpse

    def eval_fn(model, batch):
        logits = model(batch[0], cfg.dram_pretrain_glimpses, pretrain_glimpse=glimpse)["logits"].mean(1)
        return {f"{stage}_accuracy": correct(logits, batch[1])}
    return eval_fn


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run_paper(get_config, run, argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
