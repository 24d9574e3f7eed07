r"""Positive-definite kernels with closed-form, chunked gradients.

Every kernel is an sklearn ``BaseEstimator``: ``fit(Y)`` resolves data-dependent
parameters (a median-heuristic bandwidth, the polynomial's ``gamma = 1/D``) and
sets ``n_features_in_``; afterwards

* ``gram(X, Y)``      -> :math:`K_{ij} = k(x_i, y_j)`, shape ``(n, m)``
* ``grad(X, Y, w)``   -> :math:`g_i = \sum_j w_{ij} \nabla_1 k(x_i, y_j)`, shape ``(n, d)``

where ``w`` is ``None`` (uniform :math:`1/m`), a vector ``(m,)`` or a matrix ``(n, m)``
(per-pair weights, used by :class:`ProductKernel`). The gradient never builds an
``n x m x d`` tensor: for a distance kernel :math:`k = \phi(\|x-y\|^2)`

.. math:: g_i = 2 \Big(\sum_j G_{ij}\Big) x_i - 2 (G Y)_i, \qquad G_{ij} = w_{ij}\,\phi'(\|x_i-y_j\|^2),

and for a dot-product kernel :math:`k = \psi(x^\top y)`, :math:`g = G Y` with
:math:`G_{ij} = w_{ij} \psi'(x_i^\top y_j)`. Rows of ``X`` are processed in blocks of
``chunk_size`` rows (default: about ``2**22 / m``) so peak extra memory is
``O(chunk_size * m)`` whatever ``n``.

numpy inputs give numpy outputs (computed in float64); torch inputs give torch
outputs on the same device and dtype.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from ._utils import as_tensor, check_array_2d, check_positive, from_tensor, logger

__all__ = [
    "Kernel",
    "GaussianKernel",
    "PolynomialKernel",
    "IMQKernel",
    "ConstantKernel",
    "ProductKernel",
    "median_heuristic",
    "pairwise_sq_dists",
]

#: Target number of elements of one ``(rows, m)`` block in chunked computations.
DEFAULT_BLOCK_ELEMENTS = 2**22

_MEDIAN_MAX_POINTS = 1000


# --------------------------------------------------------------------------- helpers
def _centered(X: torch.Tensor, Y: torch.Tensor, center: torch.Tensor | None = None):
    r"""Return ``X, Y`` shifted by a common centre when that improves float accuracy.

    The expansion :math:`\|a\|^2 + \|b\|^2 - 2a^\top b` loses about
    :math:`\epsilon(\|a\|^2 + \|b\|^2)` absolutely, so shifting both sets by the mean of ``Y``
    helps when that mean is far from the origin compared to the spread of ``Y``
    (:math:`\|\bar y\|^2 >` mean :math:`\|y - \bar y\|^2`). Otherwise the shift would only cost
    two memory passes, so the data are returned unshifted (distances are translation invariant).
    """
    if center is None:
        c = Y.mean(0, keepdim=True)  # (1, d)
        with torch.no_grad():
            c2 = float((c * c).sum())
            spread = float(torch.linalg.vector_norm(Y, dim=1).pow(2).mean()) - c2
        if c2 <= max(spread, 0.0):
            return X, Y
        center = c
    return X - center, Y - center


def _sq_dists_raw(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``(n, m)`` squared distances by the expansion on already (optionally) centred data."""
    xn = torch.linalg.vector_norm(X, dim=1).square()  # (n,)
    yn = torch.linalg.vector_norm(Y, dim=1).square()  # (m,)
    d2 = torch.addmm(yn[None, :], X, Y.T, beta=1.0, alpha=-2.0) + xn[:, None]  # (n, m)
    return d2.clamp_min(0.0)  # out of place: the Gram must stay differentiable


