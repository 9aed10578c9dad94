"""experiment=supervision (§4-§5, Figs. 5 and 6): hard-attention nets trained with and without the designed
sequences side by side, and the Fig. 5 / Fig. 6 statistics."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from accelerate import PartialState

from core.metrics import GradientVariance, correct
from core.train import train, unwrap
from papers.boed.config import BOEDConfig
from papers.boed.curves import bootstrap_ratios, curve_stats, pooled_variance, ratios
from papers.boed.design import (
    glimpse_hits,
)
from papers.boed.design_phase import design_all, design_metrics, first_step_epe, train_posterior
from papers.boed.evaluate import (
    attention_mults,
    evaluation_repeat_sd,
    glimpse_coverage,
    hit_rates,
    location_counts,
    marginal_entropy,
    region_entropies,
    rollout_dataset,
)
from papers.boed.model import build_model, hard_attention_loss
from papers.boed.splits import Indexed, Split, loop_config, members, read_log


class Supervision:
    """Glimpse locations forced on some (example, member) pairs: designed sequences (§4, on the design images
    of "partial" members) or heuristic draws from the first-step EPE map (§5, on a random `fraction` of the
    examples). Called with the batch's dataset indices, returns (forced (B, E, T) lattice indices,
    force (B, E))."""

    def __init__(self, tasks: list[int], num_glimpses: int, sequences: torch.Tensor | None = None,
                 has_sequence: torch.Tensor | None = None, supervised: list[bool] | None = None,
                 heuristic: torch.Tensor | None = None, fraction: float = 1.0):
        self.tasks = torch.tensor(tasks)
        self.T = num_glimpses
        self.sequences, self.has_sequence = sequences, has_sequence  # (N, K, T), (N, K)
        self.supervised = torch.tensor(supervised if supervised is not None else [True] * len(tasks))
        self.heuristic, self.fraction = heuristic, fraction  # (K, L) log-probabilities

    def __call__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, E = len(index), len(self.tasks)
        if self.sequences is not None:
            idx = index.cpu()
            force = self.has_sequence[idx][:, self.tasks] & self.supervised
            return self.sequences[idx][:, self.tasks].to(index.device), force.to(index.device)
        probs = self.heuristic[self.tasks].exp()  # (E, L)
        draws = torch.multinomial(probs.repeat(B, 1), self.T, replacement=True).view(B, E, self.T)
        force = (torch.rand(B, E) < self.fraction) & self.supervised
        return draws.to(index.device), force.to(index.device)


def _task_index(cfg: BOEDConfig, tasks: list[int] | None) -> torch.Tensor:
    return torch.tensor(tasks if tasks is not None else [k for _, k in members(cfg)])


class GradientProbe:
    """§5's "variance" in its second reading, the variance of the gradient estimates (ours; the stored
    headline reads it as the spread of the iteration counts over replicate nets). At one update, on the
    current weights of every member (shared parameters), `grad_probes` estimates of eq. 3's gradient on the
    same fresh training batches: with the designed sequences forced where a partial member has one (the
    partially supervised objective) and with REINFORCE alone. Each is the trace of the estimates' covariance
    over the squared norm of their mean. Runs under its own RNG and restores the BN statistics it touches,
    so probing never changes training."""

    def __init__(self, cfg: BOEDConfig, train_set: Indexed, tasks: list[int], supervision: Supervision):
        partial = Supervision(supervision.tasks.tolist(), supervision.T, supervision.sequences,
                              supervision.has_sequence)  # the designed sequences on every member
        self.objectives = {"partial": make_step_fn(cfg, tasks, partial),
                           "unsupervised": make_step_fn(cfg, tasks)}
        self.cfg, self.train_set = cfg, train_set

    def __call__(self, model, step: int) -> dict[str, float]:
        cfg, device = self.cfg, next(model.parameters()).device
        buffers = [b.clone() for b in model.buffers()]
        params = [p for p in model.parameters() if p.requires_grad]
        batches = torch.randint(len(self.train_set), (cfg.grad_probes, cfg.batch_size),
                                generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))
        stats = {}
        for name, step_fn in self.objectives.items():
            variance = GradientVariance()
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(cfg.seed * 1_000_003 + step)  # the same glimpse draws for both objectives
                for index in batches:
                    items = [self.train_set[int(i)] for i in index]
                    batch = (torch.stack([x for x, _, _ in items]).to(device),
                             torch.stack([y for _, y, _ in items]).to(device), index.to(device))
                    loss, _ = step_fn(model, batch, step)
                    variance.update(torch.autograd.grad(loss, params, allow_unused=True,
                                                        materialize_grads=True))
            stats[f"gvar_{name}"] = variance.total_variance() / variance.mean_squared_norm()
        for b, saved in zip(model.buffers(), buffers, strict=True):
            b.copy_(saved)
        return stats


def make_step_fn(cfg: BOEDConfig, tasks: list[int] | None = None, supervision: Supervision | None = None,
                 probe: GradientProbe | None = None):
    """step_fn(model, batch, step) -> (loss, stats) for core.train of len(tasks) member networks (member e
    learns task tasks[e]; default: every member of the supervision experiment) on batches (images, labels
    (B, all tasks), dataset indices); `supervision` forces the locations of some (example, member) pairs;
    `probe` runs at cfg.grad_probe_steps."""
    task_index = _task_index(cfg, tasks)

    def step_fn(model, batch, step):
        # Before this step's forward: the probe restores BN statistics that the forward's graph holds.
        probed = probe(unwrap(model), step) if probe is not None and step in cfg.grad_probe_steps else {}
        images, labels, index = batch
        y = labels[:, task_index.to(labels.device)].long()
        forced = force = None
        if supervision is not None:
            forced, force = supervision(index)
        if cfg.hflip:  # official: random flips of images without a supervision sequence
            flip = torch.rand(len(images), device=images.device) < 0.5
            if force is not None:
                flip &= ~force.any(1)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if force is None:
            force = torch.zeros_like(y, dtype=torch.bool)
        loss, stats = hard_attention_loss(model(images, forced, force), y, force, cfg.supervision_weight)
        stats["supervised_frac"] = force.float().mean().item()
        return loss, stats | probed

    return step_fn


def make_eval_fn(cfg: BOEDConfig, tasks: list[int] | None = None):
    """eval_fn(model, batch) -> {acc_m<e>: per-image accuracy of member e, averaged over eval_samples sampled
    glimpse sequences}; tasks as in make_step_fn."""
    task_index = _task_index(cfg, tasks)

    def eval_fn(model, batch):
        images, labels, _ = batch
        M = cfg.eval_samples
        logits = model(images.repeat(M, 1, 1, 1))["logits"][..., -1, :]
        y = labels[:, task_index.to(labels.device)].long().repeat(M, 1)
        hits = correct(logits, y).view(M, len(images), -1).mean(0)
        return {f"acc_m{e}": hits[:, e] for e in range(len(task_index))}

    return eval_fn


def train_attention(cfg: BOEDConfig, data: dict[str, Split], out: Path, tasks: list[int],
                    supervision: Supervision | None, adaptive: bool = False):
    """One core.train run of len(tasks) member networks (member e learns task tasks[e]); returns the model
    and the validation-accuracy curves {member: (steps, accuracies)} of its weights and (with ema_decay) of
    their moving average (else None), and the GradientProbe results {step: {objective: variance}}."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, members=len(tasks), adaptive=adaptive)
    probe = GradientProbe(cfg, Indexed(data["train"]), tasks, supervision) \
        if cfg.grad_probe_steps and supervision is not None and supervision.sequences is not None else None
    step_fn, eval_fn = make_step_fn(cfg, tasks, supervision, probe), make_eval_fn(cfg, tasks)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ema_decay = 0.0 if adaptive else cfg.ema_decay
    train(loop_config(cfg, out, cfg.max_steps, cfg.batch_size, cfg.eval_every, ema_decay), model, optimizer,
          Indexed(data["train"]), step_fn, Indexed(data["val"]), eval_fn)
    rows = read_log(out / "metrics.jsonl")

    def read_curves(prefix: str) -> dict[int, tuple[list[int], list[float]]]:
        curves = {}
        for e in range(len(tasks)):
            pts = [(r["step"], r[f"{prefix}/acc_m{e}"]) for r in rows if f"{prefix}/acc_m{e}" in r]
            curves[e] = ([p[0] for p in pts], [p[1] for p in pts])
        return curves

    gradient = {r["step"]: {k[5:]: v for k, v in r.items() if k.startswith("gvar_")} for r in rows
                if any(k.startswith("gvar_") for k in r)}
    return model, read_curves("eval"), read_curves("eval_ema") if ema_decay else None, gradient



