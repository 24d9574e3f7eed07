"""Metrics checked against closed forms, brute-force loops and independent implementations."""

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmdguidance import metrics
from mmdguidance.gmm import GaussianMixture, mmd2_to_mixture
from mmdguidance.kernels import GaussianKernel, PolynomialKernel, median_heuristic
from mmdguidance.mmd import MMD


def _rng(seed=0):
    return np.random.default_rng(seed)


def _bures2(m1, S1, m2, S2):
    """Squared W2 between N(m1, S1) and N(m2, S2) via the symmetric form (independent of sqrtm(S1 S2))."""
    lam, V = np.linalg.eigh(S1)
    R = (V * np.sqrt(np.clip(lam, 0, None))) @ V.T
    mid = np.sqrt(np.clip(np.linalg.eigvalsh(R @ S2 @ R), 0, None)).sum()
    return float(((m1 - m2) ** 2).sum() + np.trace(S1) + np.trace(S2) - 2 * mid)


def _exact_moments(n, mean, cov, seed):
    """n samples whose sample mean and (ddof=1) covariance are exactly ``mean`` and ``cov``."""
    Z = _rng(seed).normal(size=(n, len(mean)))
    Z -= Z.mean(0)
    L = np.linalg.cholesky(np.cov(Z, rowvar=False))
    Z = scipy.linalg.solve_triangular(L, Z.T, lower=True).T  # sample covariance = I
    return Z @ np.linalg.cholesky(cov).T + mean


# --------------------------------------------------------------------------- MMD family
def test_exact_mmd2_to_mixture_wraps_gmm():
    Q = GaussianMixture(weights=[0.5, 0.5], means=[[0.0, 0.0], [3.0, 0.0]], covariances=[0.2, 0.2])
    X = Q.sample(200, random_state=1)
    assert metrics.exact_mmd2_to_mixture(X, Q, 1.0) == pytest.approx(mmd2_to_mixture(X, Q, 1.0), rel=1e-12)
    assert metrics.exact_mmd2_to_mixture(torch.as_tensor(X), Q, [0.5, 2.0]) == pytest.approx(
        mmd2_to_mixture(X, Q, [0.5, 2.0]), rel=1e-10
    )
    with pytest.raises(ValueError, match="features"):
        metrics.exact_mmd2_to_mixture(np.zeros((5, 3)), Q, 1.0)
    with pytest.raises(TypeError, match="GaussianMixture"):
        metrics.exact_mmd2_to_mixture(X, "not a mixture", 1.0)


def test_mmd2_empirical_matches_direct_formula():
    rng = _rng(1)
    X, Y = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 0.4
    sig = median_heuristic(Y)  # the documented default: median pairwise distance of the references
    K = lambda A, B: np.exp(-scipy.spatial.distance.cdist(A, B, "sqeuclidean") / (2 * sig**2))  # noqa: E731
    n, m = len(X), len(Y)
    u = (K(X, X).sum() - n) / (n * (n - 1)) + (K(Y, Y).sum() - m) / (m * (m - 1)) - 2 * K(X, Y).mean()
    b = K(X, X).mean() + K(Y, Y).mean() - 2 * K(X, Y).mean()
    assert metrics.mmd2_empirical(X, Y) == pytest.approx(u, rel=1e-10)
    assert metrics.mmd2_empirical(X, Y, estimator="biased") == pytest.approx(b, rel=1e-10)
    k = PolynomialKernel()
    assert metrics.mmd2_empirical(X, Y, kernel=k) == pytest.approx(MMD(kernel=k, estimator="unbiased").fit(Y).score(X))
    assert metrics.mmd2_empirical(torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(Y)) == pytest.approx(u, rel=1e-5)


# --------------------------------------------------------------------------- energy distance
def test_energy_distance_matches_scipy_and_cdf_formula():
    rng = _rng(2)
    x, y = rng.normal(size=40), rng.normal(size=55) + 0.5
    e = metrics.energy_distance(x[:, None], y[:, None])
    # scipy returns sqrt(2E|X-Y| - E|X-X'| - E|Y-Y'|) = sqrt(2) * ||F - G||_2
    assert e == pytest.approx(scipy.stats.energy_distance(x, y) ** 2, rel=1e-10)
    # independent: 2 * integral of (F_n - G_m)^2 over the merged breakpoints
    t = np.sort(np.r_[x, y])
    F = np.searchsorted(np.sort(x), t[:-1], side="right") / len(x)
    G = np.searchsorted(np.sort(y), t[:-1], side="right") / len(y)
    assert e == pytest.approx(2 * np.sum((F - G) ** 2 * np.diff(t)), rel=1e-10)
    assert metrics.energy_distance(x[:, None], x[:, None]) == pytest.approx(0.0, abs=1e-12)


