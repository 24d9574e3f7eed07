"""Fuzz test over the public estimators' inputs (issue 14, "Done when").

Random shapes (0 and 1 rows included), dtypes (numpy / torch float16, bfloat16, float32, float64,
int, bool, complex), NaN/inf, huge/tiny magnitudes, data far from the origin and duplicated rows go
through kernels (gram / grad), MMD (fit / score / gradient) and the metrics. Every call must either
raise ``ValueError`` / ``TypeError`` with a message, or return finite numbers that agree with the same
call on the same values converted to float64 numpy (tolerance: a few units of the output dtype's
precision, relative to the output's scale). The one documented non-finite output is ``rrke = inf``
(no generated sample kernel-close to any reference).
"""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmdguidance import metrics
from mmdguidance.kernels import GaussianKernel, IMQKernel, PolynomialKernel, median_heuristic
from mmdguidance.mmd import MMD

NP_DTYPES = [np.float16, np.float32, np.float64, np.int64, np.bool_, np.complex128]
TORCH_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.bool, torch.complex64]


def _convert(A: np.ndarray, lib: str, dtype):
    """float64 values -> the drawn library and dtype (ints rounded and clipped, bools thresholded)."""
    if lib == "numpy":
        if dtype is np.bool_:
            return A > np.nanmean(A) if A.size and np.isfinite(A).all() else A > 0
        if dtype is np.int64:
            return np.rint(np.nan_to_num(np.clip(A, -2.0**40, 2.0**40))).astype(np.int64)
        return A.astype(dtype) + (1j * A if dtype is np.complex128 else 0)
    T = torch.as_tensor(A)
    if dtype is torch.bool:
        return T > 0
    if dtype is torch.int64:
        return torch.round(torch.nan_to_num(T.clamp(-(2.0**40), 2.0**40))).to(torch.int64)
    return T.to(dtype)


