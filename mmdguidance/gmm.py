r"""Exact Gaussian-mixture oracle: densities, scores, noising and kernel quantities.

A Gaussian mixture :math:`Q = \sum_k \pi_k \mathcal N(m_k, S_k)` is closed under the
variance-preserving forward process :math:`x_t = \sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,\varepsilon`,
and every Gaussian-kernel expectation under it is closed form. This module is the
ground truth the rest of the package is tested against.

Kernel convention (identical to :class:`mmdguidance.kernels.GaussianKernel`): for
bandwidths :math:`\sigma_1, \dots, \sigma_S` (a float is a single scale)

.. math:: k(x, y) = \sum_s \exp\!\Big(-\frac{\|x - y\|^2}{2 \sigma_s^2}\Big),
          \qquad k(x, x) = S.

Since :math:`\exp(-\|x-y\|^2/2\sigma^2) = (2\pi\sigma^2)^{d/2}\,\mathcal N(x; y, \sigma^2 I)`,
Gaussian convolution identities give

.. math::

    \mu_Q(z) &= \mathbb E_{Y\sim Q} k(z, Y) = \sum_s \sum_k \pi_k
        \det(I + S_k/\sigma_s^2)^{-1/2}
        \exp\!\big(-\tfrac12 (z-m_k)^\top(\sigma_s^2 I + S_k)^{-1}(z-m_k)\big),\\
    \nabla_z \mu_Q(z) &= \sum_s \sum_k (\text{term}_{s,k}(z))\,(\sigma_s^2 I + S_k)^{-1}(m_k - z),\\
    \mathbb E_{X\sim P, Y\sim Q} k(X, Y) &= \sum_s \sum_{k,l} \pi_k \rho_l
        \det(I + (S_k + R_l)/\sigma_s^2)^{-1/2}
        \exp\!\big(-\tfrac12 D_{kl}^\top(\sigma_s^2 I + S_k + R_l)^{-1} D_{kl}\big),
        \quad D_{kl} = m_k - r_l,

for :math:`P = \sum_k \pi_k \mathcal N(m_k, S_k)` and :math:`Q = \sum_l \rho_l \mathcal N(r_l, R_l)`.

Conventions: numpy in -> numpy out (float64); torch in -> torch out on the same
device and dtype, differentiable by autograd. The mixture parameters are stored
once as read-only float64 numpy arrays; factorisations are done in float64 and
cast to the input's dtype. Work is vectorised over points (in row blocks, so
memory stays bounded for large ``n``) and looped over components and scales.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from scipy.linalg import solve_triangular

from ._utils import ArrayLike, as_tensor, check_array_2d, check_int, from_tensor, logger
from .distances import BLOCK_ELEMENTS, sq_dists
from .kernels import parse_bandwidth

__all__ = [
    "GaussianMixture",
    "kernel_mean_embedding",
    "kernel_mean_embedding_grad",
    "expected_kernel",
    "mmd2_mixtures",
    "mmd2_to_mixture",
]

#: Target number of elements of one temporary block (rows x columns) in row-chunked loops.
_BLOCK_ELEMENTS = BLOCK_ELEMENTS

#: Relative tolerance below which a negative MMD^2 is treated as round-off and clipped to 0.
_CLIP_RTOL = 1e-12

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- helpers
def _to_numpy(x, *, name: str) -> np.ndarray:
    """Parameter -> float64 numpy array (accepts numpy, lists, scalars and torch tensors)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real, got complex values")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.flags.writeable = False
    return a


def _tt(a, dtype: torch.dtype, device) -> torch.Tensor:
    """float64 numpy (possibly read-only) -> a fresh torch tensor of the given dtype/device."""
    return torch.tensor(np.array(a, dtype=np.float64), dtype=dtype, device=device)