def test_energy_distance_unbiased_brute_force():
    rng = _rng(3)
    X, Y = rng.normal(size=(7, 2)), rng.normal(size=(9, 2)) + [1.0, 0.0]
    d = lambda a, b: np.linalg.norm(a - b)  # noqa: E731
    xy = np.mean([d(a, b) for a in X for b in Y])
    xx = np.mean([d(X[i], X[j]) for i in range(7) for j in range(7) if i != j])
    yy = np.mean([d(Y[i], Y[j]) for i in range(9) for j in range(9) if i != j])
    assert metrics.energy_distance(X, Y, estimator="unbiased") == pytest.approx(2 * xy - xx - yy, rel=1e-12)
    xx_v, yy_v = xx * 6 / 7, yy * 8 / 9  # V-statistic: the zero diagonal is averaged in
    assert metrics.energy_distance(X, Y) == pytest.approx(2 * xy - xx_v - yy_v, rel=1e-12)
    # unbiased: same-distribution samples can give a negative value, the V-statistic never does
    Z1, Z2 = _rng(4).normal(size=(5, 1)), _rng(5).normal(size=(5, 1))
    vals = [metrics.energy_distance(Z1 + s, Z2, estimator="unbiased") for s in (0.0, 0.1, -0.1)]
    assert min(vals) < 0 <= metrics.energy_distance(Z1, Z2)
    with pytest.raises(ValueError, match="estimator"):
        metrics.energy_distance(X, Y, estimator="V")


# --------------------------------------------------------------------------- optimal transport
def _w2_1d_quantiles(x, y):
    """Exact W2 between 1-D empirical measures by integrating the squared quantile difference."""
    x, y = np.sort(x), np.sort(y)
    u = np.unique(np.r_[np.arange(len(x) + 1) / len(x), np.arange(len(y) + 1) / len(y)])
    mid = (u[:-1] + u[1:]) / 2
    qx = x[np.minimum((mid * len(x)).astype(int), len(x) - 1)]
    qy = y[np.minimum((mid * len(y)).astype(int), len(y) - 1)]
    return math.sqrt(np.sum(np.diff(u) * (qx - qy) ** 2))


def test_wasserstein2_1d_closed_forms():
    rng = _rng(6)
    x, y = rng.normal(size=30), rng.normal(size=30) * 2 + 1.0
    sorted_pairs = np.sqrt(np.mean((np.sort(x) - np.sort(y)) ** 2))
    assert metrics.wasserstein2(x[:, None], y[:, None]) == pytest.approx(sorted_pairs, rel=1e-9)
    z = rng.normal(size=17)  # unequal sizes: quantile functions
    assert metrics.wasserstein2(x[:, None], z[:, None]) == pytest.approx(_w2_1d_quantiles(x, z), rel=1e-9)


def test_wasserstein2_affine_map_and_gelbrich_bound():
    rng = _rng(7)
    X = rng.normal(size=(60, 3))
    # y = A x + b with A symmetric positive definite is the gradient of a convex function,
    # hence the optimal (Brenier) map: W2^2 = mean ||x - Ax - b||^2 exactly
    B = rng.normal(size=(3, 3))
    A = B @ B.T + 0.5 * np.eye(3)
    b = np.array([1.0, -2.0, 0.5])
    Y = X @ A + b
    assert metrics.wasserstein2(X, Y) ** 2 == pytest.approx(np.mean(np.sum((X - Y) ** 2, 1)), rel=1e-8)
    # two Gaussians: Gelbrich lower bound (exact) and closeness to it at n = 400 (approximate)
    X = rng.normal(size=(400, 2))
    Y = rng.normal(size=(400, 2)) @ np.array([[2.0, 0.5], [0.0, 1.0]]) + [3.0, 0.0]
    gel = _bures2(X.mean(0), np.cov(X, rowvar=False, ddof=0), Y.mean(0), np.cov(Y, rowvar=False, ddof=0))
    w2sq = metrics.wasserstein2(X, Y) ** 2
    assert gel - 1e-9 <= w2sq <= gel + 0.2


def test_sliced_wasserstein2():
    rng = _rng(8)
    X = rng.normal(size=(50, 3))
    a = metrics.sliced_wasserstein2(X, X + 1.0, random_state=0)
    assert a == metrics.sliced_wasserstein2(X, X + 1.0, random_state=0)
    assert a != metrics.sliced_wasserstein2(X, X + 1.0, random_state=1)
    g = torch.Generator().manual_seed(3)
    assert metrics.sliced_wasserstein2(X, X + 1, random_state=g) == metrics.sliced_wasserstein2(
        X, X + 1, random_state=torch.Generator().manual_seed(3)
    )
    # in 1-D every direction is +-1: SW2 = W2
    x, y = rng.normal(size=(25, 1)), rng.normal(size=(40, 1)) + 0.3
    assert metrics.sliced_wasserstein2(x, y, n_projections=5, random_state=0) == pytest.approx(
        metrics.wasserstein2(x, y), rel=1e-9
    )
    # translation by v: SW2^2 = mean_l (theta_l . v)^2, E = |v|^2 / d; (theta.v)^2/|v|^2 ~ Beta(1/2, (d-1)/2)
    v, d, L = np.array([1.0, 2.0, 2.0]), 3, 4000
    sw2 = metrics.sliced_wasserstein2(X, X + v, n_projections=L, random_state=5) ** 2
    se = (v @ v) * math.sqrt(2 * (d - 1) / (d**2 * (d + 2)) / L)
    assert abs(sw2 - (v @ v) / d) < 3 * se


