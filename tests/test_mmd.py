"""MMD estimators: gradients vs autograd / finite differences, estimator properties, permutation test, bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from mmdguidance.kernels import ConstantKernel, GaussianKernel, IMQKernel, PolynomialKernel, ProductKernel
from mmdguidance.mmd import MMD, mmd2, mmd2_gradient

from tests.test_kernels import KINDS, _float64_default, make_kernel  # noqa: F401 (fixture)


def brute_mmd2(k, Z, Y, w, estimator):
    """Direct double-sum formula, independent of the module's matvec path."""
    Kzz, Kyy, Kzy = k.gram_tensor(Z, Z), k.gram_tensor(Y, Y), k.gram_tensor(Z, Y)
    n = Z.shape[0]
    if estimator == "biased":
        return Kzz.sum() / n**2 + w @ Kyy @ w - 2 * (Kzy @ w).sum() / n
    off = 1 - torch.eye(n, dtype=Z.dtype)
    offy = 1 - torch.eye(len(w), dtype=Z.dtype)
    ww = w[:, None] * w[None, :] * offy
    return (Kzz * off).sum() / (n * (n - 1)) + (Kyy * ww).sum() / (1 - (w * w).sum()) - 2 * (Kzy @ w).sum() / n


@st.composite
def problems(draw):
    kind = draw(st.sampled_from(KINDS))
    D = draw(st.integers(2 if kind == "product" else 1, 64))
    B = draw(st.integers(2, 6))
    N = draw(st.integers(2, 7))
    M = draw(st.integers(0, 4))
    bw = draw(st.floats(0.3, 5.0))
    est = draw(st.sampled_from(["biased", "unbiased"]))
    weighted = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    split = draw(st.integers(1, D - 1)) if kind == "product" else None
    return kind, B, N, M, D, bw, est, weighted, seed, split


@settings(max_examples=60, deadline=None)
@given(problems())
def test_gradient_matches_autograd_and_finite_differences(p):
    kind, B, N, M, D, bw, est, weighted, seed, split = p
    g = torch.Generator().manual_seed(seed)
    s = bw / np.sqrt(D) * 1.5
    X, Y = torch.randn(B, D, generator=g) * s, torch.randn(N, D, generator=g) * s
    mem = torch.randn(M, D, generator=g) * s if M else None
    w = torch.rand(N, generator=g) + 0.1 if weighted else None
    m = MMD(kernel=make_kernel(kind, bw, split), estimator=est).fit(Y, weights=w)
    wn = m.weights_
    # score equals the brute-force double sum
    Z = X if mem is None else torch.cat([X, mem])
    torch.testing.assert_close(m.score(X, memory=mem), brute_mmd2(m.kernel_, Z, Y, wn, est), rtol=1e-10, atol=1e-12)
    closed = m.gradient(X, memory=mem)
    Xr = X.clone().requires_grad_(True)
    m.score(Xr, memory=mem).backward()
    sc = closed.abs().max().item() + 1e-12
    torch.testing.assert_close(closed, Xr.grad, rtol=1e-6, atol=1e-9 * sc)
    # central finite differences on a few coordinates
    h = 1e-5
    for i, d in [(0, 0), (B - 1, D - 1), (B // 2, D // 2)]:
        E = torch.zeros_like(X)
        E[i, d] = h
        fd = (m.score(X + E, memory=mem) - m.score(X - E, memory=mem)) / (2 * h)
        assert abs(fd.item() - closed[i, d].item()) <= 1e-6 * abs(closed[i, d].item()) + 1e-6 * sc
    # terms decompose
    torch.testing.assert_close(m.gradient(X, "cross", mem) + m.gradient(X, "self", mem), closed)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 8), st.integers(2, 8), st.integers(1, 16), st.floats(0.2, 4.0), st.integers(0, 2**31 - 1)
)
def test_biased_properties(B, N, D, bw, seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(B, D)), rng.normal(size=(N, D)) + 0.5
    k = GaussianKernel(bandwidth=bw)
    m_y = MMD(kernel=k).fit(Y)
    v = m_y.score(X)
    assert v >= -1e-12  # biased MMD^2 is a squared RKHS norm
    # symmetry (fixed bandwidth) and permutation invariance
    if B >= 2:
        assert MMD(kernel=k).fit(X).score(Y) == pytest.approx(v, rel=1e-9, abs=1e-12)
    perm = rng.permutation(B)
    assert m_y.score(X[perm]) == pytest.approx(v, rel=1e-12, abs=1e-14)
    assert MMD(kernel=k).fit(Y[rng.permutation(N)]).score(X) == pytest.approx(v, rel=1e-9, abs=1e-12)
    # MMD(Y, Y) = 0
    assert abs(m_y.score(Y)) < 1e-12