def _row_blocks(n: int, per_row: int, rows: int | None = None):
    """Yield slices of ``range(n)`` with about ``_BLOCK_ELEMENTS / per_row`` rows each."""
    step = rows if rows is not None else max(1, _BLOCK_ELEMENTS // max(int(per_row), 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _check_bandwidth(bandwidth) -> np.ndarray:
    r"""Bandwidth spec -> 1-D float64 array of :math:`\sigma_s > 0`.

    :func:`mmdguidance.kernels.parse_bandwidth` (the package's one parser): a positive float,
    a non-empty flat sequence / array / tensor of positive floats, or a fitted
    :class:`~mmdguidance.kernels.GaussianKernel` (its ``bandwidth_``). ``'median'`` must be
    resolved on data first (``TypeError``).
    """
    return parse_bandwidth(bandwidth)


def _check_alpha_bar(alpha_bar) -> float:
    r"""Return :math:`\bar\alpha` as a float, raising ``ValueError`` unless :math:`0 < \bar\alpha \le 1`."""
    if isinstance(alpha_bar, torch.Tensor):
        if alpha_bar.numel() != 1:
            raise ValueError(f"alpha_bar must be a scalar, got a tensor of shape {tuple(alpha_bar.shape)}")
        alpha_bar = float(alpha_bar.detach().cpu())
    if isinstance(alpha_bar, np.ndarray) and alpha_bar.size == 1:
        alpha_bar = float(alpha_bar.reshape(()))
    if isinstance(alpha_bar, bool) or not isinstance(alpha_bar, numbers.Real):
        raise TypeError(f"alpha_bar must be a real number in (0, 1], got {type(alpha_bar).__name__}")
    ab = float(alpha_bar)
    if not (0.0 < ab <= 1.0):  # also rejects NaN
        raise ValueError(f"alpha_bar must lie in (0, 1], got {alpha_bar!r}")
    return ab


def _check_mixture(m, *, name: str) -> "GaussianMixture":
    if not isinstance(m, GaussianMixture):
        raise TypeError(f"{name} must be a GaussianMixture, got {type(m).__name__}")
    return m


def _clip_mmd2(value: float, scale: float, *, what: str) -> float:
    """Clip round-off negatives ``-_CLIP_RTOL * scale < value < 0`` to 0; warn on larger negatives."""
    if value < 0.0:
        if value > -_CLIP_RTOL * max(scale, 0.0):
            return 0.0
        logger.warning("%s is negative (%.3g, relative %.3g): numerical trouble", what, value, value / max(scale, 1e-300))
    return value


# --------------------------------------------------------------------------- the mixture
class GaussianMixture:
    r"""A Gaussian mixture :math:`Q = \sum_{k=1}^K \pi_k \mathcal N(m_k, S_k)` with full covariances.

    A distribution object (not an sklearn estimator): immutable, with exact
    density, score, posterior (responsibilities), sampling, and the exact noised
    marginal of the variance-preserving forward process.

    Parameters
    ----------
    weights : array-like of shape (K,)
        Nonnegative mixture weights :math:`\pi_k`; normalised to sum to 1.
    means : array-like of shape (K, d)
        Component means :math:`m_k`.
    covariances : array-like
        One of: shape ``(K, d, d)`` full symmetric positive definite
        matrices; shape ``(K, d)`` diagonals; shape ``(K,)`` scalars
        (:math:`S_k = s_k I`); a scalar (shared :math:`s I`).

    Attributes
    ----------
    weights : ndarray of shape (K,)
        Normalised weights (read-only float64).
    means : ndarray of shape (K, d)
    covariances : ndarray of shape (K, d, d)
        Full covariance matrices (read-only float64).

    Raises
    ------
    ValueError
        On negative / non-finite / all-zero weights, shape mismatches, or a
        covariance that is not symmetric positive definite (checked by Cholesky).

    Notes
    -----
    numpy inputs to the methods give numpy outputs (float64); torch inputs give
    torch outputs on the same device and dtype, differentiable by autograd.
    """

    def __init__(self, *, weights, means, covariances):
        w = _to_numpy(weights, name="weights")
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"weights must be a non-empty 1-D array of shape (K,), got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("weights contain NaN or inf; they must be finite and nonnegative")
        if np.any(w < 0):
            raise ValueError(f"weights must be nonnegative, got {w.tolist()}")
        total = w.sum()
        if not total > 0:
            raise ValueError("weights sum to 0; at least one component needs a positive weight")
        K = w.size

        m = _to_numpy(means, name="means")
        if m.ndim != 2:
            raise ValueError(f"means must be 2-D of shape (n_components, dim), got shape {m.shape}")
        if m.shape[0] != K:
            raise ValueError(f"means has {m.shape[0]} rows but weights has {K} entries (one per component)")
        if m.shape[1] == 0:
            raise ValueError("means has 0 columns; the dimension must be >= 1")
        if not np.all(np.isfinite(m)):
            raise ValueError("means contain NaN or inf")
        d = m.shape[1]

        C = self._parse_covariances(covariances, K, d)
        chol = np.empty_like(C)
        for k in range(K):
            try:
                chol[k] = np.linalg.cholesky(C[k])
            except np.linalg.LinAlgError:
                raise ValueError(
                    f"covariances[{k}] is not symmetric positive definite (Cholesky factorisation failed); "
                    f"smallest eigenvalue {np.linalg.eigvalsh(C[k]).min():.3g}"
                ) from None
        eye = np.eye(d)
        # precision Cholesky U_k = L_k^{-T}: S_k^{-1} = U_k U_k^T
        prec_chol = np.stack([solve_triangular(chol[k], eye, lower=True).T for k in range(K)])
        logdet = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)  # (K,)

        self.weights = _readonly(w / total)
        self.means = _readonly(m)
        self.covariances = _readonly(C)
        self._chol = _readonly(chol)
        self._prec_chol = _readonly(prec_chol)
        self._logdet = _readonly(logdet)
        self._eig = None
        self._torch_cache: dict = {}

    @staticmethod
    def _parse_covariances(covariances, K: int, d: int) -> np.ndarray:
        C = _to_numpy(covariances, name="covariances")
        if not np.all(np.isfinite(C)):
            raise ValueError("covariances contain NaN or inf")
        eye = np.eye(d)
        if C.ndim == 0:
            if not C > 0:
                raise ValueError(f"a scalar covariance must be > 0, got {float(C)}")
            return np.broadcast_to(float(C) * eye, (K, d, d)).copy()
        if C.ndim == 1:
            if C.shape != (K,):
                raise ValueError(f"1-D covariances must have shape (K,) = ({K},) (one scalar per component), got {C.shape}")
            if np.any(C <= 0):
                raise ValueError(f"scalar covariances must be > 0, got {C.tolist()}")
            return C[:, None, None] * eye
        if C.ndim == 2:
            if C.shape != (K, d):
                raise ValueError(f"2-D covariances must be diagonals of shape (K, d) = ({K}, {d}), got {C.shape}")
            if np.any(C <= 0):
                raise ValueError("diagonal covariances must be > 0 (not positive definite)")
            return C[:, :, None] * eye
        if C.ndim == 3:
            if C.shape != (K, d, d):
                raise ValueError(f"full covariances must have shape (K, d, d) = ({K}, {d}, {d}), got {C.shape}")
            asym = np.abs(C - C.transpose(0, 2, 1)).max(axis=(1, 2))
            scale = np.abs(C).max(axis=(1, 2))
            bad = np.nonzero(asym > 1e-8 * np.maximum(scale, 1e-300))[0]
            if bad.size:
                raise ValueError(f"covariances[{bad[0]}] is not symmetric (max |S - S^T| = {asym[bad[0]]:.3g})")
            return 0.5 * (C + C.transpose(0, 2, 1))
        raise ValueError(
            f"covariances must be a scalar, (K,), (K, d) or (K, d, d) with K={K}, d={d}; got shape {C.shape}"
        )

    @classmethod
    def ring(cls, n_modes: int = 8, radius: float = 4.0, std: float = 0.25, dim: int = 2, weights=None, phase: float = 0.0):
        r"""Isotropic components on a circle: the package's standard toy target.

        .. math:: m_k = r\,(\cos\theta_k, \sin\theta_k, 0, \dots, 0), \quad
                  \theta_k = \text{phase} + 2\pi k / K, \qquad S_k = \text{std}^2 I_d .

        Parameters
        ----------
        n_modes : int >= 1
        radius : float > 0
        std : float > 0
            Per-coordinate standard deviation of every component.
        dim : int >= 2
            The ring lies in the first two coordinates.
        weights : array of shape (n_modes,), optional
            Default uniform.
        phase : float
            Angle of the first mode, radians.
        """
        for nm, v, lo in (("n_modes", n_modes, 1), ("dim", dim, 2)):
            check_int(v, nm, lo)
        for nm, v in (("radius", radius), ("std", std)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 < v < math.inf):
                raise ValueError(f"{nm} must be a positive finite number, got {v!r}")
        if isinstance(phase, bool) or not isinstance(phase, numbers.Real) or not math.isfinite(phase):
            raise ValueError(f"phase must be a finite number, got {phase!r}")
        a = float(phase) + 2.0 * np.pi * np.arange(n_modes) / n_modes  # (K,)
        means = np.zeros((int(n_modes), int(dim)))
        means[:, 0], means[:, 1] = radius * np.cos(a), radius * np.sin(a)
        w = np.full(int(n_modes), 1.0 / n_modes) if weights is None else weights
        return cls(weights=w, means=means, covariances=np.full(int(n_modes), float(std) ** 2))

    # ------------------------------------------------------------------ basic properties
    @property
    def n_components(self) -> int:
        """Number of components :math:`K`."""
        return int(self.weights.shape[0])

    @property
    def dim(self) -> int:
        """Dimension :math:`d`."""
        return int(self.means.shape[1])

    @property
    def mean(self) -> np.ndarray:
        r"""Mixture mean :math:`\sum_k \pi_k m_k`, shape (d,)."""
        return self.weights @ self.means

    @property
    def covariance(self) -> np.ndarray:
        r"""Mixture covariance :math:`\sum_k \pi_k (S_k + m_k m_k^\top) - \mu\mu^\top`, shape (d, d)."""
        mu = self.mean
        second = np.einsum("k,kij->ij", self.weights, self.covariances) + np.einsum(
            "k,ki,kj->ij", self.weights, self.means, self.means
        )
        return second - np.outer(mu, mu)

    def __repr__(self) -> str:
        return f"GaussianMixture(n_components={self.n_components}, dim={self.dim})"

    # ------------------------------------------------------------------ internals
    def _params(self, dtype: torch.dtype, device) -> dict:
        """Torch copies of the parameters (cast from float64), cached per (dtype, device)."""
        key = (dtype, str(device))
        p = self._torch_cache.get(key)
        if p is None:
            with np.errstate(divide="ignore"):
                log_w = np.log(self.weights)
            log_norm = log_w - 0.5 * (self.dim * _LOG_2PI + self._logdet)  # (K,)
            conv = lambda a: _tt(a, dtype, device)  # noqa: E731
            p = {
                "means": conv(self.means),  # (K, d)
                "covs": conv(self.covariances),  # (K, d, d)
                "prec_chol": conv(self._prec_chol),  # (K, d, d)
                "log_norm": [float(v) for v in log_norm],  # K python floats (may be -inf)
            }
            self._torch_cache[key] = p
        return p

    def _eigh(self):
        """Eigendecomposition :math:`S_k = V_k \\mathrm{diag}(\\lambda_k) V_k^\\top` (float64, cached)."""
        if self._eig is None:
            lam, V = np.linalg.eigh(self.covariances)  # (K, d), (K, d, d)
            self._eig = (_readonly(np.clip(lam, 0.0, None)), _readonly(V))
        return self._eig

    def _check_X(self, X, name: str = "X") -> torch.Tensor:
        t = check_array_2d(X, name=name)
        if t.shape[1] != self.dim:
            raise ValueError(f"{name} has {t.shape[1]} features but the mixture has dim {self.dim}")
        return t

    def _whitened(self, Xb: torch.Tensor, p: dict):
        """Per component: :math:`z_k = (x - m_k) U_k` (b, d) and the log joint (b, K)."""
        zs, cols = [], []
        for k in range(self.n_components):
            z = (Xb - p["means"][k]) @ p["prec_chol"][k]  # (b, d)
            zs.append(z)
            cols.append(p["log_norm"][k] - 0.5 * (z * z).sum(1))  # (b,)
        return zs, torch.stack(cols, 1)  # list of (b, d), (b, K)

    def _per_row(self) -> int:
        return self.dim * (self.n_components + 1)

    # ------------------------------------------------------------------ densities
    def log_prob(self, X: ArrayLike):
        r"""Log density :math:`\log q(x) = \operatorname{logsumexp}_k \big[\log\pi_k + \log\mathcal N(x; m_k, S_k)\big]`.

        Parameters
        ----------
        X : array-like or tensor of shape (n, d)

        Returns
        -------
        ndarray or tensor of shape (n,)
        """
        t = self._check_X(X)
        p = self._params(t.dtype, t.device)
        out = []
        for b in _row_blocks(t.shape[0], self._per_row()):
            _, lj = self._whitened(t[b], p)  # (b, K)
            out.append(torch.logsumexp(lj, 1))
        return from_tensor(torch.cat(out), X)

    def posterior(self, X: ArrayLike):
        r"""Responsibilities :math:`r_k(x) = \pi_k \mathcal N(x; m_k, S_k) / q(x)`.

        Returns
        -------
        ndarray or tensor of shape (n, K)
            Rows sum to 1.
        """
        t = self._check_X(X)
        p = self._params(t.dtype, t.device)
        out = []
        for b in _row_blocks(t.shape[0], self._per_row()):
            _, lj = self._whitened(t[b], p)
            out.append(torch.softmax(lj, 1))  # (b, K)
        return from_tensor(torch.cat(out), X)

    def score(self, X: ArrayLike):
        r"""Score :math:`\nabla_x \log q(x) = \sum_k r_k(x)\, S_k^{-1}(m_k - x)`.

        Returns
        -------
        ndarray or tensor of shape (n, d)
        """
        t = self._check_X(X)
        p = self._params(t.dtype, t.device)
        out = []
        for b in _row_blocks(t.shape[0], self._per_row()):
            zs, lj = self._whitened(t[b], p)
            r = torch.softmax(lj, 1)  # (b, K)
            g = torch.zeros_like(t[b])
            for k, z in enumerate(zs):
                # S_k^{-1}(m_k - x) as a row: -(x - m_k) U U^T = -z U^T
                g = g - r[:, k : k + 1] * (z @ p["prec_chol"][k].T)
            out.append(g)
        return from_tensor(torch.cat(out), X)

    def mode_assignment(self, X: ArrayLike):
        r"""Index of the most responsible component, :math:`\arg\max_k r_k(x)`.

        Returns
        -------
        ndarray of int64 or LongTensor of shape (n,)
        """
        t = self._check_X(X)
        p = self._params(t.dtype, t.device)
        out = []
        with torch.no_grad():
            for b in _row_blocks(t.shape[0], self._per_row()):
                _, lj = self._whitened(t[b], p)
                out.append(lj.argmax(1))
        return from_tensor(torch.cat(out), X)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, *, random_state=None, return_labels: bool = False):
        r"""Draw ``n`` i.i.d. samples: :math:`c \sim \mathrm{Cat}(\pi)`, :math:`x = m_c + L_c \varepsilon`.

        Parameters
        ----------
        n : int
            Number of samples, >= 1.
        random_state : None, int, numpy Generator / RandomState or torch Generator
            Seed; the same seed gives the same samples.
        return_labels : bool, default=False
            Also return the component labels.

        Returns
        -------
        X : ndarray of shape (n, d), float64
        labels : ndarray of shape (n,), int64
            Only if ``return_labels``.
        """
        n = check_int(n, "n", 1)
        rng = _numpy_rng(random_state)
        labels = np.asarray(rng.choice(self.n_components, size=n, p=self.weights), dtype=np.int64)
        eps = rng.standard_normal((n, self.dim))
        X = np.empty((n, self.dim))
        for k in range(self.n_components):
            idx = labels == k
            if idx.any():
                X[idx] = self.means[k] + eps[idx] @ self._chol[k].T
        return (X, labels) if return_labels else X

    # ------------------------------------------------------------------ diffusion
    def noised(self, alpha_bar) -> "GaussianMixture":
        r"""Marginal of :math:`x_t = \sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,\varepsilon`, :math:`x_0 \sim Q`.

        .. math:: Q_t = \sum_k \pi_k \mathcal N\big(\sqrt{\bar\alpha}\, m_k,\;
                  \bar\alpha S_k + (1 - \bar\alpha) I\big).

        Parameters
        ----------
        alpha_bar : float in (0, 1]
            ``alpha_bar = 1`` returns a mixture equal to this one.

        Raises
        ------
        ValueError
            If ``alpha_bar`` is not in (0, 1].
        """
        ab = _check_alpha_bar(alpha_bar)
        C = ab * self.covariances + (1.0 - ab) * np.eye(self.dim)
        return GaussianMixture(weights=self.weights, means=math.sqrt(ab) * self.means, covariances=C)

    def posterior_mean_x0(self, X: ArrayLike, alpha_bar):
        r"""Exact :math:`\mathbb E[x_0 \mid x_t = x]` (the Tweedie denoiser) for the noised mixture.

        .. math:: \hat x_0(x) = \sum_k r^t_k(x)\Big[m_k + \sqrt{\bar\alpha}\, S_k
                  \big(\bar\alpha S_k + (1-\bar\alpha) I\big)^{-1}(x - \sqrt{\bar\alpha}\, m_k)\Big],

        with :math:`r^t_k` the responsibilities of :meth:`noised` ``(alpha_bar)``.
        Equivalently :math:`\hat x_0 = (x + (1-\bar\alpha)\nabla\log q_t(x))/\sqrt{\bar\alpha}`.

        Parameters
        ----------
        X : array-like or tensor of shape (n, d)
            Noisy points :math:`x_t`.
        alpha_bar : float in (0, 1]

        Returns
        -------
        ndarray or tensor of shape (n, d)
        """
        ab = _check_alpha_bar(alpha_bar)
        t = self._check_X(X)
        Qt = self.noised(ab)
        p = Qt._params(t.dtype, t.device)
        sab = math.sqrt(ab)
        # M_k = sqrt(ab) U_{t,k}^T S_k, so that sqrt(ab) S_k C_k^{-1}(x - sqrt(ab) m_k) = z_k M_k (rows)
        M = _tt(sab * np.einsum("kji,kjl->kil", Qt._prec_chol, self.covariances), t.dtype, t.device)  # (K, d, d)
        means0 = _tt(self.means, t.dtype, t.device)  # (K, d)
        out = []
        for b in _row_blocks(t.shape[0], self._per_row()):
            zs, lj = Qt._whitened(t[b], p)
            r = torch.softmax(lj, 1)  # (b, K)
            acc = torch.zeros_like(t[b])
            for k, z in enumerate(zs):
                acc = acc + r[:, k : k + 1] * (means0[k] + z @ M[k])
            out.append(acc)
        return from_tensor(torch.cat(out), X)

    # ------------------------------------------------------------------ derived mixtures
    def subset(self, components) -> "GaussianMixture":
        """Mixture of the given component indices, weights renormalised.

        Parameters
        ----------
        components : sequence of int
            Distinct indices in ``[0, K)``, at least one with positive weight.
        """
        idx = np.asarray(components)
        if idx.ndim == 0:
            idx = idx[None]
        if idx.size == 0:
            raise ValueError("components is empty")
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"components must be integer indices, got dtype {idx.dtype}")
        if np.any(idx < 0) or np.any(idx >= self.n_components):
            raise ValueError(f"component indices must lie in [0, {self.n_components}), got {idx.tolist()}")
        if np.unique(idx).size != idx.size:
            raise ValueError(f"component indices must be distinct, got {idx.tolist()}")
        return GaussianMixture(weights=self.weights[idx], means=self.means[idx], covariances=self.covariances[idx])

    def reweighted(self, weights) -> "GaussianMixture":
        """Same components with new (nonnegative, renormalised) weights of shape (K,)."""
        w = _to_numpy(weights, name="weights")
        if w.shape != (self.n_components,):
            raise ValueError(f"weights must have shape ({self.n_components},), got {w.shape}")
        return GaussianMixture(weights=w, means=self.means, covariances=self.covariances)