# --------------------------------------------------------------------------- Frechet distance
def test_frechet_distance_gaussian_closed_form():
    m1, m2 = np.zeros(3), np.array([1.0, -1.0, 0.5])
    S1 = np.array([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 2.0]])
    S2 = np.diag([2.0, 0.5, 1.0])
    X, Y = _exact_moments(50, m1, S1, 0), _exact_moments(70, m2, S2, 1)
    assert metrics.frechet_distance(X, Y) == pytest.approx(_bures2(m1, S1, m2, S2), rel=1e-9)
    assert metrics.frechet_distance(Y, X) == pytest.approx(metrics.frechet_distance(X, Y), rel=1e-9)
    assert metrics.frechet_distance(X, X) == pytest.approx(0.0, abs=1e-9)
    Xt = torch.as_tensor(X, dtype=torch.float32)
    assert metrics.frechet_distance(Xt, Y) == pytest.approx(_bures2(m1, S1, m2, S2), rel=1e-5)


def test_frechet_distance_singular_covariance_warns():
    rng = _rng(9)
    X, Y = rng.normal(size=(5, 10)), rng.normal(size=(8, 10))  # rank 4 and 7 in 10 dimensions
    with pytest.warns(RuntimeWarning, match="singular covariance"):
        fd = metrics.frechet_distance(X, Y)
    exact = _bures2(X.mean(0), np.cov(X, rowvar=False), Y.mean(0), np.cov(Y, rowvar=False))
    assert fd == pytest.approx(exact, rel=2e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full-rank case does not warn
        metrics.frechet_distance(rng.normal(size=(50, 3)), rng.normal(size=(50, 3)))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.floats(-5, 5))
def test_frechet_distance_invariances(seed, shift):
    rng = _rng(seed)
    X, Y = rng.normal(size=(30, 3)), rng.normal(size=(40, 3)) * [1.0, 2.0, 0.5] + 1.0
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # orthogonal
    fd = metrics.frechet_distance(X, Y)
    assert fd >= -1e-9
    assert metrics.frechet_distance(X @ Q + shift, Y @ Q + shift) == pytest.approx(fd, rel=1e-7, abs=1e-9)


# --------------------------------------------------------------------------- KID
def test_kid_single_subset_is_unbiased_cubic_mmd():
    rng = _rng(10)
    X, Y = rng.normal(size=(30, 4)), rng.normal(size=(30, 4)) + 0.3
    kd = metrics.kernel_distance(X, Y, n_subsets=1, subset_size=30, random_state=0)
    k = lambda A, B: (A @ B.T / 4 + 1) ** 3  # noqa: E731
    n = 30
    direct = (k(X, X).sum() - np.trace(k(X, X))) / (n * (n - 1)) + (k(Y, Y).sum() - np.trace(k(Y, Y))) / (
        n * (n - 1)
    ) - 2 * k(X, Y).mean()
    assert kd["mean"] == pytest.approx(direct, rel=1e-10)
    assert kd["std"] == 0.0 and kd["subset_size"] == 30 and kd["n_subsets"] == 1
    # subsets of the full size are permutations: every subset gives the same value
    full = metrics.kernel_distance(X, Y, n_subsets=7, subset_size=1000, random_state=1)
    assert full["subset_size"] == 30 and full["mean"] == pytest.approx(direct, rel=1e-10) and full["std"] < 1e-10


def test_kid_subsets_seeded_and_unbiased():
    rng = _rng(11)
    X, Y = rng.normal(size=(200, 5)), rng.normal(size=(150, 5))
    kw = dict(n_subsets=3, subset_size=40)
    a = metrics.kernel_distance(X, Y, random_state=3, **kw)
    assert a == metrics.kernel_distance(X, Y, random_state=3, **kw)
    assert a["mean"] != metrics.kernel_distance(X, Y, random_state=4, **kw)["mean"]
    # same distribution: each subset value is unbiased for 0, and Var(mean) <= Var(one subset)
    same = metrics.kernel_distance(X, Y, n_subsets=20, subset_size=40, random_state=5)
    assert abs(same["mean"]) < 3 * same["std"]
    shifted = metrics.kernel_distance(X + 1.0, Y, n_subsets=10, subset_size=40, random_state=3)
    assert shifted["mean"] > 3 * shifted["std"] / math.sqrt(10)
    small = metrics.kernel_distance(X[:3], Y, n_subsets=2, random_state=0)  # clipped to 3 rows
    assert small["subset_size"] == 3 and np.isfinite(small["mean"])