def curve_metrics(cfg: BOEDConfig, curves, layout: list[tuple[str, int]]) -> tuple[dict, list[dict]]:
    """The Fig. 5 statistics of one set of validation curves: per condition the paper's counts (mean, per
    task, spread over replicates), the curves' plateau SD and truncated counts, the secondary fixed-accuracy
    times; then the unsupervised / partial ratios with their bootstrap intervals. Also the per-net rows."""
    stats = curve_stats(curves, cfg.convergence_eps, cfg.max_steps, cfg.accuracy_levels)
    iters = [r["iters"] for r in stats]
    m, counts_by = {}, {}
    for cond in cfg.conditions:
        sel = [e for e, (c, _) in enumerate(layout) if c == cond]
        p = f"{cond}_"
        m[p + "best_val_acc"] = sum(max(curves[e][1]) for e in sel) / len(sel)
        m[p + "iters_mean"] = sum(iters[e] for e in sel) / len(sel)
        by_task = counts_by[cond] = {k: [iters[e] for e in sel if layout[e][1] == k]
                                     for k in range(len(cfg.tasks))}
        for k, reps in by_task.items():
            m[p + f"iters_task{k}"] = sum(reps) / len(reps)
        if cfg.replicates > 1:  # §5's "variance": over replicate nets of a task, averaged over tasks
            m[p + "iters_var"] = pooled_variance(by_task)
        m[p + "iters_var_all_nets"] = torch.tensor([iters[e] for e in sel]).var().item()
        m[p + "plateau_sd"] = sum(stats[e]["plateau_sd"] for e in sel) / len(sel)
        m[p + "plateau_sd_max"] = max(stats[e]["plateau_sd"] for e in sel)
        m[p + "step_sd"] = sum(stats[e]["step_sd"] for e in sel) / len(sel)
        m[p + "late_count_frac"] = sum(stats[e]["late"] for e in sel) / len(sel)
        for lv in cfg.accuracy_levels:  # secondary: never reached counts as max_steps (a lower bound)
            reached = [stats[e][f"to_{lv:g}"] for e in sel]
            m[p + f"steps_to_{lv:g}"] = sum(cfg.max_steps if r is None else r for r in reached) / len(sel)
            m[p + f"never_{lv:g}_frac"] = sum(r is None for r in reached) / len(sel)
    m.update(plateau_sd=sum(r["plateau_sd"] for r in stats) / len(stats),
             step_sd=sum(r["step_sd"] for r in stats) / len(stats),
             late_count_frac=sum(r["late"] for r in stats) / len(stats))
    if {"partial", "unsupervised"} <= set(cfg.conditions):
        m["iters_ratio"], var_ratio = ratios(counts_by["partial"], counts_by["unsupervised"])
        if cfg.replicates > 1:
            m["iters_var_ratio"] = var_ratio
            m.update(bootstrap_ratios(counts_by["partial"], counts_by["unsupervised"], cfg.bootstrap_draws,
                                      cfg.seed))
        m["iters_var_all_nets_ratio"] = (m["unsupervised_iters_var_all_nets"]
                                         / max(m["partial_iters_var_all_nets"], 1.0))
        for lv in cfg.accuracy_levels:
            m[f"steps_to_{lv:g}_ratio"] = (m[f"unsupervised_steps_to_{lv:g}"]
                                           / max(m[f"partial_steps_to_{lv:g}"], 1.0))
    return m, stats


