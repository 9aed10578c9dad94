"""Run one BOED experiment: design near-optimal glimpse sequences and train hard-attention networks with and
without them, or the adaptive-stopping vs low-power-CNN comparison.

    accelerate launch papers/boed/train.py --config cpu [--seed N] [--output-dir DIR] [--set field=value ...]

experiment=supervision (§3-§5, Figs. 2, 5, 6):
  1. train the posterior CNN g on uniformly random glimpse sets of the training images outside the design set;
  2. design `sequences_per_task` sequences per task by Algorithm 1 (retrieval from the database, eq. 2 over
     the whole candidate lattice, greedy), written to DIR/sequences/<task>/<image>.txt in the official format;
  3. train one hard-attention network per (condition, task, replicate) on the same batches: "partial" members
     have the design images supervised (eq. 3), "unsupervised" ones learn by REINFORCE only; the validation
     accuracy of every member is logged every eval_every updates (the Fig. 5 curves).
  Steps 1-2 are skipped when conditions=unsupervised.
experiment=flops (§5, Fig. 7): g as in step 1, its first-step EPE map gives the heuristic supervision of an
  adaptive-stopping network on task `flops_task`; ShuffleNet / MobileNet are trained on the same task at every
  (c, r); thresholds are swept on the test set.
Every sub-training is a core.train run in its own folder (resumable); DIR/metrics.jsonl gathers their logs
(each record tagged with its "stage") and ends with a "summary" record holding the figures' data;
DIR/final_metrics.json holds the flat metrics the reproduction spec checks.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState
from torch.utils.data import Dataset

from core.cli import main_guard, parse_args
from core.errors import UserError
from core.glimpse import lattice_top_left, observation_mask
from core.metrics import count_multiplications, count_parameters, iterations_to_within
from core.results import save_result
from core.runs import begin_run
from core.train import LoopConfig, train
from papers.boed import preprocess
from papers.boed.config import BOEDConfig, get_config
from papers.boed.data import SlotDigits
from papers.boed.design import (
    PosteriorCNN,
    bernoulli_entropy,
    candidate_masks,
    design_sequence,
    expected_posterior_entropy,
    glimpse_hits,
    heuristic_log_probs,
    lattice_index,
    random_glimpses,
    read_sequence,
    write_sequence,
)
from papers.boed.evaluate import (
    adaptive_sweep,
    attention_mults,
    glimpse_coverage,
    hit_rates,
    location_counts,
    marginal_entropy,
    rollout_dataset,
)
from papers.boed.lowpower import LowPowerCNN
from papers.boed.model import build_model, hard_attention_loss

# ----------------------------------------------------------------------------------------------------
# Data


@dataclass
class Split:
    """One split held in memory: uint8 images (N, C, H, W), float labels (N, K) in {0, 1}."""

    images: torch.Tensor
    labels: torch.Tensor
    normalise: bool = False
    boxes: list[torch.Tensor] | None = None  # per task, the (n, 4) boxes deciding it (slot-digits)

    def images_float(self, index=slice(None), design: bool = False) -> torch.Tensor:
        """In [0, 1], or with `normalise` as the official code has it: the design's ImageNet mean/std
        (`design`) or the hard-attention network's (x - 0.5) / 0.5 (papers/boed/preprocess.py)."""
        x = self.images[index].float() / 255
        if not self.normalise:
            return x
        return preprocess.design_input(x) if design else preprocess.hard_attention_input(x)


