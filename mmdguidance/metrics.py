r"""Sample-quality and distribution-distance metrics.

All functions take numpy arrays or torch tensors of shape ``(n, d)`` and return Python floats (or small
dicts). Random subsets/projections take ``random_state``. Conventions are stated per function.

* :func:`exact_mmd2_to_mixture` — exact V-statistic MMD² between a sample and a Gaussian mixture.
* :func:`mmd2_empirical` — unbiased (default) or biased MMD² between two samples.
* :func:`energy_distance` — :math:`2E\|X-Y\| - E\|X-X'\| - E\|Y-Y'\|` (V-statistic).
* :func:`wasserstein2`, :func:`sliced_wasserstein2` — exact W₂ and sliced W₂ via POT.
* :func:`frechet_distance` — FD/FID formula between Gaussian fits.
* :func:`kernel_distance` — KID: unbiased cubic-polynomial MMD² averaged over random subsets.
* :func:`precision_recall_density_coverage` — k-NN manifold metrics (Kynkäänniemi et al. 2019; Naeem et al. 2020).
* :func:`rke`, :func:`vendi_score`, :func:`rrke` — kernel-entropy diversity scores.
* :func:`mode_coverage`, :func:`mode_weight_error` — for Gaussian-mixture targets.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from ._utils import check_array_2d, check_random_state_torch, logger
from .kernels import GaussianKernel, Kernel, PolynomialKernel
from .mmd import MMD

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


def _np(X, name, min_samples=1, d=None):
    return check_array_2d(X, name=name, min_samples=min_samples, n_features=d).detach().cpu().numpy()


def _pair(X, Y, min_samples=1):
    Xn = _np(X, "X", min_samples)
    Yn = _np(Y, "Y", min_samples, d=Xn.shape[1])
    return Xn, Yn


# --------------------------------------------------------------------------- MMD family
def exact_mmd2_to_mixture(X, mixture, bandwidth) -> float:
    """Exact biased MMD² between the empirical measure of ``X`` and a Gaussian mixture (Gaussian kernel).

    Thin wrapper of :func:`mmdguidance.gmm.mmd2_to_mixture` (closed-form kernel mean embedding).
    """
    from .gmm import mmd2_to_mixture

    return float(mmd2_to_mixture(_np(X, "X", d=mixture.dim), mixture, bandwidth))


def mmd2_empirical(X, Y, kernel: Kernel | None = None, estimator: str = "unbiased") -> float:
    """MMD² between samples ``X`` and ``Y`` (``Y`` plays the references; default Gaussian kernel with the
    median bandwidth of ``Y``)."""
    Xn, Yn = _pair(X, Y, min_samples=2)
    return float(MMD(kernel=kernel, estimator=estimator).fit(Yn).score(Xn))


def energy_distance(X, Y) -> float:
    r"""Energy distance :math:`2E\|X-Y\| - E\|X-X'\| - E\|Y-Y'\|` (V-statistic: the within-sample means
    include the zero diagonal). In 1-D it equals ``scipy.stats.energy_distance(x, y)**2`` (scipy returns the
    square root of the same expression)."""
    Xn, Yn = _pair(X, Y)
    from scipy.spatial.distance import cdist

    return float(2 * cdist(Xn, Yn).mean() - cdist(Xn, Xn).mean() - cdist(Yn, Yn).mean())


# --------------------------------------------------------------------------- optimal transport
def wasserstein2(X, Y) -> float:
    r"""Exact :math:`W_2` between the uniform empirical measures of ``X`` and ``Y`` (POT ``emd2``, squared
    Euclidean cost); returns :math:`W_2` (not squared)."""
    import ot

    Xn, Yn = _pair(X, Y)
    M = ot.dist(Xn, Yn)  # squared Euclidean
    a = np.full(len(Xn), 1 / len(Xn))
    b = np.full(len(Yn), 1 / len(Yn))
    return float(np.sqrt(max(ot.emd2(a, b, M, numItermax=1_000_000), 0.0)))


def sliced_wasserstein2(X, Y, n_projections: int = 256, random_state=None) -> float:
    """Sliced :math:`W_2` (POT ``sliced_wasserstein_distance``, p = 2) over seeded random directions."""
    import ot

    Xn, Yn = _pair(X, Y)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=check_random_state_torch(random_state)))
    return float(ot.sliced_wasserstein_distance(Xn, Yn, n_projections=n_projections, p=2, seed=seed))


# --------------------------------------------------------------------------- Frechet / KID
def frechet_distance(X, Y, eps: float = 1e-6) -> float:
    r""":math:`\|\mu_X-\mu_Y\|^2 + \mathrm{tr}(\Sigma_X + \Sigma_Y - 2(\Sigma_X\Sigma_Y)^{1/2})` between Gaussian fits
    (unbiased covariances). A singular product gets ``eps·I`` added (logged); tiny imaginary parts of the
    square root are dropped."""
    Xn, Yn = _pair(X, Y, min_samples=2)
    mu1, mu2 = Xn.mean(0), Yn.mean(0)
    S1, S2 = np.atleast_2d(np.cov(Xn, rowvar=False)), np.atleast_2d(np.cov(Yn, rowvar=False))
    covmean = scipy.linalg.sqrtm(S1 @ S2)
    if not np.isfinite(covmean).all():
        logger.warning("frechet_distance: singular covariance product; adding %g*I", eps)
        off = eps * np.eye(S1.shape[0])
        covmean = scipy.linalg.sqrtm((S1 + off) @ (S2 + off))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(S1) + np.trace(S2) - 2 * np.trace(covmean))


def kernel_distance(X, Y, n_subsets: int = 100, subset_size: int = 1000, random_state=None) -> dict:
    r"""KID: the unbiased MMD² with the cubic polynomial kernel :math:`(x^\top y/d + 1)^3`, averaged over
    ``n_subsets`` random subsets of size ``min(subset_size, len(X), len(Y))`` (>= 2).

    Returns ``{"mean": ..., "std": ...}`` over the subsets.
    """
    Xn, Yn = _pair(X, Y, min_samples=2)
    m = min(int(subset_size), len(Xn), len(Yn))
    g = check_random_state_torch(random_state)
    vals = []
    for _ in range(int(n_subsets)):
        ix = torch.randperm(len(Xn), generator=g)[:m].numpy()
        iy = torch.randperm(len(Yn), generator=g)[:m].numpy()
        vals.append(MMD(kernel=PolynomialKernel(), estimator="unbiased").fit(Yn[iy]).score(Xn[ix]))
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "subset_size": m}


# --------------------------------------------------------------------------- k-NN manifold metrics
def precision_recall_density_coverage(real, fake, k: int = 5) -> dict:
    r"""Precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

    With :math:`r_k(x)` the distance from a point to its k-th nearest neighbour within its own set:
    precision = fraction of fake samples inside some real ball :math:`B(y, r_k(y))`; recall = fraction of
    real samples inside some fake ball; density = :math:`\frac{1}{kM}\sum_j \#\{i: f_j \in B(y_i, r_k(y_i))\}`;
    coverage = fraction of real samples whose ball contains at least one fake sample.
    """
    from sklearn.neighbors import NearestNeighbors

    R, F = _pair(real, fake, min_samples=k + 1)

    def radii(A):
        d, _ = NearestNeighbors(n_neighbors=k + 1).fit(A).kneighbors(A)
        return d[:, -1]  # the first neighbour is the point itself

    rr, rf = radii(R), radii(F)
    from scipy.spatial.distance import cdist

    D = cdist(R, F)  # (n_real, n_fake)
    inside_real = D <= rr[:, None]  # fake j inside real ball i
    inside_fake = D <= rf[None, :]  # real i inside fake ball j
    return {
        "precision": float(inside_real.any(0).mean()),
        "recall": float(inside_fake.any(1).mean()),
        "density": float(inside_real.sum(0).mean() / k),
        "coverage": float(inside_real.any(1).mean()),
    }


# --------------------------------------------------------------------------- kernel entropies
def _kernel_matrix(X, kernel):
    Xn = _np(X, "X", min_samples=1)
    k = GaussianKernel(bandwidth="median") if kernel is None else kernel
    if len(Xn) < 2 and isinstance(k, GaussianKernel) and k.bandwidth == "median":
        k = GaussianKernel(bandwidth=1.0)
    k = k.fit(Xn) if not hasattr(k, "n_features_in_") else k
    return np.asarray(k.gram(Xn, Xn))


def rke(X, kernel: Kernel | None = None) -> float:
    r"""Rényi kernel entropy mode count (order 2): :math:`1/\|K/n\|_F^2` for a normalised kernel (k(x,x) = 1)
    (Jalali et al. 2023). Identical points give 1; m well-separated equal clusters give about m."""
    K = _kernel_matrix(X, kernel)
    n = K.shape[0]
    return float(1.0 / ((K / n) ** 2).sum())


def vendi_score(X, kernel: Kernel | None = None, q: float = 1.0) -> float:
    r"""Vendi score (Friedman & Dieng 2023): :math:`\exp(H_q(\lambda))` of the eigenvalues :math:`\lambda` of
    :math:`K/n` (order q; q = 1 Shannon, q = 2 equals :func:`rke`)."""
    K = _kernel_matrix(X, kernel)
    lam = np.clip(np.linalg.eigvalsh(K / K.shape[0]), 0, None)
    lam = lam / lam.sum()
    lam = lam[lam > 0]
    if q == 1:
        return float(np.exp(-(lam * np.log(lam)).sum()))
    return float(np.exp(np.log((lam**q).sum()) / (1 - q)))


def rrke(X, Y, kernel: Kernel | None = None) -> float:
    r"""Relative Rényi kernel entropy (order 2) of generated ``X`` w.r.t. references ``Y``, in the
    cross-covariance form implemented here (the exact constants of the published definition were not
    available to us):

    .. math:: \mathrm{RRKE}(X\|Y) = \frac{\|K_{XX}/n\|_F \,\|K_{YY}/m\|_F}{\|K_{XY}\|_F^2/(nm)}
              = \frac{\|\Sigma_X\|_{HS}\|\Sigma_Y\|_{HS}}{\langle\Sigma_X, \Sigma_Y\rangle_{HS}}

    with :math:`\Sigma` the kernel covariance operators (kernel :math:`k^2`). By Cauchy–Schwarz it is
    :math:`\ge 1`, with equality iff the two covariance operators are proportional (e.g. identical samples);
    it grows as the generated modes and the reference modes stop overlapping.
    """
    Xn, Yn = _pair(X, Y)
    k = GaussianKernel(bandwidth="median").fit(Yn) if kernel is None else kernel
    if not hasattr(k, "n_features_in_"):
        k = k.fit(Yn)
    Kxx, Kyy, Kxy = (np.asarray(k.gram(a, b)) for a, b in ((Xn, Xn), (Yn, Yn), (Xn, Yn)))
    n, m = len(Xn), len(Yn)
    num = np.sqrt(((Kxx / n) ** 2).sum()) * np.sqrt(((Kyy / m) ** 2).sum())
    return float(num / ((Kxy**2).sum() / (n * m)))


# --------------------------------------------------------------------------- mixtures
def _mahalanobis_to_assigned(X, mixture):
    lab = np.asarray(mixture.mode_assignment(X))
    diff = X - mixture.means[lab]
    prec = np.linalg.inv(mixture.covariances)[lab]  # (n, d, d)
    return lab, np.sqrt(np.einsum("ni,nij,nj->n", diff, prec, diff))


def mode_coverage(X, mixture, threshold_sigma: float = 3.0, min_fraction: float = 0.01) -> dict:
    """Per-component fraction of samples assigned (posterior argmax) *and* within ``threshold_sigma``
    Mahalanobis radius; ``frac_near_mode`` (any component); ``modes_covered`` = components holding at least
    ``min_fraction`` of the samples."""
    Xn = _np(X, "X", d=mixture.dim)
    lab, dist = _mahalanobis_to_assigned(Xn, mixture)
    near = dist <= threshold_sigma
    per = np.bincount(lab[near], minlength=mixture.n_components) / len(Xn)
    return {"per_mode_fraction": per.tolist(), "frac_near_mode": float(near.mean()),
            "modes_covered": int((per >= min_fraction).sum())}


def mode_weight_error(X, mixture, target_weights) -> float:
    r"""Total variation :math:`\frac12\sum_k |\hat p_k - w_k|` between the empirical mode histogram
    (posterior argmax assignment) and ``target_weights``."""
    Xn = _np(X, "X", d=mixture.dim)
    w = np.asarray(target_weights, float)
    if w.shape != (mixture.n_components,) or (w < 0).any() or not np.isclose(w.sum(), 1.0):
        raise ValueError(f"target_weights must be {mixture.n_components} non-negative numbers summing to 1")
    p = np.bincount(np.asarray(mixture.mode_assignment(Xn)), minlength=mixture.n_components) / len(Xn)
    return float(0.5 * np.abs(p - w).sum())