def summarize_attention(cfg: BOEDConfig, model, curves, ema_curves, data: dict[str, Split],
                        layout: list[tuple[str, int]]) -> tuple[dict, dict]:
    """Per condition: Fig. 5 iteration counts (and their spread over replicates) of the trained weights and,
    given ema_curves, of their moving average (`ema_*`), test accuracy, cost and the Fig. 6 glimpse
    statistics; then the partial / unsupervised comparison."""
    test = data["test"]
    tasks = [k for _, k in layout]
    out = rollout_dataset(model, test.images_float(), test.labels[:, tasks].long(), seed=cfg.seed,
                          samples=cfg.eval_samples)
    n = min(cfg.heatmap_images, len(test.images))
    counts = location_counts(out["indices"][:n], len(model.lattice))  # (E, T, L)
    entropy = marginal_entropy(counts)  # (E, T)
    lattice = model.lattice.cpu()
    hits = None if test.boxes is None else hit_rates(out["indices"], lattice, cfg.glimpse_size,
                                                     [test.boxes[k] for k in tasks])
    m, stats = curve_metrics(cfg, curves, layout)
    figure = {"members": layout, "iters": [int(r["iters"]) for r in stats],
              "curves": {str(e): curves[e] for e in curves}, "curve_stats": stats}
    if ema_curves is not None:
        ema, ema_stats = curve_metrics(cfg, ema_curves, layout)
        m.update({f"ema_{k}": v for k, v in ema.items()})
        figure.update(ema_curves={str(e): ema_curves[e] for e in ema_curves}, ema_curve_stats=ema_stats)
    val = data["val"]
    repeat_sd = evaluation_repeat_sd(model, val.images_float(), val.labels[:, tasks].long(), cfg.eval_repeats,
                                     cfg.eval_samples, cfg.seed)
    per_glimpse, classifier = attention_mults(cfg, adaptive=False)
    for cond in cfg.conditions:
        sel = [e for e, (c, _) in enumerate(layout) if c == cond]
        p = f"{cond}_"
        m[p + "accuracy"] = out["correct"][:, sel, -1].mean().item()
        m[p + "coverage"] = glimpse_coverage(out["indices"][:n, sel], lattice, cfg.glimpse_size,
                                             (cfg.image_size, cfg.image_size))
        for k in range(len(cfg.tasks)):
            of_task = [e for e in sel if layout[e][1] == k]
            m[p + f"accuracy_task{k}"] = out["correct"][:, of_task, -1].mean().item()
        m[p + "eval_repeat_sd"] = repeat_sd[sel].mean().item()
        m[p + "policy_entropy_t1"] = entropy[sel, 0].mean().item()
        m[p + "policy_entropy_later"] = entropy[sel, 1:].mean().item()
        if hits is not None:
            on_region = torch.stack([glimpse_hits(lattice, cfg.glimpse_size, test.boxes[tasks[e]])
                                     for e in sel])
            chance = on_region.float().mean(1)
            within, outside = region_entropies(counts[sel], on_region)
            m[p + "policy_entropy_later_on_region"] = within[:, 1:].mean().item()
            m[p + "policy_entropy_later_off_region"] = outside[:, 1:].mean().item()
            m[p + "policy_hit_t1"] = hits[sel, 0].mean().item()
            m[p + "policy_hit_t1_over_chance"] = (hits[sel, 0] / chance).mean().item()
            m[p + "policy_hit_later"] = hits[sel, 1:].mean().item()
    main_cond = "partial" if "partial" in cfg.conditions else cfg.conditions[0]
    m.update(accuracy=m[main_cond + "_accuracy"], coverage=m[main_cond + "_coverage"],
             glimpses=float(cfg.num_glimpses), mults=float(cfg.num_glimpses * per_glimpse + classifier),
             majority_acc=sum(max(q, 1 - q) for q in test.labels.mean(0).tolist()) / len(cfg.tasks),
             eval_repeat_sd=repeat_sd.mean().item())
    if {"partial", "unsupervised"} <= set(cfg.conditions):
        m["accuracy_gain"] = m["partial_accuracy"] - m["unsupervised_accuracy"]
    figure["location_counts"] = counts.tolist()
    return m, figure


