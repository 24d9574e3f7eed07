r"""Held-out evaluation of the defaults chosen on the development scenarios (issue 13, protocol amendment 5).

Methods (pre-registered, docs/benchmark.md): no guidance; MMD guidance with the configuration chosen on
dev (``mmd``: the kernel and step rule of ``bench_defaults``, the evaluation point and scale of
``bench_eval_point``: the library default); the other evaluation points (``mmd_xt``, ``mmd_x0``,
``mmd_x0_jacobian``, ``mmd_noised_refs``, the winner's own point dropped), each at its own dev-chosen scale
(``bench_eval_point``'s ``chosen_by_point``): the evaluation-point question on held-out targets at equal
numbers of model evaluations; classifier guidance and Doob's matching at the scales chosen by
``bench_tune_baselines``; the exact Doob oracle. Same initial noise per seed, the benchmark's sampler
(``bench_defaults.SAMPLING``, Heun with 50 steps). Nothing here is tuned: the chosen settings are read from
the committed dev JSONs.

Also: re-weighting residual bias, the mode-weight TV of ``mmd`` with N = 50 and N = 500 references on the
pure re-weighting target (``ho_pentagon_d4``).

Writes ``bench_heldout.json`` / ``.png``: per scenario and method the runs, summaries, the i.i.d. floor
and paired-seed 95% intervals of every method's MMD², W₂ and recall difference to ``mmd``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mmdguidance._utils import logger

from ._benchmark import sync_doc_tables
from ._common import check_config, save_figure, save_json, use_agg
from ._protocol import (
    HELD_OUT_SEEDS,
    all_scenarios,
    dev_tables,
    evaluate,
    fit_baseline,
    held_out_scenarios,
    iid_floor,
    paired_ci,
    references,
    run_parallel,
    sample_method,
)
from .bench_defaults import FAST_SAMPLING, SAMPLING, mmd_kwargs

POINTS = ("xt", "x0", "x0_jacobian", "noised_refs")
METHODS = ("none", "mmd", *(f"mmd_{p}" for p in POINTS), "classifier", "doob_matching", "oracle")
LABELS = {"none": "no guidance", "mmd": "MMD guidance (default)", "classifier": "classifier guidance",
          "doob_matching": "Doob's matching", "oracle": "Doob oracle",
          **{f"mmd_{p}": f"MMD guidance on {lbl}" for p, lbl in
             zip(POINTS, ("x_t", "x̂₀", "x̂₀ (exact Jacobian)", "noised references"))}}
N_SAMPLES = 1000  # protocol amendment 6 (2000 pre-registered; the measured cost forced 1000)
FALLBACK = {"mmd": ("span/batch", 0.1), "mmd_point": ("noised_refs", 0.4), "points": {p: 0.4 for p in POINTS},
            "classifier": 2.0, "doob_matching": 1.0}


def chosen_settings(out_dir) -> dict:
    """``{"mmd": (candidate, scale), "mmd_point": (point, scale), "points": {point: scale}, "classifier": scale,
    "doob_matching": scale}`` from the dev JSONs (full runs; ``FALLBACK`` where one is missing)."""
    out = dict(FALLBACK)
    d = _load(out_dir, "bench_defaults")
    if d:
        cand, scale = d["winner"].split(" @ ")
        out["mmd"] = (cand, float(scale))
    d = _load(out_dir, "bench_eval_point")
    if d and "chosen_by_point" in d:
        point, scale = d["winner"].split(" @ ")
        out["mmd_point"] = (point, float(scale))
        out["points"] = {p: float(v) for p, v in d["chosen_by_point"].items()}
    d = _load(out_dir, "bench_tune_baselines")
    if d:
        out.update({k: float(v["scale"]) for k, v in d["chosen"].items()})
    return out


def _load(out_dir, name):
    p = Path(out_dir) / f"{name}.json"
    data = json.loads(p.read_text()) if p.exists() else None
    return data if data and data.get("config") == "full" else None


def _mmd_kw(m: str, settings: dict, refs) -> dict:
    """:class:`MMDGuidedSampler` keyword arguments of the MMD arm ``m`` (``'mmd'`` or ``'mmd_<point>'``)."""
    point, scale = settings["mmd_point"] if m == "mmd" else (m[4:], settings["points"][m[4:]])
    return dict(mmd_kwargs(settings["mmd"][0], scale, refs), evaluate_on=point)


def _tag(m: str, settings: dict) -> str:
    if m.startswith("mmd"):
        point, scale = settings["mmd_point"] if m == "mmd" else (m[4:], settings["points"][m[4:]])
        return f"mmd_{settings['mmd'][0].replace('/', '-')}_{point}_{scale}"
    return f"{m}_{settings[m]}" if m in ("classifier", "doob_matching") else m


def _one(m, sc, refs, seed, n, sampling, settings):
    if m in ("none", "oracle"):
        return sample_method(m, sc, refs, seed, sampling=sampling, n=n)
    if m.startswith("mmd"):
        return sample_method("mmd", sc, refs, seed, sampling=sampling, n=n, mmd=_mmd_kw(m, settings, refs))
    g = fit_baseline(m, sc, refs, seed)
    g.scale = float(settings[m])
    return sample_method("guided", sc, refs, seed, sampling=sampling, n=n, fitted=g)


def _job(args):
    """All methods on one (scenario, seed): ``((key, seed), {method: metrics})`` (worker process).

    With ``MMDG_CACHE`` set to a folder, each (scenario, seed, N, n, method, setting) result is stored
    there and reused (lets the method-independent arms run while the dev sweep is still choosing).
    """
    import torch

    torch.set_num_threads(1)
    key, seed, n, N, sampling, settings, methods, full = args
    logger.info("bench_heldout: %s seed %d N %d", key, seed, N)
    sc = all_scenarios()[key]
    refs = references(sc, seed, N)
    cache = os.environ.get("MMDG_CACHE")
    out = {}
    for m in methods:
        path = Path(cache) / f"{key}_{seed}_{N}_{n}_{sampling['sampler']}{sampling['num_steps']}_{int(full)}_{_tag(m, settings)}.json" if cache else None
        if path is not None and path.exists():
            out[m] = json.loads(path.read_text())
            continue
        out[m] = evaluate(_one(m, sc, refs, seed, n, sampling, settings), sc, full=full)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out[m]))
    return (key, seed), out


def _collect(results, keys, methods):
    """Summaries and paired intervals ``method - mmd`` per scenario."""
    table = {}
    for key in keys:
        runs = {m: [results[(key, s)][m] for s in sorted(s for k, s in results if k == key)] for m in methods}
        summ = {m: {k: [float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs]))] for k in rs[0]}
                for m, rs in runs.items()}
        diffs = {}
        for m in methods:
            if m == "mmd":
                continue
            diffs[m] = {k: paired_ci([r[k] for r in runs[m]], [r[k] for r in runs["mmd"]])
                        for k in ("exact_mmd2", "sliced_w2", "recall", "mode_weight_tv") if k in runs[m][0]}
        table[key] = {"runs": runs, "summary": summ, "minus_mmd": diffs}
    return table


def run(config: str = "full", out_dir="paper_figures", random_state: int = 0) -> dict:
    check_config(config)
    fast = config == "fast"
    scen = held_out_scenarios()
    keys = ["ho_grid9"] if fast else list(scen)
    # MMDG_HELDOUT_SEEDS=k: the first k seeds only (amendment 6: the seeds that finished, with MMDG_CACHE)
    n_seeds = 2 if fast else int(os.environ.get("MMDG_HELDOUT_SEEDS", len(HELD_OUT_SEEDS)))
    seeds = [random_state + s for s in HELD_OUT_SEEDS[:n_seeds]]
    sampling = dict(FAST_SAMPLING) if fast else dict(SAMPLING)
    n = 150 if fast else N_SAMPLES
    settings = chosen_settings(out_dir)
    methods = ("none", "mmd", "mmd_xt", "oracle") if fast else METHODS
    methods = tuple(m for m in methods if m != f"mmd_{settings['mmd_point'][0]}")  # the default's own point: "mmd"
    jobs = [(k, s, n, 50, sampling, settings, methods, True) for s in seeds for k in keys]  # seed by seed (amendment 6)
    table = _collect(dict(run_parallel(_job, jobs)), keys, methods)
    bias = _reweight_bias(scen, seeds, sampling, settings, n, fast)
    out = {"name": "bench_heldout", "config": config, "sampling": sampling, "seeds": seeds, "n": n, "settings": settings,
           "methods": list(methods), "floors": {k: iid_floor(scen[k], n) for k in keys}, "results": table,
           "reweight_bias": bias}
    out["table_md"] = markdown(out)
    save_json(out, out_dir, "bench_heldout")
    sync_doc_tables(out_dir, "bench_heldout", {"table": out["table_md"], **dev_tables(out_dir)})
    _plot(table, keys, methods, out["floors"], out_dir)
    return out


def _reweight_bias(scen, seeds, sampling, settings, n, fast) -> dict:
    """Mode-weight TV of the chosen MMD guidance with N = 50 and N = 500 references (pure re-weighting target).

    The N = 50 cells are the main table's (with ``MMDG_CACHE`` they are read back, not recomputed)."""
    key = "ho_grid9" if fast else "ho_pentagon_d4"
    out = {}
    for N in ((10, 50) if fast else (50, 500)):
        jobs = [(key, s, n, N, sampling, settings, ("none", "mmd"), True) for s in seeds]
        res = dict(run_parallel(_job, jobs))
        out[str(N)] = {m: [res[(key, s)][m]["mode_weight_tv"] for s in seeds] for m in ("none", "mmd")}
    out["scenario"] = key
    return out