def _numpy_rng(random_state):
    """numpy Generator / RandomState from None, an int, a numpy generator or a torch Generator."""
    if isinstance(random_state, (np.random.Generator, np.random.RandomState)):
        return random_state
    if isinstance(random_state, torch.Generator):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=random_state))
        return np.random.default_rng(seed)
    if random_state is None or (isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool)):
        return np.random.default_rng(random_state)
    raise TypeError(f"random_state must be None, an int, a numpy or torch generator; got {type(random_state).__name__}")


# --------------------------------------------------------------------------- kernel quantities
def _embedding(Z, mixture, bandwidth, *, grad: bool):
    mixture = _check_mixture(mixture, name="mixture")
    sig = _check_bandwidth(bandwidth)
    t = mixture._check_X(Z, name="Z")
    lam, V = mixture._eigh()  # (K, d), (K, d, d)
    dt, dev = t.dtype, t.device
    means = _tt(mixture.means, dt, dev)
    Vt = _tt(V, dt, dev)
    comps = []  # (k, [(log c_{s,k}, 1/(lam_k + s^2)) for s])
    for k in range(mixture.n_components):
        if mixture.weights[k] <= 0:
            continue
        per_scale = []
        for s in sig:
            s2 = s * s
            log_c = math.log(mixture.weights[k]) - 0.5 * float(np.log1p(lam[k] / s2).sum())
            inv = _tt(1.0 / (lam[k] + s2), dt, dev)  # (d,)
            per_scale.append((log_c, inv))
        comps.append((k, per_scale))
    out = []
    for b in _row_blocks(t.shape[0], 3 * mixture.dim):
        Zb = t[b]
        acc = torch.zeros((Zb.shape[0], mixture.dim) if grad else (Zb.shape[0],), dtype=dt, device=dev)
        for k, per_scale in comps:
            w = (Zb - means[k]) @ Vt[k]  # (b, d): coordinates of z - m_k in the eigenbasis of S_k
            w2 = w * w
            coef = torch.zeros_like(w) if grad else None  # (b, d): sum_s val_s / (lam_k + s^2)
            for log_c, inv in per_scale:
                val = torch.exp(log_c - 0.5 * (w2 @ inv))  # (b,)
                if grad:
                    coef = coef + val[:, None] * inv
                else:
                    acc = acc + val
            if grad:
                # sum_s val_s (s^2 I + S_k)^{-1}(m_k - z) = -V [coef * w] (rows: -(coef * w) V^T)
                acc = acc - (coef * w) @ Vt[k].T
        out.append(acc)
    return from_tensor(torch.cat(out), Z)


