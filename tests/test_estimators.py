"""Estimators checked against exact gradients on a tiny discrete attention problem.

Toy problem: 2 glimpses x 3 locations = 9 glimpse sequences a = (a1, a2). Prior p(a|theta) and inference
network q(a|eta) are autoregressive categoricals; the likelihood of the observed label is
p(y|a, theta) = sigmoid(phi_a). Everything is enumerable, so exact gradients of l = log p(y), of the
bound F and of KL(posterior || q) come from autograd over the 9 sequences.

Replicas are vectorised: each of R replicas owns a copy of the parameters (a leaf of shape (R, D)), so one
backward pass of a batch-averaged loss yields R independent estimates (the gradient times R).
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from core.errors import UserError
from core.estimators import (
    EMABaseline,
    batch_mean_baseline,
    effective_sample_size,
    inference_network_loss,
    learned_baseline_loss,
    log_prob_without_replacement,
    normalized_importance_weights,
    reinforce_loss,
    sample_without_replacement,
    topk_select,
    variational_bound_loss,
    wake_sleep_loss,
)

pytestmark = pytest.mark.unit
DT = torch.float64
NUM_SEQ = 9  # 2 glimpses x 3 locations


def _sequence_log_prob(params: torch.Tensor) -> torch.Tensor:
    """(R, 12) logits of p(a1) and p(a2|a1) -> (R, 9) log p(a), sequence index a1 * 3 + a2."""
    first = torch.log_softmax(params[:, :3], dim=-1)
    second = torch.log_softmax(params[:, 3:12].reshape(-1, 3, 3), dim=-1)
    return (first[:, :, None] + second).reshape(-1, NUM_SEQ)


class Toy:
    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.theta = torch.randn(21, generator=g, dtype=DT)  # prior logits (12) + likelihood logits (9)
        self.theta[12:] *= 2.0  # sequences differ clearly in how well they predict y
        self.eta = torch.randn(12, generator=g, dtype=DT)  # inference-network logits

    def params(self, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.theta.expand(copies, -1).clone().requires_grad_()
        eta = self.eta.expand(copies, -1).clone().requires_grad_()
        return theta, eta

    @staticmethod
    def tables(theta, eta):
        """(R, 9) tables of log p(y|a), log p(a), log q(a)."""
        return F.logsigmoid(theta[:, 12:]), _sequence_log_prob(theta), _sequence_log_prob(eta)

    def exact(self):
        """Exact gradients: d(-l)/dtheta, d(-F)/dtheta, dKL(posterior || q)/deta."""
        theta, eta = self.params(1)
        log_py, log_pa, log_q = self.tables(theta, eta)
        neg_l = -torch.logsumexp(log_py + log_pa, dim=-1).sum()
        neg_f = -(log_pa.exp() * log_py).sum()
        posterior = torch.softmax(log_py + log_pa, dim=-1).detach()
        kl = -(posterior * log_q).sum()  # + terms constant in eta
        grad_l, grad_f = (torch.autograd.grad(obj, theta, retain_graph=True)[0][0] for obj in (neg_l, neg_f))
        return grad_l, grad_f, torch.autograd.grad(kl, eta)[0][0]

    def proposal(self, use_q: bool) -> torch.Tensor:
        with torch.no_grad():
            _, log_pa, log_q = self.tables(*self.params(1))
        return (log_q if use_q else log_pa)[0].exp()


def _pick(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table (R, 9), idx (M, R) -> (M, R)."""
    return table.gather(1, idx.t()).t()


def _estimates(toy: Toy, idx: torch.Tensor, loss_fn):
    """Per-replica gradient estimates of loss_fn(log_py, log_pa, log_q) for samples idx (M, R)."""
    copies = idx.shape[1]
    theta, eta = toy.params(copies)
    tables = toy.tables(theta, eta)
    loss = loss_fn(*(_pick(t, idx) for t in tables))
    grads = torch.autograd.grad(loss, (theta, eta), allow_unused=True, materialize_grads=True)
    return torch.cat([g * copies for g in grads], dim=1)  # (R, 21 + 12)


