"""Random-feature and Nyström approximations of MMD² and its gradient."""

import numpy as np
import pytest
import torch

from experiments._common import loglog_slope
from mmdguidance.approx import NystromMMD, RFFMMD
from mmdguidance.kernels import GaussianKernel
from mmdguidance.mmd import MMD


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(200, 5))
    X = rng.normal(size=(60, 5)) + 0.7
    return X, Y, MMD(kernel=GaussianKernel(bandwidth=1.5)).fit(Y)


@pytest.mark.parametrize("exact_self", [True, False])
def test_rff_gradient_is_the_derivative_of_its_score(data, exact_self):
    X, Y, _ = data
    r = RFFMMD(n_features=64, bandwidth=1.5, exact_self_term=exact_self, random_state=0).fit(Y)
    Xr = torch.tensor(X, requires_grad=True)
    r.score(Xr).backward()
    np.testing.assert_allclose(r.gradient(X), Xr.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.gradient(X, "cross") + r.gradient(X, "self"), r.gradient(X), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("exact_self", [True, False])
def test_nystrom_gradient_is_the_derivative_of_its_score(data, exact_self):
    X, Y, _ = data
    ny = NystromMMD(kernel=GaussianKernel(bandwidth=1.5), n_landmarks=30, exact_self_term=exact_self, random_state=0).fit(Y)
    Xr = torch.tensor(X, requires_grad=True)
    ny.score(Xr).backward()
    np.testing.assert_allclose(ny.gradient(X), Xr.grad.numpy(), rtol=1e-7, atol=1e-10)


def test_rff_error_decays_like_inverse_sqrt_features(data):
    X, Y, exact = data
    g_exact = exact.gradient(X)
    Rs = [16, 64, 256, 1024, 4096]
    errs = []
    for R in Rs:
        e = [np.linalg.norm(RFFMMD(n_features=R, bandwidth=1.5, random_state=s).fit(Y).gradient(X) - g_exact)
             for s in range(12)]
        errs.append(np.mean(e))
    slope, _ = loglog_slope(Rs, errs)
    assert -0.7 <= slope <= -0.3, slope
    assert errs[-1] / np.linalg.norm(g_exact) < 0.1


def test_nystrom_with_all_references_has_exact_cross_term(data):
    X, Y, exact = data
    ny = NystromMMD(kernel=GaussianKernel(bandwidth=1.5), n_landmarks=10**6).fit(Y)
    np.testing.assert_allclose(ny.gradient(X, "cross"), exact.gradient(X, "cross"), rtol=1e-6, atol=1e-9)
    # with the exact self term (default) the whole gradient and the score are then exact
    np.testing.assert_allclose(ny.gradient(X), exact.gradient(X), rtol=1e-6, atol=1e-9)
    assert ny.score(X) == pytest.approx(exact.score(X), rel=1e-6)
    few = NystromMMD(kernel=GaussianKernel(bandwidth=1.5), n_landmarks=20, random_state=0).fit(Y)
    more = NystromMMD(kernel=GaussianKernel(bandwidth=1.5), n_landmarks=120, random_state=0).fit(Y)
    e = lambda m: np.linalg.norm(m.gradient(X) - exact.gradient(X))  # noqa: E731
    assert e(more) < e(few)


def test_seeded_and_bad_input(data):
    X, Y, _ = data
    a = RFFMMD(n_features=32, bandwidth=1.0, random_state=3).fit(Y).gradient(X)
    b = RFFMMD(n_features=32, bandwidth=1.0, random_state=3).fit(Y).gradient(X)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="n_features"):
        RFFMMD(n_features=0).fit(Y)
    with pytest.raises(ValueError, match="n_landmarks"):
        NystromMMD(n_landmarks=0).fit(Y)
    with pytest.raises(ValueError, match="single bandwidth"):
        RFFMMD(bandwidth=[1.0, 2.0]).fit(Y)
    with pytest.raises(ValueError, match="unknown terms"):
        RFFMMD(bandwidth=1.0).fit(Y).gradient(X, terms="all")
    with pytest.raises(ValueError, match="features"):
        RFFMMD(bandwidth=1.0).fit(Y).score(X[:, :3])


# ------------------------------------------------------------------ the Discrepancy interface and robustness (issue 14)
@pytest.mark.parametrize("make", [lambda: RFFMMD(n_features=256, bandwidth=1.5, random_state=0),
                                  lambda: NystromMMD(kernel=GaussianKernel(bandwidth=1.5), n_landmarks=40, random_state=0)],
                         ids=["rff", "nystrom"])
def test_approximations_are_discrepancies(data, make):
    from mmdguidance.discrepancy import Discrepancy

    X, Y, _ = data
    est = make().fit(Y)
    assert isinstance(est, Discrepancy)
    Xt = torch.as_tensor(X)
    # the fast paths agree with the validated API; an empty memory is no memory
    torch.testing.assert_close(est.grad_tensor(Xt), torch.as_tensor(est.gradient(X)))
    assert float(est.value_tensor(Xt)) == pytest.approx(est.score(X), rel=1e-12)
    np.testing.assert_allclose(est.gradient(X, memory=np.zeros((0, 5))), est.gradient(X), rtol=1e-12)
    assert est.score(X, memory=np.zeros((0, 5))) == pytest.approx(est.score(X), rel=1e-12)
    # references override: the fitted references passed explicitly give the same gradient
    refs = est.references(Xt)
    torch.testing.assert_close(est.grad_tensor(Xt, references=refs), est.grad_tensor(Xt))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nystrom_low_precision_is_computed_in_float32(data, dtype):
    X, Y, _ = data
    ny64 = NystromMMD(kernel=GaussianKernel(bandwidth=1.5), n_landmarks=50, random_state=0).fit(Y)
    ny = NystromMMD(kernel=GaussianKernel(bandwidth=1.5), n_landmarks=50, random_state=0).fit(torch.as_tensor(Y, dtype=dtype))
    val = ny.score(torch.as_tensor(X, dtype=dtype))
    assert val.dtype == dtype and float(val) == pytest.approx(ny64.score(X), rel=0.02)
    g = ny.gradient(torch.as_tensor(X, dtype=dtype))
    assert g.dtype == dtype
    np.testing.assert_allclose(g.float().numpy(), ny64.gradient(X), atol=0.02 * np.abs(ny64.gradient(X)).max())


def test_bad_parameters_raise(data):
    X, Y, _ = data
    for ridge in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="ridge"):
            NystromMMD(ridge=ridge).fit(Y)
    for est in (RFFMMD(exact_self_term="no"), NystromMMD(exact_self_term="no")):
        with pytest.raises(TypeError, match="exact_self_term must be True or False"):
            est.fit(Y)