# --------------------------------------------------------------------------- precision / recall / density / coverage
def _prdc_loops(R, F, k):
    def radius(A, i):
        return np.sort([np.linalg.norm(A[i] - A[j]) for j in range(len(A)) if j != i])[k - 1]

    rr = [radius(R, i) for i in range(len(R))]
    rf = [radius(F, j) for j in range(len(F))]
    inside = np.array([[np.linalg.norm(F[j] - R[i]) <= rr[i] for j in range(len(F))] for i in range(len(R))])
    recall = np.mean([any(np.linalg.norm(R[i] - F[j]) <= rf[j] for j in range(len(F))) for i in range(len(R))])
    return {
        "precision": inside.any(0).mean(),
        "recall": recall,
        "density": inside.sum() / (k * len(F)),
        "coverage": inside.any(1).mean(),
    }


def test_prdc_hand_made_case():
    real = np.arange(10.0)[:, None]  # k = 1: every real radius is 1
    fake = np.array([[0.5], [2.0], [20.0], [21.0]])  # fake radii 1.5, 1.5, 1, 1
    out = metrics.precision_recall_density_coverage(real, fake, k=1)
    # 0.5 in balls of reals 0, 1; 2.0 in balls of 1, 2, 3 (closed); 20, 21 in none
    assert out == {"precision": 0.5, "recall": 0.4, "density": 5 / 4, "coverage": 0.4}


def test_prdc_identical_far_and_brute_force():
    R = _rng(12).normal(size=(200, 2))
    same = metrics.precision_recall_density_coverage(R, R, k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    # each real ball holds its centre and its k neighbours: density = (k + 1) / k exactly
    assert same["density"] == pytest.approx(6 / 5, rel=1e-12)
    far = metrics.precision_recall_density_coverage(R, R + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    half = metrics.precision_recall_density_coverage(R, R[R[:, 0] > 0], k=5)
    assert half["precision"] > 0.95 and 0.3 < half["coverage"] < 0.7
    rng = _rng(13)
    A, B = rng.normal(size=(25, 3)), rng.normal(size=(30, 3)) * 1.3 + 0.3
    got = metrics.precision_recall_density_coverage(torch.as_tensor(A), torch.as_tensor(B), k=3)
    want = _prdc_loops(A, B, 3)
    assert got == pytest.approx(want, rel=1e-12)


def test_prdc_iid_density_near_one():
    rng = _rng(14)
    out = metrics.precision_recall_density_coverage(rng.normal(size=(1000, 2)), rng.normal(size=(1000, 2)), k=5)
    assert abs(out["density"] - 1.0) < 0.1 and out["precision"] > 0.9 and out["coverage"] > 0.9


# --------------------------------------------------------------------------- RKE / Vendi / RRKE
def _clusters(props, n=200, sep=30.0, seed=15, dim=2):
    rng = _rng(seed)
    counts = np.round(np.asarray(props) * n).astype(int)
    centres = sep * np.eye(len(props), dim) if len(props) <= dim else sep * rng.normal(size=(len(props), dim))
    return np.concatenate([c + 1e-5 * rng.normal(size=(m, dim)) for c, m in zip(centres, counts)])


def test_rke_vendi_closed_forms():
    k = GaussianKernel(bandwidth=0.5)
    same = np.ones((30, 2))
    assert metrics.rke(same, kernel=0.5) == pytest.approx(1.0)
    assert metrics.vendi_score(same, kernel=k) == pytest.approx(1.0)
    eq = _clusters([0.25] * 4, n=100, dim=4)
    for q in (1, 2, 3, np.inf):
        assert metrics.vendi_score(eq, kernel=k, q=q) == pytest.approx(4.0, rel=1e-4)
    assert metrics.rke(eq, kernel=k) == pytest.approx(4.0, rel=1e-4)
    p = np.array([0.5, 0.3, 0.2])
    X = _clusters(p, n=100, dim=3)  # 50 / 30 / 20 points
    assert metrics.rke(X, kernel=k) == pytest.approx(1 / np.sum(p**2), rel=1e-4)
    assert metrics.vendi_score(X, kernel=k) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-4)
    assert metrics.vendi_score(X, kernel=k, q=np.inf) == pytest.approx(1 / p.max(), rel=1e-4)
    assert metrics.vendi_score(X, kernel=k, q=2) == pytest.approx(metrics.rke(X, kernel=k), rel=1e-9)
    # a multi-scale kernel has k(x, x) = 2: the cosine normalisation gives the same mode count
    assert metrics.rke(X, kernel=GaussianKernel(bandwidth=[0.5, 1.0])) == pytest.approx(1 / np.sum(p**2), rel=1e-4)
    with pytest.raises(ValueError, match="distinct samples"):
        metrics.rke(same)  # the median heuristic of identical points is undefined
    with pytest.raises(ValueError, match="q must be"):
        metrics.vendi_score(X, q=0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 10.0))
