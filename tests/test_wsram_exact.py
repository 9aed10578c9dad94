"""Exact expectations of the WS-RAM and VAR estimators (core.estimators) on a problem small enough to
enumerate: 3 glimpses x 2 locations = 8 glimpse sequences, and every M-tuple of sequences a proposal can
draw. For each proposal (the prior, the tempered prior, a defensive mixture of the two, an inference
network q), the probability-weighted sum of the estimator over all tuples must equal the gradient it
claims to estimate:
  VAR (eq. 5, +c, importance-corrected when the proposal is not the prior): dF/dtheta, F = E_p[log p(y|a)];
  WS-RAM (eq. 8, +c: eq. 16): the gradient of the finite-M bound E[log 1/M sum_m w~^m] (eq. 9) with the
  proposal held fixed, i.e. its exact finite-M expectation, which approaches d log p(y|I)/dtheta as M grows.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from core.estimators import variational_bound_loss, wake_sleep_loss

pytestmark = pytest.mark.unit

NUM_SEQ, T = 2**3, 1.25  # 3 glimpses x 2 locations; the temperature of §4.5 heuristic 1
PROPOSALS = ("prior", "tempered", "mixture", "q")


def problem():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(NUM_SEQ, generator=g, dtype=torch.float64)  # prior logits over sequences
    clf = torch.randn(NUM_SEQ, generator=g, dtype=torch.float64)  # log p(y|a) = logsigmoid(clf[a])
    eta = torch.randn(NUM_SEQ, generator=g, dtype=torch.float64)  # q's logits over sequences
    return theta, clf, eta


def log_proposal(name, theta, eta):
    """Log-density over the 8 sequences of the named proposal (its parameters are not theta's: fixed)."""
    theta = theta.detach()
    prior, tempered = F.log_softmax(theta, -1), F.log_softmax(theta / T, -1)
    return {"prior": prior, "tempered": tempered, "q": F.log_softmax(eta, -1),
            "mixture": torch.logaddexp(prior, tempered) - math.log(2)}[name]


def tuples(log_prop, M):
    """(M, K) sequence indices of all K = 8^M tuples and (K,) their probabilities under the proposal."""
    idx = torch.tensor(list(itertools.product(range(NUM_SEQ), repeat=M))).T
    return idx, log_prop.detach()[idx].sum(0).exp()


def expected_gradient(loss_fn, params, idx, prob):
    """sum_k prob_k * gradient of the estimator on tuple k, in one backward pass: every tuple gets its own
    copy of the parameters, so the batch-mean loss leaves gradient_k / K on copy k."""
    K = idx.shape[1]
    copies = [p.detach().expand(K, *p.shape).clone().requires_grad_() for p in params]
    loss_fn(idx, *copies).backward()
    return [K * (prob[:, None] * c.grad).sum(0) if c.grad is not None else torch.zeros_like(p)
            for c, p in zip(copies, params, strict=True)]


def per_tuple(table, idx):
    """(M, K) values table[k, idx[m, k]] of a (K, 8) per-tuple table."""
    return table.gather(1, idx.T).T


def var_loss(proposal, cv):
    def loss(idx, theta, clf, eta):
        log_pa = per_tuple(F.log_softmax(theta, -1), idx)
        log_py = per_tuple(F.logsigmoid(clf), idx)
        log_prop = None if proposal == "prior" else per_tuple(log_proposal(proposal, theta, eta), idx)
        return variational_bound_loss(log_py, log_pa, control_variate=cv, log_proposal=log_prop)

    return loss


def wsram_loss(proposal, cv):
    def loss(idx, theta, clf, eta):
        log_pa = per_tuple(F.log_softmax(theta, -1), idx)
        log_py = per_tuple(F.logsigmoid(clf), idx)
        log_q = None if proposal == "prior" else per_tuple(log_proposal(proposal, theta, eta), idx)
        return wake_sleep_loss(log_py, log_pa, log_q=log_q, control_variate=cv).prediction_loss

    return loss


def finite_m_bound_gradient(proposal, M, theta, clf, eta):
    """d/dtheta of E_{a^1..M ~ proposal}[log 1/M sum_m p(a^m) p(y|a^m) / proposal(a^m)], proposal fixed."""
    log_prop = log_proposal(proposal, theta, eta)
    idx, prob = tuples(log_prop, M)
    theta, clf = theta.clone().requires_grad_(), clf.clone().requires_grad_()
    log_w = (F.log_softmax(theta, 0) + F.logsigmoid(clf) - log_prop)[idx]
    bound = (prob * (torch.logsumexp(log_w, 0) - math.log(M))).sum()
    return torch.autograd.grad(bound, (theta, clf))


@pytest.mark.parametrize("cv", [False, True])
@pytest.mark.parametrize("proposal", PROPOSALS)
def test_var_is_unbiased_for_the_variational_bound(proposal, cv):
    theta, clf, eta = problem()
    theta_, clf_ = theta.clone().requires_grad_(), clf.clone().requires_grad_()
    bound = (F.softmax(theta_, 0) * F.logsigmoid(clf_)).sum()  # F = E_p[log p(y|a)], eq. 3
    want = torch.autograd.grad(bound, (theta_, clf_))
    for M in (2, 3):
        idx, prob = tuples(log_proposal(proposal, theta, eta), M)
        *got, got_eta = expected_gradient(var_loss(proposal, cv), (theta, clf, eta), idx, prob)
        for g, w in zip(got, want, strict=True):  # the loss's gradient is minus the ascent direction
            torch.testing.assert_close(-g, w, rtol=1e-10, atol=1e-12)
        assert not got_eta.any()  # the proposal is fixed: no gradient reaches q


def test_uncorrected_tempered_samples_bias_var():
    """Without the importance correction, tempered samples estimate the gradient of a different quantity."""
    theta, clf, eta = problem()
    idx, prob = tuples(log_proposal("tempered", theta, eta), 2)
    biased = expected_gradient(var_loss("prior", False), (theta, clf, eta), idx, prob)[0]
    unbiased = expected_gradient(var_loss("tempered", False), (theta, clf, eta), idx, prob)[0]
    assert (biased - unbiased).norm() > 0.05 * unbiased.norm()


@pytest.mark.parametrize("cv", [False, True])
@pytest.mark.parametrize("proposal", PROPOSALS)
def test_wsram_equals_the_finite_m_bound_gradient(proposal, cv):
    theta, clf, eta = problem()
    for M in (2, 3):
        idx, prob = tuples(log_proposal(proposal, theta, eta), M)
        *got, got_eta = expected_gradient(wsram_loss(proposal, cv), (theta, clf, eta), idx, prob)
        want = finite_m_bound_gradient(proposal, M, theta, clf, eta)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(-g, w, rtol=1e-10, atol=1e-12)
        assert not got_eta.any()  # eq. 8 leaves q to its own loss (eq. 14)


def test_wsram_bias_for_log_likelihood_shrinks_with_m():
    """With the prior as proposal, the finite-M expectation is biased for d log p(y|I)/dtheta (eq. 6), less
    so as M grows (§4.2: consistent, not unbiased)."""
    theta, clf, eta = problem()
    theta_ = theta.clone().requires_grad_()
    want = torch.autograd.grad(torch.logsumexp(F.log_softmax(theta_, 0) + F.logsigmoid(clf), 0), theta_)[0]
    bias = [(finite_m_bound_gradient("prior", M, theta, clf, eta)[0] - want).norm() / want.norm()
            for M in (2, 3, 4)]
    assert bias[0] > bias[1] > bias[2] > 0.01


@pytest.mark.parametrize("cv", [False, True])
def test_q_update_has_the_posterior_as_fixed_point(cv):
    """Eq. 14 (+c: eq. 17) at T = 1: with q equal to the posterior p(a|y,I) the weights are all 1/M and the
    expected update of q is exactly 0; away from it, the control variate leaves the expectation unchanged."""
    theta, clf, _ = problem()
    posterior = F.log_softmax(F.log_softmax(theta, 0) + F.logsigmoid(clf), 0)

    def q_loss(eta_cv):
        def loss(idx, theta, clf, eta):
            log_q = per_tuple(F.log_softmax(eta, -1), idx)
            out = wake_sleep_loss(per_tuple(F.logsigmoid(clf), idx), per_tuple(F.log_softmax(theta, -1), idx),
                                  log_q=log_q, control_variate=eta_cv)
            return out.inference_loss

        return loss

    idx, prob = tuples(posterior, 2)
    at_posterior = expected_gradient(q_loss(cv), (theta, clf, posterior), idx, prob)[2]
    torch.testing.assert_close(at_posterior, torch.zeros_like(at_posterior), rtol=0, atol=1e-12)
    eta = problem()[2]
    idx, prob = tuples(F.log_softmax(eta, 0), 2)
    plain, with_cv = (expected_gradient(q_loss(c), (theta, clf, eta), idx, prob)[2] for c in (False, True))
    torch.testing.assert_close(plain, with_cv, rtol=1e-10, atol=1e-12)
    assert plain.norm() > 1e-3