def kernel_mean_embedding(Z: ArrayLike, mixture: GaussianMixture, bandwidth):
    r"""Exact kernel mean embedding :math:`\mu_Q(z) = \mathbb E_{Y\sim Q} k(z, Y)`.

    .. math:: \mu_Q(z) = \sum_s \sum_k \pi_k \det(I + S_k/\sigma_s^2)^{-1/2}
              \exp\!\big(-\tfrac12 (z-m_k)^\top(\sigma_s^2 I + S_k)^{-1}(z-m_k)\big)

    Parameters
    ----------
    Z : array-like or tensor of shape (n, d)
    mixture : GaussianMixture
    bandwidth : float or list of float
        :math:`\sigma` or :math:`(\sigma_s)_s` (multi-scale sum), as in
        :class:`~mmdguidance.kernels.GaussianKernel`.

    Returns
    -------
    ndarray or tensor of shape (n,)
        Differentiable by autograd for torch inputs.
    """
    return _embedding(Z, mixture, bandwidth, grad=False)


def kernel_mean_embedding_grad(Z: ArrayLike, mixture: GaussianMixture, bandwidth):
    r"""Gradient of the embedding, :math:`\nabla_z \mu_Q(z) = \mathbb E_{Y\sim Q} \nabla_1 k(z, Y)`.

    This is the population cross-term gradient of MMD guidance:

    .. math:: \nabla_z \mu_Q(z) = \sum_s \sum_k \pi_k \det(I + S_k/\sigma_s^2)^{-1/2}
              e^{-\frac12 (z-m_k)^\top A_{s,k}^{-1}(z-m_k)}\, A_{s,k}^{-1}(m_k - z),
              \qquad A_{s,k} = \sigma_s^2 I + S_k.

    Parameters
    ----------
    Z : array-like or tensor of shape (n, d)
    mixture : GaussianMixture
    bandwidth : float or list of float

    Returns
    -------
    ndarray or tensor of shape (n, d)
    """
    return _embedding(Z, mixture, bandwidth, grad=True)