COLUMNS = (("exact_mmd2", "MMD²"), ("sliced_w2", "sliced W₂"), ("w2", "W₂"), ("recall", "recall"),
           ("mode_weight_tv", "mode TV"), ("frac_far", "far"))


def markdown(out: dict) -> str:
    """Held-out table: mean ± std per method, the i.i.d. floor per scenario, and the paired 95% interval of
    (method − MMD default) for MMD² (positive: the default is better)."""
    head = "| scenario (floor) | method | " + " | ".join(lbl for _, lbl in COLUMNS) + " | Δ MMD² vs default [95% CI] |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for key, res in out["results"].items():
        for m in out["methods"]:
            summ = res["summary"][m]
            cells = [f"{summ[k][0]:.3g} ± {summ[k][1]:.2g}" if k in summ else "–" for k, _ in COLUMNS]
            ci = res["minus_mmd"].get(m, {}).get("exact_mmd2")
            ci_s = f"{ci[0]:+.3g} [{ci[1]:+.3g}, {ci[2]:+.3g}]" if ci else "–"
            lines.append(f"| {key} ({out['floors'][key]:.2g}) | {LABELS[m]} | " + " | ".join(cells) + f" | {ci_s} |")
    return "\n".join(lines)


def _plot(table, keys, methods, floors, out_dir):
    use_agg()
    import matplotlib.pyplot as plt

    colors = {"none": "tab:blue", "mmd": "tab:green", "mmd_xt": "tab:cyan", "mmd_x0": "tab:olive", "mmd_x0_jacobian": "tab:pink",
              "mmd_noised_refs": "tab:purple", "classifier": "tab:orange", "doob_matching": "tab:brown", "oracle": "tab:red"}
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        s = table[key]["summary"]
        ax.bar(range(len(methods)), [s[m]["exact_mmd2"][0] for m in methods],
               yerr=[s[m]["exact_mmd2"][1] for m in methods], color=[colors[m] for m in methods], capsize=2)
        ax.axhline(floors[key], color="k", ls="--", lw=0.8, label="i.i.d. floor")
        ax.set_yscale("log")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels([LABELS[m] for m in methods], rotation=60, ha="right", fontsize=7)
        ax.set_title(key, fontsize=8)
    axes[0][0].set_ylabel("exact MMD² to the target")
    axes[0][0].legend(fontsize=7)
    save_figure(fig, out_dir, "bench_heldout")