def test_unbiased_mean_matches_exact_mixture_mmd():
    gmm = pytest.importorskip("mmdguidance.gmm")
    P = gmm.GaussianMixture(weights=[0.5, 0.5], means=[[0.0, 0.0], [2.0, 0.0]], covariances=[0.3, 0.5])
    Q = gmm.GaussianMixture(weights=[0.3, 0.7], means=[[0.0, 1.0], [2.0, 0.5]], covariances=[0.4, 0.2])
    bw = 1.0
    exact = gmm.mmd2_mixtures(P, Q, bw)
    k = GaussianKernel(bandwidth=bw)
    vals_u, vals_b = [], []
    for r in range(300):
        X = P.sample(30, random_state=2 * r)
        Y = Q.sample(40, random_state=2 * r + 1)
        vals_u.append(MMD(kernel=k, estimator="unbiased").fit(Y).score(X))
        vals_b.append(MMD(kernel=k, estimator="biased").fit(Y).score(X))
    vals_u = np.array(vals_u)
    se = vals_u.std(ddof=1) / np.sqrt(len(vals_u))
    assert abs(vals_u.mean() - exact) < 3 * se
    # the V-statistic is biased upward by (E k(x,x) - E_PP k)/n + (E k(y,y) - E_QQ k)/m: detectably so here
    bias_b = (1 - gmm.expected_kernel(P, P, bw)) / 30 + (1 - gmm.expected_kernel(Q, Q, bw)) / 40
    assert abs(np.mean(vals_b) - (exact + bias_b)) < 3 * np.std(vals_b, ddof=1) / np.sqrt(len(vals_b))
    assert np.mean(vals_b) - exact > 3 * np.std(vals_b, ddof=1) / np.sqrt(len(vals_b))


def test_product_with_constant_equals_first_in_mmd():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(6, 3)), rng.normal(size=(9, 3))
    C, Cy = rng.normal(size=(6, 2)), rng.normal(size=(9, 2))
    m1 = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(Y)
    mp = MMD(kernel=ProductKernel(first=GaussianKernel(bandwidth=1.0), second=ConstantKernel(), split=3)).fit(
        np.hstack([Y, Cy])
    )
    assert mp.score(np.hstack([X, C])) == pytest.approx(m1.score(X), rel=1e-12)
    np.testing.assert_allclose(mp.gradient(np.hstack([X, C]))[:, :3], m1.gradient(X), rtol=1e-12)


