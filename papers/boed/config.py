"""Named configurations of BOED (Harvey, Teng & Wood, "Near-Optimal Glimpse Sequences for Training Hard
Attention Neural Networks", 2019). "official" = the released PyTorch code (FACTS.md, BOED section).

  celeba-hq   paper scale: CelebA-HQ at 224 px, 40 attribute tasks, 5 glimpses of 16 x 16, 600 designed
              sequences per task, retrieval database given by the user (§3, §5)
  cpu         CPU scale: real MNIST digits in a fixed 3 x 3 layout (SlotDigits), 4 binary tasks, 5 glimpses
              of 8 x 8; same algorithm, smaller data, widths and budgets
  smoke       a few steps of a tiny version, for tests

One train.py runs one of two experiments (`experiment`), so a reproduction spec picks them with --set:
  supervision  §3 design + §4 training of one hard-attention network per task, replicate and condition:
               "partial" (the designed sequences supervise the design images, eq. 3) and "unsupervised"
               (REINFORCE only), side by side on the same batches (Figs. 5 and 6)
  flops        §5 adaptive stopping with heuristic supervision vs low-power CNNs (Fig. 7)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.errors import UserError

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)


@dataclass
class BOEDConfig:
    name: str = "celeba-hq"
    """Name of the config this was built from."""
    seed: int = 0
    """Seeds parameters, data order, glimpse samples and retrieval samples."""
    output_dir: str = "runs/boed/celeba-hq/seed0"
    """Checkpoints, designed sequences, metrics.jsonl and final_metrics.json."""
    experiment: Literal["supervision", "flops"] = "supervision"
    """Which experiment this run performs (module docstring)."""
    conditions: tuple[str, ...] = ("partial", "unsupervised")
    """Training conditions compared in the supervision experiment (Fig. 5 legend); "partial" needs the
    design."""

    # ---- Data (§5; official splits) ----
    dataset: str = "celeba-hq"
    """CelebA-HQ [7] (§5) via core.data.build_dataset (hub id or local folder), or "slot-digits" (CPU
    proxy)."""
    tasks: tuple[str, ...] = CELEBA_ATTRIBUTES
    """The 40 CelebA-HQ attribute tasks (§5, Fig. 5); for slot-digits RULE@CELL (papers/boed/data.py)."""
    image_size: int = 224
    """Images are 224 x 224 (official; FACTS.md)."""
    channels: int = 3
    """RGB faces; the MNIST proxy is grey."""
    grid: int = 3
    """slot-digits only: the canvas is grid x grid cells."""
    cell: int = 16
    """slot-digits only: side of a cell (its digit is resampled to it) in pixels."""
    train_size: int = 27_000
    """Training images of the hard-attention net (official: 27,000 incl. the 2,000 design images)."""
    design_size: int = 2_000
    """The first design_size training images are kept out of the posterior CNN's training and are the ones
    sequences are designed for (official: 2,000)."""
    val_size: int = 500
    """Validation images for the Fig. 5 curves (official: 500)."""
    test_size: int = 2_500
    """Test images (official: 2,500)."""
    database: str = ""
    """Retrieval database for r_img, a hub id or image folder (the paper: 1.5e6 GAN samples, §3); empty: the
    training images outside the design set. slot-digits makes its own database canvases."""
    database_size: int = 1_500_000
    """Images of the retrieval database used (the paper: 1.5e6, §3; must fit in memory as uint8)."""

    # ---- Glimpses (§2, §5) ----
    num_glimpses: int = 5
    """T = 5 glimpses (§5)."""
    glimpse_size: int = 16
    """Glimpses of 16 x 16 pixels (§5)."""
    lattice: int = 50
    """Candidate top-left corners on linspace(0, image_size - glimpse_size - 1, lattice)^2 (official:
    50^2 = 2,500)."""

    # ---- Posterior CNN g (§3, Fig. 4) ----
    posterior_net: Literal["densenet121", "cnn"] = "densenet121"
    """g's architecture: "densenet121" (official: torchvision's DenseNet-121, its first conv widened to the
    mask channel, one sigmoid output per attribute) or "cnn" (ours: the plain CNN of posterior_widths)."""
    posterior_weights: str = ""
    """densenet121 only: a local file (.pth or .safetensors) of torchvision's ImageNet DenseNet-121 state
    dict, which the official g starts from (nothing is downloaded); empty: g trains from scratch."""
    posterior_widths: tuple[int, ...] = (32, 64, 128, 256, 256)
    """posterior_net=cnn: channels of its stride-2 conv stages."""
    posterior_steps: int = 100_000
    """Updates of g on uniformly random glimpse sets (§3; official: Adam 1e-4, batch 64, up to 2,000
    epochs)."""
    posterior_batch_size: int = 64
    """Images per update of g, over all processes (official batch size 64)."""
    posterior_lr: float = 1e-4
    """Official Adam learning rate of g."""

    # ---- Image retrieval r_img and the EPE estimate (§3, eq. 2, Alg. 1) ----
    num_samples: int = 200
    """N, image samples per EPE estimate (official n_p_samples = 200)."""
    noise_var: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0, 80.0)
    """Variance of the Gaussian likelihood of observed pixels given a database image, indexed by the number
    of observed glimpses minus one (official schedule 5, 10, 20, 40, 80, on [-1, 1] pixels)."""
    retrieval_shift: int = 0
    """Database images also enter r_img shifted by up to this many pixels (official: +-4 px; off here by
    default: it multiplies the retrieval cost by the number of shifts)."""
    retrieval_shift_step: int = 1
    """Pixel step of those shifts."""
    retrieval_flip: bool = False
    """Database images also enter r_img mirrored (official: flipped images added)."""
    sequences_per_task: int = 600
    """Near-optimal sequences designed per task (§5: 600)."""
    design_chunk: int = 4096
    """Posterior-CNN inputs per batch in the vectorised EPE (memory knob, no effect on results)."""

    # ---- Hard-attention network (§2, Fig. 1; official architecture) ----
    conv_depth: tuple[int, ...] = (1, 16, 1, 32, 0, 32)
    """Glimpse CNN: (convs, channels) at full, 1/2 and 1/4 glimpse resolution (official --conv_depth
    1-16-1-32-0-32)."""
    fc_hidden: int = 128
    """Glimpse CNN's fully connected layer (official 512 -> 128 -> hidden)."""
    hidden: int = 64
    """GRU state size (official --hidden_size 64)."""
    location_hidden: int = 32
    """Hidden units of the location network and the location embedding (official Linear(.., 32))."""

    # ---- Training with partial supervision (§4, eq. 3; official trainer) ----
    supervision_weight: float = 1.0
    """Weight of the supervised-location log-likelihood, summed over supervised examples and steps
    (official 1.0)."""
    hflip: bool = True
    """Random horizontal flips of unsupervised training images (official); off for the fixed-layout proxy."""
    lr: float = 3e-4
    """Adam learning rate (official --init_lr 3e-4)."""
    batch_size: int = 64
    """Images per update, over all processes (official 64); must divide by the number of processes."""
    max_steps: int = 31_600
    """Updates per task (official 75 epochs of 27,000 images at batch 64)."""
    eval_every: int = 100
    """Updates between validation evaluations, the points of the Fig. 5 curves (official valid_every 100)."""
    eval_samples: int = 5
    """Glimpse sequences sampled per validation/test image, their accuracies averaged (official M = 5)."""
    convergence_eps: float = 0.01
    """Fig. 5: iterations before reaching within 0.01 of the best validation accuracy."""
    grad_probe_steps: tuple[int, ...] = ()
    """Updates at which §5's "variance" is also measured in its other reading, the variance of the gradient
    estimates (ours; multiples of log_every): on every member's current weights and the same fresh batches,
    eq. 3 with the designed sequences vs REINFORCE alone (`GradientProbe`)."""
    grad_probes: int = 16
    """Gradient estimates per objective at each of grad_probe_steps."""
    ema_decay: float = 0.0
    """Also validate an exponential moving average of each net's weights (this decay per update; 0: off) and
    compute the Fig. 5 statistics on its curves too, as `ema_*` (ours: a net's own accuracy moves by more
    than eps between validations at CPU scale; the average moves less, the trained weights stay the
    headline)."""
    replicates: int = 2
    """Independent trainings per task and condition inside one run (different init and glimpse samples):
    the spread of Fig. 5's iteration counts (§5 "variance") is measured over them (ours; the paper gives no
    count)."""
    accuracy_levels: tuple[float, ...] = ()
    """Secondary metric (ours): first update reaching each of these validation accuracies (papers/boed/
    curves.py); empty at paper scale, where 40 attributes have no common level."""
    eval_repeats: int = 4
    """Repeated validations of the final nets with fresh glimpse samples: the measurement part of a curve's
    noise (ours)."""
    bootstrap_draws: int = 2_000
    """Bootstrap resamples of replicate nets for the intervals of the iteration and variance ratios
    (ours)."""
    heatmap_images: int = 2_500
    """Test images whose glimpse locations are accumulated for the Fig. 6 heatmaps."""

    # ---- Adaptive stopping and low-power CNNs (§5, Fig. 7) ----
    flops_task: int = 0
    """Index into `tasks` of the task the Fig. 7 comparison is run on (ours; the paper does not say)."""
    heuristic_scale: float = 1.0
    """Heuristic supervision: each location drawn i.i.d. per step with log p(l) = -scale * EPE_0(l) + const
    (§5; the proportionality constant is not given: ours)."""
    heuristic_fraction: float = 1.0
    """Fraction of each batch given a freshly sampled heuristic sequence (ours; §5 does not say)."""
    stop_thresholds: tuple[float, ...] = (-1.0, 0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 2.0)
    """Thresholds on the predicted accuracy gain of one more glimpse, swept along the Fig. 7 line (ours)."""
    cnns: tuple[str, ...] = (
        "shufflenet:0.01:224", "shufflenet:0.01:160", "shufflenet:0.01:128", "shufflenet:0.01:96",
        "shufflenet:0.05:48", "shufflenet:0.01:48", "mobilenet:0.01:224", "mobilenet:0.01:128",
        "mobilenet:0.01:48")
    """Low-power CNNs as ARCH:c:r, ShuffleNet [9] / MobileNet [12] (v2 designs, plain torch) with channel
    multiplier c at input resolution r: the ShuffleNets of the Fig. 7 legend, MobileNets at matching (c, r)
    (ours)."""
    cnn_steps: int = 31_600
    """Updates per CNN (ours: the hard-attention net's budget)."""
    cnn_lr: float = 1e-3
    """Adam learning rate of the CNNs (ours)."""

    # ---- Runtime ----
    checkpoint_every: int = 1_000
    """Updates between resumable checkpoints of each network."""
    log_every: int = 100
    """Updates between logged training statistics."""
    num_workers: int | None = None
    """DataLoader workers decoding a real dataset once and feeding training (None: one per available core
    less one, at most 8; core.train.data_workers)."""

    def __post_init__(self):
        if self.num_glimpses < 1 or self.glimpse_size < 1 or self.lattice < 1:
            raise UserError("num_glimpses, glimpse_size and lattice must be >= 1")
        if self.glimpse_size >= self.image_size:
            raise UserError(f"glimpse_size {self.glimpse_size} must be smaller than image_size "
                            f"{self.image_size}")
        if len(self.noise_var) < self.num_glimpses - 1 or min(self.noise_var, default=1.0) <= 0:
            raise UserError(f"noise_var needs {self.num_glimpses - 1} positive values (one per observed "
                            "glimpse count)")
        if len(self.conv_depth) != 6:
            raise UserError("conv_depth must be 6 numbers: convs,channels at full, 1/2 and 1/4 glimpse "
                            "resolution")
        if self.glimpse_size % 4:
            raise UserError(f"glimpse_size must be a multiple of 4 (the glimpse CNN halves it twice), "
                            f"got {self.glimpse_size}")
        if not self.conditions or not set(self.conditions) <= {"partial", "unsupervised"} \
                or len(set(self.conditions)) != len(self.conditions):
            raise UserError(f"conditions must be distinct names from partial, unsupervised; got "
                            f"{self.conditions}")
        if not self.tasks:
            raise UserError("tasks must name at least one task")
        if not 0 <= self.flops_task < len(self.tasks):
            raise UserError(f"flops_task must index tasks (0..{len(self.tasks) - 1}), got {self.flops_task}")
        for spec in self.cnns:
            parts = spec.split(":")
            if len(parts) != 3 or not parts[2].isdigit():
                raise UserError(f"cnns entries must be ARCH:c:r (e.g. shufflenet:0.01:48), got {spec!r}")
        if self.sequences_per_task > self.design_size or self.design_size >= self.train_size:
            raise UserError("need sequences_per_task <= design_size < train_size")
        if self.experiment == "supervision" and self.grad_probe_steps and (self.grad_probes < 2 or any(
                s < 1 or s > self.max_steps or s % self.log_every for s in self.grad_probe_steps)):
            raise UserError(f"grad_probe_steps must be multiples of log_every ({self.log_every}) in [1, "
                            f"max_steps] and grad_probes >= 2, got {self.grad_probe_steps}, "
                            f"{self.grad_probes}")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0 <= self.heuristic_fraction <= 1 or self.replicates < 1:
            raise UserError("heuristic_fraction must lie in [0, 1] and replicates be >= 1")
        if self.eval_every < 1 or self.max_steps < 1 or self.eval_samples < 1:
            raise UserError("eval_every, max_steps and eval_samples must be >= 1")
        if self.posterior_weights and self.posterior_net != "densenet121":
            raise UserError("posterior_weights are DenseNet-121 weights: they need posterior_net=densenet121")
        # Checked here, so that a wrong path fails before a run directory is claimed or any data read.
        if self.posterior_weights and not Path(self.posterior_weights).is_file():
            raise UserError(f"posterior_weights: no file at {self.posterior_weights}")


