r"""Synthetic adaptation benchmark, 2-D, analytic base model: five target scenarios × all methods, 5 seeds.

Base model: the exact ``GMMDenoiser`` of the 8-mode ring. References: N = 50 draws of the target.
Methods: no guidance; MMD guidance (the sampler's defaults, and evaluated against noised references);
classifier guidance (noise-conditioned
domain classifier, scale 2); Doob's matching (learned h-transform); the exact Doob oracle where the
target re-weights the base components (it knows the base and the true weights); and the N references
themselves (what a method that only sees them can at best reproduce). Sampler: ancestral DDPM, 50 steps,
same initial noise for every method. Metrics: see :func:`experiments._benchmark.evaluate`.
"""

from __future__ import annotations

import numpy as np

from ._benchmark import markdown_table, plot_bars, plot_scatter_grid, scenario_table, scenarios, sync_doc_tables
from ._common import check_config, save_figure, save_json, use_agg

NAME = "bench_scenarios"
METHODS = ["none", "mmd", "mmd_nr", "classifier", "doob_matching", "doob_oracle", "refs"]
CONFIGS = {
    "full": dict(N=50, n=400, seeds=5, methods=METHODS),
    "fast": dict(N=50, n=150, seeds=2, methods=["none", "mmd", "doob_oracle", "refs"]),
}


def run(config="full", out_dir="paper_figures", random_state=0) -> dict:
    cfg = CONFIGS[check_config(config)]
    _, scen = scenarios(2)
    titles = {k: sc.title for k, sc in scen.items()}
    results, samples = scenario_table(kind="gmm", dim=2, methods=cfg["methods"], N=cfg["N"], n=cfg["n"], seeds=cfg["seeds"],
                                      random_state=random_state, desc=NAME, full_metrics=config == "full")
    data = {
        "name": NAME, "config": config, "settings": {**cfg, "base": "analytic GMMDenoiser, 2-D 8-mode ring", "sampler": "ddpm, 50 steps"},
        "random_state": random_state, "scenarios": titles, "results": results,
        "table_md": markdown_table(results, titles, cfg["methods"]),
    }
    save_json(data, out_dir, NAME)
    sync_doc_tables(out_dir, NAME, {"table": data["table_md"]})
    _plot(scen, samples, results, cfg["methods"], out_dir)
    return data


def _plot(scen, samples, results, methods, out_dir):
    use_agg()
    import matplotlib.pyplot as plt

    rows = [m for m in methods if m != "refs"]
    keys = list(scen)
    fig = plt.figure(figsize=(2.6 * len(keys), 2.5 * len(rows) + 3.2))
    gs = fig.add_gridspec(len(rows) + 1, len(keys), height_ratios=[1] * len(rows) + [1.25], hspace=0.35)
    plot_scatter_grid(fig, gs, {k: scen[k].title for k in keys}, samples, results, rows, {k: scen[k].target for k in keys})
    for j, k in enumerate(keys):
        ax = fig.add_subplot(gs[len(rows), j])
        plot_bars(ax, results, k, methods, title="exact MMD² to target (5 seeds)" if j == 0 else None)
    fig.suptitle("Adaptation scenarios, analytic 2-D base (red circles: 3σ of the target modes; x: the N = 50 references; "
                 "seed 0 shown, titles: mean ± std over seeds)", fontsize=10)
    save_figure(fig, out_dir, NAME)