def test_witness_definition_and_sign():
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(50, 2))
    X = rng.normal(size=(40, 2)) + np.array([3.0, 0.0])
    m = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(Y)
    Z = np.array([[3.0, 0.0], [0.0, 0.0]])
    f = m.witness(X, Z)
    K = m.kernel_
    expected = K.gram(Z, X).mean(1) - K.gram(Z, Y).mean(1)
    np.testing.assert_allclose(f, expected, rtol=1e-12)
    assert f[0] > 0 > f[1]  # excess generated mass at (3, 0), missing mass at the origin
    # biased MMD^2 = mean witness over X minus weighted mean over Y
    assert m.witness(X, X).mean() - m.witness(X, Y).mean() == pytest.approx(m.score(X), rel=1e-10)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_permutation_test(estimator):
    rng = np.random.default_rng(1)
    Y = rng.normal(size=(40, 2))
    m = MMD(kernel=GaussianKernel(bandwidth=1.0), estimator=estimator).fit(Y)
    same = m.permutation_test(rng.normal(size=(40, 2)), n_permutations=300, random_state=0)
    diff = m.permutation_test(rng.normal(size=(40, 2)) + 1.0, n_permutations=300, random_state=0)
    assert diff.p_value <= 1 / 301 + 1e-12
    assert same.p_value > 0.01
    assert same.statistic == pytest.approx(m.score(rng.normal(size=(0, 2))) if False else same.statistic)
    # reproducible, and the observed statistic equals score()
    X = rng.normal(size=(30, 2))
    r1 = m.permutation_test(X, n_permutations=50, random_state=7)
    r2 = m.permutation_test(X, n_permutations=50, random_state=7)
    np.testing.assert_array_equal(r1.null_distribution, r2.null_distribution)
    assert r1.statistic == pytest.approx(m.score(X), rel=1e-10)


def test_permutation_test_is_calibrated():
    """Under H0 the p-value is (super-)uniform: P(p <= 0.1) <= 0.1 + 3 SE over repetitions."""
    rng = np.random.default_rng(5)
    k = GaussianKernel(bandwidth=1.0)
    ps = []
    for r in range(120):
        m = MMD(kernel=k).fit(rng.normal(size=(20, 2)))
        ps.append(m.permutation_test(rng.normal(size=(20, 2)), n_permutations=99, random_state=r).p_value)
    frac = np.mean(np.array(ps) <= 0.1)
    assert frac <= 0.1 + 3 * np.sqrt(0.09 / 120)


def test_torch_in_torch_out_and_dtype_follow():
    Y = np.random.default_rng(0).normal(size=(10, 3))
    m = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(Y)
    X = torch.randn(4, 3, dtype=torch.float32)
    g = m.gradient(X)
    assert isinstance(g, torch.Tensor) and g.dtype == torch.float32
    s = m.score(X)
    assert isinstance(s, torch.Tensor) and s.ndim == 0
    assert isinstance(m.score(X.numpy()), float)
    np.testing.assert_allclose(g.numpy(), m.gradient(X.double().numpy()), rtol=1e-4, atol=1e-6)


def test_functional_api_matches_estimator():
    rng = np.random.default_rng(0)
    X, Y, M = rng.normal(size=(5, 2)), rng.normal(size=(7, 2)), rng.normal(size=(3, 2))
    k = GaussianKernel(bandwidth=0.8).fit(Y)
    m = MMD(kernel=GaussianKernel(bandwidth=0.8)).fit(Y)
    assert mmd2(k, X, Y, memory=M) == pytest.approx(m.score(X, memory=M), rel=1e-12)
    np.testing.assert_allclose(mmd2_gradient(k, X, Y, memory=M), m.gradient(X, memory=M), rtol=1e-12)


def test_get_params_nested_and_fitted_attributes():
    m = MMD(kernel=IMQKernel(scale=2.0), estimator="unbiased")
    assert m.get_params()["kernel__scale"] == 2.0
    m.fit(np.random.default_rng(0).normal(size=(5, 2)))
    assert m.n_features_in_ == 2 and m.reference_.shape == (5, 2) and m.weights_.sum().item() == pytest.approx(1)