def test_rke_vendi_invariances(seed, scale):
    rng = _rng(seed)
    X = rng.normal(size=(25, 3))
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    r, v = metrics.rke(X), metrics.vendi_score(X)
    assert 1.0 - 1e-9 <= r <= v + 1e-9 <= len(X) + 1e-9  # Renyi entropies decrease with the order
    # median bandwidth: invariant to rigid motions, scaling and row order
    assert metrics.rke(scale * X @ Q + 3.0) == pytest.approx(r, rel=1e-7)
    assert metrics.vendi_score(X[rng.permutation(25)]) == pytest.approx(v, rel=1e-7)
    # duplicating every sample keeps the spectrum of K/n (fixed kernel)
    k = GaussianKernel(bandwidth=1.0)
    assert metrics.vendi_score(np.r_[X, X], kernel=k) == pytest.approx(metrics.vendi_score(X, kernel=k), rel=1e-7)
    assert metrics.rke(np.r_[X, X], kernel=k) == pytest.approx(metrics.rke(X, kernel=k), rel=1e-9)
    assert metrics.rrke(X, np.r_[X, X], kernel=k) == pytest.approx(0.0, abs=1e-7)


def test_rrke_closed_forms():
    k = GaussianKernel(bandwidth=0.5)
    Y = _clusters([0.25] * 4, n=100, dim=4)
    assert metrics.rrke(Y, Y, kernel=k) == pytest.approx(0.0, abs=1e-9)
    # one of four equal modes: -2 log sum sqrt(p q) = -2 log(1/2)
    assert metrics.rrke(Y[:25], Y, kernel=k) == pytest.approx(2 * math.log(2), rel=1e-4)
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.2, 0.6])
    Xp, Yq = _clusters(p, n=100, dim=3), _clusters(q, n=100, dim=3, seed=16)
    want = -2 * math.log(np.sum(np.sqrt(p * q)))
    assert metrics.rrke(Xp, Yq, kernel=k) == pytest.approx(want, rel=1e-4)
    assert metrics.rrke(Yq, Xp, kernel=k) == pytest.approx(want, rel=1e-4)  # symmetric
    assert metrics.rrke(Y + 1000.0, Y, kernel=k) == math.inf
    # default kernel: fitted on the references (median bandwidth of Y)
    assert metrics.rrke(Xp, Yq) == pytest.approx(metrics.rrke(Xp, Yq, kernel=median_heuristic(Yq)), rel=1e-12)
    with pytest.raises(TypeError, match="kernel"):
        metrics.rrke(Xp, Yq, kernel="rbf")


# --------------------------------------------------------------------------- Gaussian mixtures
@pytest.fixture(scope="module")
def grid():
    return GaussianMixture(weights=[0.25] * 4, means=[[0, 0], [8, 0], [0, 8], [8, 8]], covariances=[0.3] * 4)


def test_mode_coverage_exact_samples(grid):
    n = 4000
    cov = metrics.mode_coverage(grid.sample(n, random_state=0), grid)
    assert cov["modes_covered"] == 4 and cov["n_components"] == 4
    assert cov["mahalanobis_radius"] == pytest.approx(math.sqrt(scipy.stats.chi2.ppf(0.9973002039, 2)), rel=1e-6)
    p = 0.9973002039  # mass within +-3 sigma in 1-D = mass inside the radius in d dimensions
    assert abs(cov["frac_near_mode"] - p) < 3 * math.sqrt(p * (1 - p) / n) + 1e-12
    assert sum(cov["per_mode_fraction"]) == pytest.approx(cov["frac_near_mode"])
    # the same in 8 dimensions with full covariances, where a Euclidean 3-sigma ball would hold ~2%
    rng = _rng(17)
    A = rng.normal(size=(2, 8, 8)) * 0.2
    Q8 = GaussianMixture(weights=[0.3, 0.7], means=np.r_[np.zeros((1, 8)), 20 * np.ones((1, 8))],
                         covariances=A @ A.transpose(0, 2, 1) + 0.5 * np.eye(8))
    cov8 = metrics.mode_coverage(torch.as_tensor(Q8.sample(n, random_state=1)), Q8)
    assert abs(cov8["frac_near_mode"] - p) < 3 * math.sqrt(p * (1 - p) / n) + 1e-12
    assert cov8["modes_covered"] == 2


def test_mode_coverage_subset_and_far(grid):
    sub = grid.subset([0, 1]).sample(1000, random_state=1)
    cov = metrics.mode_coverage(sub, grid)
    assert cov["modes_covered"] == 2 and cov["per_mode_fraction"][2:] == [0.0, 0.0]
    far = metrics.mode_coverage(sub + 100.0, grid)
    assert far["frac_near_mode"] == 0.0 and far["modes_covered"] == 0
    # a mode holding 5% of the samples is covered by the default rule (>= 0.1 * 0.25), not by min_fraction=0.1
    X = np.r_[grid.subset([0]).sample(190, random_state=2), grid.subset([1]).sample(10, random_state=3)]
    assert metrics.mode_coverage(X, grid)["modes_covered"] == 2
    assert metrics.mode_coverage(X, grid, min_fraction=0.1)["modes_covered"] == 1