@st.composite
def pairs(draw):
    lib = draw(st.sampled_from(["numpy", "torch"]))
    dtype = draw(st.sampled_from(NP_DTYPES if lib == "numpy" else TORCH_DTYPES))
    n, m, d = draw(st.integers(0, 6)), draw(st.integers(0, 6)), draw(st.integers(0, 3))
    mag = draw(st.sampled_from([1e-100, 1e-8, 1.0, 1e8, 1e100]))
    offset = draw(st.sampled_from([0.0, 1.0, 1e6]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    X, Y = offset + mag * rng.normal(size=(n, d)), offset + mag * rng.normal(size=(m, d))
    if draw(st.booleans()) and n > 1:
        X[n // 2 :] = X[: n - n // 2]  # duplicated rows
    if draw(st.booleans()) and m > 0 and n > 0:
        X[0] = Y[0]  # a generated point equal to a reference
    bad = draw(st.sampled_from([None, None, None, math.nan, math.inf, -math.inf]))
    if bad is not None and n * d > 0:
        X[draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))] = bad
    return _convert(X, lib, dtype), _convert(Y, lib, dtype), mag


def _to64(A):
    if isinstance(A, torch.Tensor):
        A = A.detach().cpu()
        return A.to(torch.float64).numpy() if not A.is_complex() else A.numpy()
    return np.asarray(A).astype(np.float64) if not np.iscomplexobj(A) else A


def _flat(out) -> np.ndarray:
    if isinstance(out, dict):
        return np.array([float(v) for k, v in sorted(out.items()) if k != "n_subsets"], dtype=np.float64)
    if isinstance(out, torch.Tensor):
        return out.detach().cpu().to(torch.float64).numpy().ravel()
    return np.asarray(out, dtype=np.float64).ravel()


def _out_eps(out) -> float:
    if isinstance(out, torch.Tensor):
        return float(torch.finfo(out.dtype).eps)
    return float(np.finfo(np.float64).eps)


def _kernel_calls():
    def gram(kern):
        return lambda X, Y: kern.fit(Y).gram(X, Y)

    def grad(kern):
        return lambda X, Y: kern.fit(Y).grad(X, Y)

    ks = {"gauss": lambda: GaussianKernel(bandwidth=1.0), "median": lambda: GaussianKernel(),
          "imq": lambda: IMQKernel(scale=2.0), "poly": lambda: PolynomialKernel()}
    calls = {}
    for name, make in ks.items():
        calls[f"{name}.gram"] = lambda X, Y, make=make: gram(make())(X, Y)
        calls[f"{name}.grad"] = lambda X, Y, make=make: grad(make())(X, Y)
    calls["median_heuristic"] = lambda X, Y: median_heuristic(Y)
    return calls


CALLS = {
    **_kernel_calls(),
    "MMD.score": lambda X, Y: MMD().fit(Y).score(X),
    "MMD.gradient": lambda X, Y: MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(Y).gradient(X),
    "MMD.unbiased": lambda X, Y: MMD(kernel=IMQKernel(scale=1.0), estimator="unbiased").fit(Y).score(X),
    "mmd2_empirical": lambda X, Y: metrics.mmd2_empirical(X, Y),
    "energy_distance": lambda X, Y: metrics.energy_distance(X, Y),
    "wasserstein2": lambda X, Y: metrics.wasserstein2(X, Y),
    "sliced_wasserstein2": lambda X, Y: metrics.sliced_wasserstein2(X, Y, n_projections=4, random_state=0),
    "frechet_distance": lambda X, Y: metrics.frechet_distance(X, Y),
    "kernel_distance": lambda X, Y: metrics.kernel_distance(X, Y, n_subsets=2, random_state=0),
    "prdc": lambda X, Y: metrics.precision_recall_density_coverage(Y, X, k=1),
    "rke": lambda X, Y: metrics.rke(X, kernel=1.0),
    "vendi_score": lambda X, Y: metrics.vendi_score(X, kernel=1.0, q=2.5),
    "rrke": lambda X, Y: metrics.rrke(X, Y, kernel=1.0),
}

#: polynomial kernels (and their KID) grow like |x|^6: for unscaled data they overflow float64 (|x| ~ 1e100)
#: or the output dtype (bfloat16 at |x| ~ 1e7), inherent to the formula; they are meant for O(1) features
_POLY = ("poly.gram", "poly.grad", "kernel_distance")


def _run(fn, X, Y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(X, Y)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=pairs(), name=st.sampled_from(sorted(CALLS)))
def test_every_input_raises_clearly_or_agrees_with_float64(data, name):
    X, Y, mag = data
    if name in _POLY and not np.iscomplexobj(_to64(X)) and np.abs(np.nan_to_num(_to64(X), nan=0.0, posinf=0.0, neginf=0.0)).max(initial=0) > 1e3:
        return
    fn = CALLS[name]
    try:
        out = _run(fn, X, Y)
    except (ValueError, TypeError) as e:
        assert str(e).strip(), f"{name}: empty error message"
        return
    vals = _flat(out)
    ref = _flat(_run(fn, _to64(X), _to64(Y)))
    if name == "rrke" and vals[0] == math.inf:  # documented: no generated sample kernel-close to a reference
        assert ref[0] == math.inf
        return
    assert np.isfinite(vals).all(), f"{name} returned non-finite values {vals} for {X!r}, {Y!r}"
    eps = _out_eps(out)
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    np.testing.assert_allclose(vals, ref, rtol=16 * eps, atol=16 * eps * scale, err_msg=name)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_complex_input_always_raises(name):
    X = np.ones((4, 2)) + 1j * np.arange(8.0).reshape(4, 2)
    Y = np.zeros((5, 2)) + 0.5j
    for A, B in ((X, Y), (torch.as_tensor(X), torch.as_tensor(Y))):
        with pytest.raises((ValueError, TypeError), match="(?i)complex"):
            _run(CALLS[name], A, B)