# ------------------------------------------------------------------ bad input
def test_bad_input():
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(5, 3))
    with pytest.raises(NotFittedError):
        MMD().score(Y)
    with pytest.raises(ValueError, match="1 sample.*minimum of 2 is required"):
        MMD().fit(Y[:1])
    with pytest.raises(ValueError, match="0 sample.*minimum of 2 is required"):
        MMD().fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        MMD().fit(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="unknown estimator"):
        MMD(estimator="fast").fit(Y)
    m = MMD().fit(Y)
    with pytest.raises(ValueError, match="unknown terms"):
        m.gradient(Y, terms="both")
    with pytest.raises(ValueError, match="2 features, but MMD is expecting 3"):
        m.score(np.zeros((4, 2)))
    bad = Y.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.score(bad)
    with pytest.raises(ValueError, match="NaN"):
        MMD().fit(bad)
    with pytest.raises(ValueError, match="non-negative"):
        MMD().fit(Y, weights=-np.ones(5))
    with pytest.raises(ValueError, match="shape"):
        MMD().fit(Y, weights=np.ones(4))
    with pytest.raises(TypeError, match="Kernel"):
        MMD(kernel="rbf").fit(Y)
    with pytest.raises(ValueError, match="n_permutations"):
        m.permutation_test(Y, n_permutations=0)
    with pytest.raises(ValueError, match="unbiased"):
        MMD(estimator="unbiased").fit(Y).score(Y[:1])


def test_device_mismatch_is_a_clear_error():
    if not torch.cuda.is_available():
        # emulate with the meta device: the fitted refs live on cpu, X on meta
        m = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(torch.randn(5, 2))
        with pytest.raises(ValueError, match="device"):
            m._refs_like(torch.empty(3, 2, device="meta"))
    else:  # pragma: no cover - GPU machines
        m = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(torch.randn(5, 2))
        with pytest.raises(ValueError, match="device"):
            m.gradient(torch.randn(3, 2, device="cuda"))


# ------------------------------------------------------------------ sklearn conventions
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402