def run_supervision(cfg: BOEDConfig, data: dict[str, Split], out: Path, state: PartialState):
    layout = members(cfg)
    tasks = [k for _, k in layout]
    m, figure, supervision = {}, {}, None
    if "partial" in cfg.conditions:
        g = train_posterior(cfg, data, out / "posterior")
        start = time.perf_counter()
        epe0 = first_step_epe(cfg, g.to(state.device), data, state.device)
        sequences, retrieval = design_all(cfg, g, data, epe0, out, state)  # (n, K, T)
        figure["design_seconds"] = time.perf_counter() - start
        figure["design_retrieval"] = retrieval
        for t, distinct, ess in zip(retrieval["steps"], retrieval["distinct"], retrieval["ess"], strict=True):
            m[f"design_distinct_t{t + 1}"], m[f"design_ess_t{t + 1}"] = distinct, ess
        m.update(design_metrics(cfg, g.cpu(), data, epe0, sequences))
        figure.update(epe_first=epe0.tolist(), sequences=sequences[:50].tolist())
        n = cfg.sequences_per_task
        has = torch.zeros(cfg.train_size, len(cfg.tasks), dtype=torch.bool)
        has[:n] = True
        table = torch.zeros(cfg.train_size, len(cfg.tasks), cfg.num_glimpses, dtype=torch.long)
        table[:n] = sequences
        supervision = Supervision(tasks, cfg.num_glimpses, sequences=table, has_sequence=has,
                                  supervised=[c == "partial" for c, _ in layout])
    model, curves, ema_curves, gradient = train_attention(cfg, data, out / "attention", tasks, supervision)
    att, fig = summarize_attention(cfg, model, curves, ema_curves, data, layout)
    for step, variances in gradient.items():
        for name, value in variances.items():
            att[f"gvar_{name}_s{step}"] = value
    if gradient:  # geometric mean over the probed updates: the variances span decades
        logs = [math.log(v["unsupervised"] / v["partial"]) for v in gradient.values()]
        att["gvar_ratio"] = math.exp(sum(logs) / len(logs))
    fig["gradient_variance"] = {str(k): v for k, v in gradient.items()}
    return m | att, figure | fig
