r"""Linear-time approximations of the Gaussian-kernel MMD² and its gradient.

Both estimators are :class:`~mmdguidance.discrepancy.Discrepancy` subclasses like :class:`~mmdguidance.mmd.MMD`
(``fit(refs, weights=)``, ``score``, ``gradient(X, terms=, memory=)``, the ``value_tensor`` / ``grad_tensor``
fast paths guidance drives, e.g. ``MMDGuidedSampler(model, discrepancy=RFFMMD())``) and approximate the *biased* MMD² through a finite feature map
:math:`\phi: \mathbb R^D \to \mathbb R^R` with :math:`k(x,y) \approx \phi(x)^\top\phi(y)`:

.. math::
    \mathrm{MMD}^2 \approx \Big\|\tfrac1n\sum_a \phi(z_a) - \sum_j w_j \phi(y_j)\Big\|^2, \qquad
    \nabla_{x_i} = \tfrac{2}{n}\, J_\phi(x_i)^\top \Big(\tfrac1n\sum_a\phi(z_a) - \mu_Y\Big)

where :math:`\mu_Y = \sum_j w_j\phi(y_j)` is cached at fit. The reference side costs :math:`O(NRD)` once.
By default (``exact_self_term=True``) only the *cross* term, the part that grows with N, is approximated:
the self term among the n generated samples is computed exactly with the kernel (:math:`O(n^2 D)`,
independent of N), so a step costs :math:`O(n(n + R)D)` instead of :math:`O(n(n+N)D)`. This matters for
Nyström, whose landmarks come from the references and represent generated-vs-generated
interactions poorly when the generated samples are away from the references (measured in
``experiments/approx_error.py``).

* :class:`RFFMMD` — random Fourier features (Rahimi & Recht 2007) for the Gaussian kernel:
  :math:`\phi(x) = \sqrt{2/R}\cos(Wx + b)`, :math:`W_{r\cdot} \sim N(0, \sigma^{-2} I)`, :math:`b \sim U[0, 2\pi]`;
  unbiased for :math:`k`, error :math:`O(R^{-1/2})`.
* :class:`NystromMMD` — Nyström features on ``n_landmarks`` references (seeded):
  :math:`\phi(x) = K_{LL}^{-1/2} k_L(x)`; the gradient is the kernel's closed form
  :math:`\sum_l u_l \nabla_1 k(x, \ell_l)` with :math:`u = K_{LL}^{-1/2} v`. With every reference as a
  landmark the cross term is exact.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from ._utils import check_array_2d, check_random_state_torch
from .discrepancy import TERMS, Discrepancy
from .guidance_params import check_bool
from .kernels import GaussianKernel, Kernel, parse_bandwidth
from .mmd import check_ref_weights

__all__ = ["RFFMMD", "NystromMMD"]


_LOW_PRECISION = (torch.float16, torch.bfloat16)


class _FeatureMMD(Discrepancy):
    """Shared fit and fast paths on top of a feature map ``_phi`` and its Jacobian-vector product ``_jvp``.

    float16 / bfloat16 input is computed in float32 (the result is cast back).
    """

    supported_terms = TERMS

    def _fit_refs(self, X, weights):
        check_bool(self.exact_self_term, "exact_self_term")
        Y = check_array_2d(X, name="references", min_samples=2)
        if isinstance(X, torch.Tensor):
            Y = Y.detach()
        if Y.dtype in _LOW_PRECISION:
            Y = Y.float()
        N = Y.shape[0]
        w = (torch.full((N,), 1.0 / N, dtype=Y.dtype, device=Y.device) if weights is None
             else check_ref_weights(weights, N).to(Y))
        self.reference_, self.weights_, self.n_features_in_ = Y, w, int(Y.shape[1])
        self.__dict__.pop("_refs_cache", None)
        return Y, w

    def _check_X(self, X, name="X", min_samples=1):
        check_is_fitted(self, "mu_")
        Xt = check_array_2d(X, name=name, min_samples=min_samples, n_features=self.n_features_in_, owner=type(self).__name__)
        if Xt.device != self.mu_.device:
            raise ValueError(f"{name} is on {Xt.device} but the estimator was fitted on {self.mu_.device}")
        return Xt

    def _mu(self, references, like):
        """Mean reference feature ``(R,)``: cached for the fitted references, else ``w @ phi(Y)``."""
        if references is None:
            return self.mu_.to(like.dtype)
        Y, w = references
        return w.to(like) @ self._phi(Y.to(like))

    def value_tensor(self, Z, *, references=None, memory=None):
        """Approximate biased MMD² of ``Z`` ``(B, D)`` (plus ``memory``) as a 0-d tensor; no validation."""
        out_dtype = Z.dtype
        if Z.dtype in _LOW_PRECISION:
            Z = Z.float()
        Zall = Z if memory is None else torch.cat([Z, memory.to(Z)], 0)  # (n, D)
        n = Zall.shape[0]
        m, mu = self._phi(Zall).mean(0), self._mu(references, Z)  # (R,), (R,)
        if self.exact_self_term:
            ones = torch.ones(n, dtype=Z.dtype, device=Z.device)
            val = self._self_kernel().matvec_tensor(Zall, Zall, ones).sum() / n**2 - 2 * (m @ mu) + mu @ mu
        else:
            v = m - mu
            val = (v * v).sum()
        return val.to(out_dtype)

    def grad_tensor(self, Z, *, references=None, memory=None, terms="full"):
        """Approximate :math:`\\nabla_{z_i}` MMD², shape ``(B, D)`` (see the module docstring); no validation."""
        out_dtype = Z.dtype
        if Z.dtype in _LOW_PRECISION:
            Z = Z.float()
        M = None if memory is None or memory.shape[0] == 0 else memory.to(Z)
        Zall = Z if M is None else torch.cat([Z, M], 0)  # (n, D)
        n = Zall.shape[0]
        m, mu = self._phi(Zall).mean(0), self._mu(references, Z)
        if not self.exact_self_term:
            v = {"full": m - mu, "cross": -mu, "self": m}[terms]
            return ((2.0 / n) * self._jvp(Z, v)).to(out_dtype)
        g = torch.zeros_like(Z)
        if terms in ("full", "cross"):
            g = g - (2.0 / n) * self._jvp(Z, mu)
        if terms in ("full", "self"):
            g = g + (2.0 / n**2) * self._self_kernel().grad_tensor(Z, Zall, torch.ones(n, dtype=Z.dtype, device=Z.device))
        return g.to(out_dtype)


class RFFMMD(_FeatureMMD):
    r"""Random-Fourier-feature MMD for the Gaussian kernel :math:`\exp(-\|x-y\|^2/2\sigma^2)`.

    Parameters
    ----------
    n_features : int
        Number of random features R.
    bandwidth : float or 'median'
        :math:`\sigma` (a single scale).
    exact_self_term : bool, default=True
        Compute the generated-vs-generated term exactly (see the module docstring).
    random_state : int, Generator or None

    Attributes
    ----------
    bandwidth_ : float
    W_ : Tensor (R, D)
    b_ : Tensor (R,)
    mu_ : Tensor (R,)
        Weighted mean feature of the references.
    n_features_in_ : int
    """

    def __init__(self, *, n_features=1024, bandwidth="median", exact_self_term=True, random_state=None):
        self.n_features = n_features
        self.bandwidth = bandwidth
        self.exact_self_term = exact_self_term
        self.random_state = random_state

    def _self_kernel(self):
        return self.kernel_

    def fit(self, X, y=None, *, weights=None):
        if isinstance(self.n_features, bool) or not isinstance(self.n_features, numbers.Integral) or self.n_features < 1:
            raise ValueError(f"n_features must be a positive int, got {self.n_features!r}")
        Y, w = self._fit_refs(X, weights)
        bw = parse_bandwidth(self.bandwidth, Y=Y)
        if bw.size != 1:
            raise ValueError("RFFMMD supports a single bandwidth (use one estimator per scale)")
        self.bandwidth_ = float(bw[0])
        self.kernel_ = GaussianKernel(bandwidth=self.bandwidth_).fit(Y)  # for the exact self term
        g = check_random_state_torch(self.random_state)
        R, D = int(self.n_features), Y.shape[1]
        self.W_ = (torch.randn(R, D, generator=g, dtype=torch.float64) / self.bandwidth_).to(Y)
        self.b_ = (2 * math.pi * torch.rand(R, generator=g, dtype=torch.float64)).to(Y)
        self.mu_ = w @ self._phi(Y)  # (R,)
        return self

    def _phi(self, X):
        return math.sqrt(2.0 / self.W_.shape[0]) * torch.cos(X @ self.W_.to(X).T + self.b_.to(X))  # (n, R)

    def _jvp(self, X, v):
        # J_phi(x)^T v = -sqrt(2/R) W^T (sin(Wx + b) * v)
        s = torch.sin(X @ self.W_.to(X).T + self.b_.to(X)) * v.to(X)  # (B, R)
        return -math.sqrt(2.0 / self.W_.shape[0]) * (s @ self.W_.to(X))  # (B, D)


class NystromMMD(_FeatureMMD):
    r"""Nyström-feature MMD with ``n_landmarks`` references as landmarks.

    Parameters
    ----------
    kernel : Kernel, default GaussianKernel(bandwidth='median')
    n_landmarks : int
        Landmarks drawn (seeded) from the references; all references if ``>= N``.
    ridge : float
        Relative eigenvalue floor for :math:`K_{LL}^{-1/2}` (numerical safety).
    exact_self_term : bool, default=True
        Compute the generated-vs-generated term exactly (see the module docstring).
    random_state : int, Generator or None

    Attributes
    ----------
    kernel_ : Kernel
    landmarks_ : Tensor (m, D)
    proj_ : Tensor (m, m)
        :math:`K_{LL}^{-1/2}`.
    mu_ : Tensor (m,)
    n_features_in_ : int
    """

    def __init__(self, *, kernel=None, n_landmarks=100, ridge=1e-10, exact_self_term=True, random_state=None):
        self.kernel = kernel
        self.n_landmarks = n_landmarks
        self.ridge = ridge
        self.exact_self_term = exact_self_term
        self.random_state = random_state

    def _self_kernel(self):
        return self.kernel_

    def fit(self, X, y=None, *, weights=None):
        if isinstance(self.n_landmarks, bool) or not isinstance(self.n_landmarks, numbers.Integral) or self.n_landmarks < 1:
            raise ValueError(f"n_landmarks must be a positive int, got {self.n_landmarks!r}")
        ridge = self.ridge
        if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not np.isfinite(float(ridge)) or ridge < 0:
            raise ValueError(f"ridge must be a finite real >= 0, got {ridge!r}")
        Y, w = self._fit_refs(X, weights)
        kernel = GaussianKernel() if self.kernel is None else self.kernel
        if not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a mmdguidance Kernel, got {type(kernel).__name__}")
        self.kernel_ = clone(kernel).fit(Y)
        g = check_random_state_torch(self.random_state)
        N = Y.shape[0]
        idx = torch.arange(N) if self.n_landmarks >= N else torch.randperm(N, generator=g)[: self.n_landmarks]
        self.landmarks_ = Y[idx.to(Y.device)]
        K = self.kernel_.gram_tensor(self.landmarks_, self.landmarks_).double()
        evals, evecs = torch.linalg.eigh(K)
        floor = float(self.ridge) * float(evals.max())
        self.proj_ = ((evecs * evals.clamp_min(floor).rsqrt()) @ evecs.T).to(Y)  # K^{-1/2}
        self.mu_ = w @ self._phi(Y)
        return self

    def _phi(self, X):
        return self.kernel_.gram_tensor(X, self.landmarks_.to(X)) @ self.proj_.to(X)  # (n, m)

    def _jvp(self, X, v):
        u = self.proj_.to(X) @ v.to(X)  # (m,)
        return self.kernel_.grad_tensor(X, self.landmarks_.to(X), u)  # sum_l u_l grad_1 k(x, l)
