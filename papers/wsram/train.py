"""Train a WS-RAM variant on translated-scaled MNIST (§5.1) and log the three panels of Fig. 2.

    accelerate launch papers/wsram/train.py --config cpu [--seed N] [--output-dir DIR] [--set field=value ...]

Every update draws M glimpse sequences per image and minimises the surrogate loss of the selected estimator
from core.estimators (VAR: eqs. 3-5; WS-RAM: eqs. 7-8, +q: eq. 14, +c: eqs. 15-18) plus the enabled
exploration heuristics (§4.5). Every `log_every` updates it also logs, for Fig. 2:
  train_error   error on a fixed set of training images, glimpses sampled from the prior (T = 1), p(y | I)
                estimated by averaging p(y | a^m, I) over M sequences (the label never guides these glimpses);
  gvar_*        with shared_variance (the WS-RAM+q+c run): every estimator's gradient variance at this
                run's parameters on one fixed batch, over `grad_probes` estimates, normalised by the squared
                mean gradient, for the attention-policy parameters and in total (Probes.shared_variance);
  ess           effective sample size 1 / sum_m (w^m)^2 of the update's importance weights (eq. 7), in [1, M].
final_metrics.json holds the Table 1 test error and summaries of these curves.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.cli import run_paper
from core.data import DigitCanvas, build_dataset, is_idx_folder, pixel_stats
from core.estimators import (
    effective_sample_size,
    normalized_importance_weights,
    variational_bound_loss,
    wake_sleep_loss,
)
from core.metrics import GradientVariance, correct
from core.runs import is_main_process, micro_batch
from core.train import LoopConfig, train, unwrap
from papers.wsram.config import WSRAMConfig, get_config
from papers.wsram.model import WSRAM, build_model

# Fig. 2's six estimators, measured at the parameters of the run that sets shared_variance (WS-RAM+q+c)
SHARED_VARIANTS = {
    "var": dict(estimator="var", use_q=False, control_variates=False),
    "var_c": dict(estimator="var", use_q=False, control_variates=True),
    "wsram": dict(estimator="wsram", use_q=False, control_variates=False),
    "wsram_c": dict(estimator="wsram", use_q=False, control_variates=True),
    "wsram_q": dict(estimator="wsram", use_q=True, control_variates=False),
    "wsram_qc": dict(estimator="wsram", use_q=True, control_variates=True),
}
POLICY_MODULES = ("context", "in2", "rec2", "policy")  # parameters that act only through the glimpse policy


def surrogate_loss(cfg: WSRAMConfig, out: dict[str, torch.Tensor]) -> torch.Tensor:
    """The selected estimator's loss; its gradient is minus the paper's ascent direction."""
    log_py, log_pa, log_prop = out["log_py"], out["log_pa"], out["log_proposal"]
    # The random-glimpse baseline (log_pa = log_proposal = 0, no policy to train) gets its classifier
    # objective from the estimator it is compared with: VAR's mean of log p(y|a) (eq. 5), or WS-RAM's
    # normalised weighting of it (eq. 8), so that a comparison with it compares policies, not objectives.
    if cfg.estimator == "var":  # eq. 5; tempered samples (§4.5 heuristic 1) are importance-corrected
        return variational_bound_loss(log_py, log_pa, control_variate=cfg.control_variates,
                                      log_proposal=log_prop if sampling_temperature(cfg) != 1.0 else None)
    # Eqs. 7-8 (16): the proposal is q or the prior, both at T = 1 (see sampling_temperature); only q's own
    # loss (eq. 14 / 17) moves eta, so q is trained towards the posterior itself.
    ws = wake_sleep_loss(log_py, log_pa, log_q=log_prop if cfg.use_q else None,
                         control_variate=cfg.control_variates)
    return ws.loss if cfg.use_q else ws.prediction_loss


def exploration_loss(cfg: WSRAMConfig, out: dict[str, torch.Tensor]) -> torch.Tensor:
    """Heuristics (2) and (3) of §4.5 on the attention policy p(a | I) (heuristic (1) acts on sampling).

    (2) coverage: the batch-marginal of the policy should view all scales, KL(uniform || mean_b p(scale)),
        and all locations: its mean location at the image centre, its spread not below that of a uniform
        distribution over the image (variance 1/3 per axis); only collapse is penalised.
    (3) entropy: a bonus on the entropy of the action distribution, H(scale) + sum log std (+ const).
    """
    loss = out["log_py"].new_zeros(())
    if cfg.policy == "random":
        return loss
    logits, loc = out["prior_scale_logits"], out["prior_loc_mean"]  # (N, M*B, S), (N, M*B, 2)
    if cfg.explore_coverage:
        log_marginal = torch.logsumexp(F.log_softmax(logits, -1), 1) - math.log(logits.shape[1])  # (N, S)
        kl_uniform = -(log_marginal.mean(-1) + math.log(logits.shape[-1]))
        spread = F.relu(1 / 3 - loc.var(1)).square().sum(-1) + loc.mean(1).square().sum(-1)
        loss = loss + cfg.coverage_weight * (kl_uniform + spread).mean()
    if cfg.explore_entropy:
        logp = F.log_softmax(logits, -1)
        entropy = -(logp.exp() * logp).sum(-1).mean() + out["prior_loc_std"].log().sum()
        loss = loss - cfg.entropy_weight * entropy
    return loss


def sampling_temperature(cfg: WSRAMConfig) -> float:
    """§4.5 heuristic 1 applies to VAR only. For WS-RAM a tempered proposal, even with importance weights
    that correct for it, biases the self-normalised estimate of eq. 8 towards the tempered density: at
    M = 5 it drives the location std up until it hits its cap and the policy is random. The paper found the
    heuristics made little difference to WS-RAM, so WS-RAM samples from the prior or q at T = 1."""
    return cfg.temperature if cfg.explore_temperature and cfg.estimator == "var" else 1.0


def rollout(cfg: WSRAMConfig, model: torch.nn.Module, images, labels) -> dict[str, torch.Tensor]:
    """The training-time rollout: M sequences from the proposal the variant prescribes."""
    if cfg.policy == "random":
        return model(images, labels, cfg.num_samples, "random")
    return model(images, labels, cfg.num_samples, "q" if cfg.use_q else "prior", sampling_temperature(cfg))


def log_weights(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eq. 7: log w~ = log p(a | I) + log p(y | a, I) - log proposal(a)."""
    return (out["log_pa"] + out["log_py"] - out["log_proposal"]).detach()


