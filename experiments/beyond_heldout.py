r"""Beyond MMD on issue 13's pre-registered protocol: every method's setting chosen on the development scenarios,
reported on the held-out scenarios (docs/beyond_mmd.md, "Held-out protocol", written before the run).

Methods, all through ``MMDGuidedSampler`` with the same pinned sampler and step settings (``SAMPLING``, ``STEP``):
MMD guidance (span kernel) evaluated on :math:`x_t`, on noised references and on the corrected Tweedie
:math:`\hat x_0`; Chamfer, sliced-W₂ and RKE-diversity (+ MMD attraction) guidance on :math:`x_t`. Same initial
noise, ancestral noise and references per seed; only the guidance differs.

* **Dev** (``DEV_KEYS``: issue 13's six development scenarios with d ≤ 32, seeds 0–1, n = 300): every method at
  every scale of the one common grid ``SCALES`` (the RKE method also at every λ of ``DIVERSITY_WEIGHTS``);
  selection as in issue 13: the geometric mean over the scenarios of mean exact MMD² / mean exact MMD² of no
  guidance, eligible if at most 1% of the samples are off the support in every scenario. An optimum on a grid
  edge extends that grid by ×2 steps (``extend``) until interior.
* **Held-out** (the five held-out scenarios, seeds 100–104, n = 1000): exact MMD², W₂ (d ≤ 16), sliced W₂,
  recall, RKE (metric bandwidth), mode TV, far fraction, copying (nearest-reference distance against fresh
  target draws'); paired 95% t-intervals of every method's difference to each MMD arm.
* **N sweep** (``N_KEYS``, N ∈ ``NS``, seeds 100–104, n = 500): exact MMD², recall, NN ratio and copy fraction.
* **Cost**: one ``grad_tensor`` call per discrepancy against MMD's, and the sampler's wall time over the held-out
  runs (both measured in this run).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from mmdguidance.discrepancies import Chamfer, KernelEntropyDiversity, SlicedWasserstein
from mmdguidance.metrics import rke
from mmdguidance.mmd import MMD

from ._common import check_config, save_figure, save_json, use_agg
from ._protocol import (
    HELD_OUT_SEEDS,
    all_scenarios,
    evaluate,
    held_out_scenarios,
    iid_floor,
    metric_bandwidth,
    paired_ci,
    references,
    run_parallel,
    sample_method,
)
from ._tables import FIGURES, sync_doc_tables
from .bench_defaults import KERNELS
from .bench_defaults import KEYS as DEV_KEYS
from .bench_eval_point import SCALES
from .beyond_mmd import _median_time

NAME = "beyond_heldout"
METHODS = ("none", "mmd_xt", "mmd_noised", "mmd_x0", "chamfer", "sw", "diversity")
GUIDED = METHODS[1:]
MMD_ARMS = ("mmd_xt", "mmd_noised", "mmd_x0")
LABELS = {"none": "no guidance", "mmd_xt": "MMD (x_t)", "mmd_noised": "MMD (noised refs)", "mmd_x0": "MMD (x̂₀)",
          "chamfer": "Chamfer", "sw": "sliced W2", "diversity": "RKE diversity + MMD attraction"}
COLORS = {"none": "tab:gray", "mmd_xt": "tab:green", "mmd_noised": "tab:olive", "mmd_x0": "tab:cyan", "chamfer": "tab:red",
          "sw": "tab:purple", "diversity": "tab:orange"}
#: pinned (never the library defaults): Heun with 50 steps, the setting at which the exact oracle reaches the floor
SAMPLING = dict(sampler="heun", num_steps=50)
STEP = dict(step_rule="normalized", schedule="decreasing", window=(0.0, 0.8), terms="full", diagnostics=False)
DIVERSITY_WEIGHTS = (0.1, 0.3, 1.0, 3.0)
DEV_SEEDS, DEV_N, HO_N, SWEEP_N = (0, 1), 300, 500, 300  # held-out / sweep n: amendment 1 (docs/beyond_mmd.md)
NS = (5, 10, 20, 50, 200)
N_KEYS = ("ho_grid9", "ho_random6_d16")
MAX_FAR = 0.01
COPY_QUANTILE = 0.05  # a sample "copies" if closer to a reference than this quantile of fresh target draws' distances
CONFIGS = {
    "full": dict(dev_keys=DEV_KEYS, dev_seeds=DEV_SEEDS, dev_n=DEV_N, scales=SCALES, weights=DIVERSITY_WEIGHTS,
                 ho_keys=None, ho_seeds=HELD_OUT_SEEDS, ho_n=HO_N, Ns=NS, n_keys=N_KEYS, sweep_n=SWEEP_N,
                 sampling=SAMPLING, timing=((2, 300, 50, torch.float64), (64, 256, 200, torch.float32)), repeats=20),
    "fast": dict(dev_keys=("dev_ring8_subset",), dev_seeds=(0,), dev_n=60, scales=(0.1, 0.4, 1.6), weights=(0.3,),
                 ho_keys=("ho_grid9",), ho_seeds=HELD_OUT_SEEDS[:2], ho_n=80, Ns=(5, 50), n_keys=("ho_grid9",),
                 sweep_n=60, sampling=dict(sampler="heun", num_steps=8), timing=((2, 60, 20, torch.float64),), repeats=3),
}


# --------------------------------------------------------------------------- one run
def guidance_kwargs(method: str, params: dict, refs: np.ndarray, seed: int) -> dict:
    """:class:`MMDGuidedSampler` keyword arguments of a guided method at ``params`` (``scale``, ``diversity``)."""
    kw = dict(STEP, scale=float(params["scale"]), evaluate_on="xt")
    if method in MMD_ARMS:
        kw.update(kernel=KERNELS["span"](refs), evaluate_on={"mmd_xt": "xt", "mmd_noised": "noised_refs", "mmd_x0": "x0"}[method])
    elif method == "chamfer":
        kw["discrepancy"] = Chamfer()
    elif method == "sw":
        kw["discrepancy"] = SlicedWasserstein(n_projections=64, random_state=seed)
    elif method == "diversity":
        kw["discrepancy"] = KernelEntropyDiversity(diversity=float(params["diversity"]))
    else:
        raise ValueError(f"unknown method {method!r}")
    return kw


def _draws(sc, n: int, seed: int = 424243) -> np.ndarray:
    return sc.target.sample(n, random_state=seed)


def copying(X: np.ndarray, refs: np.ndarray, Z: np.ndarray) -> dict:
    """``nn_ratio``: median nearest-reference distance of ``X`` over that of fresh target draws ``Z`` (< 1: clinging);
    ``copy_frac``: fraction of ``X`` closer to a reference than the ``COPY_QUANTILE`` quantile of ``Z``'s distances
    (``COPY_QUANTILE`` without copying)."""
    def nn(A):  # (n,) distance of each row to its nearest reference
        return np.sqrt(np.maximum(((A[:, None, :] - refs[None]) ** 2).sum(-1), 0.0)).min(1)

    dX, dZ = nn(X), nn(Z)
    return {"nn_ratio": float(np.median(dX) / np.median(dZ)), "copy_frac": float(np.mean(dX < np.quantile(dZ, COPY_QUANTILE)))}


def _job(args):
    """One cell ``(method, params, key, seed, n, N, sampling, full)`` -> (args, metrics); runs in a worker process."""
    import json
    import os

    torch.set_num_threads(1)
    method, params, key, seed, n, N, sampling, full = args
    cache = os.environ.get("MMDG_CACHE")  # a folder: each cell's metrics are stored there and reused (resumable runs)
    path = Path(cache) / (f"{method}_{_vkey(params)}_{key}_{seed}_{n}_{N}_{sampling['sampler']}{sampling['num_steps']}"
                          f"_{int(full)}.json") if cache else None
    if path is not None and path.exists():
        return args, json.loads(path.read_text())
    sc = all_scenarios()[key]
    refs = references(sc, seed, N)
    t0 = time.perf_counter()
    if method == "none":
        X = sample_method("none", sc, refs, seed, sampling=sampling, n=n)
    else:
        X = sample_method("mmd", sc, refs, seed, sampling=sampling, n=n, mmd=guidance_kwargs(method, params, refs, seed))
    wall = time.perf_counter() - t0
    out = evaluate(X, sc, full=full)
    out["wall_s"] = wall
    if full:
        out["rke"] = rke(X[:1000], kernel=metric_bandwidth(sc))
        out.update(copying(X, refs, _draws(sc, n)))
    else:
        from mmdguidance.metrics import sliced_wasserstein2

        out["sliced_w2"] = sliced_wasserstein2(X, _draws(sc, 500, 424242), n_projections=64, random_state=0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))
    return args, out


# --------------------------------------------------------------------------- dev selection
def variants(method: str, scales, weights) -> list[dict]:
    if method == "diversity":
        return [{"scale": s, "diversity": w} for s in scales for w in weights]
    return [{"scale": s} for s in scales]


def _vkey(p: dict) -> str:
    return ",".join(f"{k}={v:g}" for k, v in p.items())


def _dev_runs(cfg, cells: dict, method: str, scales, weights) -> None:
    """Run the missing dev cells of ``method`` on the grid into ``cells[(method, vkey, key)] = [metrics per seed]``."""
    todo = [(method, p, k) for p in (variants(method, scales, weights) if method != "none" else [{"scale": 0.0}])
            for k in cfg["dev_keys"] if (method, _vkey(p), k) not in cells]
    jobs = [(m, p, k, s, cfg["dev_n"], 50, cfg["sampling"], False) for m, p, k in todo for s in cfg["dev_seeds"]]
    for args, out in run_parallel(_job, jobs):
        cells.setdefault((args[0], _vkey(args[1]), args[2]), []).append(out)


def _rank(cfg, cells, method: str, scales, weights, metric="exact_mmd2") -> list[tuple]:
    """``[(score, params, eligible, ratios)]`` of every variant, best first (issue 13's selection rule)."""
    none = {k: np.mean([r[metric] for r in cells[("none", "scale=0", k)]]) for k in cfg["dev_keys"]}
    rows = []
    for p in variants(method, scales, weights):
        by = {k: cells[(method, _vkey(p), k)] for k in cfg["dev_keys"]}
        ratios = {k: float(np.mean([r[metric] for r in by[k]]) / none[k]) for k in by}
        far = max(float(np.mean([r["frac_far"] for r in by[k]])) for k in by)
        score = float(np.exp(np.mean(np.log(np.maximum(list(ratios.values()), 1e-12)))))
        rows.append((score, p, far <= MAX_FAR, ratios))
    return sorted(rows, key=lambda r: (not r[2], r[0]))


def extend(grid: tuple, value: float) -> tuple:
    """``grid`` with one more ×2 point beyond ``value`` when ``value`` is on an edge (else unchanged)."""
    grid = tuple(sorted(grid))
    if value == grid[-1]:
        return grid + (grid[-1] * 2,)
    if value == grid[0]:
        return (grid[0] / 2,) + grid
    return grid


def select(cfg) -> dict:
    """Dev runs and the chosen ``params`` per guided method (grids extended until the optimum is interior)."""
    cells: dict = {}
    _dev_runs(cfg, cells, "none", (), ())
    chosen, grids, ranking, by_sw = {}, {}, {}, {}
    for m in GUIDED:
        scales, weights = tuple(cfg["scales"]), tuple(cfg["weights"]) if m == "diversity" else ()
        for it in range(4):  # at most 3 extensions
            _dev_runs(cfg, cells, m, scales, weights)
            best = _rank(cfg, cells, m, scales, weights)[0][1]
            new_s = extend(scales, best["scale"])
            new_w = extend(weights, best["diversity"]) if m == "diversity" else weights
            if it == 3 or (new_s, new_w) == (tuple(sorted(scales)), tuple(sorted(weights))):
                break
            scales, weights = new_s, new_w
        rk = _rank(cfg, cells, m, scales, weights)
        chosen[m], grids[m] = rk[0][1], {"scales": list(scales), "diversity": list(weights)}
        ranking[m] = [{"params": p, "score": s, "eligible": e, "ratios": r} for s, p, e, r in rk]
        by_sw[m] = _rank(cfg, cells, m, scales, weights, metric="sliced_w2")[0][1]
    table = {f"{m}|{v}|{k}": {q: float(np.mean([r[q] for r in rows])) for q in ("exact_mmd2", "sliced_w2", "frac_far")}
             for (m, v, k), rows in cells.items()}
    return {"params": chosen, "params_by_sliced_w2": by_sw, "grids": grids, "ranking": ranking, "cells": table}


# --------------------------------------------------------------------------- held-out and N sweep
def _summaries(runs: dict) -> dict:
    """``{method: {metric: {mean, ci95, minus: {arm: [mean, lo, hi]}}}}`` with paired intervals vs each MMD arm."""
    from scipy.stats import t as student

    out = {}
    for m, rows in runs.items():
        cell = {}
        for q in rows[0]:
            v = np.array([r[q] for r in rows], float)
            h = float(student.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
            cell[q] = {"mean": float(v.mean()), "ci95": h,
                       "minus": {a: paired_ci(v, [r[q] for r in runs[a]]) for a in MMD_ARMS if a in runs and a != m}}
        out[m] = cell
    return out


def held_out(cfg, params) -> dict:
    scen = held_out_scenarios()
    keys = cfg["ho_keys"] or tuple(scen)
    jobs = [(m, params.get(m, {"scale": 0.0}), k, s, cfg["ho_n"], 50, cfg["sampling"], True)
            for k in keys for s in cfg["ho_seeds"] for m in METHODS]
    runs: dict = {}
    for args, out in run_parallel(_job, jobs):
        runs.setdefault(args[2], {}).setdefault(args[0], []).append(out)
    res = {}
    for k in keys:
        Z = _draws(scen[k], cfg["ho_n"])
        res[k] = {"floor": iid_floor(scen[k], cfg["ho_n"]), "target_rke": rke(Z[:1000], kernel=metric_bandwidth(scen[k])),
                  "summary": _summaries(runs[k]), "runs": runs[k]}
    return res


def n_sweep(cfg, params) -> dict:
    jobs = [(m, params.get(m, {"scale": 0.0}), k, s, cfg["sweep_n"], N, cfg["sampling"], True)
            for k in cfg["n_keys"] for N in cfg["Ns"] for s in cfg["ho_seeds"] for m in METHODS]
    runs: dict = {}
    for args, out in run_parallel(_job, jobs):
        runs.setdefault(args[2], {}).setdefault(str(args[5]), {}).setdefault(args[0], []).append(
            {q: out[q] for q in ("exact_mmd2", "recall", "nn_ratio", "copy_frac", "sliced_w2")})
    return {k: {N: _summaries(by_m) for N, by_m in by_N.items()} for k, by_N in runs.items()}


def gradient_cost(cfg, seed: int = 0) -> list[dict]:
    """Median seconds of one ``grad_tensor`` call per method's discrepancy, and the ratio to MMD's (span kernel)."""
    out = []
    for d, B, N, dtype in cfg["timing"]:
        g = torch.Generator().manual_seed(seed)
        Y = torch.randn(N, d, generator=g, dtype=dtype)  # (N, d)
        X = torch.randn(B, d, generator=g, dtype=dtype) + 0.5  # (B, d)
        ests = {"mmd": MMD(kernel=KERNELS["span"](Y.double().numpy())).fit(Y), "chamfer": Chamfer().fit(Y),
                "sw": SlicedWasserstein(n_projections=64, random_state=seed).fit(Y),
                "diversity": KernelEntropyDiversity(diversity=1.0).fit(Y)}
        t = {m: _median_time(lambda e=e: e.grad_tensor(X), cfg["repeats"]) for m, e in ests.items()}
        out.append({"d": d, "B": B, "N": N, "dtype": str(dtype).replace("torch.", ""), "seconds": t,
                    "ratio_to_mmd": {m: t[m] / t["mmd"] for m in t}})
    return out


# --------------------------------------------------------------------------- tables, figure, entry point
DOC = Path(__file__).resolve().parents[1] / "docs" / "beyond_mmd.md"


def reference_arm(sel: dict) -> str:
    """The MMD arm the tables compare against: the MMD evaluation point with the best dev score."""
    return min(MMD_ARMS, key=lambda a: sel["ranking"][a][0]["score"])


def _ci(c, digits=3):
    return f"{c['mean']:.{digits}g} ± {c['ci95']:.2g}"


def _d(c, ref):
    if ref not in c["minus"]:
        return "–"
    m, lo, hi = c["minus"][ref]
    return f"{m:+.3g} [{lo:+.2g}, {hi:+.2g}]"


def markdown_tables(data) -> dict:
    """The ``<!-- BEGIN beyond_heldout:KEY -->`` blocks of docs/beyond_mmd.md."""
    sel, ref = data["selection"], data["reference_arm"]
    p = ["| method | chosen on dev (used) | dev score (MMD² / none, geo-mean) | grid searched | chosen by sliced W₂ |", "|---|---|---|---|---|"]
    for m in GUIDED:
        g = sel["grids"][m]
        grid = f"scales {min(g['scales']):g}–{max(g['scales']):g} ({len(g['scales'])})" + (
            f", λ {min(g['diversity']):g}–{max(g['diversity']):g}" if g["diversity"] else "")
        p.append(f"| {LABELS[m]} | {_vkey(sel['params'][m])} | {sel['ranking'][m][0]['score']:.3g} | {grid} | "
                 f"{_vkey(sel['params_by_sliced_w2'][m])} |")
    q = [f"| scenario (floor) | method | exact MMD² | Δ vs {LABELS[ref]} [95% CI] | W₂ | Δ W₂ | sliced W₂ | recall | Δ recall | "
         "RKE (target) | NN ratio | copy frac. | far |", "|" + "---|" * 13]
    for key, r in data["held_out"].items():
        for m, c in r["summary"].items():
            w2 = (_ci(c["w2"]), _d(c["w2"], ref)) if "w2" in c else ("–", "–")
            q.append(f"| {key} ({r['floor']:.2g}) | {LABELS[m]} | {_ci(c['exact_mmd2'])} | {_d(c['exact_mmd2'], ref)} | {w2[0]} | "
                     f"{w2[1]} | {_ci(c['sliced_w2'])} | {_ci(c['recall'])} | {_d(c['recall'], ref)} | "
                     f"{c['rke']['mean']:.3g} ({r['target_rke']:.3g}) | {c['nn_ratio']['mean']:.2f} | {c['copy_frac']['mean']:.3f} | "
                     f"{c['frac_far']['mean']:.3f} |")
    Ns = list(data["config_values"]["Ns"])
    n = [f"| scenario | method | " + " | ".join(f"N={N}: MMD² (Δ vs {LABELS[ref]}) / recall / copy / NN" for N in Ns) + " |",
         "|" + "---|" * (2 + len(Ns))]
    for key, by_N in data["n_sweep"].items():
        for m in METHODS:
            cells = []
            for N in Ns:
                c = by_N[str(N)][m]
                cells.append(f"{c['exact_mmd2']['mean']:.3g} ({_d(c['exact_mmd2'], ref)}) / {c['recall']['mean']:.2f} / "
                             f"{c['copy_frac']['mean']:.3f} / {c['nn_ratio']['mean']:.2f}")
            n.append(f"| {key} | {LABELS[m]} | " + " | ".join(cells) + " |")
    c = ["| d | B | N | dtype | " + " | ".join(LABELS[m] for m in ("mmd_xt", "chamfer", "sw", "diversity")) + " |", "|" + "---|" * 8]
    for r in data["gradient_cost"]:
        c.append(f"| {r['d']} | {r['B']} | {r['N']} | {r['dtype']} | " + " | ".join(
            f"{r['ratio_to_mmd'][m]:.2f}× ({1e3 * r['seconds'][m]:.2g} ms)" for m in ("mmd", "chamfer", "sw", "diversity")) + " |")
    w = data["sampler_wall_ratio"]
    c.append("| sampler wall time / MMD (x_t)'s, held-out runs | | | | " + " | ".join(
        f"{w[m]:.2f}×" for m in ("mmd_xt", "chamfer", "sw", "diversity")) + " |")
    c.append("| (MMD noised refs / x̂₀: " + f"{w['mmd_noised']:.2f}× / {w['mmd_x0']:.2f}×) | | | | | | | |")
    return {"params": "\n".join(p), "quality": "\n".join(q), "n_sweep": "\n".join(n), "cost": "\n".join(c)}


def plot(data, out_dir):
    use_agg()
    import matplotlib.pyplot as plt

    ref, sel = data["reference_arm"], data["selection"]
    others = [m for m in GUIDED if m != ref]
    fig, ax = plt.subplots(1, 4, figsize=(20, 4.2))
    for m in GUIDED:  # dev score along the scale grid (the RKE method at its chosen λ)
        rows = [r for r in sel["ranking"][m] if r["params"].get("diversity") == sel["params"][m].get("diversity")]
        rows = sorted(rows, key=lambda r: r["params"]["scale"])
        ax[0].plot([r["params"]["scale"] for r in rows], [r["score"] for r in rows], "o-", ms=3, color=COLORS[m],
                   label=LABELS[m])
    ax[0].set(xscale="log", yscale="log", xlabel="scale", title="dev score (MMD² / none, geo-mean; lower better)")
    ax[0].legend(fontsize=7)
    keys = list(data["held_out"])
    width = 0.8 / len(others)
    for b, m in enumerate(others):
        xs = np.arange(len(keys)) + (b - (len(others) - 1) / 2) * width
        d = [data["held_out"][k]["summary"][m]["exact_mmd2"]["minus"][ref] for k in keys]
        ax[1].bar(xs, [v[0] for v in d], width, yerr=[[v[0] - v[1] for v in d], [v[2] - v[0] for v in d]], capsize=2,
                  color=COLORS[m], label=LABELS[m])
    ax[1].axhline(0, color="k", lw=0.8)
    ax[1].set_xticks(range(len(keys)), keys, rotation=25, fontsize=7)
    ax[1].set_title(f"held-out: Δ exact MMD² vs {LABELS[ref]} (95% CI)", fontsize=9)
    ax[1].legend(fontsize=6)
    key = list(data["n_sweep"])[0]
    Ns = list(data["config_values"]["Ns"])
    for m in METHODS:
        for a, q in ((ax[2], "exact_mmd2"), (ax[3], "copy_frac")):
            c = [data["n_sweep"][key][str(N)][m][q] for N in Ns]
            a.errorbar(Ns, [v["mean"] for v in c], yerr=[v["ci95"] for v in c], fmt="o-", ms=3, capsize=2, color=COLORS[m],
                       label=LABELS[m])
    ax[2].set(xscale="log", yscale="log", xlabel="N references", title=f"{key}: exact MMD² vs N")
    ax[3].axhline(COPY_QUANTILE, color="k", ls="--", lw=0.8, label="fresh target draws")
    ax[3].set(xscale="log", xlabel="N references", title=f"{key}: copy fraction vs N")
    ax[3].legend(fontsize=6)
    fig.suptitle("Beyond MMD on the held-out protocol (settings chosen on dev; Heun 50)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_dir, NAME)


def run(config="full", out_dir="paper_figures", random_state=0) -> dict:
    """Dev selection, held-out evaluation, N sweep and cost (module docstring); writes ``beyond_heldout.{png,json}``."""
    cfg = CONFIGS[check_config(config)]
    t0 = time.perf_counter()
    sel = select(cfg)
    ho = held_out(cfg, sel["params"])
    sweep = n_sweep(cfg, sel["params"])
    wall = {m: float(np.mean([r["wall_s"] for k in ho for r in ho[k]["runs"][m]])) for m in METHODS}
    data = {
        "name": NAME, "config": config, "random_state": random_state, "sampling": cfg["sampling"], "step": STEP,
        "config_values": {k: (v if k != "timing" else [list(map(str, t)) for t in v]) for k, v in cfg.items()},
        "selection": sel, "reference_arm": reference_arm(sel), "held_out": ho, "n_sweep": sweep,
        "gradient_cost": gradient_cost(cfg, random_state),
        "sampler_wall_s": wall, "sampler_wall_ratio": {m: wall[m] / wall["mmd_xt"] for m in METHODS},
        "total_s": time.perf_counter() - t0,
    }
    save_json(data, out_dir, NAME)
    plot(data, out_dir)
    if Path(out_dir).resolve() == FIGURES and DOC.exists():  # only the committed run rewrites the doc's tables
        sync_doc_tables(out_dir, NAME, markdown_tables(data), doc=DOC)
    return data
