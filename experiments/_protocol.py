r"""The pre-registered protocol of issue 13 (docs/benchmark.md, "Pre-registered protocol"): scenarios, grids, metrics.

Development scenarios (``DEV``) choose the defaults and every method's hyper-parameters; held-out
scenarios (``HELD_OUT``) are only evaluated. Every target re-weights the components of its own base
mixture, so the analytic base (:class:`GMMDenoiser`) and the exact Doob oracle exist for all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mmdguidance.baselines import ClassifierGuidedDenoiser, DoobMatchingDenoiser, DoobOracleDenoiser, draw_base_samples
from mmdguidance.diffusion import GMMDenoiser
from mmdguidance.diffusion.samplers import sample as run_sampler
from mmdguidance.gmm import GaussianMixture, expected_kernel
from mmdguidance.guidance import MMDGuidedSampler
from mmdguidance.metrics import (
    exact_mmd2_to_mixture,
    mode_coverage,
    mode_weight_error,
    precision_recall_density_coverage,
    sliced_wasserstein2,
    wasserstein2,
)

from ._benchmark import quiet

DEV_SEEDS = (0, 1, 2)
HELD_OUT_SEEDS = (100, 101, 102, 103, 104)
N_REFS = 50

MMD_SCALES = (0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
CLASSIFIER_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
DOOB_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

#: baseline training settings (as in the earlier benchmark); only the guidance scale is tuned on dev
CLASSIFIER = dict(objective="log_prob", steps=1000, batch_size=256, n_base_samples=2000)
DOOB_MATCHING = dict(steps=500, batch_size=512, n_base_samples=2000)


@dataclass
class Scenario:
    """A base mixture, a target re-weighting of its components, and how references are drawn."""

    key: str
    base: GaussianMixture
    weights: np.ndarray  # (K,) target weights over the base components
    n: int  # generated samples
    duplicates: int = 1  # each distinct reference repeated this many times

    @property
    def target(self) -> GaussianMixture:
        return self.base.reweighted(self.weights)

    @property
    def dim(self) -> int:
        return self.base.dim


def _embed(means2d, dim: int) -> np.ndarray:
    """2-D means ``(K, 2)`` placed in the first two coordinates of ``dim`` (a fixed rotation for dim > 2)."""
    m = np.asarray(means2d, float)
    if dim == 2:
        return m
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((dim, 2)))  # (dim, 2) orthonormal
    return m @ q.T


def _ring(k: int, radius: float, std: float, dim: int) -> GaussianMixture:
    a = 2 * np.pi * np.arange(k) / k
    return GaussianMixture(weights=np.full(k, 1 / k), means=_embed(radius * np.c_[np.cos(a), np.sin(a)], dim),
                           covariances=np.full(k, std**2))


def _weights(k: int, entries: dict) -> np.ndarray:
    w = np.zeros(k)
    for i, v in entries.items():
        w[i] = v
    return w / w.sum()


def dev_scenarios() -> dict[str, Scenario]:
    """The development set (docs/benchmark.md table)."""
    ring8 = _ring(8, 4.0, 0.25, 2)
    out = [
        Scenario("dev_ring8_two", ring8, _weights(8, {0: 0.8, 3: 0.2}), 500),
        Scenario("dev_ring8_dup", ring8, _weights(8, {0: 0.8, 3: 0.2}), 500, duplicates=5),
        Scenario("dev_ring8_subset", ring8, _weights(8, {0: 1, 1: 1, 2: 1}), 500),
        Scenario("dev_ring8_reweight", ring8, np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.05]), 500),
        Scenario("dev_ring5_d8", _ring(5, 2.0, 0.3, 8), _weights(5, {0: 0.6, 2: 0.3, 3: 0.1}), 500),
        Scenario("dev_ring12_d32", _ring(12, 6.0, 0.4, 32), _weights(12, {0: 0.5, 1: 0.5}), 500),
        Scenario("dev_ring4_d256", _ring(4, 4.0, 0.25, 256), _weights(4, {0: 0.7, 2: 0.3}), 300),
    ]
    return {s.key: s for s in out}


def held_out_scenarios() -> dict[str, Scenario]:
    """The held-out set: never used to choose anything."""
    g = np.arange(3) * 3.0 - 3.0
    grid = GaussianMixture(weights=np.full(9, 1 / 9), means=np.array([[x, y] for x in g for y in g]),
                           covariances=np.full(9, 0.3**2))
    line = GaussianMixture(weights=np.full(4, 0.25), means=np.c_[[-4.5, -1.5, 1.5, 4.5], np.zeros(4)],
                           covariances=np.stack([np.diag([0.4**2, 0.15**2])] * 4))
    r6 = GaussianMixture(weights=np.full(6, 1 / 6), means=3.0 * np.random.default_rng(7).standard_normal((6, 16)),
                         covariances=np.full(6, 0.5**2))
    r3 = GaussianMixture(weights=np.full(3, 1 / 3), means=2.0 * np.random.default_rng(11).standard_normal((3, 64)),
                         covariances=np.full(3, 0.3**2))
    out = [
        Scenario("ho_grid9", grid, _weights(9, {0: 0.5, 4: 0.3, 8: 0.2}), 2000),
        Scenario("ho_aniso_line", line, _weights(4, {1: 0.7, 3: 0.3}), 2000),
        Scenario("ho_pentagon_d4", _ring(5, 3.0, 0.35, 4), np.array([0.4, 0.25, 0.15, 0.1, 0.1]), 2000),
        Scenario("ho_random6_d16", r6, _weights(6, {0: 0.5, 1: 0.3, 2: 0.2}), 2000),
        Scenario("ho_random3_d64", r3, _weights(3, {1: 0.8, 2: 0.2}), 2000),
    ]
    return {s.key: s for s in out}


def _random_means(k: int, dim: int, spread: float, std: float, seed: int) -> GaussianMixture:
    """``k`` equal-weight modes with means ``spread * N(0, I_dim)`` (seeded) and isotropic std."""
    means = spread * np.random.default_rng(seed).standard_normal((k, dim))  # (k, dim)
    return GaussianMixture(weights=np.full(k, 1 / k), means=means, covariances=np.full(k, std**2))


def dev_scenarios_hd() -> dict[str, Scenario]:
    """High-dimensional random-mean dev scenarios (protocol amendment 7; dev only, chosen on)."""
    out = [
        Scenario("dev_random3_d64", _random_means(3, 64, 2.0, 0.3, 21), _weights(3, {0: 0.7, 2: 0.3}), 300),
        Scenario("dev_random5_d32", _random_means(5, 32, 2.5, 0.4, 23), _weights(5, {1: 0.5, 3: 0.5}), 300),
    ]
    return {s.key: s for s in out}


def held_out_v2_scenarios() -> dict[str, Scenario]:
    """Held-out set v2 (protocol amendment 7): run once, for the winner of ``bench_window``; never chosen on."""
    a = 2 * np.pi * np.arange(6) / 6
    hexagon = GaussianMixture(weights=np.full(6, 1 / 6), means=3.0 * np.c_[np.cos(a), np.sin(a)],
                              covariances=np.full(6, 0.3**2))
    out = [
        Scenario("ho2_hexagon", hexagon, _weights(6, {0: 0.5, 2: 0.3, 4: 0.2}), 1000),
        Scenario("ho2_ring7_d12", _ring(7, 3.0, 0.35, 12), np.array([0.3, 0.25, 0.15, 0.1, 0.1, 0.05, 0.05]), 1000),
        Scenario("ho2_random8_d24", _random_means(8, 24, 3.0, 0.5, 43), _weights(8, {1: 0.4, 2: 0.3, 5: 0.3}), 1000),
        Scenario("ho2_random4_d48", _random_means(4, 48, 2.5, 0.4, 41), _weights(4, {0: 0.6, 3: 0.4}), 1000),
        Scenario("ho2_random3_d96", _random_means(3, 96, 1.8, 0.25, 45), _weights(3, {0: 0.5, 1: 0.5}), 1000),
    ]
    return {s.key: s for s in out}


def all_scenarios() -> dict[str, Scenario]:
    """Every protocol scenario by key (dev, high-dimensional dev, held-out v1 and v2)."""
    return {**dev_scenarios(), **dev_scenarios_hd(), **held_out_scenarios(), **held_out_v2_scenarios()}


# --------------------------------------------------------------------------- draws
def references(sc: Scenario, seed: int, N: int = N_REFS) -> np.ndarray:
    """``(N, d)`` references: i.i.d. target draws, or ``N / duplicates`` draws each repeated ``duplicates`` times."""
    distinct = sc.target.sample(max(1, N // sc.duplicates), random_state=1000 + seed)
    return np.repeat(distinct, sc.duplicates, axis=0)[:N] if sc.duplicates > 1 else distinct


def initial_noise(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


_MODELS: dict = {}


def base_model(sc: Scenario) -> GMMDenoiser:
    if sc.key not in _MODELS:
        _MODELS[sc.key] = GMMDenoiser(mixture=sc.base)
    return _MODELS[sc.key]


def sample_method(method: str, sc: Scenario, refs: np.ndarray, seed: int, *, sampling: dict, n: int | None = None,
                  mmd: dict | None = None, fitted=None) -> np.ndarray:
    """Samples ``(n, d)`` of ``method`` in {'none', 'oracle', 'mmd', 'guided'} from the seed's initial noise.

    ``sampling``: ``dict(sampler=..., num_steps=...)``; ``mmd``: :class:`MMDGuidedSampler` keyword
    arguments; ``fitted``: a fitted guided denoiser (classifier / Doob's matching) for ``'guided'``.
    """
    model = base_model(sc)
    n = sc.n if n is None else n
    xT = initial_noise(n, sc.dim, seed)  # (n, d)
    with quiet():
        if method == "none":
            X = run_sampler(model, xT, generator=seed, **sampling)
        elif method == "oracle":
            X = run_sampler(DoobOracleDenoiser(base=model, target_weights=sc.weights), xT, generator=seed, **sampling)
        elif method == "guided":
            X = run_sampler(fitted, xT, generator=seed, **sampling)
        elif method == "mmd":
            s = MMDGuidedSampler(model, random_state=seed, **sampling, **(mmd or {}))
            X = s.fit(refs).sample(n, x_T=xT.numpy())
        else:
            raise ValueError(f"unknown method {method!r}")
    return np.asarray(X.detach().numpy() if isinstance(X, torch.Tensor) else X, dtype=float)


def fit_baseline(kind: str, sc: Scenario, refs: np.ndarray, seed: int):
    """A classifier-guided (``'classifier'``) or Doob's-matching (``'doob_matching'``) denoiser fitted on ``refs``."""
    model = base_model(sc)
    neg = draw_base_samples(model, 2000, num_steps=25, random_state=10_000 + seed)
    with quiet():
        if kind == "classifier":
            return ClassifierGuidedDenoiser(base=model, random_state=seed, **CLASSIFIER).fit(refs, base_samples=neg)
        if kind == "doob_matching":
            return DoobMatchingDenoiser(base=model, random_state=seed, **DOOB_MATCHING).fit(refs, base_samples=neg)
    raise ValueError(f"unknown baseline {kind!r}")


# --------------------------------------------------------------------------- metrics
def metric_bandwidth(sc: Scenario) -> float:
    r""":math:`\sigma_m = \max(1, \sqrt{2d}\, s)`, ``s`` the largest component std of the target."""
    s = math.sqrt(float(max(np.linalg.eigvalsh(c).max() for c in sc.base.covariances)))
    return float(max(1.0, math.sqrt(2 * sc.dim) * s))


def iid_floor(sc: Scenario, n: int) -> float:
    r"""Expected exact MMD² of ``n`` i.i.d. target draws: :math:`(1 - E_{Q,Q} k)/n`."""
    return (1.0 - expected_kernel(sc.target, sc.target, metric_bandwidth(sc))) / n


_DRAWS: dict = {}


def evaluate(X: np.ndarray, sc: Scenario, *, full: bool = True) -> dict:
    """Exact MMD², mode-weight TV, far fraction; with ``full`` also sliced W₂, W₂ (d ≤ 16) and recall."""
    out = {
        "exact_mmd2": exact_mmd2_to_mixture(X, sc.target, metric_bandwidth(sc)),
        "mode_weight_tv": mode_weight_error(X, sc.target),
        "frac_far": 1.0 - mode_coverage(X, sc.base, threshold_sigma=6.0)["frac_near_mode"],
    }
    if full:
        if sc.key not in _DRAWS:
            _DRAWS[sc.key] = sc.target.sample(1000, random_state=424242)
        Z = _DRAWS[sc.key]
        Xs = X[:1000]
        out["sliced_w2"] = sliced_wasserstein2(Xs, Z, n_projections=128, random_state=0)
        if sc.dim <= 16:
            out["w2"] = wasserstein2(Xs, Z)
        out["recall"] = float(precision_recall_density_coverage(Z, Xs, k=5)["recall"])
    return out


def score(ratios: dict) -> float:
    """Geometric mean of the per-scenario MMD² ratios (the selection rule)."""
    return float(np.exp(np.mean(np.log(np.asarray(list(ratios.values()), float)))))


def run_parallel(func, jobs) -> list:
    """``[func(j) for j in jobs]``, in ``MMDG_WORKERS`` processes (default 1: in this process)."""
    import os

    workers = int(os.environ.get("MMDG_WORKERS", "1"))
    if workers <= 1:
        return [func(j) for j in jobs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(func, jobs, chunksize=1))


def paired_ci(a, b) -> list[float]:
    """Mean of ``a - b`` over paired seeds and its 95% t-interval ``[mean, lo, hi]``."""
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    m = float(d.mean())
    if d.size < 2:
        return [m, m, m]
    h = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return [m, m - h, m + h]


# --------------------------------------------------------------------------- doc tables from the committed JSONs
def _load(out_dir, name):
    import json
    from pathlib import Path

    p = Path(out_dir) / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def dev_tables(out_dir) -> dict:
    """Markdown of the dev-set choices (``bench_oracle_floor``, ``bench_defaults``, ``bench_tune_baselines``) from their JSONs."""
    out = {}
    fl = _load(out_dir, "bench_oracle_floor")
    if fl:
        keys = list(next(iter(fl["results"].values())))
        lines = ["| setting (model evals) | " + " | ".join(keys) + " |", "|" + "---|" * (1 + len(keys))]
        for s, by in fl["results"].items():
            cells = [f"{by[k]['ratio']:.2f}" if k in by else "–" for k in keys]
            lines.append(f"| {s} ({fl['costs'][s]}) | " + " | ".join(cells) + " |")
        out["floor"] = "\n".join(lines)
    de = _load(out_dir, "bench_defaults")
    if de:
        keys = list(de["none_mean"])
        lines = ["| candidate @ scale | score | " + " | ".join(keys) + " | max far |", "|" + "---|" * (3 + len(keys))]
        for c, r in de["ranking"].items():
            b = "**" if c == de["winner"] else ""
            lines.append(f"| {b}{c}{b} | {b}{r['score']:.3g}{b} | " + " | ".join(f"{r['ratios'][k]:.3g}" for k in keys)
                         + f" | {r['max_far']:.3f} |")
        lines.append("| no guidance: mean exact MMD² | 1 | " + " | ".join(f"({de['none_mean'][k]:.3g})" for k in keys) + " | |")
        out["defaults"] = "\n".join(lines)
    tb = _load(out_dir, "bench_tune_baselines")
    if tb:
        keys = list(tb["none_mean"])
        lines = ["| method @ scale | score | " + " | ".join(keys) + " |", "|" + "---|" * (2 + len(keys))]
        for c, r in tb["ranking"].items():
            lines.append(f"| {c} | {r['score']:.3g} | " + " | ".join(f"{r['ratios'][k]:.3g}" for k in keys) + " |")
        out["baselines"] = "\n".join(lines)
    return out


# --------------------------------------------------------------------------- grid selection with edge extension
def extend_grid(grid: list, value, factor: float = 2.0):
    """``grid`` extended by one geometric step (``factor``) on the side where ``value`` sits; None if interior.

    A one-point grid (a fixed setting) is never extended.
    """
    if len(grid) > 1 and value == grid[0]:
        return [grid[0] / factor] + list(grid)
    if len(grid) > 1 and value == grid[-1]:
        return list(grid) + [grid[-1] * factor]
    return None


def choose_on_grid(evaluate, grids: dict, *, factors: dict | None = None, max_extensions: int = 3,
                   max_far: float = 0.01) -> dict:
    """The grid point with the lowest ``score`` among the eligible ones (``max_far`` ≤ ``max_far``; all if none is).

    ``evaluate(point) -> {'score': ..., 'max_far': ..., ...}`` for ``point = {name: value}``; ``grids`` maps each
    name to its values (ascending, geometric). While the optimum sits on an edge of a grid, that grid is extended
    by one step (``factors[name]``, default 2) and the product grid re-evaluated (``evaluate`` should cache), at
    most ``max_extensions`` times. Returns ``best``, ``grid`` (every evaluated row of the last product grid),
    ``grids``, ``extensions`` and ``interior`` (False if the last optimum is still on an edge).
    """
    import itertools

    factors = factors or {}
    grids = {k: list(v) for k, v in grids.items()}
    extensions = []
    for it in range(max_extensions + 1):
        rows = [{**p, **evaluate(p)} for p in (dict(zip(grids, vals)) for vals in itertools.product(*grids.values()))]
        # eligibility with a tolerance: a fraction like 2/200 must not fail "<= 1%" by float round-off
        best = min([r for r in rows if r["max_far"] <= max_far + 1e-9] or rows, key=lambda r: r["score"])
        new = {k: extend_grid(g, best[k], factors.get(k, 2.0)) for k, g in grids.items()}
        interior = all(v is None for v in new.values())
        if interior or it == max_extensions:
            break
        extensions.append({k: v for k, v in new.items() if v is not None})
        grids = {k: new[k] or g for k, g in grids.items()}
    return {"best": best, "grid": rows, "grids": grids, "extensions": extensions, "interior": bool(interior)}
