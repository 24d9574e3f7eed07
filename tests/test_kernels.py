"""Kernels: closed-form gradients vs autograd and finite differences, chunking, conventions, bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from mmdguidance.kernels import (
    ConstantKernel,
    GaussianKernel,
    IMQKernel,
    PolynomialKernel,
    ProductKernel,
    median_heuristic,
    pairwise_sq_dists,
)



@pytest.fixture(autouse=True, scope="module")
def _float64_default():
    """float64 by default inside this module only (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def make_kernel(kind, bw, split=None):
    if kind == "gauss":
        return GaussianKernel(bandwidth=bw)
    if kind == "multiscale":
        return GaussianKernel(bandwidth=[0.5 * bw, bw, 2.0 * bw])
    if kind == "median":
        return GaussianKernel(bandwidth="median", multipliers=(0.5, 2.0))
    if kind == "imq":
        return IMQKernel(scale=bw)
    if kind == "poly":
        return PolynomialKernel()
    if kind == "product":
        return ProductKernel(first=GaussianKernel(bandwidth=bw), second=IMQKernel(scale=1.0), split=split)
    raise AssertionError(kind)


KINDS = ["gauss", "multiscale", "median", "imq", "poly", "product"]


def weighted_sum(k, X, Y, W):
    """S(X) = sum_ij W_ij k(x_i, y_j); its gradient in x_i is the kernel's grad."""
    return (k.gram_tensor(X, Y) * W).sum()


def finite_diff_grad(k, X, Y, W, h=1e-5):
    """Central differences of S in every coordinate, vectorised: only row i of K moves when x_i moves."""
    B, D = X.shape
    E = torch.eye(D, dtype=X.dtype) * h  # (D, D)
    Xp = (X[:, None, :] + E[None]).reshape(B * D, D)
    Xm = (X[:, None, :] - E[None]).reshape(B * D, D)
    Wr = W.repeat_interleave(D, 0) if W.ndim == 2 else W.expand(B * D, -1)  # (B*D, N)
    diff = ((k.gram_tensor(Xp, Y) - k.gram_tensor(Xm, Y)) * Wr).sum(1)
    return (diff / (2 * h)).reshape(B, D)


@st.composite
def problems(draw):
    kind = draw(st.sampled_from(KINDS))
    D = draw(st.integers(2 if kind == "product" else 1, 64))
    B = draw(st.integers(1, 6))
    N = draw(st.integers(2, 7))
    bw = draw(st.floats(0.3, 5.0))
    seed = draw(st.integers(0, 2**31 - 1))
    wmode = draw(st.sampled_from(["none", "vector", "matrix"]))
    split = draw(st.integers(1, D - 1)) if kind == "product" else None
    return kind, B, N, D, bw, seed, wmode, split


@settings(max_examples=60, deadline=None)
@given(problems())
def test_grad_matches_autograd_and_finite_differences(p):
    kind, B, N, D, bw, seed, wmode, split = p
    g = torch.Generator().manual_seed(seed)
    # scale data to the bandwidth so kernel values are neither 0 nor 1 everywhere
    s = bw / max(np.sqrt(D), 1.0) * 1.5
    X = torch.randn(B, D, generator=g) * s
    Y = torch.randn(N, D, generator=g) * s
    k = make_kernel(kind, bw, split).fit(Y)
    if wmode == "none":
        W, wt = torch.full((N,), 1.0 / N), None
    elif wmode == "vector":
        W = torch.rand(N, generator=g)
        wt = W
    else:
        W = torch.rand(B, N, generator=g)
        wt = W
    closed = k.grad(X, Y, wt)
    Xr = X.clone().requires_grad_(True)
    weighted_sum(k, Xr, Y, W).backward()
    scale = closed.abs().max().item() + 1e-12
    torch.testing.assert_close(closed, Xr.grad, rtol=1e-6, atol=1e-9 * scale)
    fd = finite_diff_grad(k, X, Y, W if W.ndim == 2 else W.expand(B, N))
    torch.testing.assert_close(closed, fd, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("kind", KINDS)
def test_diag_and_diag_grad_match_autograd(kind):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(5, 4, generator=g)
    k = make_kernel(kind, 1.3, split=2).fit(X)
    torch.testing.assert_close(k.diag_tensor(X), torch.diagonal(k.gram_tensor(X, X)))
    # grad_1 k(x, y) at y = x: differentiate the first argument only
    Xr = X.clone().requires_grad_(True)
    k.gram_tensor(Xr, X).diagonal().sum().backward()
    torch.testing.assert_close(k.diag_grad_tensor(X), Xr.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_equals_unchunked(kind):
    g = torch.Generator().manual_seed(2)
    X, Y = torch.randn(37, 6, generator=g), torch.randn(11, 6, generator=g)
    W = torch.rand(37, 11, generator=g)
    k = make_kernel(kind, 1.0, split=3).fit(Y)
    full = k.grad(X, Y, W)
    if kind == "product":
        k.first_.chunk_size = 4
        k.second_.chunk_size = 4
    else:
        k.set_params(chunk_size=4)
    assert k._rows_per_chunk(11) == 4
    torch.testing.assert_close(k.grad(X, Y, W), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k.matvec_tensor(X, Y, W[0]), k.gram_tensor(X, Y) @ W[0])


def test_gaussian_gram_closed_form_and_multiscale_sum():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    d2 = ((X[:, None] - Y[None]) ** 2).sum(-1)
    K = GaussianKernel(bandwidth=0.7).fit(Y).gram(X, Y)
    assert isinstance(K, np.ndarray) and K.dtype == np.float64
    np.testing.assert_allclose(K, np.exp(-d2 / (2 * 0.49)), rtol=1e-12)
    Km = GaussianKernel(bandwidth=[0.7, 2.0]).fit(Y).gram(X, Y)
    np.testing.assert_allclose(Km, np.exp(-d2 / 0.98) + np.exp(-d2 / 8.0), rtol=1e-12)


def test_polynomial_defaults_are_kid():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(4, 7)), rng.normal(size=(5, 7))
    k = PolynomialKernel().fit(Y)
    assert k.gamma_ == pytest.approx(1 / 7)
    np.testing.assert_allclose(k.gram(X, Y), (X @ Y.T / 7 + 1) ** 3, rtol=1e-12)


def test_imq_closed_form():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    d2 = ((X[:, None] - Y[None]) ** 2).sum(-1)
    np.testing.assert_allclose(IMQKernel(scale=2.0).fit(Y).gram(X, Y), (1 + d2 / 4) ** -0.5, rtol=1e-12)


def test_median_heuristic_convention():
    Y = np.array([[0.0], [1.0], [3.0]])  # distances 1, 3, 2 -> median 2
    assert median_heuristic(Y) == pytest.approx(2.0)
    k = GaussianKernel(bandwidth="median").fit(Y)
    np.testing.assert_allclose(k.bandwidth_, [2.0])
    k = GaussianKernel(bandwidth="median", multipliers=(0.5, 1.0)).fit(Y)
    np.testing.assert_allclose(k.bandwidth_, [1.0, 2.0])


def test_product_with_constant_second_equals_first():
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(6, 5, generator=g), torch.randn(8, 5, generator=g)
    k1 = GaussianKernel(bandwidth=1.2).fit(Y[:, :3])
    kp = ProductKernel(first=GaussianKernel(bandwidth=1.2), second=ConstantKernel(), split=3).fit(Y)
    torch.testing.assert_close(kp.gram(X, Y), k1.gram(X[:, :3], Y[:, :3]), rtol=0, atol=0)
    gp = kp.grad(X, Y)
    torch.testing.assert_close(gp[:, :3], k1.grad(X[:, :3], Y[:, :3]), rtol=0, atol=0)
    assert torch.count_nonzero(gp[:, 3:]) == 0


def test_float32_centering_accuracy():
    """Far from the origin but close together: centring keeps float32 distances accurate."""
    base = torch.full((1, 16), 1000.0)
    g = torch.Generator().manual_seed(0)
    X64 = base + 1e-2 * torch.randn(5, 16, generator=g)
    Y64 = base + 1e-2 * torch.randn(7, 16, generator=g)
    X32, Y32 = X64.float(), Y64.float()
    d_exact = ((X32.double()[:, None] - Y32.double()[None]) ** 2).sum(-1)  # exact for the rounded inputs
    d32 = pairwise_sq_dists(X32, Y32)
    torch.testing.assert_close(d32.double(), d_exact, rtol=1e-3, atol=1e-7)
    naive = (X32 * X32).sum(1)[:, None] + (Y32 * Y32).sum(1)[None] - 2 * X32 @ Y32.T
    assert (naive.double() - d_exact).abs().max() > 100 * (d32.double() - d_exact).abs().max()


def test_numpy_in_numpy_out_torch_in_torch_out():
    Y = np.random.default_rng(0).normal(size=(5, 2))
    k = GaussianKernel(bandwidth=1.0).fit(Y)
    assert isinstance(k.grad(Y, Y), np.ndarray)
    Xt = torch.tensor(Y, dtype=torch.float32)
    out = k.grad(Xt, Xt)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32


def test_get_params_and_clone():
    from sklearn.base import clone

    k = ProductKernel(first=GaussianKernel(bandwidth=2.0), second=PolynomialKernel(degree=2), split=1)
    p = k.get_params()
    assert p["first__bandwidth"] == 2.0 and p["second__degree"] == 2
    k2 = clone(k)
    assert k2.get_params()["split"] == 1 and not hasattr(k2, "first_")


# ------------------------------------------------------------------ bad input
def test_unfitted_raises():
    with pytest.raises(NotFittedError):
        GaussianKernel().gram(np.zeros((2, 2)), np.zeros((2, 2)))


@pytest.mark.parametrize(
    "kernel, match",
    [
        (GaussianKernel(bandwidth=-1.0), "bandwidth must be > 0"),
        (GaussianKernel(bandwidth=0.0), "bandwidth must be > 0"),
        (GaussianKernel(bandwidth="mean"), "unknown bandwidth"),
        (GaussianKernel(bandwidth=[]), "empty"),
        (GaussianKernel(bandwidth=1.0, multipliers=(0.0,)), "multipliers"),
        (IMQKernel(beta=0.5), "beta"),
        (PolynomialKernel(degree=0), "degree"),
        (PolynomialKernel(gamma=-1.0), "gamma"),
        (ProductKernel(split=5), "split"),
        (GaussianKernel(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_params(kernel, match):
    with pytest.raises(ValueError, match=match):
        kernel.fit(np.random.default_rng(0).normal(size=(4, 3)))


def test_bad_arrays():
    Y = np.random.default_rng(0).normal(size=(4, 3))
    k = GaussianKernel(bandwidth=1.0).fit(Y)
    with pytest.raises(ValueError, match="2 features, but GaussianKernel is expecting 3"):
        k.gram(np.zeros((2, 2)), Y)
    bad = Y.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        k.gram(bad, Y)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="inf"):
        k.grad(bad, Y)
    with pytest.raises(ValueError, match="2D|2-D"):
        k.gram(np.zeros(3), Y)
    with pytest.raises(ValueError, match="weights must have shape"):
        k.grad(Y, Y, np.ones(3))
    with pytest.raises(ValueError, match="median heuristic needs at least 2"):
        GaussianKernel().fit(Y[:1])
    with pytest.raises(ValueError, match="coincide"):
        GaussianKernel().fit(np.ones((3, 2)))
    with pytest.raises(TypeError, match="dtype"):
        k.gram(torch.zeros(2, 3, dtype=torch.float32), torch.zeros(2, 3, dtype=torch.float64))


# --------------------------------------------------------------------------- robustness (issue 14)
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mmdguidance.kernels import parse_bandwidth  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 1.0, 1e3]), offset=st.sampled_from([0.0, 1e4]),
       d=st.integers(1, 6))
def test_median_heuristic_many_duplicates_never_degenerate(seed, scale, offset, d):
    """40 copies of one point among 50: round-off used to give ~1e-8 bandwidths (27-44% of trials)."""
    rng = np.random.default_rng(seed)
    Y = offset + scale * rng.normal(size=(50, d))
    Y[:40] = Y[0]
    spread = float(np.sqrt(((Y - Y.mean(0)) ** 2).sum(1).mean()))
    with pytest.warns(RuntimeWarning, match="pairwise distances are 0"):
        bw = median_heuristic(Y)
    assert bw >= 1e-6 * spread
    # the documented fallback: the (lower) median of the non-zero distances
    iu = np.triu_indices(50, 1)
    D = np.sqrt(((Y[:, None] - Y[None]) ** 2).sum(-1))[iu]
    nz = np.sort(D[D > 0])
    assert bw == pytest.approx(nz[(len(nz) - 1) // 2], rel=1e-7)
    # the fitted kernel is not degenerate: k(x, x) = 1 in gram and diag alike
    with pytest.warns(RuntimeWarning):
        k = GaussianKernel().fit(Y)
    assert np.array_equal(np.diag(k.gram(Y)), k.diag(Y))


def test_median_heuristic_lower_middle_and_bad_input():
    Y = np.array([[0.0], [1.0], [3.0], [7.0]])  # distances 1 2 3 4 6 7: lower middle 3 (np.median: 3.5)
    assert median_heuristic(Y) == 3.0
    for bad, what in ((np.nan, "NaN"), (np.inf, "inf")):
        Z = Y.copy()
        Z[1, 0] = bad
        with pytest.raises(ValueError, match=what):
            median_heuristic(Z)
        with pytest.raises(ValueError, match=what):
            median_heuristic(torch.as_tensor(Z))
    with pytest.raises(TypeError, match="complex"):
        median_heuristic(Y + 1j)
    near = np.concatenate([np.arange(10.0) * 1e-10, [1.0, 1e3]])[:, None]  # most pairs ~1e-9 apart
    with pytest.warns(RuntimeWarning, match="degenerate bandwidth"):
        median_heuristic(near)


@pytest.mark.parametrize(
    "spec, expected",
    [(np.array(1.5), [1.5]), (torch.tensor(2.0), [2.0]), ([1, 2], [1.0, 2.0]), (np.array([0.5, 3.0]), [0.5, 3.0]), (3, [3.0])],
)
def test_bandwidth_specs_accepted(spec, expected):
    Y = np.random.default_rng(0).normal(size=(6, 2))
    np.testing.assert_array_equal(GaussianKernel(bandwidth=spec).fit(Y).bandwidth_, expected)
    np.testing.assert_array_equal(parse_bandwidth(spec), expected)


def test_bandwidth_specs_rejected_clearly():
    Y = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(ValueError, match=r"flat list.*shape \(1, 2\)"):
        GaussianKernel(bandwidth=[[1, 2]]).fit(Y)
    with pytest.raises(TypeError, match="complex"):
        GaussianKernel(bandwidth=np.array([1 + 2j])).fit(Y)
    with pytest.raises(TypeError, match="bandwidth"):
        GaussianKernel(bandwidth=True).fit(Y)
    with pytest.raises(ValueError, match=r"bandwidth must be > 0"):
        GaussianKernel(bandwidth=np.array(-1.0)).fit(Y)
    with pytest.raises(ValueError, match="IMQKernel takes one scale"):
        IMQKernel(scale=[1, 5]).fit(Y)
    with pytest.raises(TypeError, match="resolved on data"):
        parse_bandwidth("median")


def test_scalar_multiplier_is_one_multiplier():
    Y = np.random.default_rng(0).normal(size=(6, 2))
    k = GaussianKernel(bandwidth=1.5, multipliers=2.0).fit(Y)
    np.testing.assert_array_equal(k.bandwidth_, [3.0])


def test_parse_bandwidth_accepts_fitted_gaussian_kernel_by_type():
    k = GaussianKernel(bandwidth=[1.0, 2.0]).fit(np.zeros((2, 1)))
    np.testing.assert_array_equal(parse_bandwidth(k), [1.0, 2.0])

    class Impostor:  # the old parser recognised a kernel by its class *name*
        bandwidth_ = np.array([5.0])

    Impostor.__name__ = "GaussianKernel"
    with pytest.raises(TypeError):
        parse_bandwidth(Impostor())


@pytest.mark.parametrize("R", [1e3, 1e5])
def test_imq_gradient_far_points(R):
    """Two far generated points: the identical-row term of the stacked gradient used to cost eps*(R/c)^3 (8.5% at 1e5)."""
    from mmdguidance.mmd import MMD

    rng = np.random.default_rng(0)
    Y = rng.normal(size=(50, 2))
    X = np.array([[R, 0.3], [-R, 0.1]])
    beta = -0.5

    def gsum(A, B, w):  # sum_j w_j grad_1 k(a_i, b_j) from exact differences
        diff = A[:, None] - B[None]
        d2 = (diff**2).sum(-1)
        return ((2 * beta * (1 + d2) ** (beta - 1) * w)[..., None] * diff).sum(1)

    ref = (2 / 4) * gsum(X, X, np.ones(2)) - (2 / 2) * gsum(X, Y, np.full(50, 1 / 50))
    g = MMD(kernel=IMQKernel(scale=1.0)).fit(Y).gradient(X)
    np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


def test_integer_tensors_are_exact_above_2_pow_24():
    """Integer tensors go through float64 like numpy integers (float32 would round 2**24 + 1 to 2**24)."""
    from mmdguidance import MMD

    X = torch.tensor([[2**24 + 1], [2**24]], dtype=torch.int64)  # distance exactly 1
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the library default (this module otherwise runs in float64)
    try:
        k = GaussianKernel(bandwidth=1.0).fit(X)
        K = k.gram(X)
        m = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(X[[0, 0]])  # two copies of x_0
        score = float(m.score(X[1:]))
    finally:
        torch.set_default_dtype(old)
    assert K.dtype == torch.float64
    assert float(K[0, 1]) == pytest.approx(math.exp(-0.5), rel=1e-12)
    np.testing.assert_allclose(K.numpy(), k.gram(X.numpy()), rtol=0, atol=0)  # same as numpy int64 input
    assert score == pytest.approx(2 - 2 * math.exp(-0.5), rel=1e-12)