def shared_estimator_stats(cfg, off: dict, params: list[torch.Tensor], policy: list[int],
                           sample: Callable[[Any], dict[str, torch.Tensor]],
                           loss: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]) -> dict[str, float]:
    """Fig. 2b at shared parameters for a WS-RAM model of either task: for every estimator of
    SHARED_VARIANTS (cfg with those fields and `off`, which switches this measurement off in the copy),
    `cfg.grad_probes` gradients of loss(variant cfg, sample(variant cfg)) with fresh attention samples at the
    current parameters. Per variant, the trace of the covariance over the squared norm of the mean estimate,
    for the parameters indexed by `policy` and for all `params`; and the mean ESS of the untempered weights
    with the prior (WS-RAM) or q (WS-RAM+q) as the proposal."""
    stats = {}
    for variant, fields in SHARED_VARIANTS.items():
        vcfg = dataclasses.replace(cfg, **off, **fields)
        total, attention, ess = GradientVariance(), GradientVariance(), 0.0
        for _ in range(cfg.grad_probes):
            out = sample(vcfg)
            grads = torch.autograd.grad(loss(vcfg, out), params, allow_unused=True, materialize_grads=True)
            total.update(grads)
            attention.update([grads[i] for i in policy])
            ess += effective_sample_size(normalized_importance_weights(log_weights(out))).mean().item()
        stats[f"gvar_policy_{variant}"] = attention.total_variance() / attention.mean_squared_norm()
        stats[f"gvar_total_{variant}"] = total.total_variance() / total.mean_squared_norm()
        if variant in ("wsram", "wsram_q"):
            stats[f"ess_shared_{'q' if vcfg.use_q else 'prior'}"] = ess / cfg.grad_probes
    return stats


