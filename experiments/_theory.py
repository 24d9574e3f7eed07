"""Shared pieces of the theory experiments: the target mixture family, fast reference draws,
the empirical and exact cross-term gradients."""

from __future__ import annotations

import math

import numpy as np
import torch

from mmdguidance.gmm import GaussianMixture, kernel_mean_embedding_grad


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
    means = torch.tensor(mix.means)
    std = torch.tensor(np.sqrt(mix.covariances[:, 0, 0]))
    w = torch.tensor(mix.weights)
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
