"""Scenarios of the synthetic adaptation benchmark and the runners shared by its experiments."""

from __future__ import annotations

import numpy as np
import torch

from mmdguidance.baselines import DoobOracleDenoiser
from mmdguidance.diffusion import GMMDenoiser
from mmdguidance.diffusion.samplers import sample as run_sampler
from mmdguidance.gmm import GaussianMixture
from mmdguidance.guidance import MMDGuidedSampler
from mmdguidance.metrics import exact_mmd2_to_mixture, mode_coverage, sliced_wasserstein2

RADIUS, STD, K = 4.0, 0.25, 8
METRIC_BW = 1.0


def ring(weights=None, radius=RADIUS, std=STD, k=K):
    a = 2 * np.pi * np.arange(k) / k
    w = np.full(k, 1 / k) if weights is None else np.asarray(weights, float)
    return GaussianMixture(weights=w, means=radius * np.c_[np.cos(a), np.sin(a)], covariances=np.full(k, std**2))


def scenarios():
    """name -> (target mixture, target weights over the base components or None if not a re-weighting)."""
    base = ring()
    out = {}
    w = np.zeros(K)
    w[[0, 1, 2]] = 1 / 3
    out["subset (3 of 8 modes)"] = (base.reweighted(w), w)
    w = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.05])
    out["re-weighting (all 8 modes)"] = (base.reweighted(w), w)
    a = 2 * np.pi * np.arange(K) / K
    shifted = GaussianMixture(weights=np.full(3, 1 / 3), means=(RADIUS + 0.75) * np.c_[np.cos(a[:3]), np.sin(a[:3])],
                              covariances=np.full(3, STD**2))
    out["shifted means (3 modes, +0.75 radially)"] = (shifted, None)
    wide = GaussianMixture(weights=np.full(3, 1 / 3), means=RADIUS * np.c_[np.cos(a[:3]), np.sin(a[:3])],
                           covariances=np.full(3, (2 * STD) ** 2))
    out["different variance (3 modes, 2x std)"] = (wide, None)
    outside = GaussianMixture(weights=np.full(3, 1 / 3), means=np.r_[[[0.0, 0.0]], RADIUS * np.c_[np.cos(a[:2]), np.sin(a[:2])]],
                              covariances=np.full(3, STD**2))
    out["partly outside the support (centre mode + 2)"] = (outside, None)
    return base, out


def evaluate(X, target, base) -> dict:
    cov = mode_coverage(X, target)
    return {
        "exact_mmd2": exact_mmd2_to_mixture(X, target, METRIC_BW),
        "frac_near_target_mode": cov["frac_near_mode"],
        "target_modes_covered": cov["modes_covered"],
        "sliced_w2": sliced_wasserstein2(X, target.sample(len(X), random_state=0), n_projections=128, random_state=0),
    }


def run_method(method, base, target, target_w, refs, n, seed, num_steps=50, **mmd_kw):
    """Samples of one method; returns numpy (n, 2)."""
    model = GMMDenoiser(mixture=base)
    g = torch.Generator().manual_seed(seed)
    xT = torch.randn(n, base.dim, generator=g, dtype=torch.float64)
    if method == "none":
        return run_sampler(model, xT, sampler="ddpm", num_steps=num_steps, generator=seed).numpy()
    if method == "doob_oracle":
        return run_sampler(DoobOracleDenoiser(base=model, target_weights=target_w), xT, sampler="ddpm",
                           num_steps=num_steps, generator=seed).numpy()
    if method == "mmd":
        s = MMDGuidedSampler(model, num_steps=num_steps, random_state=seed, **mmd_kw).fit(refs)
        return s.sample(n, x_T=xT.numpy())
    raise ValueError(method)


def mean_std(rows, key):
    v = np.array([r[key] for r in rows], float)
    return float(v.mean()), float(v.std())