class Probes:
    """The Fig. 2 measurements that need extra forward passes, on fixed training images, at fixed parameters.

    They run under their own RNG seeded by (seed, step), so logging more or less often never changes
    training, and on the unwrapped model, so no gradient synchronisation is involved."""

    def __init__(self, cfg: WSRAMConfig, dataset: DigitCanvas):
        n = min(cfg.train_probe_size, len(dataset))
        batch = [dataset[i] for i in range(n)]
        self.images = torch.stack([b[0] for b in batch])
        self.labels = torch.tensor([b[1] for b in batch])
        self.cfg = cfg

    @torch.no_grad()
    def train_error(self, model: WSRAM) -> tuple[float, float]:
        """(error, entropy in nats of the marginal of chosen scales over images and glimpses)."""
        cfg, dev = self.cfg, next(model.parameters()).device
        errors, counts = [], torch.zeros(cfg.num_scales)
        for i in range(0, len(self.images), 256):
            x, y = self.images[i:i + 256].to(dev), self.labels[i:i + 256].to(dev)
            out = model(x, y, cfg.num_samples, "prior" if model.learned else "random")
            errors.append(1 - correct(out["logits"].softmax(-1).mean(0), y))
            counts += torch.bincount(out["scales"].flatten().cpu(), minlength=cfg.num_scales)
        p = counts / counts.sum()
        return torch.cat(errors).mean().item(), -(p * p.clamp_min(1e-12).log()).sum().item()

    def shared_variance(self, model: WSRAM) -> dict[str, float]:
        """Fig. 2b at shared parameters (`shared_estimator_stats`) on one fixed batch at this run's current
        parameters; "policy": layer 2 and the action head."""
        cfg, dev = self.cfg, next(model.parameters()).device
        x, y = self.images[:cfg.batch_size].to(dev), self.labels[:cfg.batch_size].to(dev)
        named = [(n, p) for n, p in model.named_parameters() if not n.startswith("inference.")]
        policy = [i for i, (n, _) in enumerate(named) if n.split(".")[0] in POLICY_MODULES]
        return shared_estimator_stats(cfg, {"shared_variance": False}, [p for _, p in named], policy,
                                      lambda vcfg: rollout(vcfg, model, x, y), surrogate_loss)

    def __call__(self, model: WSRAM, step: int) -> dict[str, float]:
        devices = [self.images.device] if self.images.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.seed * 1_000_003 + step)
            error, scale_entropy = self.train_error(model)
            stats = {"train_error": error, "scale_usage_entropy": scale_entropy}
            if self.cfg.shared_variance:
                stats.update(self.shared_variance(model))
        return stats


def make_step_fn(cfg: WSRAMConfig, probes: Probes):
    def step_fn(model, batch, step):
        images, labels = batch
        out = rollout(cfg, model, images, labels)
        loss = surrogate_loss(cfg, out) + exploration_loss(cfg, out)
        log_w = log_weights(out)
        stats = {
            "ess": effective_sample_size(normalized_importance_weights(log_w)).mean().item(),
            # log 1/M sum_m w~^m: the bound of eq. 9 (with the proposal in use)
            "log_likelihood": (torch.logsumexp(log_w, 0) - math.log(cfg.num_samples)).mean().item(),
        }
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            stats.update(probes(unwrap(model), step))
        return loss, stats

    return step_fn


def make_eval_fn(cfg: WSRAMConfig):
    def eval_fn(model, batch):
        images, labels = batch
        return {"test_error": 1 - correct(model.predict(images, cfg.num_samples), labels)}

    return eval_fn


