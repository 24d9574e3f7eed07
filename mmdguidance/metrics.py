r"""Sample-quality and distribution-distance metrics.

Every function takes samples as numpy arrays or torch tensors of shape ``(n, d)`` (one
row per sample; flatten images or features first) and returns Python floats or small
dicts of floats (JSON-friendly). Computations run in float64: kernel and distance
metrics in torch on the device of the input, the optimal-transport, Fréchet and
nearest-neighbour metrics through POT / scipy / scikit-learn on the CPU. Everything
random takes ``random_state`` (None, int, numpy or torch generator).

Distances between two samples (``X`` generated, ``Y`` references)

* :func:`mmd2_empirical` -- unbiased (default) or biased MMD², via :mod:`mmdguidance.mmd`.
* :func:`exact_mmd2_to_mixture` -- exact biased MMD² between a sample and a Gaussian
  mixture (wrapper of :func:`mmdguidance.gmm.mmd2_to_mixture`).
* :func:`energy_distance` -- :math:`2E\|X-Y\| - E\|X-X'\| - E\|Y-Y'\|` (V- or U-statistic).
* :func:`wasserstein2`, :func:`sliced_wasserstein2` -- exact and sliced :math:`W_2` (POT).
* :func:`frechet_distance` -- the FID formula between Gaussian fits of the features.
* :func:`kernel_distance` -- KID: unbiased cubic-polynomial MMD² over random subsets.
* :func:`precision_recall_density_coverage` -- k-NN manifold metrics.
* :func:`rrke` -- relative Rényi kernel entropy (order 1/2).

Diversity of one sample: :func:`rke` (Rényi kernel entropy mode count, order 2) and
:func:`vendi_score` (order q). Gaussian-mixture targets: :func:`mode_coverage` and
:func:`mode_weight_error`.

Bad input (NaN/inf, a 1-D or 3-D array, feature counts that differ between the two
sets, too few samples) raises ``ValueError`` naming the problem.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
from sklearn.base import clone

from ._utils import check_array_2d, check_int, check_positive, check_random_state_torch, logger
from .distances import BLOCK_ELEMENTS, check_dense_size, sq_dists
from .kernels import GaussianKernel, Kernel, PolynomialKernel
from .mmd import MMD, mmd2

__all__ = [
    "exact_mmd2_to_mixture",
    "mmd2_empirical",
    "energy_distance",
    "wasserstein2",
    "sliced_wasserstein2",
    "frechet_distance",
    "kernel_distance",
    "precision_recall_density_coverage",
    "rke",
    "vendi_score",
    "rrke",
    "mode_coverage",
    "mode_weight_error",
]

#: RRKE values below this are SVD round-off and reported as exactly 0.
_RRKE_ROUNDOFF = 1e-12

#: Elements of one row block in the chunked pairwise computations.
_BLOCK_ELEMENTS = BLOCK_ELEMENTS


# --------------------------------------------------------------------------- validation helpers
def _check_samples(X, *, name: str, func: str, min_samples: int = 1, n_features: int | None = None) -> torch.Tensor:
    """Validate a 2-D finite sample matrix; return a detached float64 tensor on its device.

    Integer and bool tensors are converted to float64 directly (not through float32, which
    would round integers above 2**24); complex input raises ``ValueError``.
    """
    if isinstance(X, torch.Tensor) and not X.is_floating_point() and not X.is_complex():
        X = X.detach().to(torch.float64)
    t = check_array_2d(X, name=name)  # 2-D, >= 1 row, finite
    if t.shape[0] < min_samples:
        raise ValueError(f"{func}: {name} needs at least {min_samples} samples, got {t.shape[0]}")
    if n_features is not None and t.shape[1] != n_features:
        raise ValueError(
            f"{func}: {name} has {t.shape[1]} features but the other sample has {n_features}; "
            "both must live in the same feature space"
        )
    return t.detach().to(torch.float64)


def _check_pair(X, Y, *, func: str, min_samples: int = 1, names=("X", "Y")):
    """Validate two samples with the same feature count; return float64 tensors on one device."""
    Xt = _check_samples(X, name=names[0], func=func, min_samples=min_samples)
    Yt = _check_samples(Y, name=names[1], func=func, min_samples=min_samples, n_features=Xt.shape[1])
    if isinstance(X, torch.Tensor) and isinstance(Y, torch.Tensor) and X.device != Y.device:
        raise ValueError(f"{func}: {names[0]} is on {X.device} but {names[1]} on {Y.device}")
    if isinstance(Y, torch.Tensor) and not isinstance(X, torch.Tensor):
        Xt = Xt.to(Yt.device)
    else:
        Yt = Yt.to(Xt.device)
    return Xt, Yt


def _np(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy()


def _check_mixture(mixture, func: str):
    from .gmm import GaussianMixture

    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"{func}: mixture must be a mmdguidance.gmm.GaussianMixture, got {type(mixture).__name__}")
    return mixture


# --------------------------------------------------------------------------- MMD family
def exact_mmd2_to_mixture(X, mixture, bandwidth) -> float:
    r"""Exact biased MMD² between the empirical measure of ``X`` and a Gaussian mixture.

    With the Gaussian kernel :math:`k(x, y) = \exp(-\|x-y\|^2 / 2\sigma^2)` (summed over
    scales when ``bandwidth`` is a list) and :math:`\mu_Q(z) = E_{Y\sim Q} k(z, Y)` in closed form,

    .. math:: \mathrm{MMD}^2 = \frac1{n^2}\sum_{i,i'} k(x_i, x_{i'}) - \frac2n \sum_i \mu_Q(x_i)
              + E_{Y,Y'\sim Q}\, k(Y, Y'),

    the V-statistic in ``X`` (diagonal included), exact in ``Q`` (no reference sample).
    For :math:`x_i \sim Q` i.i.d. its expectation is :math:`(S - E_{QQ}k)/n`, with
    :math:`S` the number of scales. A thin wrapper of :func:`mmdguidance.gmm.mmd2_to_mixture`.

    Parameters
    ----------
    X : array or tensor of shape (n, d)
    mixture : GaussianMixture of dimension d
    bandwidth : float or list of float
        Gaussian bandwidth(s) :math:`\sigma`.

    Returns
    -------
    float
    """
    from .gmm import mmd2_to_mixture

    mixture = _check_mixture(mixture, "exact_mmd2_to_mixture")
    Xt = _check_samples(X, name="X", func="exact_mmd2_to_mixture", n_features=mixture.dim)
    return float(mmd2_to_mixture(Xt, mixture, bandwidth))


def mmd2_empirical(X, Y, kernel: Kernel | None = None, estimator: str = "unbiased") -> float:
    r"""MMD² between the samples ``X`` (generated, n rows) and ``Y`` (references, m rows).

    .. math:: \widehat{\mathrm{MMD}}{}^2_u = \frac{1}{n(n-1)}\sum_{i\ne i'} k(x_i,x_{i'})
              + \frac{1}{m(m-1)}\sum_{j\ne j'} k(y_j,y_{j'}) - \frac{2}{nm}\sum_{i,j} k(x_i,y_j)

    (``estimator='unbiased'``, the U-statistic; may be negative) or the V-statistic
    ``'biased'`` (diagonals included, normalised by :math:`n^2` and :math:`m^2`; always >= 0).
    Computed by :class:`mmdguidance.mmd.MMD` fitted on ``Y``.

    Parameters
    ----------
    X : array or tensor of shape (n, d), n >= 2
    Y : array or tensor of shape (m, d), m >= 2
    kernel : Kernel, optional
        Cloned and fitted on ``Y``. Default: Gaussian kernel with the median-heuristic
        bandwidth of ``Y`` (median pairwise distance of the references, used as :math:`\sigma`).
    estimator : {'unbiased', 'biased'}

    Returns
    -------
    float
    """
    Xt, Yt = _check_pair(X, Y, func="mmd2_empirical", min_samples=2)
    return float(MMD(kernel=kernel, estimator=estimator).fit(Yt).score(Xt))


def _distance_sum(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_{a,b}\|a-b\|` over all pairs, in row blocks (memory O(block * len(B)))."""
    rows = max(1, _BLOCK_ELEMENTS // max(B.shape[0], 1))
    total = torch.zeros((), dtype=A.dtype, device=A.device)
    for s in range(0, A.shape[0], rows):
        # exact differences, not the ||a||^2 + ||b||^2 - 2ab expansion (sqrt amplifies its round-off near 0)
        total = total + torch.cdist(A[s : s + rows], B, compute_mode="donot_use_mm_for_euclid_dist").sum()  # (b, m) -> ()
    return total


def energy_distance(X, Y, estimator: str = "biased") -> float:
    r"""Energy distance (Székely & Rizzo), the squared form

    .. math:: \mathcal E(P, Q) = 2E\|X-Y\| - E\|X-X'\| - E\|Y-Y'\| \;\ge 0 .

    ``estimator='biased'`` (default, V-statistic): every expectation is the plain mean
    over all pairs, the within-sample ones including the zero diagonal
    (:math:`\frac1{n^2}\sum_{i,i'}`); this is :math:`\mathcal E` of the two empirical measures,
    always >= 0, and 0 iff they coincide. In 1-D it equals
    :math:`2\int (F_n - G_m)^2\,dt` and ``scipy.stats.energy_distance(x, y) ** 2``
    (scipy returns the square root :math:`\sqrt{2}\,\|F_n-G_m\|_{L^2}`).
    ``estimator='unbiased'`` (U-statistic): within-sample means over :math:`i\ne i'`
    (:math:`\frac1{n(n-1)}\sum_{i\ne i'}`); unbiased for :math:`\mathcal E(P,Q)`, may be < 0.
    It is :math:`2\,\mathrm{MMD}^2` for the distance kernel :math:`k(x,y) = \frac12(\|x\|+\|y\|-\|x-y\|)`.

    Parameters
    ----------
    X : array or tensor of shape (n, d)
    Y : array or tensor of shape (m, d)
        Both need >= 2 rows for the unbiased estimator.
    estimator : {'biased', 'unbiased'}

    Returns
    -------
    float
    """
    if estimator not in ("biased", "unbiased"):
        raise ValueError(f"unknown estimator={estimator!r}; expected 'biased' or 'unbiased'")
    Xt, Yt = _check_pair(X, Y, func="energy_distance", min_samples=2 if estimator == "unbiased" else 1)
    n, m = Xt.shape[0], Yt.shape[0]
    nx, ny = (n * n, m * m) if estimator == "biased" else (n * (n - 1), m * (m - 1))
    val = 2.0 * _distance_sum(Xt, Yt) / (n * m) - _distance_sum(Xt, Xt) / nx - _distance_sum(Yt, Yt) / ny
    return float(val)


# --------------------------------------------------------------------------- optimal transport
def wasserstein2(X, Y, num_iter_max: int = 1_000_000) -> float:
    r"""Exact 2-Wasserstein distance between the uniform empirical measures of ``X`` and ``Y``.

    .. math:: W_2 = \Big(\min_{\pi\in\Pi(\frac1n\mathbf 1, \frac1m\mathbf 1)}
              \sum_{i,j}\pi_{ij}\|x_i-y_j\|^2\Big)^{1/2}

    solved as a linear program by POT's network simplex (``ot.emd2``, squared Euclidean
    cost from :func:`mmdguidance.distances.sq_dists`). Returns :math:`W_2`, **not squared**
    (``ot.emd2`` returns the squared cost: ``W_2 = sqrt(ot.emd2(a, b, M))``). Cost :math:`O(n^3)`-ish and an
    :math:`n\times m` matrix: meant for a few thousand samples. An empirical :math:`W_2`
    overestimates the population distance by a sampling term that decays slowly in high
    dimension; compare methods at equal sample sizes.

    Parameters
    ----------
    X : array or tensor of shape (n, d)
    Y : array or tensor of shape (m, d)
    num_iter_max : int
        Simplex iteration limit (POT warns if reached).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If ``n * m`` exceeds :data:`mmdguidance.distances.MAX_DENSE_ELEMENTS` (use
        :func:`sliced_wasserstein2` or subsample).
    """
    import ot

    Xt, Yt = _check_pair(X, Y, func="wasserstein2")
    check_dense_size(
        Xt.shape[0], Yt.shape[0], func="wasserstein2",
        alternative="use sliced_wasserstein2 (no dense matrix) or a random subsample of both sets",
    )
    M = _np(sq_dists(Xt, Yt))  # (n, m), centred and exact 0 on identical points (unlike ot.dist on raw data)
    a = np.full(Xt.shape[0], 1.0 / Xt.shape[0])
    b = np.full(Yt.shape[0], 1.0 / Yt.shape[0])
    cost = float(ot.emd2(a, b, M, numItermax=check_int(num_iter_max, "num_iter_max", 1)))
    return math.sqrt(max(cost, 0.0))


def sliced_wasserstein2(X, Y, n_projections: int = 128, random_state=None) -> float:
    r"""Sliced 2-Wasserstein distance over random directions (POT ``sliced_wasserstein_distance``).

    .. math:: SW_2 = \Big(\frac1L \sum_{l=1}^L W_2^2(\theta_l^\top X, \theta_l^\top Y)\Big)^{1/2},
              \qquad \theta_l \sim \mathrm{Unif}(S^{d-1}),

    each 1-D :math:`W_2` exact (sorted quantiles). Returns :math:`SW_2`, **not squared** (as
    ``ot.sliced_wasserstein_distance(..., p=2)``, which it calls with the same projections). The directions are drawn from a torch
    generator seeded by ``random_state``, so a fixed seed gives the same value. For a
    translation :math:`Y = X + v`, :math:`E[SW_2^2] = \|v\|^2/d`.

    Parameters
    ----------
    X : array or tensor of shape (n, d)
    Y : array or tensor of shape (m, d)
    n_projections : int
        Number of directions L.
    random_state : None, int, numpy or torch generator

    Returns
    -------
    float
    """
    import ot

    L = check_int(n_projections, "n_projections", 1)
    Xt, Yt = _check_pair(X, Y, func="sliced_wasserstein2")
    g = check_random_state_torch(random_state)
    theta = torch.randn(Xt.shape[1], L, generator=g, dtype=torch.float64)  # (d, L)
    theta = theta / theta.norm(dim=0, keepdim=True)
    return float(ot.sliced_wasserstein_distance(_np(Xt), _np(Yt), projections=theta.numpy(), p=2))


# --------------------------------------------------------------------------- Frechet / KID
def _trace_sqrt_product(S1: np.ndarray, S2: np.ndarray) -> float:
    r""":math:`\mathrm{tr}\,(S_1 S_2)^{1/2}` by ``scipy.linalg.sqrtm`` (the FID convention)."""
    import scipy.linalg

    covmean = scipy.linalg.sqrtm(S1 @ S2)
    if np.iscomplexobj(covmean):
        # S1 S2 is similar to the PSD matrix S1^{1/2} S2 S1^{1/2}: its root is real up to round-off
        imag = float(np.abs(covmean.imag).max())
        scale = max(1.0, float(np.abs(covmean.real).max()))
        if imag > 1e-3 * scale:
            raise ValueError(
                f"frechet_distance: the matrix square root has an imaginary part of {imag:.3g} "
                "(covariances not positive semi-definite?)"
            )
        covmean = covmean.real
    if not np.isfinite(covmean).all():
        raise ValueError("frechet_distance: the matrix square root is not finite")
    return float(np.trace(covmean))


def frechet_distance(X, Y, eps: float = 1e-6) -> float:
    r"""Fréchet distance between Gaussian fits of two feature sets (the FID formula).

    .. math:: \mathrm{FD} = \|\mu_X - \mu_Y\|^2 + \mathrm{tr}\big(\Sigma_X + \Sigma_Y
              - 2(\Sigma_X\Sigma_Y)^{1/2}\big)

    with sample means and unbiased covariances (``ddof=1``, as pytorch-fid / clean-fid);
    this is the squared 2-Wasserstein distance between the two fitted Gaussians.
    :math:`(\Sigma_X\Sigma_Y)^{1/2}` is computed by ``scipy.linalg.sqrtm``; imaginary parts
    from round-off are dropped (a large one raises ``ValueError``). If either covariance is
    singular (fewer samples than features, constant features: smallest eigenvalue
    :math:`\le 10^{-10}\lambda_{\max}`) the square root is ill-conditioned: a
    ``RuntimeWarning`` is issued and :math:`\epsilon I` with
    :math:`\epsilon = \mathrm{eps}\cdot\max(\mathrm{tr}\Sigma_X, \mathrm{tr}\Sigma_Y)/d` is
    added to both covariances (the result then carries an error of order
    :math:`d\sqrt{\epsilon\,\lambda}`; a relative bias up to about 1e-3 against the exact
    Bures value in the tests' n < d cases). pytorch-fid instead adds :math:`10^{-6} I` only
    when ``sqrtm`` fails to return a finite result. Non-singular covariances are not
    regularised: then the value matches pytorch-fid's ``calculate_frechet_distance`` to
    round-off. FD is **squared** (a squared :math:`W_2`), like FID.
    The plug-in FD is biased upwards at small n.

    Parameters
    ----------
    X : array or tensor of shape (n, d), n >= 2
    Y : array or tensor of shape (m, d), m >= 2
    eps : float
        Relative regulariser for singular covariances.

    Returns
    -------
    float
    """
    eps = check_positive(eps, name="eps")
    Xt, Yt = _check_pair(X, Y, func="frechet_distance", min_samples=2)
    Xn, Yn = _np(Xt), _np(Yt)
    d = Xn.shape[1]
    mu1, mu2 = Xn.mean(0), Yn.mean(0)
    S1 = np.atleast_2d(np.cov(Xn, rowvar=False))  # (d, d), ddof=1
    S2 = np.atleast_2d(np.cov(Yn, rowvar=False))
    singular = []
    for nm, S in (("X", S1), ("Y", S2)):
        lam = np.linalg.eigvalsh(S)
        if lam[0] <= 1e-10 * max(lam[-1], np.finfo(float).tiny):
            singular.append(f"{nm} (rank {int((lam > 1e-10 * max(lam[-1], 0)).sum())} < {d})")
    if singular:
        off = eps * max(np.trace(S1), np.trace(S2), np.finfo(float).tiny) / d
        warnings.warn(
            f"frechet_distance: singular covariance of {' and '.join(singular)}; "
            f"adding {off:.3g}*I to both covariances",
            RuntimeWarning,
            stacklevel=2,
        )
        S1 = S1 + off * np.eye(d)
        S2 = S2 + off * np.eye(d)
    tr_sqrt = _trace_sqrt_product(S1, S2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(S1) + np.trace(S2) - 2.0 * tr_sqrt)


def kernel_distance(X, Y, n_subsets: int = 100, subset_size: int = 1000, random_state=None) -> dict:
    r"""Kernel distance / KID (Bińkowski et al. 2018) over random subsets.

    For each of ``n_subsets`` subsets (``s`` rows of ``X`` and ``s`` rows of ``Y``, each drawn
    without replacement), the unbiased MMD² with the cubic polynomial kernel
    :math:`k(a, b) = (a^\top b / d + 1)^3`:

    .. math:: \widehat{\mathrm{MMD}}{}^2_u = \frac{1}{s(s-1)}\sum_{i\ne i'} k(x_i,x_{i'})
              + \frac{1}{s(s-1)}\sum_{j\ne j'} k(y_j,y_{j'}) - \frac{2}{s^2}\sum_{i,j} k(x_i,y_j),

    computed by :func:`mmdguidance.mmd.mmd2` with
    :class:`~mmdguidance.kernels.PolynomialKernel` (degree 3, gamma 1/d, coef0 1).
    ``s = min(subset_size, n, m)``, so small samples work (s >= 2): the subset size is
    **clipped silently** (torchmetrics' ``KernelInceptionDistance`` raises instead; the
    clipped value is returned as ``subset_size``). Each subset value is unbiased (can be < 0);
    so is their mean. This is the polynomial-kernel unbiased estimator of torch-fidelity /
    torchmetrics (``(k_xx.sum() - diag)/(s(s-1)) + ... - 2 k_xy.mean()``). Values are **not**
    multiplied by 1000 (papers often report KID x 1e3).

    Parameters
    ----------
    X : array or tensor of shape (n, d)
    Y : array or tensor of shape (m, d)
    n_subsets : int
    subset_size : int
    random_state : None, int, numpy or torch generator

    Returns
    -------
    dict
        ``mean`` and ``std`` (population std, ``ddof=0``, as torch-fidelity) of the subset
        values, ``subset_size`` (the clipped s) and ``n_subsets``.
    """
    S = check_int(n_subsets, "n_subsets", 1)
    check_int(subset_size, "subset_size", 2)
    Xt, Yt = _check_pair(X, Y, func="kernel_distance", min_samples=2)
    s = min(int(subset_size), Xt.shape[0], Yt.shape[0])
    kernel = PolynomialKernel(degree=3, gamma=None, coef0=1.0).fit(Yt)  # gamma = 1/d
    g = check_random_state_torch(random_state)
    vals = torch.empty(S, dtype=torch.float64)
    for r in range(S):
        ix = torch.randperm(Xt.shape[0], generator=g)[:s].to(Xt.device)  # (s,)
        iy = torch.randperm(Yt.shape[0], generator=g)[:s].to(Yt.device)
        vals[r] = float(mmd2(kernel, Xt[ix], Yt[iy], estimator="unbiased"))
    return {
        "mean": float(vals.mean()),
        "std": float(vals.std(correction=0)),
        "subset_size": int(s),
        "n_subsets": S,
    }


# --------------------------------------------------------------------------- k-NN manifold metrics
def precision_recall_density_coverage(real, fake, k: int = 5) -> dict:
    r"""Precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

    With :math:`r_k(z)` the distance from a point to its k-th nearest neighbour within its
    own set (itself excluded), :math:`B(z, r)` the closed
    ball, real samples :math:`y_1..y_N` and fake samples :math:`f_1..f_M`:

    .. math::
        \text{precision} &= \frac1M\sum_j \mathbb 1\big[\exists i: f_j\in B(y_i, r_k(y_i))\big] \\
        \text{recall} &= \frac1N\sum_i \mathbb 1\big[\exists j: y_i\in B(f_j, r_k(f_j))\big] \\
        \text{density} &= \frac{1}{kM}\sum_j\sum_i \mathbb 1\big[f_j\in B(y_i, r_k(y_i))\big] \\
        \text{coverage} &= \frac1N\sum_i \mathbb 1\big[\exists j: f_j\in B(y_i, r_k(y_i))\big]

    Balls are **closed** (:math:`\le`); the ``prdc`` package uses open balls (:math:`<`), which
    differs only on ties (duplicated points, identical sets: here identical sets give precision,
    recall and coverage 1 and density :math:`\frac1{kM}\sum_j\#\{i: \|f_j - y_i\| \le r_k(y_i)\}`
    computed deterministically, since radii and ball tests come from one distance computation,
    :func:`mmdguidance.distances.sq_dists`, with exact zeros for duplicates). The radius of a
    point is the (k+1)-th smallest distance in its row, the point itself counting as the first
    (as in ``prdc``). Density is not bounded by 1 (about 1 when fake and real are i.i.d. from one
    distribution). The ``N x M`` distances are processed in row blocks (memory
    :math:`O(\text{block}\cdot\max(N, M))`).

    Parameters
    ----------
    real : array or tensor of shape (N, d), N >= k + 1
    fake : array or tensor of shape (M, d), M >= k + 1
    k : int, >= 1

    Returns
    -------
    dict with float entries ``precision``, ``recall``, ``density``, ``coverage``
    """
    k = check_int(k, "k", 1)
    Rt, Ft = _check_pair(real, fake, func="precision_recall_density_coverage", min_samples=k + 1, names=("real", "fake"))
    N, M = Rt.shape[0], Ft.shape[0]
    rows = max(1, _BLOCK_ELEMENTS // max(N, M))
    r2 = _knn_sq_radii(Rt, k, rows)  # (N,) squared k-NN radii of the real balls
    f2 = _knn_sq_radii(Ft, k, rows)  # (M,)
    precise = torch.zeros(M, dtype=torch.bool, device=Ft.device)
    n_in_real = torch.zeros(M, dtype=torch.float64, device=Ft.device)
    covered = torch.zeros(N, dtype=torch.bool, device=Ft.device)
    recalled = torch.zeros(N, dtype=torch.bool, device=Ft.device)
    # each ball test uses distances computed exactly as its radius was (same rows, same blocks)
    for s in range(0, N, rows):
        in_real = sq_dists(Rt[s : s + rows], Ft) <= r2[s : s + rows, None]  # (b, M): fake j in real ball i
        precise |= in_real.any(0)
        n_in_real += in_real.sum(0, dtype=torch.float64)
        covered[s : s + rows] = in_real.any(1)
    for s in range(0, M, rows):
        recalled |= (sq_dists(Ft[s : s + rows], Rt) <= f2[s : s + rows, None]).any(0)  # real i in fake ball j
    return {
        "precision": float(precise.double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(n_in_real.sum() / (k * M)),
        "coverage": float(covered.double().mean()),
    }


def _knn_sq_radii(A: torch.Tensor, k: int, rows: int) -> torch.Tensor:
    """Squared distance of every row of ``A`` ``(n, d)`` to its k-th nearest other row, shape ``(n,)``.

    The (k+1)-th smallest entry of each row of the pairwise matrix (the point itself is the
    exact 0 that :func:`~mmdguidance.distances.sq_dists` guarantees), as ``prdc`` does.
    """
    out = [torch.kthvalue(sq_dists(A[s : s + rows], A), k + 1, dim=1).values for s in range(0, A.shape[0], rows)]
    return torch.cat(out)


# --------------------------------------------------------------------------- kernel entropies
def _resolve_kernel(kernel, fit_on: torch.Tensor, func: str) -> Kernel:
    """None -> Gaussian median; float -> Gaussian bandwidth; unfitted Kernel -> clone fitted on ``fit_on``."""
    if kernel is None:
        if fit_on.shape[0] < 2 or not bool((fit_on != fit_on[:1]).any()):
            raise ValueError(
                f"{func}: the default median-heuristic bandwidth needs at least 2 distinct samples; "
                "pass kernel=<float bandwidth> or a Kernel"
            )
        kernel = GaussianKernel(bandwidth="median")
    elif isinstance(kernel, numbers.Real) and not isinstance(kernel, bool):
        kernel = GaussianKernel(bandwidth=check_positive(kernel, name="bandwidth"))
    elif not isinstance(kernel, Kernel):
        raise TypeError(f"{func}: kernel must be None, a float bandwidth or a mmdguidance Kernel, got {type(kernel).__name__}")
    if kernel.__sklearn_is_fitted__():
        if kernel.n_features_in_ != fit_on.shape[1]:
            raise ValueError(f"{func}: the kernel was fitted on {kernel.n_features_in_} features, the data has {fit_on.shape[1]}")
        return kernel
    return clone(kernel).fit(fit_on)


def _normalised_gram(kernel: Kernel, A: torch.Tensor, B: torch.Tensor, func: str) -> torch.Tensor:
    r"""Cosine-normalised Gram matrix :math:`k(a,b)/\sqrt{k(a,a)k(b,b)}` (so that k(x,x) = 1), shape (n, m)."""
    K = kernel.gram_tensor(A, B)  # (n, m)
    da, db = kernel.diag_tensor(A), kernel.diag_tensor(B)  # (n,), (m,)
    if bool((da <= 0).any()) or bool((db <= 0).any()):
        raise ValueError(f"{func}: the kernel has k(x, x) <= 0 at some sample; cannot normalise it")
    return K / torch.sqrt(da[:, None] * db[None, :])


def rke(X, kernel=None) -> float:
    r"""Rényi kernel entropy mode count of order 2 (Jalali, Li & Farnia, NeurIPS 2023).

    .. math:: \mathrm{RKE}(X) = \Big(\frac1{n^2}\sum_{i,i'} k(x_i, x_{i'})^2\Big)^{-1}
              = \frac{1}{\|K/n\|_F^2} = \frac{1}{\sum_l \lambda_l^2},

    :math:`\lambda_l` the eigenvalues of :math:`K/n` (V-statistic, diagonal included),
    i.e. :math:`\exp` of the order-2 Rényi entropy of the kernel covariance operator. The
    kernel is cosine-normalised, :math:`k(x,y)/\sqrt{k(x,x)k(y,y)}` (a no-op for one
    Gaussian scale), so :math:`1 \le \mathrm{RKE} \le n`: n identical points give 1, m
    well-separated clusters with proportions :math:`p` give :math:`1/\sum_c p_c^2` (m when
    equal). Equals :func:`vendi_score` with ``q=2``.

    Parameters
    ----------
    X : array or tensor of shape (n, d)
    kernel : None, float or Kernel
        None: Gaussian kernel with the median-heuristic bandwidth of ``X``; a float: a
        Gaussian bandwidth :math:`\sigma`; an unfitted Kernel is cloned and fitted on ``X``,
        a fitted one is used as is.

    Returns
    -------
    float
    """
    Xt = _check_samples(X, name="X", func="rke")
    k = _resolve_kernel(kernel, Xt, "rke")
    n = Xt.shape[0]
    rows = max(1, _BLOCK_ELEMENTS // n)
    total = torch.zeros((), dtype=torch.float64, device=Xt.device)
    for s in range(0, n, rows):  # memory O(rows * n): no n x n matrix
        Kb = _normalised_gram(k, Xt[s : s + rows], Xt, "rke") / n  # (b, n)
        total = total + (Kb * Kb).sum()
    return float(1.0 / total)


def vendi_score(X, kernel=None, q: float = 1.0) -> float:
    r"""Vendi score of order q (Friedman & Dieng 2023; Pasarkar & Dieng 2024 for q != 1).

    The exponential of the Rényi entropy of the eigenvalues :math:`\lambda_l` of
    :math:`K/n` (cosine-normalised kernel, so :math:`\sum_l\lambda_l = 1`):

    .. math:: \mathrm{VS}_1 = \exp\Big(-\sum_l \lambda_l\log\lambda_l\Big), \qquad
              \mathrm{VS}_q = \Big(\sum_l \lambda_l^q\Big)^{1/(1-q)}, \qquad
              \mathrm{VS}_\infty = 1/\lambda_{\max}.

    ``q=2`` equals :func:`rke`. Non-increasing in q; between 1 and n. An "effective number
    of distinct samples": m well-separated equal clusters give m for every q.
    Cost: one :math:`n\times n` symmetric eigendecomposition; above
    :data:`mmdguidance.distances.MAX_DENSE_ELEMENTS` entries a ``ValueError`` suggests a
    subsample (or :func:`rke`, the chunked order-2 score). Computed as
    :math:`\exp\big(\mathrm{logsumexp}(q\log\lambda)/(1-q)\big)`, finite for any q (e.g. 1e5).
    Convention of the ``vendi_score`` package (``score_K(K, q)``): the same formula on
    :math:`K/n` with the kernel's own diagonal (here normalised to 1).

    Parameters
    ----------
    X : array or tensor of shape (n, d)
    kernel : None, float or Kernel
        As in :func:`rke`.
    q : float > 0 or ``inf``

    Returns
    -------
    float
    """
    q = float(q)
    if not q > 0:
        raise ValueError(f"vendi_score: q must be > 0 (or inf), got {q!r}")
    Xt = _check_samples(X, name="X", func="vendi_score")
    check_dense_size(Xt.shape[0], Xt.shape[0], func="vendi_score",
                     alternative="score a random subsample of X, or use rke (order 2, computed in blocks)")
    K = _normalised_gram(_resolve_kernel(kernel, Xt, "vendi_score"), Xt, Xt, "vendi_score") / Xt.shape[0]
    lam = torch.linalg.eigvalsh(K).clamp_min(0.0)  # (n,)
    lam = lam / lam.sum()
    if math.isinf(q):
        return float(1.0 / lam.max())
    if q == 1.0:
        nz = lam[lam > 0]
        return float(torch.exp(-(nz * nz.log()).sum()))
    logs = torch.logsumexp(q * torch.log(lam[lam > 0]), 0)  # log sum lam^q without overflow/underflow
    return float(torch.exp(logs / (1.0 - q)))


def rrke(X, Y, kernel=None) -> float:
    r"""Relative Rényi kernel entropy of order 1/2 between generated ``X`` and references ``Y``.

    The formula implemented (the one of the RKE authors' reference code,
    ``RKE.compute_rrke``, for Jalali, Li & Farnia, NeurIPS 2023):

    .. math:: \mathrm{RRKE}_{1/2}(X, Y) = -\log \big\|K_{XY}\big\|_*^2, \qquad
              (K_{XY})_{ij} = \frac{k(x_i, y_j)}{\sqrt{nm}},

    with :math:`\|\cdot\|_*` the nuclear norm (sum of singular values) and a
    cosine-normalised kernel (:math:`k(x,x) = 1`). Since :math:`\|K_{XY}\|_*` is the
    fidelity :math:`F = \mathrm{tr}\,|C_X^{1/2} C_Y^{1/2}|` of the empirical kernel covariance
    operators :math:`C_X = \frac1n\sum_i \phi(x_i)\phi(x_i)^\top` (unit trace), this is the
    order-1/2 (sandwiched) quantum Rényi divergence :math:`-2\log F(C_X, C_Y)`: symmetric,
    :math:`\ge 0`, 0 iff :math:`C_X = C_Y` (e.g. ``X`` equal to ``Y``), ``inf`` when no
    generated sample is kernel-close to any reference. **Lower is better.** For
    well-separated clusters with proportions :math:`p` (generated) and :math:`q` (references)
    it equals :math:`-2\log\sum_c\sqrt{p_c q_c}`, the Rényi-1/2 divergence of the cluster
    histograms. Values below ``1e-12`` (the SVD's round-off, e.g. ``rrke(X, X)``) are
    returned as ``+0.0``. Above :data:`mmdguidance.distances.MAX_DENSE_ELEMENTS` entries of
    :math:`K_{XY}` a ``ValueError`` suggests subsampling.

    Parameters
    ----------
    X : array or tensor of shape (n, d)
    Y : array or tensor of shape (m, d)
    kernel : None, float or Kernel
        None: Gaussian kernel with the median-heuristic bandwidth of the references ``Y``;
        a float: a Gaussian bandwidth; an unfitted Kernel is cloned and fitted on ``Y``.

    Returns
    -------
    float
    """
    Xt, Yt = _check_pair(X, Y, func="rrke")
    check_dense_size(Xt.shape[0], Yt.shape[0], func="rrke", alternative="score random subsamples of X and Y")
    k = _resolve_kernel(kernel, Yt, "rrke")
    Kxy = _normalised_gram(k, Xt, Yt, "rrke") / math.sqrt(Xt.shape[0] * Yt.shape[0])  # (n, m)
    fidelity = float(torch.linalg.svdvals(Kxy).sum())
    if fidelity <= 0.0:
        return math.inf
    val = -2.0 * math.log(fidelity)
    return val if val > _RRKE_ROUNDOFF else 0.0  # +0.0 (not -0.0 or 2e-16) when X equals Y


# --------------------------------------------------------------------------- Gaussian mixtures
def _assign(X, mixture, func: str, distances: bool = True):
    """Posterior-argmax labels (n,) and (optionally) the Mahalanobis distance to the assigned component (n,)."""
    import scipy.linalg

    mixture = _check_mixture(mixture, func)
    Xt = _check_samples(X, name="X", func=func, n_features=mixture.dim)
    Xn = _np(Xt)
    lab = np.asarray(mixture.mode_assignment(Xn))  # (n,)
    if not distances:
        return lab, None
    dist = np.empty(len(Xn))
    for c in np.unique(lab):
        idx = lab == c
        L = np.linalg.cholesky(mixture.covariances[c])  # S_c = L L^T
        z = scipy.linalg.solve_triangular(L, (Xn[idx] - mixture.means[c]).T, lower=True)  # (d, n_c)
        dist[idx] = np.sqrt((z * z).sum(0))
    return lab, dist


def mode_coverage(X, mixture, threshold_sigma: float = 3.0, min_fraction=None) -> dict:
    r"""How the samples populate the components of a Gaussian mixture.

    Each sample is assigned to its most responsible component
    (:meth:`GaussianMixture.mode_assignment`, posterior argmax) and counts as *near* that
    mode when its Mahalanobis distance :math:`\sqrt{(x-m_c)^\top S_c^{-1}(x-m_c)}` is at most
    the radius holding the same Gaussian mass as :math:`\pm` ``threshold_sigma`` in 1-D:

    .. math:: r = \sqrt{\chi^2_{d}{}^{-1}\big(\mathrm{erf}(t/\sqrt2)\big)}

    (:math:`r = t` in 1-D; for t = 3 the ellipsoid holds 99.73% of a component in every
    dimension, so exact samples of well-separated components give ``frac_near_mode``
    :math:`\approx 0.9973`).

    Parameters
    ----------
    X : array or tensor of shape (n, d)
    mixture : GaussianMixture
    threshold_sigma : float > 0
    min_fraction : None, float or array of shape (K,)
        A component is *covered* when the fraction of samples assigned to it and near it
        is at least this. Default: a tenth of its weight, :math:`0.1\,\pi_c` (and at least
        one sample).

    Returns
    -------
    dict
        ``per_mode_fraction`` (list of K floats: fraction of all samples assigned to and
        near component c), ``frac_near_mode`` (fraction near their assigned mode),
        ``modes_covered`` (int), ``n_components``, ``mahalanobis_radius`` (r).
    """
    from scipy.special import erf
    from scipy.stats import chi2

    t = check_positive(threshold_sigma, name="threshold_sigma")
    lab, dist = _assign(X, mixture, "mode_coverage")
    K = mixture.n_components
    radius = float(np.sqrt(chi2.ppf(erf(t / math.sqrt(2.0)), df=mixture.dim)))
    near = dist <= radius
    counts = np.bincount(lab[near], minlength=K)
    per = counts / len(lab)
    if min_fraction is None:
        thr = 0.1 * mixture.weights
    else:
        if np.iscomplexobj(min_fraction):
            raise TypeError("mode_coverage: min_fraction must be real")
        thr = np.asarray(min_fraction, dtype=float)
        if thr.shape not in ((), (K,)):
            raise ValueError(
                f"mode_coverage: min_fraction must be a float or an array of shape ({K},) (one per component), "
                f"got shape {thr.shape}"
            )
        thr = np.broadcast_to(thr, (K,))
        if not np.all(np.isfinite(thr)) or (thr < 0).any():
            raise ValueError(f"mode_coverage: min_fraction must be non-negative and finite, got {min_fraction!r}")
    covered = (per >= thr) & (counts >= 1)
    return {
        "per_mode_fraction": per.tolist(),
        "frac_near_mode": float(near.mean()),
        "modes_covered": int(covered.sum()),
        "n_components": int(K),
        "mahalanobis_radius": radius,
    }


def mode_weight_error(X, mixture, target_weights=None) -> float:
    r"""Total-variation distance between the empirical mode histogram and target weights.

    .. math:: \mathrm{TV} = \frac12\sum_{c=1}^K |\hat p_c - w_c|, \qquad
              \hat p_c = \frac1n\#\{i : \arg\max_{c'} r_{c'}(x_i) = c\},

    with :math:`r` the mixture's posterior responsibilities (every sample is assigned, near
    a mode or not). In [0, 1]. For n i.i.d. samples of a mixture with well-separated
    components and ``target_weights`` its weights,
    :math:`E\,\mathrm{TV} \le \frac12\sum_c\sqrt{w_c(1-w_c)/n}`.

    Parameters
    ----------
    X : array or tensor of shape (n, d)
    mixture : GaussianMixture
        Defines the components (its weights are not used unless ``target_weights`` is None).
    target_weights : array of shape (K,), optional
        Non-negative, summing to 1. Default: ``mixture.weights``.

    Returns
    -------
    float
    """
    mixture = _check_mixture(mixture, "mode_weight_error")
    K = mixture.n_components
    w = mixture.weights if target_weights is None else np.asarray(target_weights, dtype=float)
    if w.shape != (K,) or not np.all(np.isfinite(w)) or (w < 0).any() or not np.isclose(w.sum(), 1.0):
        raise ValueError(
            f"mode_weight_error: target_weights must be {K} non-negative numbers summing to 1 "
            f"(one per component), got {np.asarray(target_weights).tolist()}"
        )
    lab, _ = _assign(X, mixture, "mode_weight_error", distances=False)
    p = np.bincount(lab, minlength=K) / len(lab)
    logger.debug("mode_weight_error: empirical mode histogram %s", np.round(p, 4).tolist())
    return float(0.5 * np.abs(p - w).sum())
