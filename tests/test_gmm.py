"""Tests of the exact Gaussian-mixture oracle (mmdguidance.gmm).

Every closed form is checked against an independent route: scipy densities,
torch autograd, central finite differences, Monte Carlo within 3 standard
errors (fixed seeds), or a direct O(n^2) computation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from mmdguidance.gmm import (
    GaussianMixture,
    expected_kernel,
    kernel_mean_embedding,
    kernel_mean_embedding_grad,
    mmd2_mixtures,
    mmd2_to_mixture,
)


# --------------------------------------------------------------------------- fixtures / helpers
def random_spd(rng, d, scale=1.0):
    A = rng.standard_normal((d, d))
    return scale * (A @ A.T / d + 0.3 * np.eye(d))


def random_mixture(rng, K=3, d=2, spread=2.0, cov_scale=0.5):
    return GaussianMixture(
        weights=rng.uniform(0.2, 1.0, K),
        means=spread * rng.standard_normal((K, d)),
        covariances=np.stack([random_spd(rng, d, cov_scale) for _ in range(K)]),
    )


@pytest.fixture
def Q2():
    """A 2-D, 3-component mixture with full covariances."""
    return GaussianMixture(
        weights=[0.5, 0.3, 0.2],
        means=[[0.0, 0.0], [2.5, 1.0], [-1.5, 2.0]],
        covariances=[[[1.0, 0.3], [0.3, 0.5]], [[0.4, -0.1], [-0.1, 0.8]], [[0.6, 0.0], [0.0, 0.3]]],
    )


@pytest.fixture
def Q3():
    return random_mixture(np.random.default_rng(3), K=4, d=3)


def kernel_np(X, Y, bandwidth):
    """Direct multi-scale Gaussian kernel matrix, an independent implementation."""
    sig = np.atleast_1d(np.asarray(bandwidth, dtype=float))
    d2 = cdist(X, Y, "sqeuclidean")
    return sum(np.exp(-d2 / (2 * s * s)) for s in sig)


def assert_within_3se(samples, exact, axis=0):
    """Mean of i.i.d. ``samples`` along ``axis`` within 3 standard errors of ``exact``."""
    samples = np.asarray(samples, dtype=float)
    n = samples.shape[axis]
    mean = samples.mean(axis)
    se = samples.std(axis, ddof=1) / np.sqrt(n)
    err = np.abs(mean - exact)
    assert np.all(err <= 3 * se + 1e-12), f"MC mean {mean} vs exact {exact}: |err| {err} > 3 SE {3 * se}"


def scipy_log_prob(Q, X):
    comps = [
        np.log(Q.weights[k]) + multivariate_normal(Q.means[k], Q.covariances[k]).logpdf(X) for k in range(Q.n_components)
    ]
    return logsumexp(np.stack(comps, 1), axis=1)


# --------------------------------------------------------------------------- construction
def test_covariance_forms_are_equivalent():
    means = np.array([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5]])
    w = [2.0, 6.0]
    full_scalar = GaussianMixture(weights=w, means=means, covariances=np.stack([0.7 * np.eye(3)] * 2))
    shared = GaussianMixture(weights=w, means=means, covariances=0.7)
    per_comp = GaussianMixture(weights=w, means=means, covariances=[0.7, 0.7])
    diag = GaussianMixture(weights=w, means=means, covariances=np.full((2, 3), 0.7))
    X = np.random.default_rng(0).standard_normal((5, 3))
    for Q in (shared, per_comp, diag):
        np.testing.assert_allclose(Q.covariances, full_scalar.covariances)
        np.testing.assert_allclose(Q.log_prob(X), full_scalar.log_prob(X), rtol=1e-12)
    np.testing.assert_allclose(shared.weights, [0.25, 0.75])
    assert shared.n_components == 2 and shared.dim == 3
    diag2 = GaussianMixture(weights=[1.0], means=[[0.0, 0.0]], covariances=[[1.0, 4.0]])
    np.testing.assert_allclose(diag2.covariances[0], np.diag([1.0, 4.0]))
    assert shared.weights.dtype == np.float64 and not shared.weights.flags.writeable


# --------------------------------------------------------------------------- densities
def test_log_prob_matches_scipy(Q2, Q3):
    rng = np.random.default_rng(1)
    for Q in (Q2, Q3):
        X = 2.0 * rng.standard_normal((50, Q.dim))
        lp = Q.log_prob(X)
        assert isinstance(lp, np.ndarray) and lp.shape == (50,) and lp.dtype == np.float64
        np.testing.assert_allclose(lp, scipy_log_prob(Q, X), rtol=1e-10, atol=1e-12)
        lpt = Q.log_prob(torch.tensor(X))
        assert isinstance(lpt, torch.Tensor) and lpt.dtype == torch.float64
        np.testing.assert_allclose(lpt.numpy(), lp, rtol=1e-12)


def test_log_prob_stable_far_away_and_float32(Q2):
    X = np.array([[300.0, -400.0], [0.0, 0.0]])
    lp = Q2.log_prob(X)
    assert np.all(np.isfinite(lp))
    np.testing.assert_allclose(lp, scipy_log_prob(Q2, X), rtol=1e-10)
    lp32 = Q2.log_prob(torch.tensor(X[1:], dtype=torch.float32))
    assert lp32.dtype == torch.float32
    np.testing.assert_allclose(lp32.numpy(), lp[1:], rtol=1e-5)


def test_score_equals_autograd_and_finite_differences(Q3):
    rng = np.random.default_rng(2)
    X = 1.5 * rng.standard_normal((20, Q3.dim))
    Xt = torch.tensor(X, requires_grad=True)
    (g_auto,) = torch.autograd.grad(Q3.log_prob(Xt).sum(), Xt)
    s = Q3.score(X)
    np.testing.assert_allclose(s, g_auto.numpy(), rtol=1e-6, atol=1e-9)
    h = 1e-5
    fd = np.empty_like(X)
    for j in range(Q3.dim):
        e = np.zeros(Q3.dim)
        e[j] = h
        fd[:, j] = (Q3.log_prob(X + e) - Q3.log_prob(X - e)) / (2 * h)
    np.testing.assert_allclose(s, fd, rtol=1e-6, atol=1e-7)
    st_ = Q3.score(torch.tensor(X, dtype=torch.float32))
    assert st_.dtype == torch.float32
    np.testing.assert_allclose(st_.numpy(), s, rtol=1e-4, atol=1e-4)


def test_posterior_and_mode_assignment(Q2):
    X = Q2.sample(200, random_state=0)
    r = Q2.posterior(X)
    assert r.shape == (200, 3)
    np.testing.assert_allclose(r.sum(1), 1.0, rtol=1e-12)
    # Bayes rule from scipy component densities
    dens = np.stack([Q2.weights[k] * multivariate_normal(Q2.means[k], Q2.covariances[k]).pdf(X) for k in range(3)], 1)
    np.testing.assert_allclose(r, dens / dens.sum(1, keepdims=True), rtol=1e-9, atol=1e-14)
    np.testing.assert_array_equal(Q2.mode_assignment(X), r.argmax(1))
    ma = Q2.mode_assignment(torch.tensor(X))
    assert ma.dtype == torch.int64 and torch.equal(ma, torch.tensor(r.argmax(1)))


def test_zero_weight_component_is_ignored(Q2):
    Qz = Q2.reweighted([0.5, 0.3, 0.0])  # same relative weights as subset([0, 1])
    X = Q2.sample(30, random_state=1)
    np.testing.assert_allclose(Qz.posterior(X)[:, 2], 0.0)
    np.testing.assert_allclose(Qz.log_prob(X), Q2.subset([0, 1]).log_prob(X), rtol=1e-12)
    np.testing.assert_allclose(Qz.score(X), Q2.subset([0, 1]).score(X), rtol=1e-10)
    assert not np.any(Qz.sample(500, random_state=0, return_labels=True)[1] == 2)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), K=st.integers(1, 4), d=st.integers(1, 4))
def test_property_score_autograd_and_posterior_rows(seed, K, d):
    rng = np.random.default_rng(seed)
    Q = random_mixture(rng, K=K, d=d)
    X = torch.tensor(2.0 * rng.standard_normal((7, d)), requires_grad=True)
    (g,) = torch.autograd.grad(Q.log_prob(X).sum(), X)
    np.testing.assert_allclose(Q.score(X.detach()).numpy(), g.numpy(), rtol=1e-6, atol=1e-9)
    r = Q.posterior(X.detach().numpy())
    np.testing.assert_allclose(r.sum(1), 1.0, rtol=1e-12)
    assert np.all(r >= 0)
    np.testing.assert_allclose(Q.log_prob(X.detach().numpy()), scipy_log_prob(Q, X.detach().numpy()), rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------- sampling
def test_sample_reproducible_and_moments(Q2):
    a = Q2.sample(100, random_state=7)
    b = Q2.sample(100, random_state=7)
    c = Q2.sample(100, random_state=8)
    assert a.shape == (100, 2) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(Q2.sample(10, random_state=np.random.default_rng(3)), Q2.sample(10, random_state=3))

    n = 40000
    X, lab = Q2.sample(n, random_state=0, return_labels=True)
    assert lab.shape == (n,) and lab.dtype == np.int64
    assert_within_3se(np.eye(3)[lab], Q2.weights)  # label frequencies
    mu, cov = Q2.mean, Q2.covariance
    assert_within_3se(X, mu)
    C = X - mu
    prods = (C[:, :, None] * C[:, None, :]).reshape(n, -1)  # unbiased for cov given the true mean
    assert_within_3se(prods, cov.ravel())


def test_mixture_moment_formulas(Q2):
    # independent: mean/cov of a mixture via the law of total variance, component by component
    mu = sum(w * m for w, m in zip(Q2.weights, Q2.means))
    cov = sum(w * (S + np.outer(m - mu, m - mu)) for w, S, m in zip(Q2.weights, Q2.covariances, Q2.means))
    np.testing.assert_allclose(Q2.mean, mu, rtol=1e-12)
    np.testing.assert_allclose(Q2.covariance, cov, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- diffusion
def test_noised_moments_match_monte_carlo(Q2):
    ab = 0.4
    Qt = Q2.noised(ab)
    np.testing.assert_allclose(Qt.means, np.sqrt(ab) * Q2.means)
    np.testing.assert_allclose(Qt.covariances, ab * Q2.covariances + (1 - ab) * np.eye(2))
    n = 40000
    rng = np.random.default_rng(11)
    x0 = Q2.sample(n, random_state=12)
    xt = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * rng.standard_normal(x0.shape)
    assert_within_3se(xt, Qt.mean)
    C = xt - Qt.mean
    assert_within_3se((C[:, :, None] * C[:, None, :]).reshape(n, -1), Qt.covariance.ravel())


def test_noised_one_is_identity(Q3):
    Q1 = Q3.noised(1.0)
    np.testing.assert_array_equal(Q1.means, Q3.means)
    np.testing.assert_array_equal(Q1.covariances, Q3.covariances)
    np.testing.assert_array_equal(Q1.weights, Q3.weights)
    assert mmd2_mixtures(Q1, Q3, 1.0) == 0.0


def test_posterior_mean_x0_identities(Q3):
    rng = np.random.default_rng(4)
    X = 1.5 * rng.standard_normal((25, Q3.dim))
    # alpha_bar = 1: no noise, E[x0 | x] = x
    np.testing.assert_allclose(Q3.posterior_mean_x0(X, 1.0), X, rtol=1e-10, atol=1e-10)
    # Tweedie: E[x0 | x_t] = (x_t + (1 - ab) grad log q_t(x_t)) / sqrt(ab), via the noised mixture's score
    for ab in (0.9, 0.3, 0.02):
        tw = (X + (1 - ab) * Q3.noised(ab).score(X)) / np.sqrt(ab)
        np.testing.assert_allclose(Q3.posterior_mean_x0(X, ab), tw, rtol=1e-8, atol=1e-9)
    out = Q3.posterior_mean_x0(torch.tensor(X, dtype=torch.float32), 0.5)
    assert out.dtype == torch.float32 and out.shape == X.shape


def test_posterior_mean_x0_single_gaussian_closed_form():
    rng = np.random.default_rng(5)
    m, S = rng.standard_normal(3), random_spd(rng, 3)
    Q = GaussianMixture(weights=[1.0], means=m[None], covariances=S[None])
    ab = 0.35
    X = rng.standard_normal((10, 3))
    # Gaussian conditioning: x0 | x_t ~ N(m + Cov(x0,xt) Var(xt)^{-1} (xt - sqrt(ab) m), ...)
    gain = np.sqrt(ab) * S @ np.linalg.inv(ab * S + (1 - ab) * np.eye(3))
    expected = m + (X - np.sqrt(ab) * m) @ gain.T
    np.testing.assert_allclose(Q.posterior_mean_x0(X, ab), expected, rtol=1e-10)


def test_posterior_mean_x0_importance_sampling(Q2):
    ab = 0.5
    n = 200000
    x0 = Q2.sample(n, random_state=21)
    xs = np.array([[0.5, 0.5], [2.0, 1.5], [-1.0, 1.0]])
    exact = Q2.posterior_mean_x0(xs, ab)
    for x, ex in zip(xs, exact):
        logw = -((x - np.sqrt(ab) * x0) ** 2).sum(1) / (2 * (1 - ab))  # likelihood p(x_t | x0)
        w = np.exp(logw - logw.max())
        est = (w[:, None] * x0).sum(0) / w.sum()
        # delta-method SE of the self-normalised importance estimate
        se = np.sqrt((w[:, None] ** 2 * (x0 - est) ** 2).sum(0)) / w.sum()
        assert np.all(np.abs(est - ex) <= 3 * se), (est, ex, se)


# --------------------------------------------------------------------------- derived mixtures
def test_subset_and_reweighted(Q2):
    S = Q2.subset([2, 0])
    np.testing.assert_allclose(S.weights, [0.2 / 0.7, 0.5 / 0.7])
    np.testing.assert_array_equal(S.means, Q2.means[[2, 0]])
    np.testing.assert_array_equal(S.covariances, Q2.covariances[[2, 0]])
    R = Q2.reweighted([1, 1, 2])
    np.testing.assert_allclose(R.weights, [0.25, 0.25, 0.5])
    np.testing.assert_array_equal(R.means, Q2.means)
    with pytest.raises(ValueError, match="distinct"):
        Q2.subset([0, 0])
    with pytest.raises(ValueError, match="lie in"):
        Q2.subset([3])
    with pytest.raises(ValueError, match="empty"):
        Q2.subset([])
    with pytest.raises(ValueError, match="shape"):
        Q2.reweighted([1.0, 2.0])


# --------------------------------------------------------------------------- kernel mean embedding
def test_kernel_matches_GaussianKernel_convention():
    from mmdguidance.kernels import GaussianKernel

    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((6, 3)), rng.standard_normal((5, 3))
    for bw in (0.8, [0.5, 2.0]):
        K = GaussianKernel(bandwidth=bw).fit(Y).gram(X, Y)
        np.testing.assert_allclose(K, kernel_np(X, Y, bw), rtol=1e-10)


@pytest.mark.parametrize("bandwidth", [0.7, [0.5, 2.0]])
def test_embedding_and_grad_vs_monte_carlo(Q2, bandwidth):
    n = 100000
    Y = Q2.sample(n, random_state=31)
    Z = np.array([[0.0, 0.0], [2.0, 1.0], [-3.0, 3.0], [1.0, -1.0]])
    mu = kernel_mean_embedding(Z, Q2, bandwidth)
    g = kernel_mean_embedding_grad(Z, Q2, bandwidth)
    assert mu.shape == (4,) and g.shape == (4, 2)
    sig = np.atleast_1d(bandwidth)
    d2 = cdist(Z, Y, "sqeuclidean")  # (4, n)
    for i in range(len(Z)):
        ks = [np.exp(-d2[i] / (2 * s * s)) for s in sig]
        assert_within_3se(sum(ks), mu[i])
        # grad_1 k(z, y) = -sum_s k_s(z, y) (z - y) / s^2
        grads = -sum(k[:, None] * (Z[i] - Y) / s**2 for k, s in zip(ks, sig))
        assert_within_3se(grads, g[i])


def test_embedding_grad_vs_autograd_and_finite_differences(Q3):
    rng = np.random.default_rng(6)
    Z = 1.5 * rng.standard_normal((12, Q3.dim))
    bw = [0.6, 1.7]
    Zt = torch.tensor(Z, requires_grad=True)
    (ga,) = torch.autograd.grad(kernel_mean_embedding(Zt, Q3, bw).sum(), Zt)
    g = kernel_mean_embedding_grad(Z, Q3, bw)
    np.testing.assert_allclose(g, ga.numpy(), rtol=1e-6, atol=1e-12)
    h = 1e-5
    fd = np.stack(
        [
            (kernel_mean_embedding(Z + h * e, Q3, bw) - kernel_mean_embedding(Z - h * e, Q3, bw)) / (2 * h)
            for e in np.eye(Q3.dim)
        ],
        1,
    )
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_embedding_multiscale_is_sum_and_torch_roundtrip(Q3):
    Z = np.random.default_rng(7).standard_normal((9, Q3.dim))
    bws = [0.3, 1.0, 4.0]
    multi = kernel_mean_embedding(Z, Q3, bws)
    np.testing.assert_allclose(multi, sum(kernel_mean_embedding(Z, Q3, s) for s in bws), rtol=1e-12)
    gmulti = kernel_mean_embedding_grad(Z, Q3, bws)
    np.testing.assert_allclose(gmulti, sum(kernel_mean_embedding_grad(Z, Q3, s) for s in bws), rtol=1e-12)
    Z32 = torch.tensor(Z, dtype=torch.float32)
    m32, g32 = kernel_mean_embedding(Z32, Q3, bws), kernel_mean_embedding_grad(Z32, Q3, bws)
    assert m32.dtype == torch.float32 and g32.dtype == torch.float32
    np.testing.assert_allclose(m32.numpy(), multi, rtol=1e-5)
    np.testing.assert_allclose(g32.numpy(), gmulti, rtol=1e-4, atol=1e-6)


def test_embedding_single_gaussian_1d_closed_form():
    # 1-D: E exp(-(z-Y)^2/2s^2) for Y ~ N(m, v) = s/sqrt(s^2+v) exp(-(z-m)^2 / 2(s^2+v))
    Q = GaussianMixture(weights=[1.0], means=[[0.4]], covariances=2.0)
    z = np.array([[-1.0], [0.4], [3.0]])
    s = 0.9
    expected = s / np.sqrt(s**2 + 2.0) * np.exp(-((z[:, 0] - 0.4) ** 2) / (2 * (s**2 + 2.0)))
    np.testing.assert_allclose(kernel_mean_embedding(z, Q, s), expected, rtol=1e-12)


# --------------------------------------------------------------------------- expected kernel / MMD^2
def test_expected_kernel_vs_monte_carlo(Q2, Q3):
    P = Q2.noised(0.6).reweighted([0.2, 0.2, 0.6])
    n = 200000
    X = P.sample(n, random_state=41)
    Y = Q2.sample(n, random_state=42)
    bw = [0.5, 1.5]
    d2 = ((X - Y) ** 2).sum(1)
    kv = sum(np.exp(-d2 / (2 * s * s)) for s in bw)
    assert_within_3se(kv, expected_kernel(P, Q2, bw))
    # same-mixture term uses independent pairs too
    Y2 = Q2.sample(n, random_state=43)
    kqq = sum(np.exp(-((Y - Y2) ** 2).sum(1) / (2 * s * s)) for s in bw)
    assert_within_3se(kqq, expected_kernel(Q2, Q2, bw))


def test_expected_kernel_point_mass_limit_equals_embedding(Q2):
    # P = N(z, eps I) with eps -> 0: E_{P,Q} k -> mu_Q(z); the two closed forms must agree
    z = np.array([[0.7, -0.2]])
    P = GaussianMixture(weights=[1.0], means=z, covariances=1e-12)
    np.testing.assert_allclose(expected_kernel(P, Q2, 0.8), kernel_mean_embedding(z, Q2, 0.8)[0], rtol=1e-9)


def test_mmd2_mixtures_properties(Q2):
    bw = [0.5, 2.0]
    assert mmd2_mixtures(Q2, Q2, bw) == pytest.approx(0.0, abs=1e-12)
    # same distribution, components permuted: round-off only
    perm = [2, 0, 1]
    Qp = GaussianMixture(weights=Q2.weights[perm], means=Q2.means[perm], covariances=Q2.covariances[perm])
    assert abs(mmd2_mixtures(Q2, Qp, bw)) <= 1e-12
    P = Q2.subset([0, 1])
    a, b = mmd2_mixtures(P, Q2, bw), mmd2_mixtures(Q2, P, bw)
    assert a > 1e-4
    assert a == pytest.approx(b, rel=1e-12)
    assert mmd2_mixtures(Q2, Q2.noised(0.7), bw) > 0
    assert expected_kernel(P, Q2, bw) == pytest.approx(expected_kernel(Q2, P, bw), rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 4), bw=st.floats(0.2, 5.0))
def test_property_mmd2_nonnegative_symmetric(seed, d, bw):
    rng = np.random.default_rng(seed)
    P, Q = random_mixture(rng, K=2, d=d), random_mixture(rng, K=3, d=d)
    a, b = mmd2_mixtures(P, Q, bw), mmd2_mixtures(Q, P, bw)
    assert a >= 0 and a == pytest.approx(b, rel=1e-9, abs=1e-14)
    assert mmd2_mixtures(Q, Q, bw) == 0.0
    # E_PQ k <= sqrt(E_PP k E_QQ k) (Cauchy-Schwarz in the RKHS)
    assert expected_kernel(P, Q, bw) <= np.sqrt(expected_kernel(P, P, bw) * expected_kernel(Q, Q, bw)) * (1 + 1e-12)


def test_mmd2_to_mixture_direct_and_chunked(Q2):
    X = Q2.noised(0.8).sample(300, random_state=51)
    bw = [0.5, 1.5]
    direct = (
        kernel_np(X, X, bw).mean() - 2 * kernel_mean_embedding(X, Q2, bw).mean() + expected_kernel(Q2, Q2, bw)
    )
    v = mmd2_to_mixture(X, Q2, bw)
    assert isinstance(v, float)
    assert v == pytest.approx(direct, rel=1e-10)
    assert mmd2_to_mixture(X, Q2, bw, chunk_size=7) == pytest.approx(v, rel=1e-12)
    vt = mmd2_to_mixture(torch.tensor(X, dtype=torch.float32), Q2, bw)
    assert vt == pytest.approx(v, rel=1e-4, abs=1e-6)
    # equals the population MMD^2 against a Monte Carlo-free limit: a single point vs its point mass
    z = X[:1]
    assert mmd2_to_mixture(z, Q2, bw) == pytest.approx(
        mmd2_mixtures(GaussianMixture(weights=[1.0], means=z, covariances=1e-14), Q2, bw), rel=1e-8
    )


def test_mmd2_to_mixture_bias_of_v_statistic(Q2):
    # For X ~ Q^n: E[MMD^2_V] = (E k(x,x) - E_QQ k) / n with k(x,x) = number of scales
    bw = [0.6, 1.2]
    n, reps = 8, 1500
    X = Q2.sample(n * reps, random_state=61).reshape(reps, n, 2)
    vals = np.array([mmd2_to_mixture(x, Q2, bw) for x in X])
    assert np.all(vals >= 0)
    assert_within_3se(vals, (len(bw) - expected_kernel(Q2, Q2, bw)) / n)
    assert mmd2_to_mixture(Q2.sample(4000, random_state=62), Q2, bw) < 5 * (len(bw) / 4000)


# --------------------------------------------------------------------------- bad inputs
def test_bad_constructor_inputs():
    m = [[0.0, 0.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="nonnegative"):
        GaussianMixture(weights=[0.5, -0.1], means=m, covariances=1.0)
    with pytest.raises(ValueError, match="sum to 0"):
        GaussianMixture(weights=[0.0, 0.0], means=m, covariances=1.0)
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(weights=[np.nan, 1.0], means=m, covariances=1.0)
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(weights=[1, 1], means=m, covariances=[np.eye(2), [[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="not symmetric"):
        GaussianMixture(weights=[1, 1], means=m, covariances=[np.eye(2), [[1.0, 0.5], [0.0, 1.0]]])
    with pytest.raises(ValueError, match="> 0"):
        GaussianMixture(weights=[1, 1], means=m, covariances=[1.0, -1.0])
    with pytest.raises(ValueError, match="> 0"):
        GaussianMixture(weights=[1, 1], means=m, covariances=0.0)
    with pytest.raises(ValueError, match="rows but weights"):
        GaussianMixture(weights=[1, 1, 1], means=m, covariances=1.0)
    with pytest.raises(ValueError, match="2-D"):
        GaussianMixture(weights=[1.0], means=[0.0, 1.0], covariances=1.0)
    with pytest.raises(ValueError, match="shape"):
        GaussianMixture(weights=[1, 1], means=m, covariances=np.ones((2, 3, 3)))


def test_bad_method_inputs(Q2):
    with pytest.raises(ValueError, match="features but the mixture has dim 2"):
        Q2.log_prob(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        Q2.score(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D|2D"):
        Q2.posterior(np.zeros(2))
    with pytest.raises(ValueError, match="2-D"):
        Q2.score(torch.zeros(2))
    with pytest.raises(ValueError, match="features but the mixture has dim 2"):
        kernel_mean_embedding(np.zeros((2, 3)), Q2, 1.0)
    with pytest.raises(ValueError, match="inf"):
        mmd2_to_mixture(np.array([[0.0, np.inf]]), Q2, 1.0)
    for ab in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"alpha_bar must lie in \(0, 1\]"):
            Q2.noised(ab)
        with pytest.raises(ValueError, match=r"alpha_bar must lie in \(0, 1\]"):
            Q2.posterior_mean_x0(np.zeros((1, 2)), ab)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        Q2.sample(0)
    with pytest.raises(ValueError, match="dim"):
        mmd2_mixtures(Q2, GaussianMixture(weights=[1.0], means=[[0.0]], covariances=1.0), 1.0)
    with pytest.raises(TypeError, match="GaussianMixture"):
        expected_kernel(Q2, "not a mixture", 1.0)


@pytest.mark.parametrize("bw", [0.0, -1.0, [1.0, 0.0], float("nan"), float("inf")])
def test_bad_bandwidth_values(Q2, bw):
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        kernel_mean_embedding(np.zeros((1, 2)), Q2, bw)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        mmd2_mixtures(Q2, Q2, bw)


def test_bad_bandwidth_types(Q2):
    with pytest.raises(ValueError, match="empty"):
        expected_kernel(Q2, Q2, [])
    with pytest.raises(TypeError, match="median"):
        kernel_mean_embedding_grad(np.zeros((1, 2)), Q2, "median")
    with pytest.raises(ValueError, match="chunk_size"):
        mmd2_to_mixture(np.zeros((2, 2)), Q2, 1.0, chunk_size=0)


# --------------------------------------------------------------------------- robustness (issues 12, 14)
def test_mmd2_to_mixture_float32_self_kernel_is_exact():
    """float32 k(x, x) != 1 in mmd2_to_mixture (-3.7%): its Gram now comes from the shared distance routine."""
    Q = GaussianMixture(weights=[0.5, 0.5], means=[[1e3, 0.0], [-1e3, 0.0]], covariances=0.01)
    X = Q.sample(60, random_state=0)
    sig = 0.05
    v64 = mmd2_to_mixture(X, Q, sig)
    v32 = mmd2_to_mixture(torch.as_tensor(X, dtype=torch.float32), Q, sig)
    v32r = mmd2_to_mixture(torch.as_tensor(X, dtype=torch.float32).double(), Q, sig)  # same rounded points
    assert v32 == pytest.approx(v32r, rel=1e-6)
    assert abs(v32 - v64) < 1e-3 * v64


def test_ring_constructor():
    Q = GaussianMixture.ring()
    assert Q.n_components == 8 and Q.dim == 2
    a = 2 * np.pi * np.arange(8) / 8
    np.testing.assert_allclose(Q.means, 4.0 * np.c_[np.cos(a), np.sin(a)], atol=1e-15)
    np.testing.assert_allclose(Q.covariances, np.broadcast_to(0.0625 * np.eye(2), (8, 2, 2)))
    np.testing.assert_allclose(Q.weights, np.full(8, 1 / 8))
    Q5 = GaussianMixture.ring(n_modes=3, radius=2.0, std=0.5, dim=5, weights=[1, 2, 1], phase=np.pi / 2)
    assert Q5.dim == 5 and np.allclose(Q5.means[:, 2:], 0) and np.allclose(Q5.means[0], [0, 2, 0, 0, 0], atol=1e-15)
    np.testing.assert_allclose(Q5.weights, [0.25, 0.5, 0.25])
    for bad in ({"n_modes": 0}, {"dim": 1}, {"radius": -1.0}, {"std": 0.0}, {"phase": np.nan}, {"n_modes": 2.5}):
        with pytest.raises(ValueError):
            GaussianMixture.ring(**bad)


def test_bandwidth_parsed_by_the_kernel_parser(Q2):
    from mmdguidance.kernels import GaussianKernel

    k = GaussianKernel(bandwidth=[0.5, 2.0]).fit(np.zeros((3, 2)))
    assert mmd2_mixtures(Q2, Q2, k) == 0.0
    assert expected_kernel(Q2, Q2, k) == pytest.approx(expected_kernel(Q2, Q2, [0.5, 2.0]), rel=0)
    assert expected_kernel(Q2, Q2, np.array(0.5)) == pytest.approx(expected_kernel(Q2, Q2, 0.5), rel=0)
    with pytest.raises(ValueError, match="flat list"):
        expected_kernel(Q2, Q2, [[0.5, 2.0]])


def test_complex_parameters_rejected():
    with pytest.raises(TypeError, match="complex"):
        GaussianMixture(weights=[1.0], means=[[0.0, 1j]], covariances=1.0)
