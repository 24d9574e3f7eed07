"""Tests of mmdguidance.bandwidth against independent computations (scipy pdist, autograd)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from mmdguidance.bandwidth import cross_term_ratio, median_ladder_bandwidths, nonzero_distances, span_bandwidths
from mmdguidance.kernels import GaussianKernel


def two_mode_refs(seed=0, n_major=40, n_minor=10, sep=4.0, std=0.25):
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(0, std, (n_major, 2)), rng.normal(0, std, (n_minor, 2)) + [sep, 0]]


def test_nonzero_distances_match_pdist_and_drop_duplicates():
    Y = np.repeat(two_mode_refs()[:10], 5, axis=0)  # 10 distinct points, each 5 times
    d = pdist(Y)
    expected = np.sort(d[d > 0])
    got = nonzero_distances(Y)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert got.size == 45 * 25  # pairs of distinct points, 5 x 5 copies each


def test_span_ladder_geometry():
    Y = two_mode_refs()
    bw = span_bandwidths(Y, low_quantile=0.1, ratio=2.0)
    d = pdist(Y)
    assert bw[0] == pytest.approx(np.quantile(d, 0.1), rel=1e-10)
    np.testing.assert_allclose(np.diff(np.log2(bw)), 1.0, rtol=1e-12)
    assert bw[-1] >= d.max() > bw[-2]  # the ladder reaches the largest distance, one step at most beyond


def test_span_reaches_between_mode_scale_where_median_does_not():
    Y = two_mode_refs()  # 80% of the reference mass in one mode: most pairs share a mode
    med = np.median(pdist(Y))
    assert med < 1.0  # the median is the within-mode scale
    assert max(span_bandwidths(Y)) >= 4.0  # the ladder spans the 4-unit mode separation


def test_duplicates_do_not_collapse_the_bandwidth():
    Y = np.repeat(two_mode_refs()[[0, 1, 45]], [60, 5, 5], axis=0)  # 3 distinct points: most pairs are zero distance
    d = pdist(Y)
    assert np.median(d) == 0.0
    bw = span_bandwidths(Y)
    assert min(bw) >= np.min(d[d > 0]) - 1e-12
    lad = median_ladder_bandwidths(Y)
    assert lad[2] == pytest.approx(np.median(d[d > 0]), rel=1e-10)


def test_median_ladder_multiples():
    Y = two_mode_refs(1)
    m = np.median(pdist(Y))
    np.testing.assert_allclose(median_ladder_bandwidths(Y, multipliers=(0.5, 1, 3)), [0.5 * m, m, 3 * m], rtol=1e-10)


def test_torch_input_and_subsampling():
    Y = two_mode_refs()
    np.testing.assert_allclose(span_bandwidths(torch.tensor(Y, dtype=torch.float32)), span_bandwidths(Y), rtol=1e-5)
    big = np.random.default_rng(0).normal(size=(300, 3))
    assert span_bandwidths(big, max_points=100, random_state=1) == span_bandwidths(big, max_points=100, random_state=1)


@pytest.mark.parametrize(
    "Y, kw, match",
    [
        (np.ones((5, 2)), {}, "coincide"),
        (np.ones((1, 2)), {}, "minimum of 2"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), {}, "NaN|infinity|non-finite"),
        (np.eye(3), {"low_quantile": 1.0}, "low_quantile"),
        (np.eye(3), {"ratio": 1.0}, "ratio"),
    ],
)
def test_bad_input_raises_clear_errors(Y, kw, match):
    with pytest.raises(ValueError, match=match):
        span_bandwidths(Y, **kw)


def _autograd_terms(X, Y, sigma):
    """Self and cross gradients of the biased MMD² by autograd on the explicit double sums."""
    X = torch.tensor(X, requires_grad=True)
    Yt = torch.tensor(Y)
    B, N = X.shape[0], Yt.shape[0]

    def k(A, C):
        return sum(torch.exp(-torch.cdist(A, C) ** 2 / (2 * s * s)) for s in sigma)

    (gs,) = torch.autograd.grad(k(X, X.detach()).sum() / B**2 + k(X.detach(), X).sum() / B**2, X)
    (gc,) = torch.autograd.grad(-2.0 / (B * N) * k(X, Yt).sum(), X)
    return gs.norm(dim=1), gc.norm(dim=1)


@pytest.mark.parametrize("sigma", [[0.3], [0.3, 1.2, 4.8]])
def test_cross_term_ratio_matches_autograd(sigma):
    rng = np.random.default_rng(2)
    Y = two_mode_refs(3)
    X = np.r_[rng.normal(0, 0.3, (30, 2)), rng.normal(0, 0.3, (30, 2)) + [0, 4]]
    s, c = _autograd_terms(X, Y, sigma)
    kern = GaussianKernel(bandwidth=sigma).fit(Y)
    for tau in (1e-3, 0.1, 1.0):
        assert cross_term_ratio(X, Y, kern, threshold=tau) == pytest.approx(float((c < tau * s).double().mean()))


def test_cross_term_ratio_flags_the_within_mode_median():
    Y = two_mode_refs()
    rng = np.random.default_rng(5)
    X = np.r_[rng.normal(0, 0.25, (50, 2)), rng.normal(0, 0.25, (50, 2)) + [0, 4]]  # half the samples at a third mode
    assert cross_term_ratio(X, Y, GaussianKernel(bandwidth="median").fit(Y)) >= 0.45
    assert cross_term_ratio(X, Y, GaussianKernel(bandwidth=span_bandwidths(Y)).fit(Y)) == 0.0
