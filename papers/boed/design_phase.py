"""The design phase of experiment=supervision (§3, Algorithm 1): train the posterior CNN g, the shared first
step's EPE map, the designed sequences of every task and image, and how good they are (claim (a))."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.utils import gather_object
from torch import nn
from tqdm.auto import tqdm

from core.backbones import build_backbone
from core.backbones.densenet import densenet121_from_imagenet
from core.glimpse import lattice_top_left, observation_mask
from core.runs import read_state_dict
from core.train import train
from papers.boed import preprocess
from papers.boed.config import BOEDConfig
from papers.boed.design import (
    PosteriorCNN,
    bernoulli_entropy,
    candidate_masks,
    design_sequence,
    expected_posterior_entropy,
    glimpse_hits,
    lattice_index,
    random_glimpses,
    read_sequence,
    write_sequence,
)
from papers.boed.splits import Indexed, Split, loop_config, posterior_range


def build_posterior(cfg: BOEDConfig) -> nn.Module:
    """g for cfg: the official DenseNet-121 (from ImageNet weights with posterior_weights, its first conv
    widened by a zero-initialised mask channel) or our plain CNN; one logit per task either way."""
    in_channels, tasks = cfg.channels + 1, len(cfg.tasks)
    if cfg.posterior_net == "cnn":
        return PosteriorCNN(in_channels, tasks, cfg.image_size, cfg.posterior_widths)
    if cfg.posterior_weights:
        return densenet121_from_imagenet(read_state_dict(cfg.posterior_weights), tasks, in_channels)
    return build_backbone("densenet121", num_classes=tasks, in_channels=in_channels)


def train_posterior(cfg: BOEDConfig, data: dict[str, Split], out: Path) -> nn.Module:
    """§3: g minimises E[KL(p || g)] = Bernoulli NLL of every task's label, under uniformly random glimpse
    sets (t ~ U{1..T} glimpses at uniform lattice locations), on training images outside the design set."""
    lattice = lattice_top_left(cfg.image_size, cfg.glimpse_size, cfg.lattice)
    size, T = cfg.glimpse_size, cfg.num_glimpses
    g = build_posterior(cfg)

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

    train_set = Indexed(data["train"], torch.arange(*posterior_range(cfg)), design=True)
    optimizer = torch.optim.Adam(g.parameters(), lr=cfg.posterior_lr)
    loop = loop_config(cfg, out, cfg.posterior_steps, cfg.posterior_batch_size)
    metrics = train(loop, g, optimizer, train_set, step_fn, Indexed(data["val"], design=True), eval_fn)
    g.eval()
    g.val_metrics = metrics
    return g



@torch.no_grad()
def first_step_epe(cfg: BOEDConfig, g: nn.Module, data: dict[str, Split], device) -> torch.Tensor:
    """EPE_{0,0}(l) for every candidate and task, (L, K): nothing observed, so r_img is the database prior
    (N uniform draws) and the map is the same for every image."""
    lattice = lattice_top_left(cfg.image_size, cfg.glimpse_size, cfg.lattice)
    db = data["database"].database(cfg, device)
    # Its own generator: every process of a multi-process run must draw the same prior samples.
    generator = torch.Generator().manual_seed(cfg.seed)
    draws = torch.randint(len(db), (cfg.num_samples,), generator=generator)
    index, counts = torch.unique(draws, return_counts=True)
    image = torch.zeros(cfg.channels, cfg.image_size, cfg.image_size)
    return expected_posterior_entropy(g, image.to(device), torch.zeros(0, 2, dtype=torch.long, device=device),
                                      lattice.to(device), db.get(index),
                                      (counts.double() / cfg.num_samples).to(device), cfg.glimpse_size,
                                      cfg.design_chunk).cpu()


@torch.no_grad()
def design_all(cfg: BOEDConfig, g: nn.Module, data: dict[str, Split], epe0: torch.Tensor, out: Path,
               state: PartialState) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """Sequences (sequences_per_task, K, T) of lattice indices for the first training images, designed per
    task and image (the process's shard of them; files already written are reused, so a killed run
    resumes), and per searched step the mean distinct posterior samples and effective sample size of the
    retrieval weights over the sequences designed by this run (a collapse onto one completion shows as ~1)."""
    lattice = lattice_top_left(cfg.image_size, cfg.glimpse_size, cfg.lattice)
    device = state.device
    g = g.to(device)
    masks = candidate_masks((cfg.image_size,) * 2, lattice, cfg.glimpse_size).to(device)
    database = data["database"].database(cfg, device)
    first = epe0.argmin(0)  # (K,)
    log: list[dict] = []
    path = lambda k, i: out / "sequences" / cfg.tasks[k] / f"{i}.txt"  # noqa: E731
    jobs = [(k, i) for k in range(len(cfg.tasks)) for i in range(cfg.sequences_per_task)]
    for k, i in tqdm(jobs[state.process_index::state.num_processes], desc="design", dynamic_ncols=True,
                     disable=not state.is_local_main_process):
        if path(k, i).exists():
            continue
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + k * 10_007 + i)
        image = data["train"].images_float(i, design=True).to(device)
        chosen, _ = design_sequence(g, image, database, k, lattice.to(device), cfg.glimpse_size,
                                    cfg.num_glimpses, cfg.num_samples, cfg.noise_var, int(first[k]),
                                    generator, cfg.design_chunk, masks, log)
        write_sequence(path(k, i), lattice[chosen.cpu()])
    log = gather_object(log) if state.num_processes > 1 else log
    steps = sorted({r["t"] for r in log})
    stats = {name: [sum(r[name] for r in log if r["t"] == t) / sum(r["t"] == t for r in log) for t in steps]
             for name in ("distinct", "ess")}
    state.wait_for_everyone()
    seqs = torch.stack([torch.stack([read_sequence(path(k, i)) for k in range(len(cfg.tasks))])
                        for i in range(cfg.sequences_per_task)])  # (n, K, T, 2) top-left corners
    return lattice_index(seqs, lattice), {"steps": steps, **stats}


@torch.no_grad()
def posterior_after(cfg: BOEDConfig, g: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    top_left: torch.Tensor, task: int) -> tuple[float, float]:
    """(mean entropy, accuracy) of g's task head given glimpses top_left (n, T, 2) of images (n, C, H, W)."""
    logits = g(observation_mask(images, top_left, cfg.glimpse_size))[:, task]
    return bernoulli_entropy(logits).mean().item(), ((logits > 0).float() == labels).float().mean().item()



def design_metrics(cfg: BOEDConfig, g: nn.Module, data: dict[str, Split], epe0: torch.Tensor,
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