def _monte_carlo(toy: Toy, loss_fn, num_samples: int, replicas: int, use_q: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(toy.proposal(use_q), num_samples * replicas, replacement=True, generator=g)
    return _estimates(toy, idx.view(num_samples, replicas), loss_fn)


def _enumerated_expectation(toy: Toy, loss_fn, num_samples: int, use_q: bool) -> torch.Tensor:
    """Exact E[estimate] over all 9^M sample tuples, weighted by their probability under the proposal."""
    tuples = torch.tensor(list(itertools.product(range(NUM_SEQ), repeat=num_samples))).t()  # (M, 9^M)
    prob = toy.proposal(use_q)[tuples].prod(0)
    return (prob[:, None] * _estimates(toy, tuples, loss_fn)).sum(0)


def _assert_mean_within_3se(estimates: torch.Tensor, target: torch.Tensor):
    mean = estimates.mean(0)
    se = estimates.std(0) / math.sqrt(estimates.shape[0])
    z = (mean - target).abs() / (se + 1e-12)
    ok = (mean - target).abs() <= 3 * se + 1e-9
    assert bool(ok.all()), f"max |mean - target| / SE = {z[~ok].max():.2f} at {torch.nonzero(~ok).flatten()}"


def _total_variance(estimates: torch.Tensor) -> float:
    return estimates.var(0).sum().item()


# ----------------------------------------------------------------------------------------------------
# REINFORCE and baselines: objective J = E_p(a)[r(a)] with a fixed reward table
# ----------------------------------------------------------------------------------------------------

REWARD = torch.tensor([0.9, 0.2, 0.6, 0.8, 0.1, 0.7, 0.3, 0.95, 0.5], dtype=DT)


def _exact_reward_gradient(toy: Toy) -> torch.Tensor:
    theta, _ = toy.params(1)
    j = (_sequence_log_prob(theta).exp() * REWARD).sum()
    return -torch.autograd.grad(j, theta)[0][0, :12]


def _reinforce_estimates(toy: Toy, baseline_fn, shape=(2, 20000, 1), seed=0):
    """Estimates of -dJ/dtheta with S samples x n examples per replica; samples (S, R, n)."""
    samples, copies, examples = shape
    theta, _ = toy.params(copies)
    log_pa = _sequence_log_prob(theta)  # (R, 9)
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(log_pa[0].detach().exp(), samples * copies * examples, True, generator=g)
    idx = idx.view(samples, copies, examples)
    log_prob = log_pa[torch.arange(copies)[None, :, None], idx]
    reward = REWARD[idx]
    loss = reinforce_loss(log_prob, reward, baseline_fn(reward))
    return torch.autograd.grad(loss, theta)[0][:, :12] * copies


@pytest.mark.parametrize(
    "name, baseline_fn",
    [
        ("none", lambda r: 0.0),
        ("ema", lambda r: EMABaseline()(r)),  # the value before this batch's update: 0.5
        ("learned", lambda r: torch.linspace(0.2, 0.8, r.shape[1], dtype=DT)[None, :, None]),
        ("batch_mean_loo", lambda r: batch_mean_baseline(r, dim=(0, 2), leave_one_out=True)),
    ],
)
def test_reinforce_with_baselines_is_unbiased(name, baseline_fn):
    toy = Toy()
    estimates = _reinforce_estimates(toy, baseline_fn, shape=(2, 20000, 2))
    _assert_mean_within_3se(estimates, _exact_reward_gradient(toy))


def test_batch_mean_baseline_has_its_stated_bias_and_reduces_variance():
    toy = Toy()
    exact = _exact_reward_gradient(toy)
    pooled = 2 * 4  # S = 2 samples x 4 examples per replica share one mean
    inclusive = _reinforce_estimates(toy, lambda r: batch_mean_baseline(r, dim=(0, 2)), (2, 20000, 4))
    _assert_mean_within_3se(inclusive, (1 - 1 / pooled) * exact)
    plain = _reinforce_estimates(toy, lambda r: 0.0, (2, 20000, 4))
    assert _total_variance(inclusive) < 0.5 * _total_variance(plain)


def test_batch_mean_baseline_values():
    reward = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert batch_mean_baseline(reward).item() == pytest.approx(0.75)
    torch.testing.assert_close(batch_mean_baseline(reward, dim=0), torch.tensor([[1.0, 0.5]]))
    loo = batch_mean_baseline(reward, leave_one_out=True)
    torch.testing.assert_close(loo, torch.tensor([[2 / 3, 1.0], [2 / 3, 2 / 3]]))
    with pytest.raises(UserError):
        batch_mean_baseline(torch.ones(1, 3), dim=0, leave_one_out=True)


def test_ema_baseline_follows_tnet_eq7_and_is_checkpointed():
    ema = EMABaseline()
    assert "value" in ema.state_dict() and ema.value.item() == 0.5
    first = ema(torch.tensor([1.0, 1.0, 0.0, 0.0]))  # batch mean 0.5 -> stays 0.5
    second = ema(torch.tensor([1.0, 1.0]))  # returns b_1, then b_2 = 0.9 * 0.5 + 0.1 * 1
    assert first.item() == 0.5 and second.item() == 0.5
    assert ema.value.item() == pytest.approx(0.55)
    ema.eval()
    assert ema(torch.zeros(3)).item() == pytest.approx(0.55) and ema.value.item() == pytest.approx(0.55)
    restored = EMABaseline()
    restored.load_state_dict(ema.state_dict())
    assert restored.value.item() == pytest.approx(0.55)
    with pytest.raises(UserError):
        EMABaseline(decay=1.5)


def test_learned_baseline_is_trained_only_by_its_regression_loss():
    log_prob = torch.randn(3, 4, requires_grad=True)
    pred = torch.full((4,), 0.3, requires_grad=True)
    reward = torch.tensor([[1.0, 0.0, 1.0, 1.0]] * 3)
    pg = torch.autograd.grad(reinforce_loss(log_prob, reward, pred), pred, allow_unused=True)[0]
    assert pg is None
    (grad,) = torch.autograd.grad(learned_baseline_loss(pred, reward), pred)
    torch.testing.assert_close(grad, 2 * (0.3 - reward).mean(0) / 4)  # mean over 3 x 4 terms
    with pytest.raises(UserError):
        learned_baseline_loss(torch.zeros(5), reward)
    with pytest.raises(UserError):
        reinforce_loss(log_prob, reward[0], 0.0)


# ----------------------------------------------------------------------------------------------------
# WS-RAM "VAR" (eqs 3-5): unbiased for dF/dtheta
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_samples, control_variate", [(1, False), (2, False), (2, True), (3, True)])
def test_variational_bound_expectation_is_exact_gradient_of_f(num_samples, control_variate):
    toy = Toy()
    _, neg_f, _ = toy.exact()

    def loss_fn(log_py, log_pa, log_q):
        return variational_bound_loss(log_py, log_pa, control_variate=control_variate)

    expected = _enumerated_expectation(toy, loss_fn, num_samples, use_q=False)
    torch.testing.assert_close(expected[:21], neg_f, rtol=0, atol=1e-10)


def test_variational_bound_monte_carlo_and_control_variate():
    toy = Toy()
    _, neg_f, _ = toy.exact()
    runs = {}
    for name, kwargs in [("plain", {}), ("cv", {"control_variate": True}), ("baseline", "learned")]:
        if kwargs == "learned":
            kwargs = {"baseline": torch.full((20000,), -0.6, dtype=DT)}

        def loss_fn(log_py, log_pa, log_q, kwargs=kwargs):
            return variational_bound_loss(log_py, log_pa, **kwargs)

        runs[name] = _monte_carlo(toy, loss_fn, 4, 20000, use_q=False, seed=1)[:, :21]
        _assert_mean_within_3se(runs[name], neg_f)
    assert _total_variance(runs["cv"]) < 0.7 * _total_variance(runs["plain"])
    with pytest.raises(UserError):
        variational_bound_loss(torch.zeros(1, 2), torch.zeros(1, 2), control_variate=True)


# ----------------------------------------------------------------------------------------------------
# WS-RAM wake-sleep (eqs 6-18): biased but consistent; control variates have mean exactly 0
# ----------------------------------------------------------------------------------------------------


def _ws_loss(use_q: bool, control_variate: bool):
    def loss_fn(log_py, log_pa, log_q):
        return wake_sleep_loss(log_py, log_pa, log_q if use_q else None, control_variate).loss

    return loss_fn


@pytest.mark.parametrize("use_q", [False, True])
def test_wake_sleep_bias_shrinks_with_m_and_control_variates_keep_expectation(use_q):
    toy = Toy()
    neg_l, _, kl = toy.exact()
    target = torch.cat([neg_l, kl if use_q else torch.zeros_like(kl)])
    bias = []
    for m in (1, 2, 3, 4):
        plain = _enumerated_expectation(toy, _ws_loss(use_q, False), m, use_q)
        with_cv = _enumerated_expectation(toy, _ws_loss(use_q, True), m, use_q)
        torch.testing.assert_close(with_cv, plain, rtol=0, atol=1e-10)  # eq. 15: zero-mean
        bias.append((plain - target).norm().item())
    assert all(later < 0.95 * earlier for earlier, later in zip(bias, bias[1:], strict=False)), bias


@pytest.mark.parametrize("use_q", [False, True])
def test_wake_sleep_monte_carlo_matches_its_expectation_and_control_variates_cut_variance(use_q):
    toy = Toy()
    num_samples = 3
    variance = {}
    for control_variate in (False, True):
        loss_fn = _ws_loss(use_q, control_variate)
        expected = _enumerated_expectation(toy, loss_fn, num_samples, use_q)
        estimates = _monte_carlo(toy, loss_fn, num_samples, 20000, use_q, seed=2)
        _assert_mean_within_3se(estimates, expected)
        variance[control_variate] = _total_variance(estimates[:, :21]), _total_variance(estimates[:, 21:])
    if use_q:  # eta: eq. 17 vs eq. 14
        assert variance[True][1] < 0.7 * variance[False][1], variance
    else:  # theta: eq. 16 vs eq. 8 (with a q far from the prior, p/q can make eq. 16 noisier)
        assert variance[True][0] < 0.7 * variance[False][0], variance


def test_wake_sleep_log_likelihood_bound_orders_as_eqs_9_and_10():
    """E[log 1/M sum w~] <= l (eq. 9), >= F (eq. 10), and grows with M (Burda et al.)."""
    toy = Toy()
    with torch.no_grad():
        log_py, log_pa, log_q = (t[0] for t in toy.tables(*toy.params(1)))
    exact_l = torch.logsumexp(log_py + log_pa, 0).item()
    exact_f = (log_pa.exp() * log_py).sum().item()
    bounds = []
    for m in (1, 2, 3):
        tuples = torch.tensor(list(itertools.product(range(NUM_SEQ), repeat=m))).t()
        out = wake_sleep_loss(log_py[tuples], log_pa[tuples], log_q[tuples])
        bounds.append((log_q[tuples].sum(0).exp() * out.log_likelihood).sum().item())
    assert all(b <= exact_l for b in bounds), (bounds, exact_l)
    assert all(b2 > b1 for b1, b2 in zip(bounds, bounds[1:], strict=False)), bounds
    tuples = torch.tensor(list(itertools.product(range(NUM_SEQ), repeat=2))).t()
    prior_bound = wake_sleep_loss(log_py[tuples], log_pa[tuples]).log_likelihood
    assert exact_f <= (log_pa[tuples].sum(0).exp() * prior_bound).sum().item() <= exact_l


def test_wake_sleep_diagnostics_and_detachment():
    g = torch.Generator().manual_seed(0)
    log_py = torch.randn(5, 3, generator=g).requires_grad_()
    log_pa = torch.randn(5, 3, generator=g).requires_grad_()
    log_q = torch.randn(5, 3, generator=g).requires_grad_()
    out = wake_sleep_loss(log_py, log_pa, log_q, control_variate=True)
    torch.testing.assert_close(out.weights.sum(0), torch.ones(3))
    assert not out.weights.requires_grad and out.ess.shape == (3,)
    assert bool(((out.ess >= 1) & (out.ess <= 5)).all())
    # theta's loss does not reach log_q, eta's loss reaches nothing but log_q
    assert torch.autograd.grad(out.prediction_loss, log_q, allow_unused=True)[0] is None
    grads = torch.autograd.grad(out.inference_loss, (log_py, log_pa), allow_unused=True)
    assert all(grad is None for grad in grads)
    (grad_q,) = torch.autograd.grad(out.inference_loss, log_q)
    torch.testing.assert_close(grad_q, -(out.weights - 1 / 5) / 3)
    direct = inference_network_loss(log_q, out.weights, control_variate=True)
    torch.testing.assert_close(direct, out.inference_loss)
    prior_only = wake_sleep_loss(log_py, log_pa)
    assert prior_only.inference_loss.item() == 0.0
    torch.testing.assert_close(prior_only.weights, torch.softmax(log_py.detach(), 0))
    with pytest.raises(UserError):
        wake_sleep_loss(log_py, log_pa[:4])
    with pytest.raises(UserError):
        wake_sleep_loss(log_py[:, 0], log_pa[:, 0])


def test_importance_weights_and_effective_sample_size():
    uniform = normalized_importance_weights(torch.full((6, 2), -3.0))
    torch.testing.assert_close(effective_sample_size(uniform), torch.full((2,), 6.0))
    one_hot = normalized_importance_weights(torch.tensor([[0.0], [-1e4], [-1e4]]))
    torch.testing.assert_close(effective_sample_size(one_hot), torch.ones(1))
    log_w = torch.randn(7, 100, generator=torch.Generator().manual_seed(0), dtype=DT) * 3
    weights = normalized_importance_weights(log_w)
    torch.testing.assert_close(weights, normalized_importance_weights(log_w + 1e4))  # shift-invariant, stable
    ess = effective_sample_size(weights)
    assert bool(((ess >= 1 - 1e-6) & (ess <= 7 + 1e-6)).all())
    half_half = torch.tensor([[0.5], [0.5], [0.0]])
    torch.testing.assert_close(effective_sample_size(half_half), torch.full((1,), 2.0))


# ----------------------------------------------------------------------------------------------------
# Selection of k distinct locations (TNet App. A.2)
# ----------------------------------------------------------------------------------------------------


def _naive_log_prob(logits: torch.Tensor, picks) -> float:
    p = torch.softmax(logits, -1)
    total, used = 0.0, 0.0
    for i in picks:
        total += math.log(p[i].item() / (1.0 - used))
        used += p[i].item()
    return total


@pytest.mark.parametrize("n, k", [(5, 3), (4, 4), (6, 1)])
def test_without_replacement_log_probs_sum_to_one_over_ordered_tuples(n, k):
    logits = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=DT) * 2
    tuples = torch.tensor(list(itertools.permutations(range(n), k)))
    log_prob = log_prob_without_replacement(logits.expand(len(tuples), -1), tuples)
    assert log_prob.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    for row in (0, len(tuples) // 2, len(tuples) - 1):
        assert log_prob[row].item() == pytest.approx(_naive_log_prob(logits, tuples[row].tolist()), abs=1e-12)


def test_sample_without_replacement_frequencies_match_log_prob():
    logits = torch.tensor([1.0, 0.2, -0.5, 0.6], dtype=DT)
    num_draws = 100_000
    idx, log_prob = sample_without_replacement(
        logits.expand(num_draws, -1), 2, generator=torch.Generator().manual_seed(0)
    )
    assert bool((idx[:, 0] != idx[:, 1]).all())
    torch.testing.assert_close(log_prob, log_prob_without_replacement(logits.expand(num_draws, -1), idx))
    pairs = torch.tensor(list(itertools.permutations(range(4), 2)))
    expected = num_draws * log_prob_without_replacement(logits.expand(len(pairs), -1), pairs).exp()
    observed = torch.bincount(idx[:, 0] * 4 + idx[:, 1], minlength=16)[pairs[:, 0] * 4 + pairs[:, 1]]
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 31.26, chi2  # 99.9% quantile of chi-square with 11 degrees of freedom


def test_reinforce_through_sampling_without_replacement_is_unbiased():
    """Score function of the without-replacement log-prob gives the exact gradient of E[r(pair)]."""
    base = torch.tensor([0.5, -0.3, 0.1, 0.8], dtype=DT)
    pairs = torch.tensor(list(itertools.permutations(range(4), 2)))
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))
    pair_reward = torch.linspace(0.0, 1.0, len(pairs), dtype=DT)[order]
    reward_table = torch.zeros(4, 4, dtype=DT)
    reward_table[pairs[:, 0], pairs[:, 1]] = pair_reward
    leaf = base.clone().requires_grad_()
    objective = (log_prob_without_replacement(leaf.expand(len(pairs), -1), pairs).exp() * pair_reward).sum()
    exact = -torch.autograd.grad(objective, leaf)[0]
    copies = 20000
    logits = base.expand(copies, -1).clone().requires_grad_()
    idx, log_prob = sample_without_replacement(logits, 2, generator=torch.Generator().manual_seed(1))
    reward = reward_table[idx[:, 0], idx[:, 1]]
    loss = reinforce_loss(log_prob, reward, batch_mean_baseline(reward, leave_one_out=True))
    _assert_mean_within_3se(torch.autograd.grad(loss, logits)[0] * copies, exact)


def test_topk_select_returns_largest_logits_in_order():
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    idx, log_prob = topk_select(logits, 3)
    torch.testing.assert_close(logits.gather(-1, idx), logits.topk(3, dim=-1).values)
    assert bool((logits.gather(-1, idx).diff(dim=-1) <= 0).all())
    torch.testing.assert_close(log_prob, torch.log_softmax(logits, -1).gather(-1, idx).sum(-1))
    _, exact = topk_select(logits, 3, renormalize=True)
    torch.testing.assert_close(exact, log_prob_without_replacement(logits, idx))
    assert bool((exact > log_prob).all())  # renormalising raises the later picks' probabilities
    (grad,) = torch.autograd.grad(exact.sum(), logits)
    assert grad.abs().sum() > 0
    for bad_k in (0, 8):
        with pytest.raises(UserError):
            topk_select(logits, bad_k)
        with pytest.raises(UserError):
            sample_without_replacement(logits, bad_k)
