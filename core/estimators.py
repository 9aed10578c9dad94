"""Gradient estimators of the hard-attention papers, written as surrogate losses.

Every ``*_loss`` returns a scalar to *minimise*: after ``loss.backward()`` the gradients hold minus the
paper's ascent estimate. The quantities an estimator treats as constants (rewards, baselines, importance
weights) are detached here, so callers pass graph-connected per-sample log-probabilities as they are.

Shapes: ``(M, B)`` holds M Monte Carlo samples (glimpse sequences) for each of B examples, sample index
first; a sample's log-probability is the sum over its glimpses.

Papers: WS-RAM = Ba et al. 2015, "Learning Wake-Sleep Recurrent Attention Models" (§4, eqs 1-18);
TNet = Papadopoulos et al. 2021 (eq. 1, App. A eqs 7-9); Saccader = Elsayed et al. 2019 (eq. 6);
RAM = Mnih et al. 2014 (learned baseline).
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from core.errors import UserError

# ----------------------------------------------------------------------------------------------------
# Score-function (REINFORCE) estimators and their baselines
# ----------------------------------------------------------------------------------------------------


def reinforce_loss(log_prob: Tensor, reward: Tensor, baseline: Tensor | float = 0.0) -> Tensor:
    """Score-function surrogate ``-mean[(R - b) log p(a)]`` (TNet eq. 1/8, Saccader eq. 6, RAM).

    log_prob: log-probability of each sampled action sequence, any shape, e.g. (S, B) for S samples of
    B examples. reward: same shape. baseline: anything broadcastable to it (float, (B,), (S, B)).
    Reward and baseline are detached, so the gradient is ``-mean[(R - b) d log p(a)/d theta]``, unbiased
    for any baseline that does not depend on the sample it is subtracted from. The mean runs over all
    elements (Saccader eq. 6 sums over its S samples: scale by S for that convention).
    """
    if log_prob.shape != reward.shape:
        raise UserError(f"log_prob {tuple(log_prob.shape)} and reward {tuple(reward.shape)} must match")
    advantage = (reward - baseline).detach()
    return -(advantage * log_prob).mean()


class EMABaseline(nn.Module):
    """Moving average of the mean reward (TNet eq. 7): ``b_n = decay * b_{n-1} + (1 - decay) * mean(R^n)``.

    TNet (and its released code) uses decay 0.9 from b_0 = 0.5. The value lives in a buffer, so it is
    saved and restored with the model. Calling the module with a batch's rewards returns the baseline for
    that batch, b_{n-1} (fixed before these rewards are seen, so it adds no bias), and then, in training
    mode only, folds the batch's mean reward into the average.
    """

    value: Tensor

    def __init__(self, decay: float = 0.9, init: float = 0.5):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise UserError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = decay
        self.register_buffer("value", torch.tensor(float(init)))

    def forward(self, reward: Tensor) -> Tensor:
        baseline = self.value.clone()
        if self.training:
            with torch.no_grad():
                batch_mean = reward.detach().mean().to(self.value.dtype)
                self.value.mul_(self.decay).add_((1.0 - self.decay) * batch_mean)
        return baseline


def batch_mean_baseline(
    reward: Tensor, dim: int | tuple[int, ...] | None = None, leave_one_out: bool = False
) -> Tensor:
    """Saccader eq. 6 baseline: the minibatch's mean reward ("average accuracy"), detached.

    dim: the dims pooled (default all, as in Saccader: every sample of every image). The plain mean
    includes each element's own reward, which scales the expected score-function gradient by (1 - 1/n)
    for n pooled i.i.d. rewards; ``leave_one_out=True`` uses the mean of the other n - 1 rewards instead,
    which is exactly unbiased. Returns a tensor broadcastable to ``reward``.
    """
    reward = reward.detach()
    dims = tuple(range(reward.ndim)) if dim is None else dim
    total = reward.sum(dim=dims, keepdim=True)
    n = reward.numel() // total.numel()
    if not leave_one_out:
        return total / n
    if n < 2:
        raise UserError("a leave-one-out baseline needs at least 2 rewards to pool")
    return (total - reward) / (n - 1)


def learned_baseline_loss(pred: Tensor, reward: Tensor) -> Tensor:
    """Regression of a learned baseline b(x) onto the reward (RAM, and the baseline network of [2] in WS-RAM).

    Mean squared error against the detached reward; pred must broadcast to reward's shape (e.g. (B,)
    against (S, B)). Pass the same ``pred`` as ``baseline=`` to :func:`reinforce_loss`, which detaches it,
    so the policy loss never moves the baseline and the baseline loss never moves the policy.
    """
    try:
        fits = torch.broadcast_shapes(pred.shape, reward.shape) == reward.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise UserError(f"baseline {tuple(pred.shape)} does not broadcast to reward {tuple(reward.shape)}")
    return (pred - reward.detach()).pow(2).mean()


# ----------------------------------------------------------------------------------------------------
# WS-RAM (Ba et al. 2015, §4): the variational bound and importance-weighted wake-sleep
# ----------------------------------------------------------------------------------------------------


def _check_samples(**tensors: Tensor | None) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise UserError(f"expected per-sample log-probabilities of one shape (M, B), got {shapes}")


def normalized_importance_weights(log_w: Tensor, dim: int = 0) -> Tensor:
    """Self-normalised importance weights ``w^m = w~^m / sum_m' w~^m'`` (WS-RAM eq. 8) from log w~ (eq. 7).

    A softmax over the sample dim, so it is stable for any scale of log w~ (computed in at least float32).
    """
    return torch.softmax(log_w, dim=dim, dtype=torch.promote_types(log_w.dtype, torch.float32))


def effective_sample_size(weights: Tensor, dim: int = 0) -> Tensor:
    """ESS = 1 / sum_m (w^m)^2 of normalised weights (WS-RAM §5.1, Fig. 2 right); in [1, M]."""
    return 1.0 / weights.pow(2).sum(dim)


def variational_bound_loss(
    log_py: Tensor,
    log_pa: Tensor,
    baseline: Tensor | None = None,
    control_variate: bool = False,
    log_proposal: Tensor | None = None,
) -> Tensor:
    """WS-RAM "VAR" (eqs 3-5): ascend ``F = sum_a p(a|I) log p(y|a,I)`` with a^m ~ p(a|I), m = 1..M.

    log_py: (M, B) log p(y|a^m, I); log_pa: (M, B) log p(a^m|I), both graph-connected. The gradient is
    eq. 5, averaged over the batch:
        dF/dtheta ~ 1/M sum_m [d log p(y|a^m)/dtheta + (log p(y|a^m) - b^m) d log p(a^m|I)/dtheta]
    with b^m = 0 as printed in eq. 5, or a reward baseline b^m that does not depend on a^m:
      * ``baseline``: (B,) or (M, B), e.g. a learned baseline as in [2] (see :func:`learned_baseline_loss`);
      * ``control_variate=True`` ("VAR+c"): §4.4 applied to eq. 5. With the prior as proposal, eq. 15
        reads E_p[d log p(a|I)/dtheta] = 0, and the same M samples estimate its coefficient: b^m is the
        mean of log p(y|a^m') over the other M - 1 samples of the example (leave-one-out, so that, as the
        paper requires, the control variate adds no bias; needs M >= 2).
    ``log_proposal``: (M, B) log-density of the distribution the a^m were drawn from when it is not the
    prior (e.g. the tempered prior of §4.5's heuristic 1). Each sample's term is then multiplied by
    p(a^m|I) / proposal(a^m) (detached), the importance correction without which tempered samples would
    bias the gradient towards the tempered policy's.
    Unbiased for dF/dtheta in every case.
    """
    _check_samples(log_py=log_py, log_pa=log_pa, log_proposal=log_proposal)
    if baseline is not None and control_variate:
        raise UserError("pass either a baseline or control_variate=True, not both")
    if control_variate:
        if log_py.shape[0] < 2:
            raise UserError("the VAR control variate needs M >= 2 samples per example")
        baseline = batch_mean_baseline(log_py, dim=0, leave_one_out=True)
    reward = log_py if baseline is None else log_py - baseline
    terms = log_py + reward.detach() * log_pa
    if log_proposal is not None:
        terms = (log_pa - log_proposal).detach().exp() * terms
    return -terms.mean()


class WakeSleepOutput(NamedTuple):
    """What :func:`wake_sleep_loss` returns: the losses to minimise and the sampler's diagnostics."""

    loss: Tensor  # prediction_loss + inference_loss: one backward() updates theta and eta
    prediction_loss: Tensor  # minus eq. 8 (eq. 16 with control variates) for the attention network theta
    inference_loss: Tensor  # eq. 14 (eq. 17 with control variates) for the inference network eta; 0 without q
    weights: Tensor  # (M, B) normalised importance weights w^m (eqs 7-8), detached
    ess: Tensor  # (B,) effective sample size 1 / sum_m (w^m)^2
    log_likelihood: Tensor  # (B,) log 1/M sum_m w~^m, whose expectation lower-bounds l (eq. 9); detached


def inference_network_loss(log_q: Tensor, weights: Tensor, control_variate: bool = False) -> Tensor:
    """Wake-q update of the inference network q(a|y,I,eta) (WS-RAM eqs 12-14, 17).

    Minimises KL(p(a|y,I,theta) || q(a|y,I,eta)) (eq. 12). Its gradient, -E_posterior[d log q(a)/d eta]
    (eq. 13), is estimated with the prediction update's samples and weights (eq. 14):
        dKL/deta ~ -sum_m w^m d log q(a^m|y,I)/deta.
    ``control_variate=True`` (eq. 17) subtracts 1/M sum_m d log q(a^m)/deta, whose expectation under q is
    0 (eq. 15): the coefficient becomes w^m - 1/M, i.e. the reward baseline b_q of eq. 18.
    log_q: (M, B) graph-connected; weights: (M, B) normalised, detached here. Averaged over the batch.
    If q reads the attention network's state, feed it a detached copy so this loss moves eta only.
    """
    _check_samples(log_q=log_q, weights=weights)
    coef = weights.detach()
    if control_variate:
        coef = coef - 1.0 / log_q.shape[0]
    return -(coef * log_q).sum(0).mean()


def wake_sleep_loss(
    log_py: Tensor, log_pa: Tensor, log_q: Tensor | None = None, control_variate: bool = False
) -> WakeSleepOutput:
    """WS-RAM: importance-weighted wake-sleep estimate of d l/d theta, l = log p(y|I) (eqs 6-8, 14-18).

    Samples a^m, m = 1..M, come from the proposal: the prior p(a|I,theta) when ``log_q`` is None
    ("WS-RAM"), else the inference network q(a|y,I,eta) ("WS-RAM+q"). Inputs, all (M, B) and
    graph-connected: log_py = log p(y|a^m,I,theta), log_pa = log p(a^m|I,theta), log_q = log q(a^m|y,I,eta).
    When exploring with a tempered proposal (§4.5), log_q must be the log-probability under that proposal.

    Eq. 7: log w~^m = log p(a^m|I) + log p(y|a^m,I) - log q(a^m|y,I); eq. 8, with w^m = w~^m / sum w~:
        d l/d theta ~ sum_m w^m [d log p(y|a^m)/dtheta + d log p(a^m|I)/dtheta]
    (biased for finite M, consistent as M grows). ``control_variate=True`` ("+c") subtracts the same-sample
    estimate of the zero-mean expectation of eq. 15, 1/M sum_m p(a^m|I)/q(a^m|y,I) d log p(a^m|I)/dtheta,
    giving eq. 16:
        sum_m [w^m d log p(y|a^m)/dtheta + (w^m - p(a^m|I) / (M q(a^m|y,I))) d log p(a^m|I)/dtheta],
    which with the prior as proposal is w^m - 1/M. As reward baselines (eq. 18) on the reward w^m:
    b_p = p(a|I)/(M q(a|y,I)) for theta and b_q = 1/M for eta (the inference network, eq. 17). Equivalently
    the score coefficient is (p(a^m)/q(a^m)) (p(y|a^m) - 1/M sum_m' w~^m') / sum_m' w~^m': the reward
    p(y|a) centred by the same-sample estimate of p(y|I). Both control variates have expectation exactly
    0, so the estimator's expectation is unchanged. (Our copy of eqs 16-18 is garbled; this is the reading
    in which each is eq. 15 estimated with the same samples, as §4.4 says.) The variance drop is not
    guaranteed: with a proposal far from the prior, the p/q factor can make eq. 16 noisier than eq. 8.
    """
    _check_samples(log_py=log_py, log_pa=log_pa, log_q=log_q)
    num_samples = log_py.shape[0]
    log_proposal = log_pa if log_q is None else log_q
    log_w = (log_py + log_pa - log_proposal).detach()  # eq. 7; equals log p(y|a^m) under the prior
    weights = normalized_importance_weights(log_w)
    score_coef = weights
    if control_variate:  # eq. 16: p/q = 1 exactly when the prior is the proposal
        score_coef = weights - (log_pa - log_proposal).detach().exp() / num_samples
    prediction_loss = -(weights * log_py + score_coef * log_pa).sum(0).mean()
    if log_q is None:
        inference_loss = prediction_loss.new_zeros(())
    else:
        inference_loss = inference_network_loss(log_q, weights, control_variate)
    log_likelihood = torch.logsumexp(log_w, dim=0) - math.log(num_samples)
    return WakeSleepOutput(
        loss=prediction_loss + inference_loss,
        prediction_loss=prediction_loss,
        inference_loss=inference_loss,
        weights=weights,
        ess=effective_sample_size(weights),
        log_likelihood=log_likelihood,
    )


# ----------------------------------------------------------------------------------------------------
# Categorical selection of k distinct locations (TNet App. A.2; Saccader's no-revisit sampling)
# ----------------------------------------------------------------------------------------------------


def _check_k(logits: Tensor, k: int) -> None:
    if logits.ndim < 1 or not 1 <= k <= logits.shape[-1]:
        raise UserError(f"cannot pick k={k} distinct locations out of logits {tuple(logits.shape)}")


def log_prob_without_replacement(logits: Tensor, indices: Tensor) -> Tensor:
    """Log-prob of ordered picks ``indices`` (..., k), drawn without replacement from softmax(logits).

    TNet eq. 9 (App. A.2): log p = sum_r [log p_{i_r} - log(1 - sum_{s<r} p_{i_s})], computed stably as
    sum_r [logit_{i_r} - logsumexp(logits not picked before r)]. logits: (..., n); indices must be
    distinct along the last dim. Returns (...,), differentiable w.r.t. the logits.
    """
    picked_before = torch.nn.functional.one_hot(indices, logits.shape[-1]).cumsum(-2)
    picked_before = picked_before - torch.nn.functional.one_hot(indices, logits.shape[-1])  # exclusive
    remaining = logits.unsqueeze(-2).masked_fill(picked_before.bool(), float("-inf"))  # (..., k, n)
    return (logits.gather(-1, indices) - torch.logsumexp(remaining, dim=-1)).sum(-1)


def sample_without_replacement(
    logits: Tensor, k: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw k distinct indices in order, as k successive draws from softmax(logits) renormalised over
    the indices not yet drawn (the sampling TNet's eq. 9 describes), by Gumbel-top-k.

    logits: (..., n). Returns indices (..., k) long and their log-probability (...,) per
    :func:`log_prob_without_replacement` (differentiable w.r.t. the logits).
    """
    _check_k(logits, k)
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(logits.dtype).tiny)))
    indices = (logits.detach() + gumbel).topk(k, dim=-1).indices
    return indices, log_prob_without_replacement(logits, indices)


def topk_select(logits: Tensor, k: int, renormalize: bool = False) -> tuple[Tensor, Tensor]:
    """Pick the k largest logits, in decreasing order: TNet's deterministic selection (App. A.2).

    logits: (..., n). Returns indices (..., k) and a log-probability (...,) for REINFORCE. By default
    that is sum_r log p_{i_r}, as TNet simplifies eq. 9 by dropping the renormalising denominators;
    ``renormalize=True`` gives the exact ordered without-replacement log-probability instead.
    """
    _check_k(logits, k)
    indices = logits.detach().topk(k, dim=-1).indices
    if renormalize:
        return indices, log_prob_without_replacement(logits, indices)
    return indices, torch.log_softmax(logits, dim=-1).gather(-1, indices).sum(-1)
