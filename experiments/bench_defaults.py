r"""Choose the default kernel, step rule and scale of MMD guidance on the development scenarios only (issue 13).

Pre-registered in docs/benchmark.md ("Pre-registered protocol", with its amendments). Each candidate
(``CANDIDATES``: kernel rule x step rule) runs at every scale of ``SCALES`` on every dev scenario
(``KEYS``) and seed; r(c, s) is its mean exact MMD² over the seeds divided by that of no guidance
(same seeds and initial noise); a configuration's score is the geometric mean of r over the
scenarios; eligible configurations throw at most 1% of the samples off the support in every
scenario. ``MMDG_WORKERS=k`` runs the cells in k processes.

Writes ``bench_defaults.json`` / ``.png``.
"""

from __future__ import annotations

import numpy as np

from mmdguidance.bandwidth import cross_term_ratio, median_ladder_bandwidths, span_bandwidths
from mmdguidance.kernels import GaussianKernel

from ._common import check_config, save_figure, save_json, use_agg
from ._protocol import dev_scenarios, run_parallel, evaluate, iid_floor, references, sample_method, score

KERNELS = {
    "median": lambda refs: GaussianKernel(bandwidth="median"),
    "median_ladder": lambda refs: GaussianKernel(bandwidth=median_ladder_bandwidths(refs)),
    "span": lambda refs: GaussianKernel(bandwidth=span_bandwidths(refs)),
}
#: candidate configurations: (kernel, step rule)
CANDIDATES = {
    "median/batch": ("median", "batch_normalized"),
    "span/batch": ("span", "batch_normalized"),
    "span/sample": ("span", "normalized"),
}
SCALES = (0.05, 0.1, 0.2, 0.4, 0.8)
KEYS = ("dev_ring8_two", "dev_ring8_dup", "dev_ring8_subset", "dev_ring8_reweight", "dev_ring5_d8", "dev_ring12_d32")
SEEDS = (0,)
MAX_FAR = 0.01
DEV_N = 300  # amendment 2 (CPU budget)
#: the benchmark's sampler (protocol amendment 5): the setting bench_oracle_floor chose, read by every protocol script
SAMPLING = dict(sampler="heun", num_steps=50)
#: the fast configurations' sampler (tests): the same sampler with fewer steps
FAST_SAMPLING = dict(sampler="heun", num_steps=10)


def mmd_kwargs(candidate: str, scale: float, refs) -> dict:
    """:class:`MMDGuidedSampler` keyword arguments of a candidate at a scale (the kernel resolved on ``refs``)."""
    kname, rule = CANDIDATES[candidate]
    # evaluated on x_t, as in the committed dev sweep (the evaluation point is chosen by bench_eval_point)
    # diagnostics off: the per-step MMD² record costs one more kernel pass and changes no sample
    # window (0, 0.8): the window of every run before amendment 7 (bench_window re-chose it; it passes its own)
    return dict(kernel=KERNELS[kname](refs), step_rule=rule, scale=float(scale), evaluate_on="xt", window=(0.0, 0.8),
                diagnostics=False)


def _job(args):
    """One (candidate, scale, scenario, seed) cell; ``candidate=None`` is no guidance. Runs in a worker process."""
    import torch

    torch.set_num_threads(1)
    cand, scale, key, seed, n, sampling = args
    sc = dev_scenarios()[key]
    refs = references(sc, seed)
    if cand is None:
        X = sample_method("none", sc, refs, seed, sampling=sampling, n=n)
    else:
        X = sample_method("mmd", sc, refs, seed, sampling=sampling, n=n, mmd=mmd_kwargs(cand, scale, refs))
    return args[:4], evaluate(X, sc, full=False)


def run_jobs(jobs) -> list:
    """:func:`_job` over ``jobs`` (``MMDG_WORKERS`` processes)."""
    return run_parallel(_job, jobs)


def rank(table: dict, none_mean: dict) -> dict:
    """``{config: {"ratios", "score", "max_far", "eligible"}}`` from ``table[config][scenario] = runs``."""
    out = {}
    for cfg, by_sc in table.items():
        ratios = {k: float(np.mean([r["exact_mmd2"] for r in runs])) / none_mean[k] for k, runs in by_sc.items()}
        far = max(float(np.mean([r["frac_far"] for r in runs])) for runs in by_sc.values())
        out[cfg] = {"ratios": ratios, "score": score(ratios), "max_far": far, "eligible": far <= MAX_FAR}
    return out