def pairwise_sq_dists(X: torch.Tensor, Y: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    r"""Squared Euclidean distances :math:`\|x_i - y_j\|^2`, shape ``(n, m)``.

    Uses the expansion :math:`\|a\|^2 + \|b\|^2 - 2 a^\top b` (one matrix product), after
    shifting both sets by ``center`` (default: the mean of ``Y`` when it is far from the origin
    relative to the spread, see :func:`_centered`), which keeps float32 accurate for data far from
    the origin. Negative round-off is clamped to 0.
    """
    Xc, Yc = _centered(X, Y, center)
    return _sq_dists_raw(Xc, Yc)


def median_heuristic(Y, *, max_points: int = _MEDIAN_MAX_POINTS, random_state: int = 0) -> float:
    r"""Median of the pairwise Euclidean distances :math:`\|y_j - y_{j'}\|`, :math:`j < j'`.

    Convention: the bandwidth is the median distance itself, used as
    :math:`\sigma` in :math:`\exp(-\|x-y\|^2 / 2\sigma^2)`. Above ``max_points``
    rows a seeded random subset of that size is used. If the median is 0 (many
    duplicates) the mean distance is returned; if all points coincide a
    ``ValueError`` is raised.
    """
    t = as_tensor(Y).detach()
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(
            f"the median heuristic needs at least 2 samples in a 2-D array, got shape {tuple(t.shape)} "
            f"({t.shape[0] if t.ndim else 0} sample(s)); pass a float bandwidth"
        )
    t = t.to(torch.float64)
    if t.shape[0] > max_points:
        g = torch.Generator().manual_seed(random_state)
        idx = torch.randperm(t.shape[0], generator=g)[:max_points].to(t.device)
        t = t[idx]
    d2 = pairwise_sq_dists(t, t)
    iu = torch.triu_indices(t.shape[0], t.shape[0], offset=1, device=t.device)
    d = d2[iu[0], iu[1]].sqrt()
    med = float(d.median())
    if med <= 0:
        med = float(d.mean())
        if med <= 0:
            raise ValueError("all samples coincide: the median-heuristic bandwidth is 0; pass a float bandwidth")
        logger.warning("median pairwise distance is 0 (duplicate samples); using the mean distance %.4g", med)
    return med


def _resolve_bandwidth(bandwidth, multipliers, Y) -> np.ndarray:
    """Resolve a bandwidth spec (float | 'median' | list of floats) times multipliers to a 1-D float64 array."""
    if isinstance(bandwidth, str):
        if bandwidth != "median":
            raise ValueError(f"unknown bandwidth={bandwidth!r}; expected a positive float, 'median' or a list of floats")
        base = np.array([median_heuristic(Y)])
    elif isinstance(bandwidth, numbers.Real) and not isinstance(bandwidth, bool):
        base = np.array([check_positive(bandwidth, name="bandwidth")])
    elif isinstance(bandwidth, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(bandwidth, str):
        vals = [float(b) for b in bandwidth]
        if len(vals) == 0:
            raise ValueError("bandwidth list is empty")
        base = np.array([check_positive(v, name="bandwidth") for v in vals])
    else:
        raise TypeError(f"bandwidth must be a positive float, 'median' or a list of floats, got {bandwidth!r}")
    if multipliers is not None:
        m = np.array([check_positive(float(v), name="multipliers") for v in multipliers])
        if m.size == 0:
            raise ValueError("multipliers is empty")
        base = (base[:, None] * m[None, :]).ravel()
    return base


def _check_weights(weights, n: int, m: int, like: torch.Tensor) -> torch.Tensor:
    """``None`` -> uniform 1/m vector; else a finite (m,) or (n, m) tensor matching ``like``."""
    if weights is None:
        return torch.full((m,), 1.0 / m, dtype=like.dtype, device=like.device)
    w = as_tensor(weights)
    if w.device != like.device:
        raise ValueError(f"weights are on {w.device} but the data on {like.device}")
    w = w.to(like.dtype)
    if w.shape not in ((m,), (n, m)):
        raise ValueError(f"weights must have shape ({m},) or ({n}, {m}), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weights contain NaN or inf")
    return w


# --------------------------------------------------------------------------- base class
class Kernel(BaseEstimator):
    """Base class: validation, numpy/torch round-trip and row chunking.

    Subclasses implement ``_fit(Y)``, ``_gram_block(X, Y)``,
    ``_grad_block(X, Y, W)`` (``W`` of shape ``(m,)`` or ``(b, m)``), ``_diag(X)``
    and ``_diag_grad(X)`` on validated tensors of a common dtype/device.
    """

    _required_fitted = ("n_features_in_",)

    # ------------------------------------------------------------------ sklearn API
    def fit(self, X, y=None):
        """Resolve data-dependent parameters from samples ``X`` of shape ``(n, d)``.

        Returns
        -------
        self
        """
        Xt = check_array_2d(X, name="X", min_samples=1)
        self._validate_params_()
        self._fit(Xt)
        self.n_features_in_ = int(Xt.shape[1])
        return self

    def _validate_params_(self):
        cs = getattr(self, "chunk_size", None)
        if cs is not None and (not isinstance(cs, numbers.Integral) or isinstance(cs, bool) or cs < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {cs!r}")

    def _fit(self, Y: torch.Tensor) -> None:  # pragma: no cover - trivial default
        pass

    def __sklearn_is_fitted__(self):
        return all(hasattr(self, a) for a in self._required_fitted)

    # ------------------------------------------------------------------ validation
    def _pair(self, X, Y):
        check_is_fitted(self)
        own = type(self).__name__
        Xt = check_array_2d(X, name="X", n_features=self.n_features_in_, owner=own)
        Yt = check_array_2d(Y, name="Y", n_features=self.n_features_in_, owner=own)
        if isinstance(X, torch.Tensor) and isinstance(Y, torch.Tensor):
            if X.device != Y.device:
                raise ValueError(f"X is on {X.device} but Y on {Y.device}")
            if Xt.dtype != Yt.dtype:
                raise TypeError(f"X has dtype {Xt.dtype} but Y has {Yt.dtype}; cast one of them")
        else:
            Yt = Yt.to(dtype=Xt.dtype, device=Xt.device)
        return Xt, Yt

    def _rows_per_chunk(self, m: int) -> int:
        cs = getattr(self, "chunk_size", None)
        if cs is not None:
            return int(cs)
        return max(1, DEFAULT_BLOCK_ELEMENTS // max(m, 1))

    # ------------------------------------------------------------------ public API
    def gram(self, X, Y=None):
        """Gram matrix :math:`K_{ij} = k(x_i, y_j)`.

        Parameters
        ----------
        X : array of shape (n, d)
        Y : array of shape (m, d), default ``X``

        Returns
        -------
        K : array of shape (n, m), the type of ``X``
        """
        Xt, Yt = self._pair(X, X if Y is None else Y)
        return from_tensor(self._gram(Xt, Yt), X)

    def grad(self, X, Y, weights=None):
        r"""Weighted kernel gradient in the first argument.

        .. math:: g_i = \sum_{j=1}^m w_{ij} \nabla_1 k(x_i, y_j)

        Parameters
        ----------
        X : array of shape (n, d)
        Y : array of shape (m, d)
        weights : None, array of shape (m,) or (n, m)
            ``None`` means uniform weights ``1/m``.

        Returns
        -------
        g : array of shape (n, d), the type of ``X``
        """
        Xt, Yt = self._pair(X, Y)
        W = _check_weights(weights, Xt.shape[0], Yt.shape[0], Xt)
        return from_tensor(self._grad(Xt, Yt, W), X)

    def diag(self, X):
        """:math:`k(x_i, x_i)`, shape ``(n,)``."""
        check_is_fitted(self)
        Xt = check_array_2d(X, name="X", n_features=self.n_features_in_, owner=type(self).__name__)
        return from_tensor(self._diag(Xt), X)

    # ------------------------------------------------------------------ chunked internals (tensors)
    def _gram(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        return self._gram_block(X, Y)

    def _matvec(self, X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """:math:`(K w)_i = \\sum_j k(x_i, y_j) w_j`, shape ``(n,)``, chunked over rows."""
        r = self._rows_per_chunk(Y.shape[0])
        out = [self._gram_block(X[s : s + r], Y) @ w for s in range(0, X.shape[0], r)]
        return torch.cat(out) if out else X.new_zeros(0)

    def _grad(self, X: torch.Tensor, Y: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """Chunked :math:`\\sum_j W_{ij} \\nabla_1 k(x_i, y_j)`; ``W`` is ``(m,)`` or ``(n, m)``."""
        r = self._rows_per_chunk(Y.shape[0])
        if X.shape[0] <= r:
            return self._grad_block(X, Y, W)
        out = torch.empty_like(X)
        for s in range(0, X.shape[0], r):
            Wb = W if W.ndim == 1 else W[s : s + r]
            out[s : s + r] = self._grad_block(X[s : s + r], Y, Wb)
        return out

    # subclasses
    def _gram_block(self, X, Y):  # pragma: no cover - abstract
        raise NotImplementedError

    def _grad_block(self, X, Y, W):  # pragma: no cover - abstract
        raise NotImplementedError

    def _diag(self, X):  # pragma: no cover - abstract
        raise NotImplementedError

    def _diag_grad(self, X):
        r""":math:`\nabla_1 k(x, y)|_{y=x}`, shape ``(n, d)`` (zero for translation-invariant kernels)."""
        return torch.zeros_like(X)


# --------------------------------------------------------------------------- Gaussian
class GaussianKernel(Kernel):
    r"""Gaussian (RBF) kernel, optionally multi-scale.

    .. math:: k(x, y) = \sum_{s} \exp\!\Big(-\frac{\|x - y\|^2}{2 \sigma_s^2}\Big),
              \qquad \nabla_1 k(x,y) = -\sum_s \frac{k_s(x,y)}{\sigma_s^2}(x - y)

    Parameters
    ----------
    bandwidth : float, 'median' or list of float, default='median'
        :math:`\sigma`. ``'median'`` is the median pairwise distance of the fit
        data (see :func:`median_heuristic`); a list gives a multi-scale *sum*.
    multipliers : sequence of float, optional
        Multiply the resolved bandwidth(s), e.g. ``bandwidth='median',
        multipliers=(0.5, 1, 2)`` for a median-relative multi-scale kernel.
    chunk_size : int, optional
        Rows of ``X`` per block in gradients (default about ``2**22 / m``).

    Attributes
    ----------
    bandwidth_ : ndarray of shape (n_scales,)
        Resolved :math:`\sigma_s`.
    n_features_in_ : int
    """

    _required_fitted = ("n_features_in_", "bandwidth_")

    def __init__(self, *, bandwidth="median", multipliers=None, chunk_size=None):
        self.bandwidth = bandwidth
        self.multipliers = multipliers
        self.chunk_size = chunk_size

    def _fit(self, Y):
        self.bandwidth_ = _resolve_bandwidth(self.bandwidth, self.multipliers, Y)

    def _inv2s2(self, like):
        return torch.as_tensor(1.0 / (2.0 * self.bandwidth_**2), dtype=like.dtype, device=like.device)  # (S,)

    def _gram_block(self, X, Y):
        d2 = pairwise_sq_dists(X, Y)  # (n, m)
        c = self._inv2s2(X)
        if c.numel() == 1:
            return torch.exp(-c[0] * d2)
        return torch.exp(-d2[None] * c[:, None, None]).sum(0)

    def _grad_block(self, X, Y, W):
        Xc, Yc = _centered(X, Y)
        d2 = _sq_dists_raw(Xc, Yc)  # (b, m)
        c = self._inv2s2(X)  # 1/(2 s^2)
        if c.numel() == 1:
            G = torch.exp(-c[0] * d2).mul_(2.0 * c[0])  # k / s^2
        else:
            G = (torch.exp(-d2[None] * c[:, None, None]) * (2.0 * c)[:, None, None]).sum(0)
        G = G.mul_(W)  # (b, m)
        # sum_j G_ij (y_j - x_i) = G Y - rowsum(G) x
        return torch.addmm(Xc, G, Yc, beta=0.0).sub_(G.sum(1, keepdim=True) * Xc)

    def _diag(self, X):
        return torch.full((X.shape[0],), float(len(self.bandwidth_)), dtype=X.dtype, device=X.device)


# --------------------------------------------------------------------------- IMQ
class IMQKernel(Kernel):
    r"""Inverse multiquadric kernel (heavy tails: gradients do not vanish far away).

    .. math:: k(x, y) = \Big(1 + \frac{\|x-y\|^2}{c^2}\Big)^{\beta}, \qquad
              \nabla_1 k(x, y) = \frac{2\beta}{c^2}\Big(1 + \frac{\|x-y\|^2}{c^2}\Big)^{\beta-1}(x - y)

    Parameters
    ----------
    scale : float or 'median', default='median'
        :math:`c`; ``'median'`` uses :func:`median_heuristic` on the fit data.
    beta : float in (-inf, 0), default=-0.5
    chunk_size : int, optional

    Attributes
    ----------
    scale_ : float
    n_features_in_ : int
    """

    _required_fitted = ("n_features_in_", "scale_")

    def __init__(self, *, scale="median", beta=-0.5, chunk_size=None):
        self.scale = scale
        self.beta = beta
        self.chunk_size = chunk_size

    def _fit(self, Y):
        if isinstance(self.beta, bool) or not isinstance(self.beta, numbers.Real) or not (-np.inf < self.beta < 0):
            raise ValueError(f"beta must be a negative finite number, got {self.beta!r}")
        self.scale_ = float(_resolve_bandwidth(self.scale, None, Y)[0])

    def _gram_block(self, X, Y):
        return (1.0 + pairwise_sq_dists(X, Y) / self.scale_**2) ** self.beta

    def _grad_block(self, X, Y, W):
        Xc, Yc = _centered(X, Y)
        d2 = _sq_dists_raw(Xc, Yc)
        G = (1.0 + d2 / self.scale_**2) ** (self.beta - 1.0) * (2.0 * self.beta / self.scale_**2)
        G = G * W
        return G.sum(1, keepdim=True) * Xc - G @ Yc

    def _diag(self, X):
        return torch.ones(X.shape[0], dtype=X.dtype, device=X.device)


# --------------------------------------------------------------------------- polynomial
class PolynomialKernel(Kernel):
    r"""Polynomial kernel; the defaults are KID's cubic kernel.

    .. math:: k(x, y) = (\gamma\, x^\top y + c_0)^p, \qquad
              \nabla_1 k(x, y) = p\,\gamma\,(\gamma\, x^\top y + c_0)^{p-1}\, y

    Parameters
    ----------
    degree : int >= 1, default=3
    gamma : float or None, default=None
        ``None`` means :math:`1/D` (set at fit).
    coef0 : float, default=1.0
    chunk_size : int, optional

    Attributes
    ----------
    gamma_ : float
    n_features_in_ : int
    """

    _required_fitted = ("n_features_in_", "gamma_")

    def __init__(self, *, degree=3, gamma=None, coef0=1.0, chunk_size=None):
        self.degree = degree
        self.gamma = gamma
        self.coef0 = coef0
        self.chunk_size = chunk_size

    def _fit(self, Y):
        if isinstance(self.degree, bool) or not isinstance(self.degree, numbers.Integral) or self.degree < 1:
            raise ValueError(f"degree must be an int >= 1, got {self.degree!r}")
        if isinstance(self.coef0, bool) or not isinstance(self.coef0, numbers.Real) or not np.isfinite(self.coef0):
            raise ValueError(f"coef0 must be a finite number, got {self.coef0!r}")
        self.gamma_ = 1.0 / Y.shape[1] if self.gamma is None else check_positive(self.gamma, name="gamma")

    def _gram_block(self, X, Y):
        return (self.gamma_ * (X @ Y.T) + self.coef0) ** self.degree

    def _grad_block(self, X, Y, W):
        base = self.gamma_ * (X @ Y.T) + self.coef0  # (b, m)
        G = (self.degree * self.gamma_) * base ** (self.degree - 1) * W
        return G @ Y

    def _diag(self, X):
        return (self.gamma_ * (X * X).sum(1) + self.coef0) ** self.degree

    def _diag_grad(self, X):
        return (self.degree * self.gamma_) * ((self.gamma_ * (X * X).sum(1) + self.coef0) ** (self.degree - 1))[:, None] * X


# --------------------------------------------------------------------------- constant
class ConstantKernel(Kernel):
    r"""Constant kernel :math:`k(x, y) = c` (gradient 0).

    With :class:`ProductKernel` it switches a factor off: ``ProductKernel(k, ConstantKernel())``
    equals ``k`` (used to check that prompt-aware guidance reduces to the unconditional one).
    """

    _required_fitted = ("n_features_in_",)

    def __init__(self, *, value=1.0):
        self.value = value

    def _fit(self, Y):
        check_positive(self.value, name="value")

    def _gram_block(self, X, Y):
        return torch.full((X.shape[0], Y.shape[0]), float(self.value), dtype=X.dtype, device=X.device)

    def _grad_block(self, X, Y, W):
        return torch.zeros_like(X)

    def _diag(self, X):
        return torch.full((X.shape[0],), float(self.value), dtype=X.dtype, device=X.device)


# --------------------------------------------------------------------------- product
class ProductKernel(Kernel):
    r"""Product kernel on paired inputs :math:`z = [x \,|\, c]` (columns split at ``split``).

    .. math:: \kappa((x,c),(x',c')) = k_1(x, x')\, k_2(c, c')

    The gradient is taken with respect to the whole row :math:`z`:
    :math:`\nabla_x = \sum_j w_{ij} k_2(c_i, c_j) \nabla_1 k_1(x_i, x_j)` (first ``split``
    columns) and :math:`\nabla_c = \sum_j w_{ij} k_1(x_i, x_j) \nabla_1 k_2(c_i, c_j)`. With a
    constant ``second`` kernel it reduces exactly to ``first`` in the first block.

    Parameters
    ----------
    first, second : Kernel
        Kernels on the first ``split`` columns and on the rest (cloned and fit).
    split : int
        Number of leading columns belonging to ``first`` (e.g. the latent dimension).

    Attributes
    ----------
    first_, second_ : fitted Kernel
    n_features_in_ : int
    """

    _required_fitted = ("n_features_in_", "first_", "second_")

    def __init__(self, *, first=None, second=None, split=None):
        self.first = first
        self.second = second
        self.split = split

    def _fit(self, Y):
        if not isinstance(self.split, numbers.Integral) or isinstance(self.split, bool):
            raise ValueError(f"split must be an int (columns of the first kernel), got {self.split!r}")
        if not 0 < self.split < Y.shape[1]:
            raise ValueError(f"split={self.split} must be in (0, {Y.shape[1]}) for data with {Y.shape[1]} columns")
        first = GaussianKernel() if self.first is None else self.first
        second = GaussianKernel() if self.second is None else self.second
        for k, nm in ((first, "first"), (second, "second")):
            if not isinstance(k, Kernel):
                raise TypeError(f"{nm} must be a Kernel, got {type(k).__name__}")
        self.first_ = clone(first).fit(Y[:, : self.split])
        self.second_ = clone(second).fit(Y[:, self.split :])

    def _rows_per_chunk(self, m):
        return min(self.first_._rows_per_chunk(m), self.second_._rows_per_chunk(m))

    def _gram_block(self, X, Y):
        s = self.split
        return self.first_._gram_block(X[:, :s], Y[:, :s]) * self.second_._gram_block(X[:, s:], Y[:, s:])

    def _grad_block(self, X, Y, W):
        s = self.split
        K1 = self.first_._gram_block(X[:, :s], Y[:, :s])  # (b, m)
        K2 = self.second_._gram_block(X[:, s:], Y[:, s:])  # (b, m)
        g1 = self.first_._grad_block(X[:, :s], Y[:, :s], K2 * W)  # (b, s)
        g2 = self.second_._grad_block(X[:, s:], Y[:, s:], K1 * W)  # (b, d - s)
        return torch.cat([g1, g2], dim=1)

    def _diag(self, X):
        s = self.split
        return self.first_._diag(X[:, :s]) * self.second_._diag(X[:, s:])

    def _diag_grad(self, X):
        s = self.split
        d1, d2 = self.first_._diag(X[:, :s]), self.second_._diag(X[:, s:])
        return torch.cat(
            [d2[:, None] * self.first_._diag_grad(X[:, :s]), d1[:, None] * self.second_._diag_grad(X[:, s:])], dim=1
        )
