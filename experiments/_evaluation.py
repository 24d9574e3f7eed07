"""Metrics of the synthetic benchmark's samples against a scenario's target (see :mod:`experiments._benchmark`)."""

from __future__ import annotations

import numpy as np

from mmdguidance.gmm import GaussianMixture
from mmdguidance.metrics import (
    exact_mmd2_to_mixture,
    mode_coverage,
    mode_weight_error,
    precision_recall_density_coverage,
    sliced_wasserstein2,
    wasserstein2,
)

from ._scenarios import STD, Scenario, base_mixture, metric_bandwidth

#: fixed target draws per (scenario, dimension, n): the reference sample of W2 / PRDC
_TARGET_DRAWS: dict = {}


def target_draws(sc: Scenario, n: int) -> np.ndarray:
    key = (sc.key, sc.target.dim, n)  # scenarios are deterministic given key and dimension (ids can be reused)
    if key not in _TARGET_DRAWS:
        _TARGET_DRAWS[key] = sc.target.sample(n, random_state=424242)
    return _TARGET_DRAWS[key]


def support_mixture(sc: Scenario) -> GaussianMixture:
    """Equal-weight mixture of every component of the base and of the target (for the far-sample count)."""
    base = base_mixture(sc.target.dim)
    covs = np.concatenate([base.covariances, sc.target.covariances])  # (K_b + K_t, d, d)
    return GaussianMixture(weights=np.full(len(covs), 1 / len(covs)), means=np.r_[base.means, sc.target.means], covariances=covs)


def evaluate(X: np.ndarray, sc: Scenario, refs: np.ndarray | None = None, *, n_eval: int = 500, full: bool = True) -> dict:
    """Metrics of samples ``X`` against the scenario's target.

    ``exact_mmd2``: exact MMD² (Gaussian kernel, :func:`metric_bandwidth`) to the target mixture;
    ``exact_mmd2_fine`` (2-D only): the same at σ = 0.25 (the mode std, sees within-mode shape);
    ``mode_weight_tv``: TV between the histogram of target-component assignments and the target weights;
    ``frac_near_mode``/``modes_covered``: :func:`mode_coverage` against the target's components;
    ``w2``/``sliced_w2``: to ``n_eval`` fixed target draws; PRDC (k=5) against the same draws;
    ``frac_far``: fraction of samples outside the 6σ-equivalent ellipsoid of every base and
    target component (samples thrown off the support; the bounded-kernel MMD² barely sees a few);
    ``ref_nn_ratio``: median distance of a sample to its nearest reference divided by the same for
    fresh target draws (< 1: samples cling to the references, i.e. memorisation).
    """
    dim = X.shape[1]
    cov = mode_coverage(X, sc.target)
    out = {
        "exact_mmd2": exact_mmd2_to_mixture(X, sc.target, metric_bandwidth(dim)),
        "mode_weight_tv": mode_weight_error(X, sc.target),
        "frac_near_mode": cov["frac_near_mode"],
        "modes_covered": cov["modes_covered"],
        "frac_far": 1.0 - mode_coverage(X, support_mixture(sc), threshold_sigma=6.0)["frac_near_mode"],
    }
    if dim == 2:
        out["exact_mmd2_fine"] = exact_mmd2_to_mixture(X, sc.target, STD)
    if full:
        Z = target_draws(sc, n_eval)
        out["sliced_w2"] = sliced_wasserstein2(X, Z, n_projections=128, random_state=0)
        out["w2"] = wasserstein2(X, Z)
        prdc = precision_recall_density_coverage(Z, X, k=5)
        out.update({k: float(prdc[k]) for k in ("precision", "recall", "coverage")})
        if refs is not None and len(refs) >= 2:
            def med_nn(A):
                return float(np.median(np.min(np.linalg.norm(A[:, None, :] - refs[None], axis=-1), 1)))

            out["ref_nn_ratio"] = med_nn(X) / med_nn(Z)
    return out


def summarize(rows: list[dict]) -> dict:
    """``{metric: [mean, std]}`` over seeds (population std)."""
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
    return {k: [float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))] for k in keys}
