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
import warnings
from typing import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from ._utils import as_tensor, check_array_2d, check_positive, from_tensor
from .distances import BLOCK_ELEMENTS, centred_sq_dists, sq_dists

__all__ = [
    "Kernel",
    "GaussianKernel",
    "PolynomialKernel",
    "IMQKernel",
    "ConstantKernel",
    "ProductKernel",
    "median_heuristic",
    "pairwise_sq_dists",
    "parse_bandwidth",
]

#: Target number of elements of one ``(rows, m)`` block in chunked computations.
DEFAULT_BLOCK_ELEMENTS = BLOCK_ELEMENTS

_MEDIAN_MAX_POINTS = 1000


# --------------------------------------------------------------------------- helpers
def pairwise_sq_dists(X: torch.Tensor, Y: torch.Tensor | None = None) -> torch.Tensor:
    r"""Squared Euclidean distances :math:`\|x_i - y_j\|^2`, shape ``(n, m)``, in ``X``'s dtype.

    An alias of :func:`mmdguidance.distances.sq_dists` (float64 work precision where cheap, centring per
    pair of sets, exact 0 for identical rows, clamped to >= 0).
    """
    return sq_dists(X, Y)


def _nonfinite_message(t: torch.Tensor, name: str) -> str:
    return f"{name} contains {int(torch.isnan(t).sum())} NaN and {int(torch.isinf(t).sum())} inf values; inputs must be finite"