def expected_kernel(P: GaussianMixture, Q: GaussianMixture, bandwidth) -> float:
    r"""Exact :math:`\mathbb E_{X\sim P,\,Y\sim Q}\, k(X, Y)` for two Gaussian mixtures.

    .. math:: \sum_s \sum_{k,l} \pi_k \rho_l \det\!\big(I + (S_k + R_l)/\sigma_s^2\big)^{-1/2}
              \exp\!\big(-\tfrac12 D_{kl}^\top(\sigma_s^2 I + S_k + R_l)^{-1} D_{kl}\big),
              \quad D_{kl} = m_k - r_l.

    Computed in float64 with one batched Cholesky factorisation per scale.

    Parameters
    ----------
    P, Q : GaussianMixture
        Same dimension.
    bandwidth : float or list of float

    Returns
    -------
    float
    """
    P = _check_mixture(P, name="P")
    Q = _check_mixture(Q, name="Q")
    if P.dim != Q.dim:
        raise ValueError(f"P has dim {P.dim} but Q has dim {Q.dim}")
    sig = _check_bandwidth(bandwidth)
    ip, iq = np.nonzero(P.weights > 0)[0], np.nonzero(Q.weights > 0)[0]
    d = P.dim
    SS = P.covariances[ip][:, None] + Q.covariances[iq][None, :]  # (Kp, Kq, d, d)
    D = P.means[ip][:, None] - Q.means[iq][None, :]  # (Kp, Kq, d)
    log_w = np.log(P.weights[ip])[:, None] + np.log(Q.weights[iq])[None, :]  # (Kp, Kq)
    eye = np.eye(d)
    total = 0.0
    for s in sig:
        s2 = s * s
        L = np.linalg.cholesky(SS / s2 + eye)  # chol of (s^2 I + S_k + R_l) / s^2
        y = np.linalg.solve(L, (D / s)[..., None])[..., 0]  # (Kp, Kq, d)
        maha = (y * y).sum(-1)
        logdet = 2.0 * np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(-1)  # log det(I + (S+R)/s^2)
        total += float(np.exp(log_w - 0.5 * logdet - 0.5 * maha).sum())
    return total


