r"""Scenarios and base models of the synthetic adaptation benchmark (see :mod:`experiments._benchmark`).

Base distribution: 8 equal-weight isotropic Gaussians (std 0.25) on a circle of radius 4, embedded
in :math:`\mathbb R^d` through a fixed orthonormal 2-frame (``d = 2``: the plane itself; ``d > 2``:
the same ring, isotropic noise in every coordinate). Base *models*: the analytic ``GMMDenoiser``
(exact noised score) or a small ``MLPDenoiser`` trained on 20 000 base samples.

Targets (``scenarios``): a subset of modes, shifted means, a different variance, a pure
re-weighting of the equal-weight modes, and a target partly outside the base support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mmdguidance.baselines import draw_base_samples
from mmdguidance.diffusion import GMMDenoiser, MLPDenoiser
from mmdguidance.gmm import GaussianMixture

RADIUS, STD, K = 4.0, 0.25, 8

# --------------------------------------------------------------------------- geometry
def frame(dim: int) -> np.ndarray:
    """Fixed orthonormal rows ``(2, dim)`` embedding the plane (identity for ``dim = 2``)."""
    if dim == 2:
        return np.eye(2)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((dim, 2)))
    return q.T


def ring_means(k=K, radius=RADIUS, angles=None) -> np.ndarray:
    a = 2 * np.pi * np.arange(k) / k if angles is None else np.asarray(angles, float)
    return radius * np.c_[np.cos(a), np.sin(a)]


def mixture(weights, means2d, std, dim: int) -> GaussianMixture:
    """Isotropic mixture with 2-D means embedded in ``dim`` dimensions."""
    w = np.asarray(weights, float)
    return GaussianMixture(weights=w / w.sum(), means=np.asarray(means2d) @ frame(dim),
                           covariances=np.full(len(w), float(std) ** 2))


def base_mixture(dim: int = 2) -> GaussianMixture:
    return mixture(np.full(K, 1 / K), ring_means(), STD, dim)


@dataclass
class Scenario:
    key: str
    title: str
    target: GaussianMixture
    weights: np.ndarray | None  # target weights over the base components (re-weighting targets only)


REWEIGHT = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.05])


def scenarios(dim: int = 2) -> tuple[GaussianMixture, dict[str, Scenario]]:
    """The base mixture and the five target scenarios (keyed ``subset, reweight, shifted, variance, outside``)."""
    base = base_mixture(dim)
    a = 2 * np.pi * np.arange(K) / K
    out = {}
    w = np.zeros(K)
    w[:3] = 1 / 3
    out["subset"] = Scenario("subset", "subset (3 of 8 modes)", base.reweighted(w), w)
    out["reweight"] = Scenario("reweight", "re-weighting (8 modes, 0.3..0.05)", base.reweighted(REWEIGHT), REWEIGHT)
    out["shifted"] = Scenario("shifted", "shifted means (3 modes, +0.75 radially)",
                              mixture(np.ones(3), ring_means(angles=a[:3], radius=RADIUS + 0.75), STD, dim), None)
    out["variance"] = Scenario("variance", "different variance (3 modes, 2x std)",
                               mixture(np.ones(3), ring_means(angles=a[:3]), 2 * STD, dim), None)
    out["outside"] = Scenario("outside", "partly outside the support (centre + 2 modes)",
                              mixture(np.ones(3), np.r_[[[0.0, 0.0]], ring_means(angles=a[:2])], STD, dim), None)
    return base, out


def metric_bandwidth(dim: int) -> float:
    """Gaussian bandwidth of the exact-MMD² metric: 1 in 2-D, growing like the within-mode distance (0.35 sqrt(d)) in high d."""
    return float(max(1.0, 0.35 * math.sqrt(dim)))


# --------------------------------------------------------------------------- models
_MODELS: dict = {}
_BASE_SAMPLES: dict = {}


def base_model(kind: str, dim: int = 2):
    """``'gmm'``: the analytic denoiser of the base mixture; ``'mlp'``: an MLPDenoiser trained on 20 000 base samples
    (``'mlp_small'``: a smaller, briefly trained one for the fast configurations); cached per process."""
    key = (kind, dim)
    if key not in _MODELS:
        base = base_mixture(dim)
        if kind == "gmm":
            _MODELS[key] = GMMDenoiser(mixture=base)
        elif kind == "mlp":
            _MODELS[key] = MLPDenoiser(dim=dim, hidden=128, depth=3, random_state=0).fit(
                base.sample(20000, random_state=0), epochs=50, batch_size=256, lr=2e-3, random_state=0, progress_bar=False)
        elif kind == "mlp_small":  # for the fast (test) configurations only: a few seconds of training, rough score
            _MODELS[key] = MLPDenoiser(dim=dim, hidden=64, depth=2, random_state=0).fit(
                base.sample(3000, random_state=0), epochs=25, batch_size=256, lr=3e-3, random_state=0, progress_bar=False)
        else:
            raise ValueError(f"unknown base model kind {kind!r}")
    return _MODELS[key]


def base_samples(model, seed: int, n: int = 2000) -> torch.Tensor:
    """Samples of the base model for the learned baselines' negative class (cached per model and seed)."""
    key = (id(model), seed, n)
    if key not in _BASE_SAMPLES:
        _BASE_SAMPLES[key] = draw_base_samples(model, n, num_steps=25, random_state=10_000 + seed)
    return _BASE_SAMPLES[key]


def initial_noise(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def references(sc: Scenario, N: int, seed: int) -> np.ndarray:
    return sc.target.sample(N, random_state=1000 + seed)