def pick(ranking: dict) -> str:
    """Lowest score among the eligible configurations (all if none is eligible)."""
    elig = {c: r for c, r in ranking.items() if r["eligible"]} or ranking
    return min(elig, key=lambda c: elig[c]["score"])


def run(config: str = "full", out_dir="paper_figures", random_state: int = 0) -> dict:
    check_config(config)
    fast = config == "fast"
    scen = dev_scenarios()
    keys = KEYS[:2] if fast else KEYS
    seeds = [random_state + s for s in (SEEDS[:1] if fast else SEEDS)]
    scales = (0.1, 0.4) if fast else SCALES
    sampling = dict(FAST_SAMPLING) if fast else dict(SAMPLING)
    n_of = {k: (150 if fast else DEV_N) for k in keys}
    cands = [None] + list(CANDIDATES)
    jobs = [(c, (0.0 if c is None else s), k, seed, n_of[k], sampling) for c in cands
            for s in (scales if c else (0.0,)) for k in keys for seed in seeds]
    table, none_runs = {}, {}
    for (c, s, k, _), ev in run_jobs(jobs):
        if c is None:
            none_runs.setdefault(k, []).append(ev)
        else:
            table.setdefault(f"{c} @ {s}", {}).setdefault(k, []).append(ev)
    none_mean = {k: float(np.mean([r["exact_mmd2"] for r in v])) for k, v in none_runs.items()}
    ranking = rank(table, none_mean)
    winner = pick(ranking)
    best_scales = {c: float(pick({k: v for k, v in ranking.items() if k.startswith(c + " @")}).split(" @ ")[1])
                   for c in CANDIDATES}
    out = {"name": "bench_defaults", "config": config, "sampling": sampling, "seeds": seeds, "n": n_of, "scales": list(scales),
           "candidates": {c: list(v) for c, v in CANDIDATES.items()},
           "floors": {k: iid_floor(scen[k], n_of[k]) for k in keys}, "none": none_runs, "none_mean": none_mean,
           "table": table, "ranking": ranking, "winner": winner, "best_scale": best_scales,
           "interior": {c: scales[0] < s < scales[-1] for c, s in best_scales.items()},
           "cross_term_ratio": _cross_term_diagnostics(scen, keys, seeds[0])}
    save_json(out, out_dir, "bench_defaults")
    _plot(ranking, scales, out_dir)
    return out


def _cross_term_diagnostics(scen, keys, seed) -> dict:
    """Share of *base* samples (unguided, at t = 0) whose cross term is negligible, per kernel and scenario."""
    out = {}
    for k in keys:
        sc = scen[k]
        refs = references(sc, seed)
        X = sc.base.sample(500, random_state=seed)
        out[k] = {kn: cross_term_ratio(X, refs, make(refs).fit(refs)) for kn, make in KERNELS.items()}
    return out


def _plot(ranking: dict, scales, out_dir):
    use_agg()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    keys = list(next(iter(ranking.values()))["ratios"])
    fig, axes = plt.subplots(1, len(CANDIDATES), figsize=(3.6 * len(CANDIDATES), 3.4), sharey=True)
    for ax, kname in zip(np.atleast_1d(axes), CANDIDATES):
        for key in keys:
            ax.plot(scales, [ranking[f"{kname} @ {s}"]["ratios"][key] for s in scales], "o-", ms=3, label=key)
        ax.plot(scales, [ranking[f"{kname} @ {s}"]["score"] for s in scales], "k-", lw=2, label="geometric mean")
        ax.axhline(1.0, color="0.5", lw=0.8)
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(list(scales), [f"{s:g}" for s in scales], fontsize=7)
        ax.set_title(f"kernel/step rule: {kname}", fontsize=9)
        ax.set_xlabel("scale")
    np.atleast_1d(axes)[0].set_ylabel("exact MMD² / no guidance (dev)")
    np.atleast_1d(axes)[-1].legend(fontsize=6)
    save_figure(fig, out_dir, "bench_defaults")
