"""The one pairwise-distance routine: exact zeros, float32 vs float64 on adversarial data, autograd."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmdguidance import distances
from mmdguidance.distances import centred_sq_dists, check_dense_size, sq_dists
from mmdguidance.kernels import GaussianKernel, IMQKernel
from mmdguidance.mmd import MMD


def _exact(X, Y):
    """Squared distances from exact differences in float64 (the reference)."""
    X, Y = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(Y, dtype=torch.float64)
    return ((X[:, None] - Y[None]) ** 2).sum(-1)


def _two_clusters(n=100, d=2, R=1000.0, seed=0):
    """Two clusters at +-R (mean of the pooled set near 0: centring on the mean does not help)."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n, d, generator=g) + R, torch.randn(n, d, generator=g) - R]).double()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_duplicates_and_self_distances_are_exactly_zero(dtype):
    g = torch.Generator().manual_seed(0)
    X = (torch.randn(10, 7, generator=g) * 3 + 50).to(dtype)
    X = torch.cat([X, X[:4], X[:1]])  # duplicated rows
    D = sq_dists(X)
    assert D.dtype == dtype and D.shape == (15, 15)
    same = (X[:, None] == X[None]).all(-1)  # identical rows
    assert bool((D[same] == 0).all())
    assert bool((D[~same] > 0).all()) and bool((D >= 0).all())


def test_float32_two_clusters_matches_float64():
    """Old expansion on uncentred float32 data: MMD² = -0.186 and 18-67% gradient errors."""
    X64, Y64 = _two_clusters(seed=1), _two_clusters(seed=2)
    X32, Y32 = X64.float(), Y64.float()
    # distances: float64 work precision, only the final rounding to float32
    torch.testing.assert_close(sq_dists(X32, Y32).double(), _exact(X32, Y32), rtol=2**-23, atol=0)
    for bw in (0.5, 1.0, "median"):
        for kern in (GaussianKernel(bandwidth=bw), IMQKernel(scale=bw)):
            m64 = MMD(kernel=kern).fit(Y32.double())  # same (rounded) references in float64
            m32 = MMD(kernel=kern).fit(Y32)
            # stated tolerance: |MMD²_32 - MMD²_64| <= 1e-6 (values of k are <= 1)
            assert abs(float(m32.score(X32)) - float(m64.score(X32.double()))) < 1e-6
            g64, g32 = m64.gradient(X32.double()), m32.gradient(X32)
            assert float((g32.double() - g64).norm() / g64.norm()) < 1e-5
            K32, K64 = m32.kernel_.gram(X32, Y32), m64.kernel_.gram(X32.double(), Y32.double())
            assert float((K32.double() - K64).abs().max()) < 1e-6


@pytest.mark.parametrize("kernel", [GaussianKernel(bandwidth=1e-3), GaussianKernel(bandwidth=[1e-3, 1.0]), IMQKernel(scale=1e-3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_diagonal_equals_diag_exactly(kernel, dtype):
    X = (_two_clusters(n=20, d=5, R=1e4) + 0.3).to(dtype)
    k = kernel.fit(X)
    K = k.gram(X)
    assert torch.equal(torch.diagonal(K), k.diag(X))


def test_autograd_through_distances():
    g = torch.Generator().manual_seed(3)
    X = (torch.randn(4, 3, generator=g, dtype=torch.float64) + 100).requires_grad_()
    Y = torch.randn(5, 3, generator=g, dtype=torch.float64) + 100
    W = torch.randn(4, 5, generator=g, dtype=torch.float64)
    (sq_dists(X, Y) * W).sum().backward()
    expected = 2 * (W.sum(1, keepdim=True) * X.detach() - W @ Y)  # d/dx_i sum_j W_ij |x_i - y_j|^2
    torch.testing.assert_close(X.grad, expected, rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    offset=st.sampled_from([0.0, 1.0, 1e3, 1e6, -1e8]),
    spread=st.sampled_from([1e-6, 1e-2, 1.0, 1e3]),
    n=st.integers(1, 12),
    d=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_relative_accuracy_against_exact_differences(offset, spread, n, d, seed):
    """Stated guarantee: relative error about sqrt(d) * eps64 / 2**-26 at worst; duplicates 0."""
    rng = np.random.default_rng(seed)
    X = offset + spread * rng.normal(size=(n, d))
    Y = np.concatenate([X[: n // 2], offset + spread * rng.normal(size=(3, d))])
    got = sq_dists(torch.as_tensor(X), torch.as_tensor(Y))
    ref = _exact(X, Y)
    assert bool((got[ref == 0] == 0).all())
    rel = (got - ref).abs() / ref.clamp_min(1e-300)
    assert float(torch.cat([rel[ref > 0], rel.new_zeros(1)]).max()) < 4e-8 * np.sqrt(d)


def test_centred_copies_share_the_centre():
    X, Y = torch.randn(3, 2, dtype=torch.float64) + 7, torch.randn(4, 2, dtype=torch.float64) - 7
    Xc, Yc, d2 = centred_sq_dists(X, Y)
    torch.testing.assert_close(Xc - Xc.mean(0) + X.mean(0), X)
    torch.testing.assert_close(d2, _exact(Xc, Yc))
    torch.testing.assert_close(Xc[:1] - Yc[:1], X[:1] - Y[:1])


def test_complex_is_rejected():
    with pytest.raises(TypeError, match="complex"):
        sq_dists(torch.zeros(2, 2, dtype=torch.complex64))


def test_dense_size_check_states_limit_and_alternative(monkeypatch):
    monkeypatch.setattr(distances, "MAX_DENSE_ELEMENTS", 100)
    check_dense_size(10, 10, func="f", alternative="do x")
    with pytest.raises(ValueError, match=r"f: needs a dense 11 x 10 matrix .*limit of 100 elements.*MAX_DENSE_ELEMENTS.*do x"):
        check_dense_size(11, 10, func="f", alternative="do x")


def test_large_low_precision_problems_run_in_float32_and_stay_accurate(monkeypatch):
    """Above FLOAT64_MAX_WORK multiply-adds float32 input is computed in float32 (speed), with the
    same centring and exact small distances: duplicates 0, two far clusters within the stated bound."""
    monkeypatch.setattr(distances, "FLOAT64_MAX_WORK", 0)
    assert distances.work_dtype(torch.float32, 1) == torch.float32
    assert distances.work_dtype(torch.float64, 1) == torch.float64
    X32 = _two_clusters(n=50, d=3, R=1000.0, seed=4).float()
    X32 = torch.cat([X32, X32[:5]])
    D = sq_dists(X32)
    ref = _exact(X32, X32)
    assert bool((D[ref == 0] == 0).all())
    rel = ((D.double() - ref).abs() / ref.clamp_min(1e-300))[ref > 0]
    assert float(rel.max()) < 8e-6 * np.sqrt(3)
    k = GaussianKernel(bandwidth=1.0).fit(X32)
    torch.testing.assert_close(torch.diagonal(k.gram(X32)), k.diag(X32), rtol=0, atol=0)
    g32 = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(X32[:40]).gradient(X32[40:])
    g64 = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(X32[:40].double()).gradient(X32[40:].double())
    assert float((g32.double() - g64).norm() / g64.norm()) < 1e-3