@parametrize_with_checks(
    [
        GaussianKernel(bandwidth=1.0),
        GaussianKernel(),
        PolynomialKernel(),
        IMQKernel(),
        MMD(),
        MMD(kernel=PolynomialKernel(), estimator="unbiased"),
    ],
    # No expected failures: every check passes. Kernels/MMD have no predict/transform, so sklearn skips
    # those families; 1-sample fits raise a ValueError that names the sample count (accepted by the check).
    expected_failed_checks=lambda est: {},
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_discrepancy_fast_paths_match_validated_api():
    """value_tensor / grad_tensor (no validation) agree with score / gradient, and a references override
    equals an estimator fitted on those references (fixed bandwidth, so the kernel is the same)."""
    from mmdguidance.discrepancy import Discrepancy

    g = torch.Generator().manual_seed(0)
    Y = torch.randn(30, 3, generator=g, dtype=torch.float64)
    X = torch.randn(7, 3, generator=g, dtype=torch.float64) + 1.0
    M = torch.randn(4, 3, generator=g, dtype=torch.float64)
    for est in ("biased", "unbiased"):
        m = MMD(kernel=GaussianKernel(bandwidth=1.3), estimator=est).fit(Y)
        assert isinstance(m, Discrepancy)
        torch.testing.assert_close(m.value_tensor(X, memory=M), m.score(X, memory=M), rtol=1e-12, atol=1e-14)
        for terms in ("full", "cross", "self"):
            torch.testing.assert_close(m.grad_tensor(X, memory=M, terms=terms), m.gradient(X, terms=terms, memory=M))
        Y2 = Y * 0.5 + 0.1
        w2 = torch.full((30,), 1 / 30, dtype=torch.float64)
        m2 = MMD(kernel=GaussianKernel(bandwidth=1.3), estimator=est).fit(Y2)
        torch.testing.assert_close(m.value_tensor(X, references=(Y2, w2)), m2.score(X))
        torch.testing.assert_close(m.grad_tensor(X, references=(Y2, w2)), m2.gradient(X))
    with pytest.raises(ValueError, match="terms"):
        m.check_terms("bogus")


# --------------------------------------------------------------------------- robustness (issue 14)
from mmdguidance import distances  # noqa: E402
from mmdguidance.kernels import GaussianKernel as _G  # noqa: E402
from mmdguidance.mmd import mmd2 as _mmd2_fn  # noqa: E402


@pytest.mark.parametrize("scale", [1e300, 1e308, 1e-300])
def test_huge_and_tiny_reference_weights_normalise_safely(scale):
    """The sum of 1e308 weights overflowed: every weight became 0 (score 0.651 instead of 0.0096)."""
    rng = np.random.default_rng(0)
    Y, X = rng.normal(size=(20, 2)), rng.normal(size=(10, 2))
    w = rng.uniform(0.5, 1.0, size=20)
    ref = MMD(kernel=_G(bandwidth=1.0)).fit(Y, weights=w / w.sum())
    big = MMD(kernel=_G(bandwidth=1.0)).fit(Y, weights=w * scale)
    torch.testing.assert_close(big.weights_, ref.weights_, rtol=1e-14, atol=0)
    assert big.score(X) == pytest.approx(ref.score(X), rel=1e-12)


@pytest.mark.parametrize(
    "weights, err, match",
    [([1.0, -1.0, 1.0], ValueError, "non-negative"), ([1.0, np.nan, 1.0], ValueError, "NaN"),
     ([0.0, 0.0, 0.0], ValueError, "zero"), ([1 + 1j, 1, 1], TypeError, "complex")],
)
def test_bad_reference_weights(weights, err, match):
    Y = np.random.default_rng(0).normal(size=(3, 2))
    with pytest.raises(err, match=match):
        MMD().fit(Y, weights=np.array(weights))
    k = _G(bandwidth=1.0).fit(Y)
    with pytest.raises(err, match=match):
        _mmd2_fn(k, Y, Y, weights=np.array(weights))


def test_functional_unbiased_mmd2_needs_two_references():
    """It returned NaN / -inf without an error while MMD.fit guarded the same case."""
    rng = np.random.default_rng(0)
    Y, X = rng.normal(size=(3, 2)), rng.normal(size=(5, 2))
    k = _G(bandwidth=1.0).fit(Y)
    with pytest.raises(ValueError, match="at least 2 references"):
        _mmd2_fn(k, X, Y[:1], estimator="unbiased")
    with pytest.raises(ValueError, match="at least 2 references"):
        _mmd2_fn(k, X, Y, weights=np.array([0.0, 1.0, 0.0]), estimator="unbiased")
    with pytest.raises(ValueError, match="at least 2 references"):
        MMD(estimator="unbiased").fit(Y, weights=np.array([0.0, 1.0, 0.0]))
    assert np.isfinite(_mmd2_fn(k, X, Y[:1], estimator="biased"))


@pytest.mark.parametrize("bs", [0, -1, 1.5, True, "8", None])
def test_permutation_test_bad_batch_size(bs):
    """batch_size=0 never returned; other values gave torch errors."""
    rng = np.random.default_rng(0)
    est = MMD().fit(rng.normal(size=(10, 2)))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        est.permutation_test(rng.normal(size=(8, 2)), n_permutations=5, batch_size=bs)


def test_permutation_test_on_requires_grad_tensor():
    g = torch.Generator().manual_seed(0)
    Y = torch.randn(12, 2, generator=g)
    X = (torch.randn(9, 2, generator=g) + 0.5).requires_grad_()
    est = MMD().fit(Y)
    res = est.permutation_test(X, n_permutations=20, random_state=0)
    ref = est.permutation_test(X.detach(), n_permutations=20, random_state=0)
    assert res.statistic == ref.statistic and res.p_value == ref.p_value


def test_permutation_test_checks_the_gram_size_up_front(monkeypatch):
    rng = np.random.default_rng(0)
    est = MMD().fit(rng.normal(size=(10, 2)))
    monkeypatch.setattr(distances, "MAX_DENSE_ELEMENTS", 17 * 17)
    est.permutation_test(rng.normal(size=(7, 2)), n_permutations=3)  # 17 x 17: fine
    with pytest.raises(ValueError, match="permutation_test: needs a dense 18 x 18 .*subsample"):
        est.permutation_test(rng.normal(size=(8, 2)), n_permutations=3)
