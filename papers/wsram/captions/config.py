"""WS-RAM caption-generation configs (§5.2): "flickr8k" (the paper's task, for GPUs), "cpu" (captions of made
digit scenes, same algorithm, smaller) and "smoke".

Variants are fields, as for §5.1 (papers/wsram/config.py):
  VAR       estimator=var                    VAR+c       estimator=var control_variates=true
  WS-RAM+q  estimator=wsram use_q=true       WS-RAM+q+c  estimator=wsram use_q=true control_variates=true
(Table 2 compares VAR with WS-RAM+Qnet; Fig. 4 uses Fig. 3's labels, VAR+c and WS-RAM+q+c.)
§5.2 gives no widths, CNN, learning rate or batch size; ours are marked "ours". Where we follow Xu et al.
2015 ([5], the model §5.2 says it is "similar to") we say so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.errors import UserError


@dataclass
class CaptionConfig:
    name: str = "flickr8k"
    """Config name (recorded with the results)."""
    seed: int = 0
    """Seeds parameters, data order and attention samples."""
    output_dir: str = "runs/wsram-captions/flickr8k/seed0"
    """Checkpoints, metrics.jsonl and final_metrics.json."""

    # Data (§5.2)
    dataset: str = "data/flickr8k"
    """§5.2: Flickr8k: a folder in the standard layout, a hub id in the local cache, or "digit-captions"."""
    image_size: int = 224
    """Side of the square CNN input (Xu et al. [5]'s 224 px crops; ours for digit scenes: the canvas)."""
    max_len: int = 20
    """Longest caption in words; longer training captions are cut (ours)."""
    min_word_count: int = 5
    """Words seen fewer times in training captions become <unk> (ours; the usual Flickr8k vocabulary cut)."""
    train_size: int = 0
    """Made digit scenes for training (0: not a made dataset)."""
    test_size: int = 0
    """Made digit scenes for testing (0: not a made dataset)."""

    # Model (§5.2 and Xu et al. [5])
    cnn_widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    """Channels of the CNN's stages, each ending in a 2x max-pool (VGG-16-shaped as in [5]; trained here
    unless encoder_weights is set)."""
    convs_per_stage: tuple[int, ...] = (2, 2, 3, 3, 3)
    """3x3 conv layers per stage (VGG-16's 2,2,3,3,3)."""
    encoder_weights: str = ""
    """A .safetensors file of the CNN's weights (ImageNet VGG-16: captions/encoder.py), loaded and frozen;
    images in [0, 1] are then normalised by ImageNet's mean/std ("": CNN trained, images as they are)."""
    num_scales: int = 3
    """§5.2: attention picks a layer = a scale; the last num_scales stages' maps are the choices (ours: 3)."""
    att_dim: int = 512
    """Width the attended feature vectors are projected to, and of the attention MLP (ours)."""
    embed: int = 512
    """Word embedding width (ours)."""
    hidden: int = 1024
    """LSTM decoder units (ours)."""
    q_hidden: int = 512
    """Hidden units of the inference network's attention MLP (ours)."""
    q_word: Literal["previous", "next"] = "previous"
    """§5.2: "the inference network was given the immediate preceding word in the target sentence": the
    word before the glimpse's word, which the prior has not read yet when it attends (as in [5]); "next":
    the word the glimpse is used to predict (ours, an alternative reading)."""

    # Learning (§4, §5.2)
    estimator: Literal["var", "wsram"] = "wsram"
    """var: variational bound, eqs. 3-5; wsram: reweighted wake-sleep, eqs. 7-8."""
    use_q: bool = False
    """+q: attention sampled from the inference network trained with eq. 14 (else the prior proposes)."""
    control_variates: bool = False
    """+c: the control variates of §4.4 (eqs. 15-18; for VAR the leave-one-out sample-mean baseline)."""
    num_samples: int = 5
    """M, attention sequences sampled per caption (§5.1's 5; §5.2 does not say)."""
    lr: float = 1e-4
    """Adam learning rate (§5.1: "the highest value that converged"; value ours)."""
    batch_size: int = 32
    """Captions per update per process (ours)."""
    max_steps: int = 100_000
    """Updates (Fig. 4 shows the first 10,000; total ours)."""

    # Logging (Table 2, Fig. 4)
    log_every: int = 500
    """Updates between points of the Fig. 4 training-NLL curve."""
    eval_every: int = 10_000
    """Updates between test-set NLL evaluations (BLEU is computed once, after training)."""
    probe_size: int = 500
    """Fixed training captions on which the Fig. 4 training NLL is measured (attention from the prior)."""
    bleu_size: int = 0
    """Test images captioned for Table 2's BLEU (0: the whole test split: 1,000 Flickr8k images)."""
    beam_size: int = 1
    """Beam width of the captions for Table 2's BLEU (1: greedy; §5.2 does not say how it decoded; ours)."""
    shared_variance_every: int = 0
    """Every this many updates (a multiple of log_every; 0: off), §5.1's Fig. 2b measurement on the captioner
    (ours; §5.2 makes no variance claim): the gradient variance of all six estimators at this run's
    parameters on one fixed batch of training captions, and the ESS of untempered weights with the prior and
    with q as proposal (papers/wsram/train.py: `SHARED_VARIANTS`); needs use_q, so that +q has its q."""
    grad_probes: int = 16
    """Gradient estimates with fresh attention samples per estimator and measured point."""
    checkpoint_every: int = 5_000
    """Updates between resumable checkpoints (0: only at the end)."""
    num_workers: int | None = None
    """DataLoader workers decoding images (None: one per available core less one, at most 8; core.train;
    0 for made scenes, which are in memory)."""

    def __post_init__(self):
        if self.use_q and self.estimator != "wsram":
            raise UserError("use_q=true needs estimator=wsram (the inference network is trained by eq. 14)")
        if self.num_samples < 2:
            raise UserError(f"num_samples must be >= 2 (normalised weights), got {self.num_samples}")
        if len(self.cnn_widths) != len(self.convs_per_stage) or min(self.convs_per_stage, default=0) < 1:
            raise UserError("cnn_widths and convs_per_stage need one entry per stage, each stage >= 1 conv")
        if not 1 <= self.num_scales <= len(self.cnn_widths):
            raise UserError(f"num_scales must be in [1, {len(self.cnn_widths)}] (the CNN's stages), "
                            f"got {self.num_scales}")
        if self.dataset == "digit-captions" and (self.train_size < 1 or self.test_size < 1):
            raise UserError("digit-captions needs train_size >= 1 and test_size >= 1")
        every = self.shared_variance_every
        if every and (not self.use_q or every % self.log_every or self.grad_probes < 2):
            raise UserError(f"shared_variance_every={every} needs use_q=true, a multiple of log_every "
                            f"({self.log_every}) and grad_probes >= 2")
        if self.beam_size < 1:
            raise UserError(f"beam_size must be >= 1 (1: greedy), got {self.beam_size}")
        # Checked here, so that a wrong path fails before a run directory is claimed or any data read.
        if self.encoder_weights and not Path(self.encoder_weights).is_file():
            raise UserError(f"encoder_weights: no file at {self.encoder_weights}")

    @property
    def variant(self) -> str:
        """The paper's name for this variant (Fig. 4 legend)."""
        name = "VAR" if self.estimator == "var" else "WS-RAM"
        return name + ("+q" if self.use_q else "") + ("+c" if self.control_variates else "")


_DIGITS = dict(dataset="digit-captions", image_size=48, max_len=6, min_word_count=1, num_workers=0)

_CONFIGS = {
    "flickr8k": CaptionConfig(),
    # Same algorithm on made scenes of real digits: a 4-stage CNN on 48x48 canvases whose last 3 maps
    # (12x12, 6x6, 3x3) are the scales, narrow layers, 1,500 updates.
    "cpu": CaptionConfig(
        name="cpu", **_DIGITS, train_size=10_000, test_size=500, cnn_widths=(8, 16, 32, 32),
        convs_per_stage=(1, 2, 2, 1), att_dim=32, embed=32, hidden=64, q_hidden=32, lr=3e-3,
        batch_size=32, max_steps=1_500, log_every=100, eval_every=0, probe_size=256, checkpoint_every=0),
    "smoke": CaptionConfig(
        name="smoke", **_DIGITS, train_size=64, test_size=16, cnn_widths=(4, 4, 4, 4),
        convs_per_stage=(1, 1, 1, 1), att_dim=8, embed=8, hidden=8, q_hidden=8, num_samples=3, lr=3e-3,
        batch_size=8, max_steps=4, log_every=2, eval_every=0, probe_size=8, checkpoint_every=2),
}


def get_config(name: str) -> CaptionConfig:
    """A fresh copy of the named config; KeyError if unknown."""
    return dataclasses.replace(_CONFIGS[name])
