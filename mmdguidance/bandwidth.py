r"""Data-driven bandwidth rules for the Gaussian kernel, and a check that the cross term acts.

The median heuristic returns *one* scale: the median reference distance. When more than half of the
reference pairs lie in the same mode (multi-modal, imbalanced references), that median is the
*within-mode* scale, and for a generated sample :math:`x` sitting at another mode the cross-term
gradient :math:`\frac{2}{B}\sum_j w_j \nabla_1 k(x, y_j) \propto e^{-D^2/2\sigma^2}` vanishes (``D`` the
distance between modes) while the self term does not: guidance then only pushes samples apart.

:func:`span_bandwidths` returns a geometric ladder of scales that spans the *whole* range of the
non-zero reference distances, from a low quantile (within-mode) to the largest (between-mode), for use
as ``GaussianKernel(bandwidth=span_bandwidths(Y))`` (a multi-scale *sum*). Zero distances (exact
duplicates) are ignored, so duplicated references cannot collapse the scale.

:func:`cross_term_ratio` measures, for a batch, the share of samples whose cross-term gradient is
negligible relative to their self-term gradient, the symptom above, so that guidance can warn.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._utils import check_array_2d, check_positive
from .kernels import pairwise_sq_dists

__all__ = ["nonzero_distances", "span_bandwidths", "median_ladder_bandwidths", "cross_term_ratio", "negligible_share"]

#: distances below this fraction of the largest one count as exact duplicates (float64 round-off)
_DUPLICATE_RTOL = 1e-6


def nonzero_distances(Y, *, max_points: int = 1000, random_state: int = 0) -> np.ndarray:
    r"""Sorted non-zero pairwise Euclidean distances :math:`\|y_j - y_{j'}\|`, :math:`j < j'`.

    Computed in float64 (on a seeded random subset of ``max_points`` rows above that size);
    distances below ``1e-6`` times the largest are dropped as duplicates.

    Parameters
    ----------
    Y : array or tensor of shape (m, d)
    max_points : int
    random_state : int

    Returns
    -------
    ndarray of shape (n_pairs,)

    Raises
    ------
    ValueError
        Fewer than 2 rows, non-finite values, or all rows identical.
    """
    t = check_array_2d(Y, name="Y", min_samples=2).detach().to(torch.float64)  # (m, d)
    if t.shape[0] > max_points:
        g = torch.Generator().manual_seed(int(random_state))
        t = t[torch.randperm(t.shape[0], generator=g)[:max_points].to(t.device)]
    iu = torch.triu_indices(t.shape[0], t.shape[0], offset=1, device=t.device)
    d = pairwise_sq_dists(t, t)[iu[0], iu[1]].sqrt().cpu().numpy()  # (m(m-1)/2,)
    top = float(d.max())
    d = np.sort(d[d > _DUPLICATE_RTOL * top]) if top > 0 else d[:0]
    if d.size == 0:
        raise ValueError("all samples coincide: no non-zero distance to set a bandwidth from; pass a float bandwidth")
    return d


def span_bandwidths(Y, *, low_quantile: float = 0.1, ratio: float = 2.0, max_points: int = 1000,
                    random_state: int = 0) -> list[float]:
    r"""Geometric ladder of Gaussian bandwidths spanning the non-zero reference distances.

    .. math:: \sigma_k = q \, r^k, \quad k = 0, 1, \dots, K, \qquad
              K = \lceil \log_r (d_{\max} / q) \rceil,

    with :math:`q` the ``low_quantile`` quantile and :math:`d_{\max}` the largest of the non-zero
    pairwise reference distances (:func:`nonzero_distances`). The smallest scale resolves the
    within-mode shape, the largest reaches every reference from every other, so the cross term
    acts on samples at any mode of the references.

    Parameters
    ----------
    Y : array or tensor of shape (m, d)
        References.
    low_quantile : float in [0, 1)
    ratio : float > 1
        Geometric step between scales.
    max_points, random_state : see :func:`nonzero_distances`.

    Returns
    -------
    list of float, increasing, at least one element
        For ``GaussianKernel(bandwidth=...)``.
    """
    if not 0.0 <= float(low_quantile) < 1.0:
        raise ValueError(f"low_quantile must be in [0, 1), got {low_quantile!r}")
    if check_positive(ratio, name="ratio") <= 1.0:
        raise ValueError(f"ratio must be > 1, got {ratio!r}")
    d = nonzero_distances(Y, max_points=max_points, random_state=random_state)
    q, top = float(np.quantile(d, low_quantile)), float(d[-1])
    n_steps = max(0, math.ceil(math.log(top / q) / math.log(ratio) - 1e-9))
    return [q * ratio**k for k in range(n_steps + 1)]


def median_ladder_bandwidths(Y, *, multipliers=(0.25, 0.5, 1.0, 2.0, 4.0), max_points: int = 1000,
                             random_state: int = 0) -> list[float]:
    r"""Bandwidths :math:`\sigma_s = c_s\, m`, with :math:`m` the median of the *non-zero* reference distances.

    A duplicate-safe median ladder (the candidate compared with :func:`span_bandwidths` in
    ``experiments/bench_defaults``).

    Returns
    -------
    list of float
    """
    med = float(np.median(nonzero_distances(Y, max_points=max_points, random_state=random_state)))
    return [check_positive(float(c), name="multipliers") * med for c in multipliers]


def cross_term_ratio(X, Y, kernel, *, weights=None, threshold: float = 0.01) -> float:
    r"""Share of samples whose cross-term gradient is negligible next to their self-term gradient.

    With the biased MMD² of a batch :math:`x_{1..B}` and references :math:`y_{1..N}` (weights :math:`w`),

    .. math:: s_i = \frac{2}{B^2}\sum_{i'} \nabla_1 k(x_i, x_{i'}), \qquad
              c_i = \frac{2}{B}\sum_j w_j \nabla_1 k(x_i, y_j),

    returns :math:`\frac1B \#\{i : \|c_i\| < \tau \|s_i\|\}` with :math:`\tau` = ``threshold``.
    A value near 1 means that guidance sees (almost) only the repulsion between samples: the
    bandwidth is too small for the distance between the samples and the references.

    Parameters
    ----------
    X : array or tensor of shape (B, d)
        Current samples (at the evaluation point of the guidance).
    Y : array or tensor of shape (N, d)
        References.
    kernel : fitted Kernel
    weights : None or array of shape (N,)
        Reference weights (uniform ``1/N`` if None).
    threshold : float > 0

    Returns
    -------
    float in [0, 1]
    """
    check_positive(threshold, name="threshold")
    Xt = check_array_2d(X, name="X", min_samples=2)
    Yt = check_array_2d(Y, name="Y", n_features=Xt.shape[1], dtype=Xt.dtype, owner="X")
    self_g = kernel.grad(Xt, Xt)  # (B, d): (1/B) sum_i' grad k(x_i, x_i'); times 2/B gives s_i
    cross_g = kernel.grad(Xt, Yt, weights)  # (B, d): sum_j w_j grad k(x_i, y_j); times 2/B gives c_i
    return negligible_share(cross_g, self_g, threshold)


def negligible_share(cross, self_, threshold: float) -> float:
    r"""Share of rows with :math:`\|c_i\| < \tau \|s_i\|` for per-sample cross / self gradients ``(B, d)`` (same scaling)."""
    c = torch.linalg.vector_norm(cross, dim=1)  # (B,)
    s = torch.linalg.vector_norm(self_, dim=1)  # (B,)
    return float((c < threshold * s).double().mean())
