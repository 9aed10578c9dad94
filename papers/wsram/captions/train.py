"""Train a WS-RAM caption model (§5.2) with VAR or WS-RAM and log the training NLL of Fig. 4.

    accelerate launch papers/wsram/captions/train.py --config cpu [--seed N] [--output-dir D] [--set k=v]

Every update samples M attention sequences (one (layer, location) glimpse per word) per caption and minimises
the selected estimator's surrogate from core.estimators: VAR (eqs. 3-5, `variational_bound_loss`) or WS-RAM
(eqs. 7-8, `wake_sleep_loss`; +q: proposals from the inference network, trained by eq. 14; +c: §4.4). Every
`log_every` updates it logs, for Fig. 4:
  train_nll  per-word NLL of `probe_size` fixed training captions, log p(y | I) estimated with M attention
             sequences from the prior (the inference network never guides it);
  ess        effective sample size of the update's importance weights (eq. 7), in [1, M].
After the last update it captions the test images (greedily, or by beam search: beam_size) for Table 2
(BLEU-1..4) and writes final_metrics.json, including what an image-blind captioner gets (the `*_constant` BLEU
and `unigram_nll`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from core.cli import run_paper
from core.estimators import (
    effective_sample_size,
    normalized_importance_weights,
    variational_bound_loss,
    wake_sleep_loss,
)
from core.runs import is_main_process, load_weights, micro_batch
from core.train import LoopConfig, train, unwrap
from papers.wsram.captions.config import CaptionConfig, get_config
from papers.wsram.captions.evaluate import caption_bleu, caption_nll, make_datasets, trivial_baselines
from papers.wsram.captions.model import build_model
from papers.wsram.train import shared_estimator_stats

POLICY_MODULES = ("policy",)  # the attention over (scale, location): acts only through the glimpse choice


def surrogate_loss(cfg: CaptionConfig, out: dict[str, torch.Tensor]) -> torch.Tensor:
    """The selected estimator's loss for a batch; its gradient is minus the paper's ascent direction."""
    if cfg.estimator == "var":  # eq. 5, samples from the prior
        return variational_bound_loss(out["log_py"], out["log_pa"], control_variate=cfg.control_variates)
    # Eqs. 7-8 (16) with q or the prior as proposal; q's own loss (eq. 14 / 17) moves only q.
    ws = wake_sleep_loss(out["log_py"], out["log_pa"], log_q=out["log_proposal"] if cfg.use_q else None,
                         control_variate=cfg.control_variates)
    return ws.loss


def make_step_fn(cfg: CaptionConfig, probe):
    def step_fn(model, batch, step):
        images, captions, _ = batch
        out = model(images, captions, cfg.num_samples, "q" if cfg.use_q else "prior")
        log_w = (out["log_pa"] + out["log_py"] - out["log_proposal"]).detach()  # eq. 7
        stats = {
            "ess": effective_sample_size(normalized_importance_weights(log_w)).mean().item(),
            # per-word log 1/M sum_m w~^m: the eq. 9 bound with the proposal in use
            "bound_per_word": ((torch.logsumexp(log_w, 0) - math.log(cfg.num_samples)).sum()
                               / out["tokens"].sum()).item(),
        }
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            stats.update(probe(unwrap(model), step))
        return surrogate_loss(cfg, out), stats

    return step_fn


def shared_variance(cfg: CaptionConfig, model, images: torch.Tensor,
                    captions: torch.Tensor) -> dict[str, float]:
    """§5.1's Fig. 2b on the captioner (papers/wsram/train.py `shared_estimator_stats`), on one fixed batch
    at this run's current parameters; q excluded, "policy": the attention over (scale, location)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith("q_")]
    policy = [i for i, (n, _) in enumerate(named) if n.split(".")[0] in POLICY_MODULES]
    return shared_estimator_stats(
        cfg, {"shared_variance_every": 0}, [p for _, p in named], policy,
        lambda vcfg: model(images, captions, cfg.num_samples, "q" if vcfg.use_q else "prior"), surrogate_loss)


def make_probe(cfg: CaptionConfig, dataset):
    """Fig. 4's training NLL on fixed captions and, every shared_variance_every updates, the shared-parameter
    gradient variances (on the first batch of those captions), under their own RNG (so logging never
    changes training)."""
    indices = list(range(min(cfg.probe_size, len(dataset))))

    def probe(model, step: int) -> dict[str, float]:
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            stats = {"train_nll": caption_nll(model, dataset, indices, cfg.num_samples)}
            model.train()
            if cfg.shared_variance_every and (step % cfg.shared_variance_every == 0 or step == cfg.max_steps):
                batch = [dataset[i] for i in indices[:cfg.batch_size]]
                images = torch.stack([b[0] for b in batch]).to(device)
                captions = torch.stack([b[1] for b in batch]).to(device)
                stats.update(shared_variance(cfg, model, images, captions))
        return stats

    return probe, indices


def make_eval_fn(cfg: CaptionConfig):
    def eval_fn(model, batch):
        images, captions, _ = batch
        return {"nll_sum": -model.log_likelihood(images, captions, cfg.num_samples),
                "words": (captions[:, 1:] != 0).sum(1).double()}

    return eval_fn


def summarize(metrics_path: Path, cfg: CaptionConfig) -> dict[str, float]:
    """The Fig. 4 curve at the last update and averaged over the run ("over the first updates")."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    curve = [r for r in rows if "train_nll" in r]
    final = {
        "train_nll": curve[-1]["train_nll"],
        "train_nll_auc": sum(r["train_nll"] for r in curve) / len(curve),
        "ess": sum(r["ess"] for r in curve) / len(curve),
        "steps": float(curve[-1]["step"]),
        "num_samples": float(cfg.num_samples),
    }
    shared = [r for r in rows if "gvar_total_wsram_qc" in r]
    for key in (k for k in (shared[-1] if shared else {}) if k.startswith("gvar_")):  # geometric mean
        final[key] = math.exp(sum(math.log(r[key]) for r in shared) / len(shared))
    for key in (k for k in (shared[-1] if shared else {}) if k.startswith("ess_shared_")):
        final[key] = sum(r[key] for r in shared) / len(shared)
    return final


def run(cfg: CaptionConfig, output_dir: str) -> dict[str, float]:
    """Train, then BLEU, test NLL and the trivial baselines (core.cli.run_paper writes them)."""
    train_set, test_set = make_datasets(cfg)
    model = build_model(cfg, train_set.vocab, test_set[0][0].shape[0])
    if cfg.encoder_weights:  # a pretrained CNN, which the model froze
        load_weights(model.cnn, cfg.encoder_weights)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    loop = LoopConfig(max_steps=cfg.max_steps, batch_size=micro_batch(cfg.batch_size), seed=cfg.seed,
                      checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every,
                      log_every=cfg.log_every, output_dir=output_dir, num_workers=cfg.num_workers)
    probe, probe_indices = make_probe(cfg, train_set)
    metrics = train(loop, model, optimizer, train_set, make_step_fn(cfg, probe),
                    eval_dataset=test_set, eval_fn=make_eval_fn(cfg))
    if not is_main_process():  # the main process alone captions and holds the log
        return {}
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return {**caption_bleu(model, test_set, cfg.bleu_size, beam_size=cfg.beam_size),
                "test_nll": metrics["nll_sum"] / metrics["words"],
                **summarize(Path(output_dir) / "metrics.jsonl", cfg),
                **trivial_baselines(train_set, test_set, probe_indices, cfg.bleu_size)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run_paper(get_config, run, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    main()