def median_heuristic(Y, *, max_points: int = _MEDIAN_MAX_POINTS, random_state: int = 0) -> float:
    r"""Median of the pairwise Euclidean distances :math:`\|y_j - y_{j'}\|`, :math:`j < j'`.

    Convention: the bandwidth is the median distance itself, used as
    :math:`\sigma` in :math:`\exp(-\|x-y\|^2 / 2\sigma^2)`. With an even number of pairs the
    **lower** of the two middle values is taken (``torch.median``), not their average as
    ``np.median`` does: for a handful of points (n <= 5) the two differ by up to ~40%, for
    n >= 50 by well under 1%. Above ``max_points`` rows a seeded random subset of that size is
    used. Distances come from :func:`mmdguidance.distances.sq_dists`, so duplicated points are
    exactly 0 apart.

    Degenerate cases: if the median is 0 (more than half of the pairs are duplicates) the
    median of the **non-zero** distances is returned and a ``RuntimeWarning`` is issued; a
    warning is also issued when the result is below ``1e-6`` times the largest distance (a
    bandwidth that small makes every kernel value between distinct points vanish). If all
    points coincide a ``ValueError`` is raised (pass a float bandwidth).

    Raises
    ------
    ValueError
        Fewer than 2 rows, not 2-D, NaN/inf values, or all points identical.
    TypeError
        Complex or non-numeric input.
    """
    if isinstance(Y, torch.Tensor) and Y.is_complex() or isinstance(Y, np.ndarray) and np.iscomplexobj(Y):
        raise TypeError("median_heuristic: complex data is not supported; pass real samples")
    if isinstance(Y, torch.Tensor) and not Y.is_floating_point():
        Y = Y.detach().to(torch.float64)  # integers straight to float64, not through float32
    t = as_tensor(Y).detach().to(torch.float64)  # float64 work whatever the size (fit time only)
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(
            f"the median heuristic needs at least 2 samples in a 2-D array, got shape {tuple(t.shape)} "
            f"({t.shape[0] if t.ndim else 0} sample(s)); pass a float bandwidth"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError("median_heuristic: " + _nonfinite_message(t, "the data"))
    if t.shape[0] > max_points:
        g = torch.Generator().manual_seed(random_state)
        idx = torch.randperm(t.shape[0], generator=g)[:max_points].to(t.device)
        t = t[idx]
    d2 = sq_dists(t, t, dtype=torch.float64)  # (n, n), exact 0 on duplicates
    iu = torch.triu_indices(t.shape[0], t.shape[0], offset=1, device=t.device)
    d = d2[iu[0], iu[1]].sqrt()  # (n (n - 1) / 2,)
    med = float(d.median())
    if med <= 0:
        nz = d[d > 0]
        if nz.numel() == 0:
            raise ValueError("all samples coincide: the median-heuristic bandwidth is 0; pass a float bandwidth")
        med = float(nz.median())
        warnings.warn(
            f"median_heuristic: {int((d == 0).sum())} of {d.numel()} pairwise distances are 0 (duplicated samples); "
            f"using the median of the non-zero distances, {med:.4g}",
            RuntimeWarning,
            stacklevel=2,
        )
    elif med < 1e-6 * float(d.max()):
        warnings.warn(
            f"median_heuristic: degenerate bandwidth {med:.3g} (largest distance {float(d.max()):.3g}); "
            "near-duplicate samples? pass a float bandwidth",
            RuntimeWarning,
            stacklevel=2,
        )
    return med


def _positive_values(spec, *, name: str) -> np.ndarray:
    """A positive float or a flat non-empty list/array/tensor of positive floats -> 1-D float64 array."""
    if isinstance(spec, bool) or isinstance(spec, (np.ndarray, torch.Tensor)) and spec.dtype in (bool, np.bool_, torch.bool):
        raise TypeError(f"{name} must be a positive float or a list of positive floats, got {spec!r}")
    if isinstance(spec, (np.ndarray, torch.Tensor)) and spec.ndim == 0:
        spec = spec.item()
    if isinstance(spec, numbers.Real):
        return np.array([check_positive(spec, name=name)])
    if isinstance(spec, (complex, np.complexfloating)) or isinstance(spec, np.ndarray) and np.iscomplexobj(spec) or (
        isinstance(spec, torch.Tensor) and spec.is_complex()
    ):
        raise TypeError(f"{name} must be real, got the complex value {spec!r}")
    if isinstance(spec, torch.Tensor):
        spec = spec.detach().cpu().numpy()
    if not isinstance(spec, (Sequence, np.ndarray)) or isinstance(spec, str):
        raise TypeError(f"{name} must be a positive float or a list of positive floats, got {spec!r}")
    arr = np.asarray(spec, dtype=object)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat list of positive floats, got shape {arr.shape}: {spec!r}")
    if arr.size == 0:
        raise ValueError(f"{name} list is empty; give at least one positive value")
    return np.array([check_positive(v.item() if hasattr(v, "item") else v, name=name) for v in arr])


#: data-driven bandwidth rules a GaussianKernel resolves at fit
BANDWIDTH_RULES = ("median", "span")


def parse_bandwidth(bandwidth, *, multipliers=None, Y=None, name: str = "bandwidth") -> np.ndarray:
    r"""Resolve a bandwidth specification to a 1-D float64 array of :math:`\sigma_s > 0`.

    The one parser of the package (kernels, approximate MMDs, the exact mixture formulas).

    Parameters
    ----------
    bandwidth : float, 'median', 'span', list/array/tensor of floats, or a fitted GaussianKernel
        A 0-d array counts as a float; a fitted :class:`GaussianKernel` gives its ``bandwidth_``;
        ``'median'`` (:func:`median_heuristic`) and ``'span'`` (the multi-scale ladder
        :func:`mmdguidance.bandwidth.span_bandwidths`) need ``Y``.
    multipliers : float or sequence of float, optional
        Every resolved value is multiplied by each multiplier (``(S,) x (M,) -> (S*M,)``).
    Y : tensor of shape (n, d), optional
        Data for ``'median'``.
    name : str
        Parameter name used in error messages.

    Raises
    ------
    ValueError
        Unknown string, empty or nested list, non-positive or non-finite values.
    TypeError
        Wrong types (bool, complex, objects).
    """
    if isinstance(bandwidth, GaussianKernel):
        check_is_fitted(bandwidth)
        base = np.asarray(bandwidth.bandwidth_, dtype=np.float64)
    elif isinstance(bandwidth, str):
        if bandwidth not in BANDWIDTH_RULES:
            raise ValueError(f"unknown {name}={bandwidth!r}; expected a positive float, one of {BANDWIDTH_RULES} "
                             "or a list of floats")
        if Y is None:
            raise TypeError(f"{name}={bandwidth!r} must be resolved on data first (mmdguidance.kernels.median_heuristic, "
                            "mmdguidance.bandwidth.span_bandwidths)")
        if bandwidth == "median":
            base = np.array([median_heuristic(Y)])
        else:
            from .bandwidth import span_bandwidths  # it builds on this module's distances

            base = np.asarray(span_bandwidths(Y), dtype=np.float64)
    else:
        base = _positive_values(bandwidth, name=name)
    if multipliers is not None:
        m = _positive_values(multipliers, name="multipliers")
        base = (base[:, None] * m[None, :]).ravel()
    return base


def _resolve_bandwidth(bandwidth, multipliers, Y) -> np.ndarray:
    """Backwards-compatible alias of :func:`parse_bandwidth`."""
    return parse_bandwidth(bandwidth, multipliers=multipliers, Y=Y)


def _check_weights(weights, n: int, m: int, like: torch.Tensor) -> torch.Tensor:
    """``None`` -> uniform 1/m vector; else a finite (m,) or (n, m) tensor matching ``like``."""
    if weights is None:
        return torch.full((m,), 1.0 / m, dtype=like.dtype, device=like.device)
    if isinstance(weights, torch.Tensor) and weights.is_complex() or np.iscomplexobj(weights):
        raise TypeError("weights must be real, got complex values")
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

    ``gram`` / ``grad`` / ``diag`` validate and round-trip numpy; the other layers (MMD, its
    approximations, metrics, discrepancies) call the unchecked tensor fast paths ``gram_tensor``,
    ``matvec_tensor`` (row-chunked :math:`K w`), ``grad_tensor`` (row-chunked), ``diag_tensor`` and
    ``diag_grad_tensor`` on tensors they validated themselves.
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
        return from_tensor(self.gram_tensor(Xt, Yt), X)

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
        return from_tensor(self.grad_tensor(Xt, Yt, W), X)

    def diag(self, X):
        """:math:`k(x_i, x_i)`, shape ``(n,)``."""
        check_is_fitted(self)
        Xt = check_array_2d(X, name="X", n_features=self.n_features_in_, owner=type(self).__name__)
        return from_tensor(self._diag(Xt), X)

    # ------------------------------------------------------------------ tensor fast paths (no validation)
    # Public for the other layers (MMD, approximations, metrics, discrepancies): ``X`` and ``Y`` must be
    # validated 2-D tensors of one dtype/device with ``n_features_in_`` columns; nothing is checked here.
    def gram_tensor(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """Unchecked :math:`K_{ij} = k(x_i, y_j)` on tensors, shape ``(n, m)``."""
        return self._gram_block(X, Y)

    def diag_tensor(self, X: torch.Tensor) -> torch.Tensor:
        """Unchecked :math:`k(x_i, x_i)` on a tensor, shape ``(n,)``."""
        return self._diag(X)

    def diag_grad_tensor(self, X: torch.Tensor) -> torch.Tensor:
        r"""Unchecked :math:`\nabla_1 k(x, y)|_{y=x}` on a tensor, shape ``(n, d)``."""
        return self._diag_grad(X)

    def matvec_tensor(self, X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """:math:`(K w)_i = \\sum_j k(x_i, y_j) w_j`, shape ``(n,)``, chunked over rows."""
        r = self._rows_per_chunk(Y.shape[0])
        out = [self._gram_block(X[s : s + r], Y) @ w for s in range(0, X.shape[0], r)]
        return torch.cat(out) if out else X.new_zeros(0)

    def grad_tensor(self, X: torch.Tensor, Y: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
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
    bandwidth : float, 'median', 'span' or list of float, default='median'
        :math:`\sigma`. ``'median'`` is the median pairwise distance of the fit
        data (see :func:`median_heuristic`); ``'span'`` a geometric ladder of scales from the 10% quantile to
        the largest non-zero distance of the fit data (:func:`mmdguidance.bandwidth.span_bandwidths`, the
        guided samplers' default); a list gives a multi-scale *sum*.
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

    def _scale_sum(self, d2, coef):
        r""":math:`\sum_s a_s \exp(-c_s d^2)` over the bandwidths, ``(n, m)``, one scale at a time (no ``(S, n, m)``
        temporary; in place unless ``d2`` needs autograd); :math:`c_s = 1/(2\sigma_s^2)`, :math:`a_s` = ``coef(c_s)``."""
        graph = d2.requires_grad
        out, tmp = None, (None if graph else torch.empty_like(d2))
        for c in (1.0 / (2.0 * np.asarray(self.bandwidth_, dtype=np.float64) ** 2)).tolist():
            e = torch.exp(d2 * -c) if graph else torch.mul(d2, -c, out=tmp).exp_()  # (n, m)
            if out is None:
                out = e * coef(c)
            else:
                out = out + e * coef(c) if graph else out.add_(e, alpha=coef(c))
        return out

    def _gram_block(self, X, Y):
        _, _, d2 = centred_sq_dists(X, Y)  # (n, m) float64, exact 0 on identical rows
        return self._scale_sum(d2, lambda c: 1.0).to(X.dtype)

    def _grad_block(self, X, Y, W):
        Xc, Yc, d2 = centred_sq_dists(X, Y)  # float64: (b, d), (m, d), (b, m)
        G = self._scale_sum(d2, lambda c: 2.0 * c)  # sum_s k_s / s_s^2, (b, m)
        G = G.mul_(W.to(G.dtype)).masked_fill_(d2 == 0, 0.0)  # (b, m); identical rows contribute exactly 0
        # sum_j G_ij (y_j - x_i) = G Y - rowsum(G) x, on the centred float64 copies
        return torch.addmm(Xc, G, Yc, beta=0.0).sub_(G.sum(1, keepdim=True) * Xc).to(X.dtype)

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
        scale = parse_bandwidth(self.scale, Y=Y, name="scale")
        if scale.size != 1:
            raise ValueError(f"IMQKernel takes one scale c (a float or 'median'), got {self.scale!r}; "
                             "for several scales sum kernels yourself")
        self.scale_ = float(scale[0])

    def _gram_block(self, X, Y):
        _, _, d2 = centred_sq_dists(X, Y)  # (n, m) float64
        return torch.pow(1.0 + d2 / self.scale_**2, self.beta).to(X.dtype)

    def _grad_block(self, X, Y, W):
        r"""Far-field safe form: :math:`G = \frac{2\beta}{c^2} u^{\beta-1}` with :math:`u = 1 + d^2/c^2`
        evaluated as :math:`\exp((\beta - 1)\log u)` through ``log1p`` (no cancellation in :math:`u`)."""
        Xc, Yc, d2 = centred_sq_dists(X, Y)  # float64
        G = torch.exp((self.beta - 1.0) * torch.log1p(d2 / self.scale_**2)) * (2.0 * self.beta / self.scale_**2)
        G = (G * W.to(G.dtype)).masked_fill_(d2 == 0, 0.0)  # (b, m); identical rows contribute exactly 0
        return (G.sum(1, keepdim=True) * Xc - G @ Yc).to(X.dtype)

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
