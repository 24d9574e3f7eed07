r"""Where to evaluate the kernel: x_t, exact Tweedie x̂₀, x̂₀ with the exact Jacobian, or noised references (issue 13, item 5).

The default kernel and step rule that ``bench_defaults`` chose (read from its JSON; span ladder with the
per-sample normalised step when that run is absent)
with each evaluation point, each at every scale of the 11-point grid (``SCALES``, identical for every point; scales are not
comparable across evaluation points: x̂₀-space guidance moves x̂₀, which ε̂ then carries into the step).
Same sampler (``bench_defaults.SAMPLING``: Heun, 50 steps, protocol amendment 5) and the same number of model evaluations for every arm (x̂₀ is
computed from the model's ε̂ at the very point being stepped; ``'x0_jacobian'`` adds one backward pass).
Development scenarios in 2-D, d = 8, 32 and 256 (``KEYS``), seeds 0–1, n = 300; per scenario the ratio of
exact MMD² to no guidance at each evaluation point's best scale (selected on the same seeds: optimistic
for every arm alike), and the one (point, scale) ``winner`` by the selection rule of ``bench_defaults``
(geometric mean over the scenarios; protocol amendment 4 in docs/benchmark.md).

Writes ``bench_eval_point.json`` / ``.png``.
"""

from __future__ import annotations

import numpy as np

from ._benchmark import sync_doc_tables
from ._common import check_config, save_figure, save_json, use_agg
from ._protocol import dev_scenarios, evaluate, references, run_parallel, sample_method
from .bench_defaults import FAST_SAMPLING, SAMPLING, mmd_kwargs, pick, rank

POINTS = ("xt", "x0", "x0_jacobian", "noised_refs")
SCALES = tuple(0.025 * 2**k for k in range(11))  # 0.025 ... 25.6 (extended: x̂₀ optima were at 6.4)
KEYS = ("dev_ring8_two", "dev_ring8_reweight", "dev_ring5_d8", "dev_ring12_d32", "dev_ring4_d256")  # d = 256: amendment 4
SEEDS = (0, 1)
N_SAMPLES = 300


def _job(args):
    import torch

    torch.set_num_threads(1)
    point, scale, key, seed, n, sampling, candidate = args
    sc = dev_scenarios()[key]
    refs = references(sc, seed)
    if point is None:
        X = sample_method("none", sc, refs, seed, sampling=sampling, n=n)
    else:
        kw = dict(mmd_kwargs(candidate, scale, refs), evaluate_on=point)
        X = sample_method("mmd", sc, refs, seed, sampling=sampling, n=n, mmd=kw)
    return args[:4], evaluate(X, sc, full=True)


def run(config: str = "full", out_dir="paper_figures", random_state: int = 0) -> dict:
    check_config(config)
    fast = config == "fast"
    keys = KEYS[:1] if fast else KEYS
    seeds = [random_state + s for s in (SEEDS[:1] if fast else SEEDS)]
    scales = (0.1, 1.6) if fast else SCALES
    sampling = dict(FAST_SAMPLING) if fast else dict(SAMPLING)
    n = 120 if fast else N_SAMPLES
    candidate = kernel_candidate(out_dir)
    jobs = [(None, 0.0, k, s, n, sampling, candidate) for k in keys for s in seeds]
    jobs += [(p, sc, k, s, n, sampling, candidate) for p in POINTS for sc in scales for k in keys for s in seeds]
    table, none_runs = {}, {}
    for (p, s, k, _), ev in run_parallel(_job, jobs):
        if p is None:
            none_runs.setdefault(k, []).append(ev)
        else:
            table.setdefault(f"{p} @ {s}", {}).setdefault(k, []).append(ev)
    none_mean = {k: float(np.mean([r["exact_mmd2"] for r in v])) for k, v in none_runs.items()}
    ranking = rank(table, none_mean)
    best = {}
    for p in POINTS:
        for k in keys:
            cfg = min((c for c in ranking if c.startswith(p + " @")), key=lambda c: ranking[c]["ratios"][k])
            runs = table[cfg][k]
            best.setdefault(p, {})[k] = {"scale": float(cfg.split(" @ ")[1]), "ratio": ranking[cfg]["ratios"][k],
                                         "interior": scales[0] < float(cfg.split(" @ ")[1]) < scales[-1],
                                         **{m: float(np.mean([r[m] for r in runs])) for m in runs[0]}}
    winner = pick(ranking)  # one (point, scale) configuration by the selection rule (amendment 4)
    # each point's own scale by the same rule restricted to it (amendment 5: the held-out comparison arms)
    by_point = {p: float(pick({c: r for c, r in ranking.items() if c.startswith(p + " @")}).split(" @ ")[1]) for p in POINTS}
    out = {"name": "bench_eval_point", "config": config, "sampling": sampling, "seeds": seeds, "n": n,
           "candidate": candidate, "scales": list(scales), "none": none_runs, "none_mean": none_mean, "table": table,
           "ranking": ranking, "best": best, "winner": winner,
           "winner_interior": scales[0] < float(winner.split(" @ ")[1]) < scales[-1], "chosen_by_point": by_point,
           "chosen_interior": {p: scales[0] < v < scales[-1] for p, v in by_point.items()}}
    out["table_md"] = markdown(out)
    save_json(out, out_dir, "bench_eval_point")
    sync_doc_tables(out_dir, "bench_eval_point", {"table": out["table_md"]})
    _plot(ranking, scales, keys, out_dir)
    return out


def kernel_candidate(out_dir) -> str:
    """The kernel/step-rule candidate that ``bench_defaults`` chose (its full run's JSON), else ``'span/sample'``."""
    import json
    from pathlib import Path

    p = Path(out_dir) / "bench_defaults.json"
    data = json.loads(p.read_text()) if p.exists() else {}
    return data["winner"].split(" @ ")[0] if data.get("config") == "full" else "span/sample"


def markdown(out: dict) -> str:
    """Per scenario and evaluation point: best scale, MMD² / no guidance, recall, sliced W₂, far fraction."""
    lines = ["| scenario | evaluation point | best scale | MMD² / none | recall | sliced W₂ | far |", "|---|---|---|---|---|---|---|"]
    for k in out["none_mean"]:
        for p in POINTS:
            b = out["best"][p][k]
            edge = "" if b["interior"] else " (edge)"
            lines.append(f"| {k} | {p} | {b['scale']:g}{edge} | {b['ratio']:.3g} | {b['recall']:.3g} | "
                         f"{b['sliced_w2']:.3g} | {b['frac_far']:.3f} |")
    return "\n".join(lines)


def _plot(ranking, scales, keys, out_dir):
    use_agg()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.3), squeeze=False, sharey=True)
    for ax, k in zip(axes[0], keys):
        for p in POINTS:
            ax.plot(scales, [ranking[f"{p} @ {s}"]["ratios"][k] for s in scales], "o-", ms=3, label=p)
        ax.axhline(1.0, color="0.5", lw=0.8)
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(k, fontsize=8)
        ax.set_xlabel("scale")
    axes[0][0].set_ylabel("exact MMD² / no guidance")
    axes[0][-1].legend(fontsize=7)
    save_figure(fig, out_dir, "bench_eval_point")