class Indexed(Dataset):
    """(float image, labels (K,), index) items of a Split, for core.train."""

    def __init__(self, split: Split, indices: torch.Tensor | None = None, design: bool = False):
        self.split, self.design = split, design
        self.indices = torch.arange(len(split.images)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        return self.split.images_float(j, self.design), self.split.labels[j], j


def _slot_split(cfg: BOEDConfig, split: str, n: int) -> Split:
    ds = SlotDigits(split, n, cfg.tasks, cfg.grid, cfg.cell, cfg.seed)
    if ds.image_size != cfg.image_size or cfg.channels != 1:
        raise UserError(f"slot-digits canvases are {ds.image_size} px grey: set image_size={ds.image_size} "
                        f"channels=1")
    return Split(ds.images, ds.labels, boxes=ds.deciding_boxes())


def _hub_split(cfg: BOEDConfig, split: str, n: int) -> Split:
    """A real attribute dataset through core.data.build_dataset (hub id or local folder), one label column per
    task. Like the official code, train / val / test are consecutive ranges of its "train" split (CelebA-HQ:
    27,000 / 500 / 2,500 of 30,000, the first design_size training images being the design set). The retrieval
    database is `database` (labels ignored) or, if empty, the training images outside the design set."""
    from core.data import build_dataset

    if split == "database" and cfg.database:
        ds, offset = build_dataset(cfg.database, "train", image_size=cfg.image_size, channels=cfg.channels), 0
    else:
        ds = build_dataset(cfg.dataset, "train", image_size=cfg.image_size, channels=cfg.channels,
                           label_column=list(cfg.tasks))
        offset = {"train": 0, "val": cfg.train_size, "test": cfg.train_size + cfg.val_size,
                  "database": cfg.design_size}[split]
        if split == "database":
            n = min(n, cfg.train_size - cfg.design_size)
    if len(ds) < offset + n:
        source = cfg.database if split == "database" and cfg.database else cfg.dataset
        raise UserError(f"{source}: the {split} split needs images {offset}..{offset + n - 1}, "
                        f"the dataset has {len(ds)}")
    images = torch.empty(n, cfg.channels, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    labels = torch.zeros(n, len(cfg.tasks))
    for i in range(n):
        image, attrs = ds[offset + i]
        images[i] = (image * 255).round().clamp(0, 255).to(torch.uint8)
        if split != "database":
            labels[i] = (torch.as_tensor(attrs).float().flatten() > 0).float()  # {-1, 1} or {0, 1} attributes
    return Split(images, labels, normalise=True)


def load_data(cfg: BOEDConfig, splits=("train", "val", "test", "database")) -> dict[str, Split]:
    sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size,
             "database": cfg.database_size}
    make = _slot_split if cfg.dataset == "slot-digits" else _hub_split
    return {s: make(cfg, s, sizes[s]) for s in splits}


def members(cfg: BOEDConfig) -> list[tuple[str, int]]:
    """(condition, task) of every member network of the supervision experiment: condition-major, then task,
    each `replicates` times."""
    return [(c, k) for c in cfg.conditions for k in range(len(cfg.tasks)) for _ in range(cfg.replicates)]


# ----------------------------------------------------------------------------------------------------
# Sub-trainings (each a core.train run in its own folder)


def _loop(cfg: BOEDConfig, out: Path, steps: int, batch_size: int, eval_every: int = 0) -> LoopConfig:
    return LoopConfig(max_steps=steps, batch_size=batch_size, seed=cfg.seed,
                      checkpoint_every=cfg.checkpoint_every, eval_every=eval_every, log_every=cfg.log_every,
                      output_dir=str(out), num_workers=cfg.num_workers)


def train_posterior(cfg: BOEDConfig, data: dict[str, Split], out: Path) -> PosteriorCNN:
    """§3: g minimises E[KL(p || g)] = Bernoulli NLL of every task's label, under uniformly random glimpse
    sets (t ~ U{1..T} glimpses at uniform lattice locations), on training images outside the design set."""
    lattice = lattice_top_left(cfg.image_size, cfg.glimpse_size, cfg.lattice)
    size, T = cfg.glimpse_size, cfg.num_glimpses
    g = PosteriorCNN(cfg.channels + 1, len(cfg.tasks), cfg.image_size, cfg.posterior_widths)

    def embed(images):
        top_left = random_glimpses(len(images), T, lattice, size).to(images.device)
        return observation_mask(images, top_left, size)

    def step_fn(model, batch, step):
        images, labels, _ = batch
        if cfg.hflip:  # official: g trains on randomly flipped images (papers/boed/preprocess.py)
            images = preprocess.random_hflip(images)
        logits = model(embed(images))
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        return loss, {"acc": ((logits > 0).float() == labels).float().mean().item()}

    def eval_fn(model, batch):
        images, labels, _ = batch
        logits = model(embed(images))
        nll = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
        return {"nll": nll, "acc": ((logits > 0).float() == labels).float().mean(1)}

    train_set = Indexed(data["train"], torch.arange(cfg.design_size, cfg.train_size), design=True)
    optimizer = torch.optim.Adam(g.parameters(), lr=cfg.posterior_lr)
    metrics = train(_loop(cfg, out, cfg.posterior_steps, cfg.posterior_batch_size), g, optimizer, train_set,
                    step_fn, Indexed(data["val"], design=True), eval_fn)
    g.eval()
    g.val_metrics = metrics
    return g


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


def train_attention(cfg: BOEDConfig, data: dict[str, Split], out: Path, tasks: list[int],
                    supervision: Supervision | None, adaptive: bool = False):
    """One core.train run of len(tasks) member networks (member e learns task tasks[e]); returns the model
    and the validation-accuracy curves {member: (steps, accuracies)}."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, members=len(tasks), adaptive=adaptive)
    task_index = torch.tensor(tasks)

    def step_fn(model, batch, step):
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
        return loss, stats

    def eval_fn(model, batch):  # accuracy averaged over eval_samples sampled glimpse sequences per image
        images, labels, _ = batch
        M = cfg.eval_samples
        logits = model(images.repeat(M, 1, 1, 1))["logits"][..., -1, :]
        y = labels[:, task_index.to(labels.device)].long().repeat(M, 1)
        correct = (logits.argmax(-1) == y).float().view(M, len(images), -1).mean(0)
        return {f"acc_m{e}": correct[:, e] for e in range(len(tasks))}

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    train(_loop(cfg, out, cfg.max_steps, cfg.batch_size, cfg.eval_every), model, optimizer,
          Indexed(data["train"]), step_fn, Indexed(data["val"]), eval_fn)
    rows = read_log(out / "metrics.jsonl")
    curves = {}
    for e in range(len(tasks)):
        pts = [(r["step"], r[f"eval/acc_m{e}"]) for r in rows if f"eval/acc_m{e}" in r]
        curves[e] = ([p[0] for p in pts], [p[1] for p in pts])
    return model, curves


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------------
# Design (Algorithm 1)


@torch.no_grad()
def first_step_epe(cfg: BOEDConfig, g: PosteriorCNN, data: dict[str, Split], device) -> torch.Tensor:
    """EPE_{0,0}(l) for every candidate and task, (L, K): nothing observed, so r_img is the database prior
    (N uniform draws) and the map is the same for every image."""
    lattice = lattice_top_left(cfg.image_size, cfg.glimpse_size, cfg.lattice)
    db = data["database"]
    # Its own generator: every process of a multi-process run must draw the same prior samples.
    generator = torch.Generator().manual_seed(cfg.seed)
    draws = torch.randint(len(db.images), (cfg.num_samples,), generator=generator)
    index, counts = torch.unique(draws, return_counts=True)
    image = torch.zeros(cfg.channels, cfg.image_size, cfg.image_size)
    return expected_posterior_entropy(g, image.to(device), torch.zeros(0, 2, dtype=torch.long, device=device),
                                      lattice.to(device), db.images_float(index, design=True).to(device),
                                      (counts.double() / cfg.num_samples).to(device), cfg.glimpse_size,
                                      cfg.design_chunk).cpu()


@torch.no_grad()
def design_all(cfg: BOEDConfig, g: PosteriorCNN, data: dict[str, Split], epe0: torch.Tensor, out: Path,
               state: PartialState) -> torch.Tensor:
    """Sequences (sequences_per_task, K, T) of lattice indices for the first training images, designed per
    task and image (the process's shard of them; files already written are reused, so a killed run
    resumes)."""
    lattice = lattice_top_left(cfg.image_size, cfg.glimpse_size, cfg.lattice)
    device = state.device
    g = g.to(device)
    masks = candidate_masks((cfg.image_size,) * 2, lattice, cfg.glimpse_size).to(device)
    database = data["database"].images_float(design=True).to(device)
    first = epe0.argmin(0)  # (K,)
    path = lambda k, i: out / "sequences" / cfg.tasks[k] / f"{i}.txt"  # noqa: E731
    jobs = [(k, i) for k in range(len(cfg.tasks)) for i in range(cfg.sequences_per_task)]
    for k, i in jobs[state.process_index::state.num_processes]:
        if path(k, i).exists():
            continue
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + k * 10_007 + i)
        image = data["train"].images_float(i, design=True).to(device)
        chosen, _ = design_sequence(g, image, database, k, lattice.to(device), cfg.glimpse_size,
                                    cfg.num_glimpses, cfg.num_samples, cfg.noise_var, int(first[k]),
                                    generator, cfg.design_chunk, masks)
        write_sequence(path(k, i), lattice[chosen.cpu()])
    state.wait_for_everyone()
    seqs = torch.stack([torch.stack([read_sequence(path(k, i)) for k in range(len(cfg.tasks))])
                        for i in range(cfg.sequences_per_task)])  # (n, K, T, 2) top-left corners
    return lattice_index(seqs, lattice)


@torch.no_grad()
def posterior_after(cfg: BOEDConfig, g: PosteriorCNN, images: torch.Tensor, labels: torch.Tensor,
                    top_left: torch.Tensor, task: int) -> tuple[float, float]:
    """(mean entropy, accuracy) of g's task head given glimpses top_left (n, T, 2) of images (n, C, H, W)."""
    logits = g(observation_mask(images, top_left, cfg.glimpse_size))[:, task]
    return bernoulli_entropy(logits).mean().item(), ((logits > 0).float() == labels).float().mean().item()


# ----------------------------------------------------------------------------------------------------
# Experiments


def summarize_attention(cfg: BOEDConfig, model, curves, data: dict[str, Split],
                        layout: list[tuple[str, int]]) -> tuple[dict, dict]:
    """Per condition: Fig. 5 iteration counts (and their spread over replicates), test accuracy, cost and the
    Fig. 6 glimpse statistics; then the partial / unsupervised comparison."""
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
    iters = [iterations_to_within(curves[e][1], cfg.convergence_eps, curves[e][0])
             for e in range(len(layout))]
    per_glimpse, classifier = attention_mults(cfg, adaptive=False)
    m = {}
    for cond in cfg.conditions:
        sel = [e for e, (c, _) in enumerate(layout) if c == cond]
        p = f"{cond}_"
        m[p + "accuracy"] = out["correct"][:, sel, -1].mean().item()
        m[p + "best_val_acc"] = sum(max(curves[e][1]) for e in sel) / len(sel)
        m[p + "iters_mean"] = sum(iters[e] for e in sel) / len(sel)
        m[p + "coverage"] = glimpse_coverage(out["indices"][:n, sel], lattice, cfg.glimpse_size,
                                             (cfg.image_size, cfg.image_size))
        variances = []
        for k in range(len(cfg.tasks)):
            reps = torch.tensor([float(iters[e]) for e in sel if layout[e][1] == k])
            m[p + f"iters_task{k}"] = reps.mean().item()
            of_task = [e for e in sel if layout[e][1] == k]
            m[p + f"accuracy_task{k}"] = out["correct"][:, of_task, -1].mean().item()
            if len(reps) > 1:
                variances.append(reps.var().item())
        if variances:  # spread of Fig. 5's iteration counts over replicates, averaged over tasks
            m[p + "iters_var"] = sum(variances) / len(variances)
        m[p + "policy_entropy_t1"] = entropy[sel, 0].mean().item()
        m[p + "policy_entropy_later"] = entropy[sel, 1:].mean().item()
        if hits is not None:
            chance = torch.stack([glimpse_hits(lattice, cfg.glimpse_size, test.boxes[tasks[e]]).float().mean()
                                  for e in sel])
            m[p + "policy_hit_t1"] = hits[sel, 0].mean().item()
            m[p + "policy_hit_t1_over_chance"] = (hits[sel, 0] / chance).mean().item()
            m[p + "policy_hit_later"] = hits[sel, 1:].mean().item()
    main_cond = "partial" if "partial" in cfg.conditions else cfg.conditions[0]
    m.update(accuracy=m[main_cond + "_accuracy"], coverage=m[main_cond + "_coverage"],
             glimpses=float(cfg.num_glimpses), mults=float(cfg.num_glimpses * per_glimpse + classifier),
             majority_acc=sum(max(q, 1 - q) for q in test.labels.mean(0).tolist()) / len(cfg.tasks))
    if {"partial", "unsupervised"} <= set(cfg.conditions):
        m["iters_ratio"] = m["unsupervised_iters_mean"] / max(m["partial_iters_mean"], 1.0)
        m["accuracy_gain"] = m["partial_accuracy"] - m["unsupervised_accuracy"]
        if "partial_iters_var" in m:
            m["iters_var_ratio"] = m["unsupervised_iters_var"] / max(m["partial_iters_var"], 1.0)
    figure = {"members": layout, "iters": iters, "curves": {str(e): curves[e] for e in curves},
              "location_counts": counts.tolist()}
    return m, figure


def design_metrics(cfg: BOEDConfig, g: PosteriorCNN, data: dict[str, Split], epe0: torch.Tensor,
                   sequences: torch.Tensor) -> dict[str, float]:
    """Claim (a): how often the design looks at the known deciding region, against chance; and near-optimality
    in the paper's own currency: g's posterior entropy and accuracy after the designed vs random glimpses."""
    lattice = lattice_top_left(cfg.image_size, cfg.glimpse_size, cfg.lattice)
    train_split, K, n = data["train"], len(cfg.tasks), cfg.sequences_per_task
    m = {}
    if train_split.boxes is not None:
        boxes, first = train_split.boxes, epe0.argmin(0)
        def hit(top_left, k):
            return glimpse_hits(top_left, cfg.glimpse_size, boxes[k]).float().mean().item()

        m["first_glimpse_hit_rate"] = sum(hit(lattice[first[k]], k) for k in range(K)) / K
        m["design_hit_rate"] = sum(hit(lattice[sequences[:, k]], k) for k in range(K)) / K
        m["chance_hit_rate"] = sum(hit(lattice, k) for k in range(K)) / K
        m["first_hit_over_chance"] = m["first_glimpse_hit_rate"] / m["chance_hit_rate"]
    images = train_split.images_float(slice(0, n), design=True)  # for g: the design normalisation
    rand_idx = torch.randint(len(lattice), (n, cfg.num_glimpses),
                             generator=torch.Generator().manual_seed(cfg.seed))
    with torch.no_grad():
        stats = [(posterior_after(cfg, g, images, train_split.labels[:n, k], lattice[sequences[:, k]], k),
                  posterior_after(cfg, g, images, train_split.labels[:n, k], lattice[rand_idx], k))
                 for k in range(K)]
    m["posterior_entropy_designed"] = sum(s[0][0] for s in stats) / K
    m["posterior_entropy_random"] = sum(s[1][0] for s in stats) / K
    m["posterior_acc_designed"] = sum(s[0][1] for s in stats) / K
    m["posterior_acc_random"] = sum(s[1][1] for s in stats) / K
    m["posterior_val_acc"] = g.val_metrics["acc"]
    return m


def run_supervision(cfg: BOEDConfig, data: dict[str, Split], out: Path, state: PartialState):
    layout = members(cfg)
    tasks = [k for _, k in layout]
    m, figure, supervision = {}, {}, None
    if "partial" in cfg.conditions:
        g = train_posterior(cfg, data, out / "posterior")
        start = time.perf_counter()
        epe0 = first_step_epe(cfg, g.to(state.device), data, state.device)
        sequences = design_all(cfg, g, data, epe0, out, state)  # (n, K, T)
        figure["design_seconds"] = time.perf_counter() - start
        m.update(design_metrics(cfg, g.cpu(), data, epe0, sequences))
        figure.update(epe_first=epe0.tolist(), sequences=sequences[:50].tolist())
        n = cfg.sequences_per_task
        has = torch.zeros(cfg.train_size, len(cfg.tasks), dtype=torch.bool)
        has[:n] = True
        table = torch.zeros(cfg.train_size, len(cfg.tasks), cfg.num_glimpses, dtype=torch.long)
        table[:n] = sequences
        supervision = Supervision(tasks, cfg.num_glimpses, sequences=table, has_sequence=has,
                                  supervised=[c == "partial" for c, _ in layout])
    model, curves = train_attention(cfg, data, out / "attention", tasks, supervision)
    att, fig = summarize_attention(cfg, model, curves, data, layout)
    return m | att, figure | fig


def train_cnn(cfg: BOEDConfig, data: dict[str, Split], out: Path, arch: str, c: float, r: int) -> dict:
    torch.manual_seed(cfg.seed)
    task = cfg.flops_task
    model = LowPowerCNN(arch, c, r, 2, cfg.channels)

    def step_fn(model, batch, step):
        images, labels, _ = batch
        logits = model(images)
        y = labels[:, task].long()
        return F.cross_entropy(logits, y), {"acc": (logits.argmax(-1) == y).float().mean().item()}

    def eval_fn(model, batch):
        images, labels, _ = batch
        return {"acc": (model(images).argmax(-1) == labels[:, task].long()).float()}

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.cnn_lr)
    loop = _loop(cfg, out, cfg.cnn_steps, cfg.batch_size)
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
    model, curves = train_attention(cfg, data, out / "adaptive", [task], supervision, adaptive=True)
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