_CONFIGS = {
    "celeba-hq": BOEDConfig(),
    # Same algorithm at CPU scale: a 48 px fixed-layout canvas of 9 real MNIST digits, 4 binary tasks each
    # decided by one known cell, 8 px glimpses on a 10^2 lattice, small widths and budgets; 64 sequences per
    # task = 2.1% of the training images (the paper: 600 of 27,000 = 2.2%). Fig. 5 is measured on 2,000
    # validation images x M = 5 glimpse samples (one evaluation's own noise ~0.003, below eps = 0.01) every
    # 100 updates of 1,500 (the official valid_every), over 5 replicate nets per task and condition: 40
    # member nets in one batched network. The nets' own accuracy moves by ~0.017 between validations, so
    # each validation also scores the weights' moving average (ema_decay 0.98: ~50 updates), which moves by
    # ~0.005. Validation is the largest cost (a 2,000 x 5 evaluation of 40 nets costs as much as ~60
    # updates), hence every 100 updates, not 50.
    "cpu": BOEDConfig(
        name="cpu", dataset="slot-digits", tasks=("odd@0", "ge5@4", "odd@5", "ge5@7"), image_size=48,
        channels=1, train_size=3_000, design_size=200, val_size=2_000, test_size=1_000, database_size=3_000,
        glimpse_size=8, lattice=10, posterior_net="cnn", posterior_widths=(8, 16, 32), posterior_steps=1_500,
        posterior_lr=2e-3, num_samples=16, noise_var=(0.5, 1.0, 2.0, 4.0), sequences_per_task=64,
        conv_depth=(1, 8, 1, 16, 0, 16), fc_hidden=64, hidden=32, hflip=False, lr=3e-3, max_steps=1_500,
        eval_every=100, ema_decay=0.98, grad_probe_steps=(100, 500, 1_500), replicates=5,
        accuracy_levels=(0.8, 0.85, 0.88), eval_repeats=2,
        heatmap_images=1_000,
        heuristic_scale=10.0, stop_thresholds=(-1.0, 0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 2.0),
        cnns=("shufflenet:0.01:24", "shufflenet:0.01:48", "shufflenet:0.05:48", "shufflenet:0.1:48",
              "mobilenet:0.01:24"), cnn_steps=800, cnn_lr=3e-3,
        checkpoint_every=0, log_every=25, num_workers=0),
    "smoke": BOEDConfig(
        name="smoke", dataset="slot-digits", tasks=("odd@0", "ge5@4"), image_size=48, channels=1,
        train_size=256, design_size=8, val_size=64, test_size=64, database_size=128, num_glimpses=3,
        glimpse_size=8, lattice=5, posterior_net="cnn", posterior_widths=(8, 8), posterior_steps=4,
        posterior_lr=1e-3,
        posterior_batch_size=16, num_samples=8, noise_var=(2.0, 4.0), sequences_per_task=4,
        conv_depth=(1, 8, 1, 8, 0, 8), fc_hidden=16, hidden=16, location_hidden=8, hflip=False, lr=1e-3,
        batch_size=16, max_steps=6, eval_every=3, replicates=2, heatmap_images=32, heuristic_scale=10.0,
        stop_thresholds=(0.0, 2.0), cnns=("shufflenet:0.01:24", "mobilenet:0.01:16"), cnn_steps=4,
        eval_samples=2, accuracy_levels=(0.6,), ema_decay=0.9, grad_probe_steps=(3,), grad_probes=2,
        checkpoint_every=3, log_every=3,
        num_workers=0),
}


def get_config(name: str) -> BOEDConfig:
    """A fresh copy of the named config; KeyError if unknown."""
    return dataclasses.replace(_CONFIGS[name])
