r"""Choose the guidance scale of classifier guidance and Doob's matching on the development scenarios (issue 13).

Pre-registered (docs/benchmark.md): the same selection rule as for MMD guidance (geometric mean over
the dev scenarios of exact MMD² / no guidance; at most 1% of samples off the support), 7-point
geometric grids (``CLASSIFIER_SCALES``, ``DOOB_SCALES``), run on the 2-D and d = 8 dev scenarios with
seeds 0–1 (the learned baselines train a network per scenario and seed); a grid whose optimum is on an
edge is extended by x2 steps on that side (at most ``MAX_EXTENSIONS`` times) until it is interior. Each denoiser is trained
once per scenario and seed and sampled at every scale.

Writes ``bench_tune_baselines.json`` / ``.png``.
"""

from __future__ import annotations

import numpy as np

from ._common import check_config, save_figure, save_json, use_agg
from ._protocol import (
    CLASSIFIER_SCALES,
    DEV_SEEDS,
    DOOB_SCALES,
    dev_scenarios,
    evaluate,
    fit_baseline,
    references,
    run_parallel,
    sample_method,
)
from .bench_defaults import FAST_SAMPLING, SAMPLING, pick, rank

GRIDS = {"classifier": CLASSIFIER_SCALES, "doob_matching": DOOB_SCALES}
MAX_EXTENSIONS = 4
KEYS = ("dev_ring8_two", "dev_ring8_dup", "dev_ring8_subset", "dev_ring8_reweight", "dev_ring5_d8")


def run(config: str = "full", out_dir="paper_figures", random_state: int = 0) -> dict:
    check_config(config)
    fast = config == "fast"
    scen = dev_scenarios()
    keys = KEYS[:1] if fast else KEYS
    seeds = [random_state + s for s in DEV_SEEDS[: 1 if fast else 2]]
    sampling = dict(FAST_SAMPLING) if fast else dict(SAMPLING)
    grids = {k: (g[2:4] if fast else g) for k, g in GRIDS.items()}
    n_of = {k: (150 if fast else scen[k].n) for k in keys}
    none_runs = {k: [evaluate(sample_method("none", scen[k], None, s, sampling=sampling, n=n_of[k]), scen[k], full=False)
                     for s in seeds] for k in keys}
    none_mean = {k: float(np.mean([r["exact_mmd2"] for r in v])) for k, v in none_runs.items()}
    table: dict = {}

    def add(runs):
        for (kind, key), evs in runs:
            for scale, ev in evs:
                table.setdefault(f"{kind} @ {scale}", {}).setdefault(key, []).append(ev)

    add(run_parallel(_job, [(kind, tuple(g), key, s, n_of[key], sampling) for kind, g in grids.items()
                            for key in keys for s in seeds]))
    for _ in range(0 if fast else MAX_EXTENSIONS):  # extend a grid by x2 steps until its optimum is interior
        edge = {kind: new for kind, g in grids.items() if (new := _extension(g, _best(rank(table, none_mean), kind)))}
        if not edge:
            break
        grids = {kind: tuple(sorted(g + ((edge[kind],) if kind in edge else ()))) for kind, g in grids.items()}
        add(run_parallel(_job, [(kind, (new,), key, s, n_of[key], sampling) for kind, new in edge.items()
                                for key in keys for s in seeds]))
    ranking = rank(table, none_mean)
    chosen = {}
    for kind, grid in grids.items():
        best = _best(ranking, kind)
        scale = float(best.split(" @ ")[1])
        chosen[kind] = {"scale": scale, "interior": grid[0] < scale < grid[-1], "score": ranking[best]["score"]}
    out = {"name": "bench_tune_baselines", "config": config, "sampling": sampling, "seeds": seeds, "n": n_of, "grids": grids, "none_mean": none_mean,
           "table": table, "ranking": ranking, "chosen": chosen}
    save_json(out, out_dir, "bench_tune_baselines")
    _plot(ranking, grids, out_dir)
    return out


def _best(ranking: dict, kind: str) -> str:
    """The configuration ``'kind @ scale'`` that the selection rule picks among ``kind``'s scales."""
    return pick({c: r for c, r in ranking.items() if c.startswith(kind + " @")})


def _extension(grid, best: str):
    """The next x2 scale beyond the edge of ``grid`` where ``best`` sits, or None if ``best`` is interior."""
    scale = float(best.split(" @ ")[1])
    if scale <= grid[0]:
        return grid[0] / 2
    if scale >= grid[-1]:
        return grid[-1] * 2
    return None


def _job(args):
    """Train one baseline on one (scenario, seed) and sample it at every scale of its grid (worker process)."""
    import torch

    torch.set_num_threads(1)
    kind, grid, key, seed, n, sampling = args
    sc = dev_scenarios()[key]
    g = fit_baseline(kind, sc, references(sc, seed), seed)
    evs = []
    for scale in grid:
        g.scale = float(scale)
        evs.append((scale, evaluate(sample_method("guided", sc, None, seed, sampling=sampling, n=n, fitted=g), sc, full=False)))
    return (kind, key), evs


def _plot(ranking, grids, out_dir):
    use_agg()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grids), figsize=(4.5 * len(grids), 3.3), sharey=True)
    for ax, (kind, grid) in zip(np.atleast_1d(axes), grids.items()):
        keys = list(ranking[f"{kind} @ {grid[0]}"]["ratios"])
        for key in keys:
            ax.plot(grid, [ranking[f"{kind} @ {s}"]["ratios"][key] for s in grid], "o-", ms=3, label=key)
        ax.plot(grid, [ranking[f"{kind} @ {s}"]["score"] for s in grid], "k-", lw=2, label="geometric mean")
        ax.axhline(1.0, color="0.5", lw=0.8)
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("guidance scale"), ax.set_title(kind, fontsize=9)
    np.atleast_1d(axes)[0].set_ylabel("exact MMD² / no guidance (dev)")
    np.atleast_1d(axes)[-1].legend(fontsize=6)
    save_figure(fig, out_dir, "bench_tune_baselines")