EXPERIMENTS = {"supervision": run_supervision, "flops": run_flops}


def gather_logs(out: Path, summary: dict) -> None:
    """DIR/metrics.jsonl: every sub-training's log, each record tagged with its stage, then the summary."""
    lines = []
    for path in sorted(out.rglob("metrics.jsonl")):
        if path.parent == out:
            continue
        stage = path.parent.relative_to(out).as_posix()
        lines += [json.dumps({**r, "stage": stage}) for r in read_log(path)]
    last = max((json.loads(line)["step"] for line in lines), default=0)
    lines.append(json.dumps({"step": last, "stage": "summary", **summary}))
    tmp = out / "metrics.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out / "metrics.jsonl")


def main(argv: list[str] | None = None) -> dict[str, float]:
    cfg, _ = parse_args(get_config, argv, description=__doc__.split("\n")[0])
    torch.manual_seed(cfg.seed)
    state = PartialState()
    out = Path(cfg.output_dir)
    begin_run(cfg, out)
    needs_design = cfg.experiment == "flops" or "partial" in cfg.conditions
    splits = ("train", "val", "test") + (("database",) if needs_design else ())
    data = load_data(cfg, splits)
    start = time.perf_counter()
    metrics, figure = EXPERIMENTS[cfg.experiment](cfg, data, out, state)
    if not state.is_main_process:
        return {}
    final = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
    gather_logs(out, {"experiment": cfg.experiment, "task_names": list(cfg.tasks), "final": final,
                      "image_size": cfg.image_size, "glimpse_size": cfg.glimpse_size, "lattice": cfg.lattice,
                      "wall_seconds": time.perf_counter() - start, **figure})
    save_result(out / "final_metrics.json", final)
    print(json.dumps({"experiment": cfg.experiment, **final}))
    return final


if __name__ == "__main__":
    main_guard(main)