def mmd2_mixtures(P: GaussianMixture, Q: GaussianMixture, bandwidth) -> float:
    r"""Exact population :math:`\mathrm{MMD}^2(P, Q) = \mathbb E_{PP} k + \mathbb E_{QQ} k - 2\,\mathbb E_{PQ} k`.

    The true value is nonnegative; a negative result above
    :math:`-10^{-12}(\mathbb E_{PP}k + \mathbb E_{QQ}k)` is floating-point
    cancellation and is returned as 0. (A larger negative value would signal a
    numerical problem: it is returned unchanged with a logged warning.)
    ``mmd2_mixtures(Q, Q, h)`` is exactly 0.

    Returns
    -------
    float
    """
    pp = expected_kernel(P, P, bandwidth)
    qq = expected_kernel(Q, Q, bandwidth)
    pq = expected_kernel(P, Q, bandwidth)
    return _clip_mmd2(pp + qq - 2.0 * pq, pp + qq, what="mmd2_mixtures")


def mmd2_to_mixture(X: ArrayLike, Q: GaussianMixture, bandwidth, *, chunk_size: int | None = None) -> float:
    r"""Biased (V-statistic) MMD² between the empirical distribution of ``X`` and ``Q``, exact given ``X``.

    .. math:: \frac1{n^2}\sum_{i,i'} k(x_i, x_{i'}) - \frac2n \sum_i \mu_Q(x_i) + \mathbb E_{Y,Y'\sim Q} k(Y, Y').

    For :math:`X_i \overset{iid}\sim Q` its expectation is
    :math:`(\mathbb E k(x,x) - \mathbb E_{QQ} k)/n = (S - \mathbb E_{QQ}k)/n` (S scales).
    The :math:`n\times n` Gram matrix is summed in row blocks of ``chunk_size``
    rows (default about :math:`2^{22}/n`), so memory stays :math:`O(\text{chunk}\cdot n)`.
    Torch inputs are computed in their dtype with float64 accumulation.
    Round-off negatives are clipped as in :func:`mmd2_mixtures`.

    Parameters
    ----------
    X : array-like or tensor of shape (n, d)
    Q : GaussianMixture
    bandwidth : float or list of float
    chunk_size : int, optional
        Rows per Gram block.

    Returns
    -------
    float
    """
    Q = _check_mixture(Q, name="Q")
    sig = _check_bandwidth(bandwidth)
    t = Q._check_X(X)
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    t = t.detach()
    n = t.shape[0]
    c = [1.0 / (2.0 * s * s) for s in sig]
    total = torch.zeros((), dtype=torch.float64, device=t.device)
    for b in _row_blocks(n, n, chunk_size):
        d2 = sq_dists(t[b], t, dtype=torch.float64)  # (b, n), exact 0 on the diagonal: k(x, x) = S
        for ci in c:
            total = total + torch.exp(-ci * d2).sum(dtype=torch.float64)
    kxx = float(total) / (n * n)
    cross = float(as_tensor(kernel_mean_embedding(t, Q, sig)).sum(dtype=torch.float64)) / n
    qq = expected_kernel(Q, Q, sig)
    return _clip_mmd2(kxx - 2.0 * cross + qq, kxx + qq, what="mmd2_to_mixture")
