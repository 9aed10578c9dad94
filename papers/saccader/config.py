"""Named configurations of Saccader, its DRAM baseline and the plain CNN baselines.

Sources: paper = Elsayed, Kornblith & Le, "Saccader: Improving Accuracy of Hard Attention Models for
Vision", NeurIPS 2019 (sec. 3, eqs. 1-6, Appendix B tables "Supp.N", Appendix C); "official" = the
released TF1 model code (facts in REFERENCE.md, Saccader and DRAM section). `get_config(name)`:

  imagenet                Saccader: BagNet-77-lowD + attention net + cell  (sec. 3.1, Table Supp.1/5)
  imagenet-bagnet77-lowd  BagNet-77-lowD, logits averaged over locations  (sec. 3.1, Table Supp.2)
  imagenet-resnet-v2-50   ResNet-v2-50 whole-image baseline               (Table Supp.1/2)
  imagenet-dram           DRAM: ResNet-v2-50 glimpse network, 2 LSTMs     (App. C "DRAM", Table Supp.4)
  cpu                     Saccader with a narrower BagNet-lowD on made digit canvases, all three stages
  smoke                   a few steps of a tiny Saccader, all three stages, for tests
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from core.errors import UserError


@dataclass
class SaccaderConfig:
    name: str = "imagenet"
    """Name of the config this was built from."""
    seed: int = 0
    """Random seed (the CLI's --seed)."""

    # ---- Architecture (sec. 3.1, Figs. Supp.4-6, Table Supp.1) ----
    model: Literal["saccader", "bagnet", "resnet", "dram"] = "saccader"
    """Saccader (sec. 3.1), or a baseline of Fig. 3a / Table Supp.1: BagNet-77-lowD, ResNet-v2-50, DRAM."""
    width: float = 1.0
    """Channel multiplier of the CNNs (1.0 = paper, Table Supp.1); CPU scale narrows it, not the design."""
    num_classes: int = 1001
    """ImageNet's 1,000 classes + background (official TF-slim convention behind Table Supp.1's counts)."""
    channels: int = 3
    """Input channels: RGB (sec. 4); the CPU task's digits are grey."""
    image_size: int = 224
    """Input resolution: ImageNet 224 x 224 (sec. 4, Table Supp.2-5)."""
    attention_network: bool = True
    """Ablation of Fig. Supp.3: False drops the attention ("where") network; F mixes the what features only.
    (The paper does not say what replaces it; this is our choice.)"""
    dram_glimpse: int = 77
    """DRAM's high-resolution glimpse side, also every field of view's resized side (App. C "DRAM")."""
    dram_resolutions: int = 3
    """DRAM's fields of view, linearly spaced from 77/224 to the whole image (App. C "DRAM")."""
    dram_std: float = 0.1
    """Std of DRAM's Gaussian location policy (App. C "DRAM")."""

    # ---- Data ----
    dataset: str = "imagenet"
    """ImageNet ILSVRC 2012 (sec. 3.2), read by core.data.build_dataset; "digits" = the CPU task."""
    train_split: str = "train"
    """Training split (sec. 3.2 trains on a training subset of ILSVRC 2012 train)."""
    eval_split: str = "validation"
    """Evaluation split: the ILSVRC 2012 validation set (sec. 3.2)."""
    train_size: int = 0
    """CPU task only: number of made training images."""
    eval_size: int = 0
    """CPU task only: number of made test images (held-out digits)."""
    digit_scale: tuple[float, float] = (1.0, 1.0)
    """CPU task only: digit side = 28 px x a log-uniform factor in this range."""
    num_clutter: int = 0
    """CPU task only: random digit fragments scattered over the canvas."""
    clutter_size: int = 12
    """CPU task only: side of each clutter fragment (px)."""

    # ---- Training: three stages, each SGD + Nesterov 0.9, cosine schedule with linear warm-up (App. C) ----
    stages: tuple[str, ...] = ("representation", "location", "policy")
    """Stages in order (sec. 3.2): eq. 4 (representation), eq. 5 (location pretraining), eq. 6 (policy)."""
    location_pretraining: bool = True
    """Ablation of Fig. Supp.3 ("no pretraining", Table Supp.5 ***): False skips the eq. 5 stage."""
    batch_size: int = 1024
    """Batch size 1024 for Saccader (Table Supp.5); CNN baselines 2048 (Table Supp.2)."""
    epochs: float = 120
    """Every stage trains for 120 epochs (sec. 3.2, Tables Supp.2-5)."""
    steps_per_stage: int = 0
    """Optimiser updates per stage (0 = from `epochs`); CPU scale sets it directly."""
    warmup_epochs: float = 10
    """Linear warm-up length of the cosine schedule, 10 epochs (App. C)."""
    momentum: float = 0.9
    """Nesterov momentum 0.9 (sec. 3.2, App. C)."""
    lr_representation: float = 0.5
    """BagNet-77-lowD pretraining learning rate 0.5 (Table Supp.2)."""
    lr_location: float = 0.2
    """Location pretraining (eq. 5) learning rate 0.2 (Table Supp.5 *)."""
    lr_policy: float = 0.01
    """Full Saccader training (eq. 6) learning rate 0.01 (Table Supp.5 **)."""
    l2: float = 8e-5
    """lambda of eqs. 4 and 6, L2 on the representation network (Tables Supp.2, Supp.5)."""
    l2_location: float = 8e-5
    """nu of eq. 6, L2 on the location weights (Table Supp.5 **); eq. 5 uses nu = 0 (Table Supp.5 *)."""
    pretrain_glimpses: int = 12
    """T = 12 glimpses of eq. 5 (sec. 3.2)."""
    train_glimpses: int = 6
    """T = 6 glimpses of eq. 6 (sec. 3.2)."""
    mc_samples: int = 2
    """S = 2 sampled trajectories per image in eq. 6 (sec. 3.2)."""
    eval_glimpses: tuple[int, ...] = (1, 2, 4, 6, 8, 12, 16)
    """Glimpse counts evaluated (x axis of Fig. 3a)."""
    eval_policies: tuple[str, ...] = ("learned", "ordered_logits", "random", "sobel_mean", "sobel_var")
    """Location policies compared in Fig. 3a (sec. 4.1)."""

    # ---- Bookkeeping ----
    eval_every: int = 0
    """Evaluate every this many steps within a stage (0: at each stage's end)."""
    log_every: int = 10
    """Log training statistics every this many steps."""
    checkpoint_every: int = 1000
    """Checkpoint every this many steps (0: only at the end of each stage)."""
    num_workers: int = 0
    """DataLoader worker processes."""
    eval_batch_size: int = 0
    """Batch size of the final policy evaluation (0 = batch_size)."""

    def __post_init__(self):
        unknown = set(self.stages) - {"representation", "location", "policy"}
        if unknown:
            raise UserError(f"unknown stages {sorted(unknown)}; use representation, location, policy")
        if min(self.pretrain_glimpses, self.train_glimpses, self.mc_samples, self.batch_size) < 1:
            raise UserError("pretrain_glimpses, train_glimpses, mc_samples and batch_size must be >= 1")
        if not self.width > 0:
            raise UserError(f"width must be > 0, got {self.width}")


CONFIGS: dict[str, dict] = {
    "imagenet": {},
    "imagenet-bagnet77-lowd": dict(model="bagnet", stages=("representation",), batch_size=2048),
    "imagenet-resnet-v2-50": dict(model="resnet", stages=("representation",), batch_size=2048,
                                  lr_representation=0.9),
    # Table Supp.4: full DRAM training at lr 0.01, batch 1024; its two pretraining stages are not built here.
    "imagenet-dram": dict(model="dram", stages=("policy",), lr_policy=0.01, l2_location=0.0),
    # CPU scale: one real MNIST digit among clutter on a 128 px canvas; BagNet-lowD at 1/8 width sees
    # 7 x 7 = 49 locations 8 px apart, each with the paper's 77 px receptive field.
    "cpu": dict(dataset="digits", width=0.125, num_classes=10, channels=1, image_size=128,
                train_size=4096, eval_size=512, digit_scale=(0.9, 1.2), num_clutter=12, clutter_size=12,
                batch_size=32, steps_per_stage=150, lr_representation=0.1, lr_location=0.05,
                lr_policy=0.01, pretrain_glimpses=12, train_glimpses=2, eval_glimpses=(1, 2, 4),
                log_every=10, checkpoint_every=0),
    "smoke": dict(dataset="digits", width=0.0625, num_classes=10, channels=1, image_size=96,
                  train_size=32, eval_size=8, num_clutter=4, batch_size=4, steps_per_stage=2,
                  lr_representation=0.05, lr_location=0.05, pretrain_glimpses=4, train_glimpses=2,
                  eval_glimpses=(1, 2), log_every=1, checkpoint_every=0),
}


def get_config(name: str) -> SaccaderConfig:
    """A fresh config by name; KeyError for unknown names (the CLI turns it into a one-line error)."""
    if name not in CONFIGS:
        raise KeyError(name)
    return dataclasses.replace(SaccaderConfig(name=name), **CONFIGS[name])