def summarize(metrics_path: Path, test_error: float, cfg: WSRAMConfig) -> dict[str, float]:
    """final_metrics.json: Table 1's test error and the Fig. 2 curves at the last update / over the run."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    curve = [r for r in rows if "train_error" in r]
    last = curve[-1]
    final = {
        "test_error": test_error,
        "accuracy": 1.0 - test_error,
        "glimpses": float(cfg.num_glimpses),
        "train_error": last["train_error"],  # at update max_steps, the same N for every variant of a config
        "train_error_auc": sum(r["train_error"] for r in curve) / len(curve),  # mean of the Fig. 2a curve
        # the curve's mean over the last quarter of the updates: one logged point moves by up to 0.2 as
        # training fluctuates, so comparisons "after the same number of updates" use this plateau level
        "train_error_end": mean_since(curve, "train_error", 0.75 * cfg.max_steps),
        "scale_usage_entropy": last["scale_usage_entropy"],
        "ess": sum(r["ess"] for r in curve) / len(curve),  # mean of the Fig. 2c curve
        "ess_final": last["ess"],
        "steps": float(last["step"]),
    }
    final["ess_at_error_50"] = ess_at_error(curve, 0.5)
    for key in (k for k in last if k.startswith("gvar_")):  # geometric mean: the curves span decades
        final[key] = math.exp(sum(math.log(r[key]) for r in curve) / len(curve))
    for key in (k for k in last if k.startswith("ess_shared_")):
        final[key] = sum(r[key] for r in curve) / len(curve)
    return final


def mean_since(curve: list[dict], key: str, step: float) -> float:
    """Mean of `key` over the logged points at or after `step` (the last point if none is)."""
    late = [r[key] for r in curve if r["step"] >= step] or [curve[-1][key]]
    return sum(late) / len(late)


def ess_at_error(curve: list[dict], level: float) -> float:
    """ESS where the training-error curve first falls to `level`, linearly interpolated between logged
    points (the last point's ESS if it never does): ESS falls as a model trains, so comparing variants at
    the same training error, not the same update, separates the estimator from the progress."""
    for prev, row in zip(curve, curve[1:], strict=False):
        if row["train_error"] <= level < prev["train_error"]:
            t = (prev["train_error"] - level) / (prev["train_error"] - row["train_error"])
            return prev["ess"] + t * (row["ess"] - prev["ess"])
    return curve[0]["ess"] if curve[0]["train_error"] <= level else curve[-1]["ess"]


def build_datasets(cfg: WSRAMConfig) -> tuple[DigitCanvas, DigitCanvas]:
    """(train, test) placements of cfg.dataset at cfg.canvas px, images in [0, 1]; both follow the seed
    (test digits are the held-out ones)."""
    data = dict(canvas=cfg.canvas, scale_range=cfg.digit_scale, seed=cfg.seed)
    name = cfg.dataset
    if is_idx_folder(name):  # real MNIST: §5.1 placements of its 60,000 / 10,000 digits
        name, data["mnist"] = "translated-scaled-mnist", name
    return (build_dataset(name, "train", n=cfg.train_size, **data),
            build_dataset(name, "test", n=cfg.test_size, **data))


def run(cfg: WSRAMConfig, output_dir: str) -> dict[str, float]:
    """Train, then Table 1's test error and the Fig. 2 summaries (core.cli.run_paper writes them)."""
    train_set, test_set = build_datasets(cfg)
    model = build_model(cfg)
    if cfg.standardize_images:  # a buffer of the model, so checkpoints and evaluate.py carry it
        model.set_pixel_stats(*pixel_stats(train_set))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loop = LoopConfig(max_steps=cfg.max_steps, batch_size=micro_batch(cfg.batch_size), seed=cfg.seed,
                      checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every,
                      log_every=cfg.log_every, output_dir=output_dir)
    metrics = train(loop, model, optimizer, train_set, make_step_fn(cfg, Probes(cfg, train_set)),
                    eval_dataset=test_set, eval_fn=make_eval_fn(cfg))
    if not is_main_process():  # the main process alone holds the log
        return {}
    return summarize(Path(output_dir) / "metrics.jsonl", metrics["test_error"], cfg)


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run_paper(get_config, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    main()
