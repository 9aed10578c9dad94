"""Named configurations of Saccader, its DRAM baseline and the plain CNN baselines.

Sources: paper = Elsayed, Kornblith & Le, "Saccader: Improving Accuracy of Hard Attention Models for
Vision", NeurIPS 2019 (sec. 3, eqs. 1-6, Appendix B tables "Supp.N", Appendix C); "official" = the
released TF1 model code (facts in FACTS.md, Saccader and DRAM section). `get_config(name)`:

  imagenet                Saccader: BagNet-77-lowD + attention net + cell, 3 stages (sec. 3, Table Supp.5)
  imagenet-bagnet77-lowd  BagNet-77-lowD, logits averaged over locations (sec. 3.1, Table Supp.2)
  imagenet-resnet-v2-50   ResNet-v2-50 whole-image baseline (Table Supp.1/2)
  imagenet-dram           DRAM: ResNet-v2-50 glimpse network, 2 LSTMs, 2 pretraining stages + hybrid loss
                          (App. C "DRAM model", Table Supp.4)
  cpu, cpu-dram           the CPU-scale reproduction (digit-pair canvases, narrow networks): Saccader with
                          its ablations, policies and occlusion analysis; DRAM on the same task
  smoke, smoke-dram       a few steps of each, for tests
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from core.errors import UserError

STAGES = {  # stages each model can run, in order
    "saccader": ("representation", "location", "policy"),
    "bagnet": ("representation",),
    "resnet": ("representation",),
    "dram": ("pretrain_wide", "pretrain_narrow", "policy"),
}
VARIANTS = ("saccader", "no_location_pretraining", "no_attention_network")
RECEPTIVE_FIELD = 77  # BagNet-77-lowD's receptive field: one glimpse is one location's patch (sec. 3.1)


@dataclass(frozen=True)
class Stage:
    """One training stage: SGD with Nesterov momentum from `lr`, a linear warm-up and a cosine decay (App. C).
    Set from the command line with dots: `--set policy.lr=3e-4 --set policy.steps=120`."""
    lr: float
    """Peak learning rate (after the warm-up)."""
    steps: int = 0
    """Optimiser updates (0: the config's `epochs` epochs); the CPU scale sets steps directly."""


@dataclass
class SaccaderConfig:
    name: str = "imagenet"
    """Name of the config this was built from."""
    seed: int = 0
    """Random seed (the CLI's --seed)."""

    # ---- Architecture (sec. 3.1, Figs. Supp.4-6, Table Supp.1, App. C) ----
    model: Literal["saccader", "bagnet", "resnet", "dram"] = "saccader"
    """Saccader (sec. 3.1), or a baseline of Fig. 3a / Table Supp.1: BagNet-77-lowD, ResNet-v2-50, DRAM."""
    width: float = 1.0
    """Channel multiplier of every CNN and of DRAM's LSTMs (1.0 = paper, Table Supp.1)."""
    num_classes: int = 1001
    """ImageNet's 1,000 classes + background (official TF-slim convention behind Table Supp.1's counts)."""
    channels: int = 3
    """Input channels: RGB (sec. 4); the CPU task's digits are grey."""
    image_size: int = 224
    """Input resolution: ImageNet 224 x 224 (sec. 4, Tables Supp.2-5)."""
    dram_glimpse: int = 77
    """DRAM's high-resolution glimpse side, also every field of view's resized side (App. C "DRAM")."""
    dram_resolutions: int = 3
    """DRAM's fields of view, linearly spaced from 77/224 to the whole image (App. C "DRAM")."""
    dram_std: float = 0.1
    """Std of DRAM's Gaussian location policy (App. C "DRAM")."""
    resnet_bn_decay: float = 0.997
    """Moving-average decay of ResNet-v2-50's BN statistics (DRAM's glimpse network, the occlusion
    classifier, the patch classifier): TF-slim's 0.997, made for 120 epochs; CPU scale, a few hundred
    updates, uses 0.9."""

    # ---- Data ----
    dataset: str = "imagenet"
    """ImageNet ILSVRC 2012 (sec. 3.2) via core.data.build_dataset; "digit-pairs" = the CPU task."""
    train_split: str = "train"
    """Training split (sec. 3.2 trains on a training subset of ILSVRC 2012 train)."""
    eval_split: str = "validation"
    """Evaluation split: the ILSVRC 2012 validation set (sec. 3.2)."""
    train_size: int = 0
    """CPU task only: number of made training canvases."""
    eval_size: int = 0
    """CPU task only: number of made test canvases (held-out digits)."""
    key_digits: tuple[int, ...] = (0, 1, 2, 3, 4)
    """CPU task only: digit classes whose unordered pair is the label (C(5, 2) = 10 classes)."""
    num_distractors: int = 1
    """CPU task only: digits of other classes on each canvas (parts that do not matter)."""
    num_clutter: int = 8
    """CPU task only: random digit fragments scattered over each canvas."""
    clutter_size: int = 10
    """CPU task only: side of each clutter fragment (px)."""
    min_separation: int = 50
    """CPU task only: Chebyshev distance between digits' corners: 28 + 50 > 77, one receptive field
    never holds two whole digits."""
    margin: int = 24
    """CPU task only: digits stay this far from the edges, inside the span of the 77 px receptive
    fields' centres (38.5 px from the edge with valid convs)."""
    digit_scale: float = 0.0
    """Made tasks other than digit-pairs: every digit's side is 28 x digit_scale px (core.data's
    scale_range); 0: the task's own. reproductions/saccader-dram.toml tests DRAM on 70 px digits, most of
    which its 77 px view holds wherever a random glimpse lands."""
    standardize_images: bool = False
    """Made tasks only: shift and scale the canvases to zero mean and unit variance over the training
    pixels. DRAM's coordinate channels (official: linspace(-1, 1)) carry more spatial variance than a
    sparse digit canvas in [-1, 1] (pixel std 0.18-0.25), and DRAM's glimpse network then stays at chance
    (papers/saccader/README.md); ImageNet images are not sparse and keep the official [-1, 1]."""

    # ---- Training: every stage SGD + Nesterov 0.9, cosine schedule with linear warm-up (App. C) ----
    stages: tuple[str, ...] = ("representation", "location", "policy")
    """Stages in order. Saccader (sec. 3.2): eq. 4 representation, eq. 5 location pretraining, eq. 6
    policy. DRAM (App. C): pretraining on wide then 77 px fields of view, then the hybrid loss."""
    variants: tuple[str, ...] = ("saccader",)
    """Saccader models trained from the same stage-1 representation: the full model and the ablations of
    Fig. Supp.3 / Table Supp.5 (no_location_pretraining: eq. 6 straight from BagNet-77-lowD;
    no_attention_network: F mixes the 2048-d features with the what features, official attention_groups=0)."""
    batch_size: int = 1024
    """Batch size 1024 for Saccader and DRAM (Tables Supp.4, Supp.5); CNN baselines 2048 (Table Supp.2)."""
    epochs: float = 120
    """Every stage trains for 120 epochs (sec. 3.2, Tables Supp.2-5)."""
    warmup_epochs: float = 10
    """Linear warm-up length of the cosine schedule, 10 epochs (App. C)."""
    # One field per stage (the Stage dataclass above); what each trains is fixed by the paper.
    representation: Stage = field(default_factory=lambda: Stage(lr=0.5))
    """Eq. 4 (Saccader) / eq. 7 (CNN baselines), trains the representation network: BagNet-77-lowD at 0.5
    (Table Supp.2); ResNet-v2-50 0.9."""
    location: Stage = field(default_factory=lambda: Stage(lr=0.2))
    """Eq. 5, trains only the location network (attention network, mixing conv, cell) on the frozen
    representation: 0.2 (Table Supp.5 *)."""
    policy: Stage = field(default_factory=lambda: Stage(lr=0.01))
    """Eq. 6 (Saccader) or DRAM's hybrid loss, trains every weight: 0.01 (Tables Supp.5 **, Supp.4 ***)."""
    pretrain_wide: Stage = field(default_factory=lambda: Stage(lr=0.8))
    """DRAM's classification pretraining on 200 x 200 fields of view, random policy, trains the
    classification weights: 0.8 (Table Supp.4 *)."""
    pretrain_narrow: Stage = field(default_factory=lambda: Stage(lr=0.001))
    """DRAM's classification pretraining on 77 x 77 fields of view: 0.001 (Table Supp.4 **)."""
    classifier: Stage = field(default_factory=lambda: Stage(lr=0.9))
    """The occlusion analysis' whole-image ResNet-v2-50 (sec. 4.2): 0.9 (Table Supp.2)."""
    patch_classifier: Stage = field(default_factory=lambda: Stage(lr=0.001))
    """Saccader-NASNet (sec. 4.3), the patch classifier fine-tuned on Saccader's 77 px crops: 0.001
    (Table Supp.2, NASNet-77)."""
    momentum: float = 0.9
    """Nesterov momentum 0.9 (sec. 3.2, App. C)."""
    l2: float = 8e-5
    """lambda of eqs. 4, 6, 7, L2 on the classification weights (Tables Supp.2, 4, 5)."""
    l2_form: Literal["normalized", "sum"] = "normalized"
    """Form of the L2 terms of eqs. 5-6 and DRAM's losses. "normalized" (official
    `losses.normalized_l2_loss`): lambda x sum of squares / number of regularised values, over every
    weight but biases and BN, the cell's vector `a` included; "sum": the paper's lambda/2 sum of squares
    over kernels only (plain SGD weight decay lambda). Eq. 4's BagNet and the separately trained
    classifiers always use "sum"."""
    location_loss: Literal["mean", "sum"] = "mean"
    """Eq. 5 over the T glimpses: "mean" (official `losses.saccader_pretraining_loss`: one cross-entropy
    averaged over glimpses and images) or "sum" (the paper's -log prod_t, i.e. T x the mean)."""
    policy_gradient: Literal["mean", "sum"] = "mean"
    """Eq. 6's REINFORCE term: "mean" (official `losses.reinforce_loss_discrete`: averaged over the S
    samples, T glimpses and the batch, reinforce_loss_wt = xent_loss_wt = 1 in `saccader_config.py`) or
    "sum" (the paper's text: summed over S and T, S x T times the mean, against the same cross-entropy)."""
    l2_location: float = 8e-5
    """nu of eq. 6, L2 on the location weights (Table Supp.5 **); eq. 5 uses nu = 0 (Table Supp.5 *);
    DRAM nu = 0 (Table Supp.4, App. C: "no regularization for the location weights")."""
    pretrain_glimpses: int = 12
    """T = 12 glimpses of eq. 5 (sec. 3.2)."""
    train_glimpses: int = 6
    """T = 6 glimpses of eq. 6 (sec. 3.2) and of DRAM (official dram_config num_times = 6)."""
    mc_samples: int = 2
    """S = 2 sampled trajectories per image in eq. 6 and in DRAM's training (sec. 3.2, App. C)."""
    dram_pretrain_glimpse: int = 200
    """Side of DRAM's first, wide-receptive-field pretraining glimpse at 224 px (App. C: 200 x 200)."""
    dram_pretrain_glimpses: int = 2
    """DRAM pretraining unrolls 2 time steps of a uniform random policy (App. C)."""
    dram_pretraining_schedule: Literal["per_stage", "one"] = "per_stage"
    """DRAM's two pretraining stages each with their own warm-up + cosine schedule (App. C: 120 epochs
    each), or "one" schedule over both (the narrow stage continues the wide stage's decay instead of
    restarting it): the CPU scale's stages are too short to restart."""
    dram_pretraining_loss: Literal["mean_logits", "per_combination"] = "mean_logits"
    """App. C: one cross-entropy of the logits averaged over every combination of views and step, "instead
    of having multiple cross entropy losses for each combination of views" (Sermanet et al.'s Fig. 4);
    "per_combination" is that alternative, the mean of one cross-entropy per combination and step."""
    dram_min_pretrain_accuracy: float = 2.0
    """DRAM's policy stage refuses to start from a classifier whose last pretraining test accuracy is below
    this multiple of chance (1 / num_classes): its rewards would carry no location signal (0: no check)."""
    dram_reinforce_weight: float = 0.1
    """Weight of REINFORCE in DRAM's hybrid loss (App. C; official dram_config reinforce_loss_wt)."""

    # ---- Evaluation (sec. 4, Figs. 3-5) ----
    eval_glimpses: tuple[int, ...] = (1, 2, 4, 6, 8, 12, 16)
    """Glimpse counts evaluated (x axis of Fig. 3a)."""
    eval_policies: tuple[str, ...] = ("random", "ordered_logits", "sobel_mean", "sobel_var")
    """Engineered policies compared with the learned one on BagNet-77-lowD (Fig. 3a, sec. 4.1)."""
    patch_backbone: str = ""
    """Saccader-NASNet (sec. 4.3): a registered backbone ("resnet_v2_50", "efficientnet_b0", ...) trained
    on the 77 px patches the trained Saccader attends to, classifying them instead of BagNet ("": none)."""
    occlusion_classifier: bool = False
    """Train a whole-image ResNet-v2-50 and measure its accuracy with each policy's glimpses occluded,
    pixels set to `occlusion_value` (sec. 4.2, Fig. 5b)."""
    occlusion_classifier_width: float = 0.0
    """Channel multiplier of that classifier (0: `width`, as at paper scale, where every network is full
    width)."""
    occlusion_value: float = 0.0
    """What occlusion sets the fields to: the paper's 0, mid grey in [-1, 1], near ImageNet's mean pixel.
    The CPU canvases are black (-1, mean -0.96): there a grey square is foreign to the classifier."""

    # ---- Bookkeeping ----
    eval_every: int = 0
    """Evaluate every this many steps within a stage (0: at each stage's end)."""
    log_every: int = 10
    """Log training statistics every this many steps."""
    checkpoint_every: int = 1000
    """Checkpoint every this many steps (0: only at the end of each stage)."""
    num_workers: int | None = None
    """DataLoader worker processes (None: one per available core less one, at most 8; core.train)."""
    channels_last: bool = True
    """Model and image batches in channels_last: 1.3-1.6x the images/s in bf16 on an H200 for TNet, BagNet-77
    and Saccader (issue 18's bench); on one CPU thread 1.2x (TNet) to 1.7x (BagNet-lowD) the updates/s."""

    def __post_init__(self):
        allowed = STAGES.get(self.model, ())
        if unknown := [s for s in self.stages if s not in allowed]:
            raise UserError(f"model {self.model} has no stages {unknown}; "
                            f"its stages are {', '.join(allowed)}")
        if unknown := [v for v in self.variants if v not in VARIANTS]:
            raise UserError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        scale = self.digit_scale
        if scale and (self.dataset == "digit-pairs" or not 0 < 28 * scale <= self.image_size):
            raise UserError(f"digit_scale={self.digit_scale:g} needs a made single-digit task whose "
                            f"{self.image_size} px canvas holds a 28 x {self.digit_scale:g} px digit")
        if min(self.pretrain_glimpses, self.train_glimpses, self.mc_samples, self.batch_size,
               self.dram_pretrain_glimpses, min(self.eval_glimpses, default=1)) < 1:
            raise UserError("glimpse counts, mc_samples and batch_size must be >= 1")
        if not self.width > 0 or not self.occlusion_classifier_width >= 0:
            raise UserError(f"width must be > 0 and occlusion_classifier_width >= 0, got {self.width} and "
                            f"{self.occlusion_classifier_width}")
        if self.model in ("saccader", "dram") and self.train_glimpses not in self.eval_glimpses:
            raise UserError(f"eval_glimpses {','.join(map(str, self.eval_glimpses))} must include "
                            f"train_glimpses = {self.train_glimpses} (test_accuracy is the accuracy there)")
        glimpse = self.dram_glimpse if self.model == "dram" else RECEPTIVE_FIELD
        if self.model != "resnet" and self.image_size < glimpse:
            raise UserError(f"image_size {self.image_size} is smaller than one {glimpse} px glimpse "
                            f"({'DRAM glimpse' if self.model == 'dram' else 'BagNet receptive field'})")


def _steps(**steps: int) -> dict[str, Stage]:
    """Stages at the paper's learning rates with the given numbers of updates."""
    defaults = SaccaderConfig()
    return {name: dataclasses.replace(getattr(defaults, name), steps=n) for name, n in steps.items()}


# The CPU task (`cpu`, `cpu-dram`): 160 px canvases with two key digits, one distractor digit and clutter;
# BagNet-lowD at 1/16 width sees 11 x 11 = 121 locations 8 px apart with the paper's 77 px receptive field.
_CPU_TASK = dict(dataset="digit-pairs", width=0.0625, num_classes=10, channels=1, image_size=160,
                 resnet_bn_decay=0.9, num_workers=0,
                 train_size=2048, eval_size=512, batch_size=32, log_every=10, checkpoint_every=0,
                 train_glimpses=2, eval_glimpses=(1, 2, 3, 4, 6))
_SMOKE_TASK = dict(dataset="digit-pairs", width=0.0625, num_classes=10, channels=1, image_size=96,
                   resnet_bn_decay=0.9,
                   train_size=8, eval_size=4, num_clutter=2, min_separation=34, margin=0, batch_size=4,
                   log_every=1, checkpoint_every=0, num_workers=0, pretrain_glimpses=3,
                   **_steps(representation=2, location=2, policy=2, pretrain_wide=1, pretrain_narrow=1,
                            classifier=1),
                   train_glimpses=2, eval_glimpses=(1, 2), eval_policies=("random", "ordered_logits",
                   "sobel_mean", "sobel_var"), dram_pretrain_glimpse=86)

CONFIGS: dict[str, dict] = {
    "imagenet": {},
    "imagenet-bagnet77-lowd": dict(model="bagnet", stages=("representation",), batch_size=2048),
    "imagenet-resnet-v2-50": dict(model="resnet", stages=("representation",), batch_size=2048,
                                  representation=Stage(lr=0.9)),
    "imagenet-dram": dict(model="dram", stages=STAGES["dram"], l2_location=0.0),
    "cpu": dict(_CPU_TASK, variants=("saccader", "no_location_pretraining"), occlusion_classifier=True,
                # ~550 CPU-s per run with 1 thread in channels_last (BagNet-lowD at 160 px: ~0.41 CPU-s
                # per update of eq. 4, ~0.45 of eq. 6; the 1/8-width classifier ~200 of them). Eq. 4 keeps
                # 400 updates: 300 left BagNet at 0.51 from all locations (400: 0.83).
                # eq. 6 at the paper's 0.01 (batch 1024) collapses the location-pretrained Saccader at
                # batch 32 (reward 0.28 -> 0.09 within 20 updates; 1e-3: test accuracy 0.36 -> 0.26);
                # the linear scaling rule, 0.01 x 32 / 1024 ~ 3e-4, keeps it (0.37, seed 0).
                # eq. 5 averages over its 6 glimpses (official): 0.3 = the 0.05 tuned for the summed loss
                # (same updates exactly: SGD without weight decay, nu = 0).
                representation=Stage(lr=0.1, steps=400), location=Stage(lr=0.3, steps=150),
                policy=Stage(lr=3e-4, steps=120), classifier=Stage(lr=0.1, steps=1000), pretrain_glimpses=6,
                # the whole-image classifier (issue #16: "trained to high accuracy") at 1/8 width: seed 0
                # alone, 1/16 (4-channel bottlenecks) 0.449 test accuracy after 600 updates; 1/8 0.611 / 0.730
                # / 0.629 after 400 / 500 / 600 (~0.2 CPU-s an update); 1/4 0.549 after 400 (0.44 CPU-s).
                # 500 left seeds 1 / 2 at 0.518 / 0.506, 1,000 trains them to 0.865 / 0.801 (train 1.0 /
                # 0.97). Occlusion fills with the background, the analogue of the paper's 0 on ImageNet: one
                # random field filled grey (0) leaves that classifier 0.09-0.17 accurate, filled with the
                # background 0.39 (seeds 0-1, papers/saccader/README.md)
                occlusion_classifier_width=0.125, occlusion_value=-1.0),
    # DRAM (issue #16): the glimpse network at width 1/8 (1/16 has 4-channel bottlenecks) and one warm-up +
    # cosine schedule over both pretraining stages at one rate (restarting a cosine per stage decayed each
    # short stage to 0 before the network left chance). A wide (143 px = 200/224 x 160) update costs ~2.5x
    # a 77 px one, so the wide stage is the shorter; the policy stage refuses a classifier < 2 x chance.
    # 130 narrow updates (90 before): the same-footing seed 0 pretrained to 0.174 in 90 and 0.225 in 130,
    # paid for by pretraining's shared root conv (`DRAM._root_terms`: 254 instead of 262 CPU-s a run).
    "cpu-dram": dict(_CPU_TASK, model="dram", stages=STAGES["dram"], l2_location=0.0, width=0.125,
                     pretrain_wide=Stage(lr=0.1, steps=30), pretrain_narrow=Stage(lr=0.1, steps=130),
                     policy=Stage(lr=0.01, steps=100), dram_pretrain_glimpse=143,
                     dram_pretraining_schedule="one"),
    "smoke": dict(_SMOKE_TASK, variants=("saccader", "no_location_pretraining"), occlusion_classifier=True,
                  patch_backbone="resnet_v2_50", representation=Stage(lr=0.05, steps=2),
                  location=Stage(lr=0.05, steps=2), **_steps(patch_classifier=1)),
    "smoke-dram": dict(_SMOKE_TASK, model="dram", stages=STAGES["dram"], l2_location=0.0,
                       dram_pretraining_schedule="one", dram_min_pretrain_accuracy=0.0),
}


def get_config(name: str) -> SaccaderConfig:
    """A fresh config by name; KeyError for unknown names (the CLI turns it into a one-line error)."""
    if name not in CONFIGS:
        raise KeyError(name)
    return dataclasses.replace(SaccaderConfig(name=name), **CONFIGS[name])
