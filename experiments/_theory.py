"""Shared pieces of the theory experiments: the target mixture family, fast reference draws,
the empirical and exact cross-term gradients."""

from __future__ import annotations

import math

import numpy as np
import torch

from mmdguidance.gmm import GaussianMixture, expected_kernel, kernel_mean_embedding_grad, mmd2_to_mixture


def target_mixture(d: int, sep: float = 2.0, spread: float = 0.5) -> GaussianMixture:
    r"""Two equal-weight isotropic modes at ``±sep·e_1`` in ``d`` dimensions.

    The per-coordinate std is ``spread·sqrt(2/d)`` so the *total* within-mode spread
    :math:`E\|y - m\|^2 = 2\,\text{spread}^2` does not change with ``d``: kernel values at a fixed
    bandwidth stay informative, and the only thing that grows with ``d`` is the dimension itself
    (what the ε-net argument of Theorem 2 is about).
    """
    std = spread * math.sqrt(2.0 / d)
    means = np.zeros((2, d))
    means[0, 0], means[1, 0] = sep, -sep
    return GaussianMixture(weights=[0.5, 0.5], means=means, covariances=[std**2, std**2])


def draw_refs(mix: GaussianMixture, n_sets: int, N: int, gen: torch.Generator) -> torch.Tensor:
    """``n_sets`` independent reference sets of size ``N``: tensor ``(n_sets, N, d)`` (isotropic mixture)."""
    K, d = mix.n_components, mix.dim
    means = torch.tensor(np.array(mix.means))
    std = torch.tensor(np.sqrt(np.array(mix.covariances[:, 0, 0])))
    w = torch.tensor(np.array(mix.weights))
    lab = torch.multinomial(w, n_sets * N, replacement=True, generator=gen).reshape(n_sets, N)
    return means[lab] + std[lab][..., None] * torch.randn(n_sets, N, d, generator=gen, dtype=torch.float64)


def empirical_cross_grad(Z: torch.Tensor, Y: torch.Tensor, sigma: float) -> torch.Tensor:
    r"""Batched :math:`\frac1N\sum_j \nabla_1 k(z, y_j)` for Gaussian k: ``Z (P, d)``, ``Y (S, N, d)`` -> ``(S, P, d)``.

    :math:`\nabla_1 k(z,y) = k(z,y)(y - z)/\sigma^2` (vectorised over reference sets; differentiable in Z).
    """
    d2 = (Y * Y).sum(-1)[:, None, :] + (Z * Z).sum(-1)[None, :, None] - 2 * torch.einsum("snd,pd->spn", Y, Z)
    K = torch.exp(-d2.clamp_min(0) / (2 * sigma**2))  # (S, P, N)
    N = Y.shape[1]
    return (torch.bmm(K, Y) - K.sum(-1, keepdim=True) * Z[None]) / (N * sigma**2)  # (S, P, d)


def exact_cross_grad(Z, mix, sigma):
    """Population cross-term gradient :math:`E_Q \\nabla_1 k(z, Y)` (closed form), ``(P, d)``."""
    return kernel_mean_embedding_grad(Z, mix, sigma)


def grad_bound(sigma: float) -> float:
    r""":math:`G = \sup_{z,y}\|\nabla_1 k(z,y)\| = \sup_r r e^{-r^2/2\sigma^2}/\sigma^2 = 1/(\sigma\sqrt e)`.

    For i.i.d. vectors bounded by G, :math:`E\|\bar v - Ev\| \le \sqrt{E\|v - Ev\|^2/N} \le G/\sqrt N`.
    """
    return 1.0 / (sigma * math.sqrt(math.e))


def high_prob_bound(sigma: float, N, delta: float = 0.05):
    r"""McDiarmid bound on the :math:`1-\delta` quantile of the pointwise error (Theorem 1 with constants).

    Replacing one reference moves the empirical mean by at most :math:`2G/N`, so
    :math:`P(e_N \ge E e_N + t) \le \exp(-N t^2 / 2G^2)`; with :math:`E e_N \le G/\sqrt N`,

    .. math:: q_{1-\delta}(e_N) \le \frac{G}{\sqrt N}\Big(1 + \sqrt{2\log(1/\delta)}\Big).
    """
    return grad_bound(sigma) * (1.0 + math.sqrt(2.0 * math.log(1.0 / delta))) / np.sqrt(np.asarray(N, float))


def rkhs_sup_bound(Y, mix: GaussianMixture, sigma: float) -> float:
    r"""Certified upper bound on :math:`\sup_{z\in\mathbb R^d}\|\frac1N\sum_j\nabla_1k(z,y_j) - E_Q\nabla_1k(z,Y)\|`.

    By the derivative reproducing property, :math:`u^\top\nabla f(z) = \langle f, u^\top\partial_1 k(z,\cdot)\rangle_H`
    and :math:`\|u^\top\partial_1 k(z,\cdot)\|_H^2 = u^\top\nabla_1\nabla_2 k(z,z)\,u = \|u\|^2/\sigma^2` for the
    Gaussian kernel. With :math:`f = \hat\mu_N - \mu_Q` the error at *every* z is at most
    :math:`\|\hat\mu_N - \mu_Q\|_H / \sigma = \sqrt{\mathrm{MMD}^2(\hat Q_N, Q)}/\sigma`, computed exactly here
    (``Y`` of shape ``(N, d)``).
    """
    return math.sqrt(max(mmd2_to_mixture(Y, mix, sigma), 0.0)) / sigma


def rkhs_mean_bound(mix: GaussianMixture, sigma: float, N) -> np.ndarray:
    r""":math:`E\,\sqrt{\mathrm{MMD}^2(\hat Q_N,Q)}/\sigma \le \sqrt{(1 - E_{QQ}k)/N}/\sigma`: the population form of
    :func:`rkhs_sup_bound` (:math:`E\|\hat\mu_N-\mu_Q\|_H^2 = (k(0) - E_{QQ}k)/N` exactly); dimension enters only
    through :math:`E_{QQ}k`."""
    return np.sqrt((1.0 - expected_kernel(mix, mix, sigma)) / np.asarray(N, float)) / sigma
