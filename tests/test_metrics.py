"""Metrics against closed forms and independent implementations."""

import numpy as np
import pytest
import scipy.stats

from mmdguidance import metrics
from mmdguidance.gmm import GaussianMixture, mmd2_to_mixture
from mmdguidance.kernels import GaussianKernel, PolynomialKernel
from mmdguidance.mmd import MMD


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def test_exact_and_empirical_mmd(rng):
    Q = GaussianMixture(weights=[0.5, 0.5], means=[[0.0, 0.0], [3.0, 0.0]], covariances=[0.2, 0.2])
    X = Q.sample(200, random_state=1)
    assert metrics.exact_mmd2_to_mixture(X, Q, 1.0) == pytest.approx(mmd2_to_mixture(X, Q, 1.0))
    Y = rng.normal(size=(50, 2))
    k = GaussianKernel(bandwidth=1.0)
    assert metrics.mmd2_empirical(X, Y, kernel=k) == pytest.approx(MMD(kernel=k, estimator="unbiased").fit(Y).score(X))


def test_energy_distance_matches_scipy_in_1d(rng):
    x, y = rng.normal(size=40), rng.normal(size=55) + 0.5
    assert metrics.energy_distance(x[:, None], y[:, None]) == pytest.approx(scipy.stats.energy_distance(x, y) ** 2, rel=1e-10)
    assert metrics.energy_distance(x[:, None], x[:, None]) == pytest.approx(0.0, abs=1e-12)


def test_wasserstein_closed_forms(rng):
    x, y = rng.normal(size=30), rng.normal(size=30) + 1.0
    # 1-D equal sizes: W2^2 = mean of squared differences of sorted samples
    exact = np.sqrt(np.mean((np.sort(x) - np.sort(y)) ** 2))
    assert metrics.wasserstein2(x[:, None], y[:, None]) == pytest.approx(exact, rel=1e-8)
    # a translation moves every point by the same vector: W2 = |shift|
    X = rng.normal(size=(40, 3))
    assert metrics.wasserstein2(X, X + np.array([1.0, 2.0, 2.0])) == pytest.approx(3.0, rel=1e-8)
    a = metrics.sliced_wasserstein2(X, X + 1.0, random_state=0)
    assert a == metrics.sliced_wasserstein2(X, X + 1.0, random_state=0) and a > 0.5


def test_frechet_distance_closed_form(rng):
    # FD between large samples of two Gaussians -> the Gaussian closed form
    m1, m2 = np.zeros(2), np.array([1.0, -1.0])
    S1, S2 = np.diag([1.0, 0.5]), np.diag([2.0, 0.5])
    X = rng.multivariate_normal(m1, S1, size=200000)
    Y = rng.multivariate_normal(m2, S2, size=200000)
    exact = 2.0 + (1 + 2 - 2 * np.sqrt(2)) + 0.0
    assert metrics.frechet_distance(X, Y) == pytest.approx(exact, abs=0.02)
    assert metrics.frechet_distance(X[:500], X[:500]) == pytest.approx(0.0, abs=1e-6)


def test_kid_single_subset_is_unbiased_mmd(rng):
    X, Y = rng.normal(size=(30, 4)), rng.normal(size=(30, 4)) + 0.3
    kd = metrics.kernel_distance(X, Y, n_subsets=1, subset_size=30, random_state=0)
    direct = MMD(kernel=PolynomialKernel(), estimator="unbiased").fit(Y).score(X)
    assert kd["mean"] == pytest.approx(direct, rel=1e-10) and kd["subset_size"] == 30
    small = metrics.kernel_distance(X[:5], Y, subset_size=1000, random_state=0)
    assert small["subset_size"] == 5


def test_prdc_known_cases(rng):
    R = rng.normal(size=(200, 2))
    same = metrics.precision_recall_density_coverage(R, R, k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] == pytest.approx(1.0, abs=0.25)
    far = metrics.precision_recall_density_coverage(R, R + 100.0, k=5)
    assert far["precision"] == far["recall"] == far["coverage"] == far["density"] == 0.0
    # generated on half the support: full precision, about half the coverage/recall
    half = R[R[:, 0] > 0]
    pr = metrics.precision_recall_density_coverage(R, half, k=5)
    assert pr["precision"] > 0.95 and 0.3 < pr["coverage"] < 0.7


def test_kernel_entropies(rng):
    k = GaussianKernel(bandwidth=0.5)
    same = np.zeros((30, 2))
    assert metrics.rke(same, kernel=k) == pytest.approx(1.0)
    assert metrics.vendi_score(same, kernel=k) == pytest.approx(1.0)
    centers = np.array([[0, 0], [20, 0], [0, 20], [20, 20]], float)
    X = np.repeat(centers, 25, axis=0) + 0.01 * rng.normal(size=(100, 2))
    assert metrics.rke(X, kernel=k) == pytest.approx(4.0, rel=0.01)
    assert metrics.vendi_score(X, kernel=k) == pytest.approx(4.0, rel=0.01)
    assert metrics.vendi_score(X, kernel=k, q=2) == pytest.approx(metrics.rke(X, kernel=k), rel=1e-6)
    assert metrics.rrke(X, X, kernel=k) == pytest.approx(1.0, rel=1e-9)
    assert metrics.rrke(X[:25], X, kernel=k) > 1.5  # one of four modes


def test_mode_metrics():
    Q = GaussianMixture(weights=[0.25] * 4, means=[[0, 0], [5, 0], [0, 5], [5, 5]], covariances=[0.1] * 4)
    X = Q.sample(4000, random_state=0)
    cov = metrics.mode_coverage(X, Q)
    assert cov["modes_covered"] == 4 and cov["frac_near_mode"] > 0.97
    err = metrics.mode_weight_error(X, Q, [0.25] * 4)
    assert err < 3 * np.sqrt(0.25 * 0.75 / 4000) * 2
    sub = Q.subset([0, 1]).sample(1000, random_state=1)
    assert metrics.mode_coverage(sub, Q)["modes_covered"] == 2
    assert metrics.mode_weight_error(sub, Q, [0.25] * 4) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="target_weights"):
        metrics.mode_weight_error(sub, Q, [0.5, 0.5])


def test_bad_input(rng):
    X = rng.normal(size=(10, 2))
    with pytest.raises(ValueError, match="NaN"):
        metrics.energy_distance(np.full((3, 2), np.nan), X)
    with pytest.raises(ValueError, match="features"):
        metrics.wasserstein2(X, rng.normal(size=(10, 3)))
    with pytest.raises(ValueError, match="minimum of 6"):
        metrics.precision_recall_density_coverage(X[:3], X, k=5)
