r"""Held-out evaluation of the defaults chosen on the development scenarios (issue 13).

Methods (pre-registered, docs/benchmark.md): no guidance; MMD guidance with the configuration chosen
by ``bench_defaults`` (``mmd``) and with the previous default (median bandwidth, batch-normalised
step, scale 0.2: ``mmd_old``); classifier guidance and Doob's matching at the scales chosen by
``bench_tune_baselines``; the exact Doob oracle. Same initial noise per seed, ancestral DDPM with
100 steps. Nothing here is tuned: the chosen settings are read from the committed dev JSONs.

Also: re-weighting residual bias, the mode-weight TV of ``mmd`` with N = 50 and N = 500 references
on the pure re-weighting target (``ho_pentagon_d4``), and a d = 256 check of the chosen configuration
on ``dev_ring4_d256`` (a dev geometry, too costly to sweep).

Writes ``bench_heldout.json`` / ``.png``: per scenario and method the runs, summaries, the i.i.d. floor
and paired-seed 95% intervals of every method's MMD², W₂ and recall difference to ``mmd``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._benchmark import sync_doc_tables
from ._common import check_config, save_figure, save_json, use_agg
from ._protocol import (
    HELD_OUT_SEEDS,
    dev_scenarios,
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

METHODS = ("none", "mmd", "mmd_xt", "mmd_old", "classifier", "doob_matching", "oracle")
LABELS = {"none": "no guidance", "mmd": "MMD guidance (new default)", "mmd_old": "MMD guidance (old default)",
          "mmd_xt": "MMD guidance (span kernel on x_t)",
          "classifier": "classifier guidance", "doob_matching": "Doob's matching", "oracle": "Doob oracle"}
FALLBACK = {"mmd": ("span/sample", 0.1), "classifier": 2.0, "doob_matching": 1.0}


def chosen_settings(out_dir) -> dict:
    """``{"mmd": (candidate, scale), "classifier": scale, "doob_matching": scale}`` from the dev JSONs (full runs)."""
    out = dict(FALLBACK)
    p = Path(out_dir) / "bench_defaults.json"
    if p.exists() and json.loads(p.read_text()).get("config") == "full":
        cand, scale = json.loads(p.read_text())["winner"].split(" @ ")
        out["mmd"] = (cand, float(scale))
    p = Path(out_dir) / "bench_eval_point.json"
    if p.exists() and json.loads(p.read_text()).get("config") == "full" and "winner" in json.loads(p.read_text()):
        point, scale = json.loads(p.read_text())["winner"].split(" @ ")  # amendment 4: the evaluation point
        out["mmd_point"] = (point, float(scale))
    p = Path(out_dir) / "bench_tune_baselines.json"
    if p.exists() and json.loads(p.read_text()).get("config") == "full":
        ch = json.loads(p.read_text())["chosen"]
        out.update({k: float(v["scale"]) for k, v in ch.items()})
    return out


def _tag(m: str, settings: dict) -> str:
    if m == "mmd":
        point = "_".join(map(str, settings.get("mmd_point", ("xt",))))
        return f"mmd_{settings['mmd'][0].replace('/', '-')}_{settings['mmd'][1]}_{point}"
    if m == "mmd_xt":
        return f"mmd_{settings['mmd'][0].replace('/', '-')}_{settings['mmd'][1]}"
    return f"{m}_{settings[m]}" if m in ("classifier", "doob_matching") else m


def _one(m, sc, refs, seed, n, sampling, settings):
    if m in ("none", "oracle"):
        return sample_method(m, sc, refs, seed, sampling=sampling, n=n)
    if m in ("mmd", "mmd_xt"):
        kw = mmd_kwargs(*settings["mmd"], refs)
        if m == "mmd" and "mmd_point" in settings:  # the evaluation point chosen by bench_eval_point
            kw.update(evaluate_on=settings["mmd_point"][0], scale=settings["mmd_point"][1])
        return sample_method("mmd", sc, refs, seed, sampling=sampling, n=n, mmd=kw)
    if m == "mmd_old":
        return sample_method("mmd", sc, refs, seed, sampling=sampling, n=n, mmd=mmd_kwargs("median/batch", 0.2, refs))
    g = fit_baseline(m, sc, refs, seed)
    g.scale = float(settings[m])
    return sample_method("guided", sc, refs, seed, sampling=sampling, n=n, fitted=g)


def _job(args):
    """All methods on one (scenario, seed): ``((key, seed), {method: metrics})`` (worker process).

    With ``MMDG_CACHE`` set to a folder, each (scenario, seed, N, n, method, setting) result is stored
    there and reused (lets the method-independent arms run while the dev sweep is still choosing).
    """
    import os

    import torch

    torch.set_num_threads(1)
    key, seed, n, N, sampling, settings, methods, full = args
    sc = {**held_out_scenarios(), **dev_scenarios()}[key]
    refs = references(sc, seed, N)
    cache = os.environ.get("MMDG_CACHE")
    out = {}
    for m in methods:
        path = Path(cache) / f"{key}_{seed}_{N}_{n}_{sampling['num_steps']}_{int(full)}_{_tag(m, settings)}.json" if cache else None
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
    seeds = [random_state + s for s in (HELD_OUT_SEEDS[:2] if fast else HELD_OUT_SEEDS[:3])]
    sampling = dict(FAST_SAMPLING) if fast else dict(SAMPLING)
    n = 150 if fast else 1000
    settings = chosen_settings(out_dir)
    methods = ("none", "mmd", "oracle") if fast else METHODS
    if "mmd_point" not in settings or settings["mmd_point"][0] == "xt":
        methods = tuple(m for m in methods if m != "mmd_xt")  # the same arm as "mmd"
    check_methods = tuple(m for m in ("none", "mmd", "mmd_xt", "mmd_old", "oracle") if m in methods or m == "mmd_old")
    jobs = [(k, s, n, 50, sampling, settings, methods, True) for k in keys for s in seeds]
    extra_keys = [] if fast else ["dev_ring4_d256"]
    jobs += [(k, s, 300, 50, sampling, settings, check_methods, False) for k in extra_keys for s in seeds]
    res = dict(run_parallel(_job, jobs))
    table = _collect({k: v for k, v in res.items() if k[0] in keys}, keys, methods)
    check = _collect({k: v for k, v in res.items() if k[0] in extra_keys}, extra_keys, check_methods)
    bias = _reweight_bias(scen, seeds, sampling, settings, n, fast)
    out = {"name": "bench_heldout", "config": config, "sampling": sampling, "seeds": seeds, "n": n, "settings": settings, "methods": list(methods),
           "floors": {k: iid_floor(scen[k], n) for k in keys}, "results": table, "d256_check": check,
           "reweight_bias": bias}
    out["table_md"] = markdown(out)
    save_json(out, out_dir, "bench_heldout")
    sync_doc_tables(out_dir, "bench_heldout", {"table": out["table_md"], **dev_tables(out_dir)})
    _plot(table, keys, methods, out["floors"], out_dir)
    return out


def _reweight_bias(scen, seeds, sampling, settings, n, fast) -> dict:
    """Mode-weight TV of the chosen MMD guidance with N = 50 and N = 500 references (pure re-weighting target)."""
    key = "ho_grid9" if fast else "ho_pentagon_d4"
    out = {}
    for N in ((10, 50) if fast else (50, 500)):
        jobs = [(key, s, n, N, sampling, settings, ("none", "mmd"), False) for s in seeds]
        res = dict(run_parallel(_job, jobs))
        out[str(N)] = {m: [res[(key, s)][m]["mode_weight_tv"] for s in seeds] for m in ("none", "mmd")}
    out["scenario"] = key
    return out


COLUMNS = (("exact_mmd2", "MMD²"), ("sliced_w2", "sliced W₂"), ("w2", "W₂"), ("recall", "recall"),
           ("mode_weight_tv", "mode TV"), ("frac_far", "far"))


def markdown(out: dict) -> str:
    """Held-out table: mean ± std per method, the i.i.d. floor per scenario, and the paired 95% interval of
    (no guidance − new MMD default) for MMD² (positive: MMD guidance is better)."""
    head = "| scenario (floor) | method | " + " | ".join(lbl for _, lbl in COLUMNS) + " | Δ MMD² vs new default [95% CI] |"
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

    colors = {"none": "tab:blue", "mmd": "tab:green", "mmd_xt": "tab:cyan", "mmd_old": "tab:olive", "classifier": "tab:orange",
              "doob_matching": "tab:brown", "oracle": "tab:red"}
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