def test_mode_weight_error(grid):
    n = 4000
    X = grid.sample(n, random_state=0)
    w = grid.weights
    err = metrics.mode_weight_error(X, grid, w)
    assert err == metrics.mode_weight_error(X, grid)  # default target: the mixture's weights
    assert err < 3 * 0.5 * np.sum(np.sqrt(w * (1 - w) / n))
    lab = grid.mode_assignment(X)  # independent histogram
    assert err == pytest.approx(0.5 * np.abs(np.bincount(lab, minlength=4) / n - w).sum(), abs=1e-15)
    # samples from two of four equal modes: TV = 0.5 exactly (both halves hold more than 1/4)
    sub = grid.subset([0, 1]).sample(1000, random_state=1)
    assert metrics.mode_weight_error(sub, grid, [0.25] * 4) == pytest.approx(0.5, abs=1e-12)
    assert metrics.mode_weight_error(sub, grid, [0.5, 0.5, 0, 0]) < 0.05
    with pytest.raises(ValueError, match="target_weights"):
        metrics.mode_weight_error(sub, grid, [0.5, 0.5])
    with pytest.raises(ValueError, match="target_weights"):
        metrics.mode_weight_error(sub, grid, [0.5, 0.5, 0.5, -0.5])


# --------------------------------------------------------------------------- input validation
@pytest.mark.parametrize(
    "fn, min_n",
    [
        (metrics.mmd2_empirical, 2),
        (metrics.energy_distance, 1),
        (metrics.wasserstein2, 1),
        (metrics.sliced_wasserstein2, 1),
        (metrics.frechet_distance, 2),
        (metrics.kernel_distance, 2),
        (metrics.precision_recall_density_coverage, 6),
        (metrics.rrke, 1),
    ],
)
def test_two_sample_bad_input(fn, min_n):
    rng = _rng(18)
    X = rng.normal(size=(10, 2))
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fn(bad, X)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="inf"):
        fn(X, bad)
    with pytest.raises(ValueError, match="same feature space"):
        fn(X, rng.normal(size=(10, 3)))
    with pytest.raises(ValueError, match="2-D|2D"):
        fn(X[:, 0], X)
    with pytest.raises(ValueError, match="0 sample|needs at least"):
        fn(X[:0], X)
    if min_n > 1:
        with pytest.raises(ValueError, match=f"needs at least {min_n} samples"):
            fn(X, X[: min_n - 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # FD of 2 samples in 2-D: singular covariance
        out = fn(X[:min_n], X)  # the minimum is enough
    assert all(np.isfinite(v) for v in (out.values() if isinstance(out, dict) else [out]))


def test_other_bad_input(grid):
    X = _rng(19).normal(size=(10, 2))
    with pytest.raises(ValueError, match="real needs at least 6 samples"):
        metrics.precision_recall_density_coverage(X[:3], X, k=5)
    with pytest.raises(ValueError, match="k must be"):
        metrics.precision_recall_density_coverage(X, X, k=0)
    with pytest.raises(ValueError, match="n_subsets"):
        metrics.kernel_distance(X, X, n_subsets=0)
    with pytest.raises(ValueError, match="n_projections"):
        metrics.sliced_wasserstein2(X, X, n_projections=0)
    with pytest.raises(ValueError, match="NaN"):
        metrics.rke(np.full((3, 2), np.nan), kernel=1.0)
    with pytest.raises(ValueError, match="NaN"):
        metrics.mode_coverage(np.full((3, 2), np.nan), grid)
    with pytest.raises(ValueError, match="features"):
        metrics.mode_coverage(np.zeros((3, 5)), grid)
    with pytest.raises(ValueError, match="threshold_sigma"):
        metrics.mode_coverage(X, grid, threshold_sigma=-1.0)
    with pytest.raises(TypeError, match="GaussianMixture"):
        metrics.mode_weight_error(X, None)


# --------------------------------------------------------------------------- robustness (issue 14)
from mmdguidance import distances  # noqa: E402


def test_torch_integer_tensors_not_rounded_through_float32():
    """Values above 2**24 were rounded (torch ints went through float32); numpy int64 was fine."""
    rng = _rng(30)
    X = rng.integers(2**25, 2**25 + 40, size=(12, 2))
    Y = rng.integers(2**25, 2**25 + 40, size=(10, 2))
    for fn in (metrics.wasserstein2, metrics.energy_distance, metrics.frechet_distance):
        want = fn(X.astype(np.float64), Y.astype(np.float64))
        assert fn(torch.as_tensor(X), torch.as_tensor(Y)) == pytest.approx(want, rel=1e-9, abs=1e-9)
        assert fn(X, Y) == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_wasserstein2_far_from_origin_identical_is_zero():
    """ot.dist on data offset by 1e6 gave W2 = 0.039 for identical sets."""
    X = _rng(31).normal(size=(50, 3)) + 1e6
    assert metrics.wasserstein2(X, X) == 0.0
    assert metrics.wasserstein2(X, X + np.array([3.0, 0, 0])) == pytest.approx(3.0, rel=1e-9)


def test_rrke_identical_is_positive_zero():
    X = _rng(32).normal(size=(20, 2))
    v = metrics.rrke(X, X)
    assert v == 0.0 and math.copysign(1.0, v) == 1.0


def test_vendi_large_q_is_finite_and_tends_to_q_inf():
    X = _rng(33).normal(size=(40, 2))
    big = metrics.vendi_score(X, kernel=1.0, q=1e5)
    assert np.isfinite(big)
    assert big == pytest.approx(metrics.vendi_score(X, kernel=1.0, q=math.inf), rel=1e-3)
    assert metrics.vendi_score(X, kernel=1.0, q=1e-6) == pytest.approx(
        metrics.vendi_score(X, kernel=1.0, q=1e-9), rel=1e-4)


def test_rke_in_blocks_equals_dense_formula(monkeypatch):
    X = _rng(34).normal(size=(37, 3))
    k = GaussianKernel(bandwidth=0.7).fit(X)
    K = k.gram(X) / 37
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 37 * 5)  # 5 rows per block
    assert metrics.rke(X, kernel=k) == pytest.approx(1.0 / (K * K).sum(), rel=1e-12)


@pytest.mark.parametrize(
    "call, alt",
    [(lambda X: metrics.wasserstein2(X, X), "sliced_wasserstein2"), (lambda X: metrics.vendi_score(X), "rke"),
     (lambda X: metrics.rrke(X, X), "subsample")],
)
def test_dense_metrics_check_size_up_front(monkeypatch, call, alt):
    """At n = 20,000 these needed > 7 GB; now a ValueError states the limit and the alternative."""
    X = _rng(35).normal(size=(11, 2))
    monkeypatch.setattr(distances, "MAX_DENSE_ELEMENTS", 100)
    with pytest.raises(ValueError, match=f"limit of 100 elements.*{alt}"):
        call(X)
    call(X[:10])


def test_prdc_tied_points_high_dimension_deterministic():
    """Radii from NearestNeighbors and distances from cdist disagreed on ties (identical sets: 1.85)."""
    rng = _rng(36)
    R = rng.normal(size=(40, 16)) + 1e3
    R = np.concatenate([R, R[:20]])  # duplicates: ties at exactly 0
    got = metrics.precision_recall_density_coverage(R, R, k=3)
    want = _prdc_loops(R, R, 3)
    assert got == pytest.approx(want, rel=1e-12)
    assert got["precision"] == got["recall"] == got["coverage"] == 1.0


def test_mode_coverage_min_fraction_shape_error(grid):
    X = grid.sample(50, random_state=0)
    with pytest.raises(ValueError, match=r"min_fraction must be a float or an array of shape \(4,\)"):
        metrics.mode_coverage(X, grid, min_fraction=[0.1, 0.2])
    assert metrics.mode_coverage(X, grid, min_fraction=np.full(4, 0.01))["modes_covered"] == 4


# --------------------------------------------------------------------------- reference implementations (item 17)
def _prdc_reference(real, fake, k):
    """prdc 0.2 (Naeem et al., github.com/clovaai/generative-evaluation-prdc, prdc/prdc.py), re-implemented:
    radii = k-th smallest nonzero column of np.partition(cdist(real, real), k) (kth = k incl. self),
    OPEN balls (``<``)."""
    from scipy.spatial.distance import cdist

    def radii(A):
        D = cdist(A, A)
        return np.partition(D, k, axis=-1)[:, k]

    rr, rf = radii(real), radii(fake)
    D = cdist(real, fake)
    precision = (D < rr[:, None]).any(axis=0).mean()
    recall = (D < rf[None, :]).any(axis=1).mean()
    density = (1.0 / k) * (D < rr[:, None]).sum(axis=0).mean()
    coverage = (D.min(axis=1) < rr).mean()
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


@pytest.mark.parametrize("seed, d, k", [(0, 2, 5), (1, 8, 3), (2, 64, 5)])
def test_prdc_matches_prdc_package_formula(seed, d, k):
    rng = _rng(40 + seed)
    real, fake = rng.normal(size=(120, d)), rng.normal(size=(90, d)) * 1.2 + 0.2
    got = metrics.precision_recall_density_coverage(real, fake, k=k)
    assert got == pytest.approx(_prdc_reference(real, fake, k), rel=1e-12)  # no ties: open = closed


def test_wasserstein2_matches_ot_emd2():
    import ot

    rng = _rng(41)
    X, Y = rng.normal(size=(60, 3)), rng.normal(size=(45, 3)) * 0.7 + 1.0
    M = ot.dist(X, Y, metric="sqeuclidean")
    want = math.sqrt(ot.emd2(np.full(60, 1 / 60), np.full(45, 1 / 45), M))  # POT returns W2 squared
    assert metrics.wasserstein2(X, Y) == pytest.approx(want, rel=1e-9)


def test_sliced_wasserstein2_matches_sorted_quantile_formula():
    rng = _rng(42)
    X, Y = rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 0.5
    g = torch.Generator().manual_seed(7)
    theta = torch.randn(4, 16, generator=g, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).numpy()  # the projections the metric draws for seed 7
    px, py = np.sort(X @ theta, axis=0), np.sort(Y @ theta, axis=0)  # equal sizes: W2^2 = mean sq. quantile gap
    want = math.sqrt(((px - py) ** 2).mean(0).mean())
    assert metrics.sliced_wasserstein2(X, Y, n_projections=16, random_state=7) == pytest.approx(want, rel=1e-10)


def test_energy_distance_matches_dcor_formula():
    """dcor.energy_distance (V-statistic, exponent 1): 2 E|X-Y| - E|X-X'| - E|Y-Y'| over all pairs."""
    from scipy.spatial.distance import cdist

    rng = _rng(43)
    X, Y = rng.normal(size=(30, 5)), rng.normal(size=(25, 5)) + 0.4
    want = 2 * cdist(X, Y).mean() - cdist(X, X).mean() - cdist(Y, Y).mean()
    assert metrics.energy_distance(X, Y) == pytest.approx(want, rel=1e-12)
    x, y = X[:, 0], Y[:, 0]  # 1-D: scipy returns the square root
    assert metrics.energy_distance(x[:, None], y[:, None]) == pytest.approx(scipy.stats.energy_distance(x, y) ** 2, rel=1e-10)


def test_frechet_distance_matches_sqrtm_formula_including_singular():
    """pytorch-fid's calculate_frechet_distance: |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2)."""
    rng = _rng(44)

    def fid_reference(X, Y):
        mu1, mu2 = X.mean(0), Y.mean(0)
        S1, S2 = np.cov(X, rowvar=False), np.cov(Y, rowvar=False)
        covmean = scipy.linalg.sqrtm(S1 @ S2).real
        return float(((mu1 - mu2) ** 2).sum() + np.trace(S1) + np.trace(S2) - 2 * np.trace(covmean))

    X, Y = rng.normal(size=(200, 6)), rng.normal(size=(150, 6)) * 1.3 + 0.2
    assert metrics.frechet_distance(X, Y) == pytest.approx(fid_reference(X, Y), rel=1e-8)
    # singular covariances (n < d): the documented regulariser eps * max(tr) / d * I biases the value
    Xs, Ys = rng.normal(size=(8, 12)), rng.normal(size=(9, 12)) + 0.1
    with pytest.warns(RuntimeWarning, match="singular"):
        got = metrics.frechet_distance(Xs, Ys)
    assert got == pytest.approx(_bures2(Xs.mean(0), np.cov(Xs, rowvar=False), Ys.mean(0), np.cov(Ys, rowvar=False)), rel=1e-3)


def test_vendi_matches_vendi_score_package_formula():
    """vendi_score.vendi.score_K (Friedman & Dieng): eigenvalues of K/n, exp of the order-q Renyi entropy."""
    rng = _rng(45)
    X = rng.normal(size=(40, 3))
    K = np.exp(-((X[:, None] - X[None]) ** 2).sum(-1) / (2 * 0.8**2))
    w = np.linalg.eigvalsh(K / 40)
    w = w[w > 0]
    for q in (0.5, 1.0, 2.0, 3.0):
        want = np.exp(-(w * np.log(w)).sum()) if q == 1 else np.exp(np.log((w**q).sum()) / (1 - q))
        assert metrics.vendi_score(X, kernel=0.8, q=q) == pytest.approx(want, rel=1e-9)


def test_rke_rrke_match_rke_paper_formulas():
    """Jalali, Li & Farnia (NeurIPS 2023) / RKE-score: RKE = 1/||K/n||_F^2; RRKE = -log ||K_XY / sqrt(nm)||_*^2."""
    rng = _rng(46)
    X, Y = rng.normal(size=(30, 2)), rng.normal(size=(25, 2)) + 0.3
    k = lambda A, B: np.exp(-((A[:, None] - B[None]) ** 2).sum(-1) / (2 * 0.9**2))  # noqa: E731
    assert metrics.rke(X, kernel=0.9) == pytest.approx(1.0 / ((k(X, X) / 30) ** 2).sum(), rel=1e-10)
    nuc = np.linalg.svd(k(X, Y) / math.sqrt(30 * 25), compute_uv=False).sum()
    assert metrics.rrke(X, Y, kernel=0.9) == pytest.approx(-math.log(nuc**2), rel=1e-10)
