r"""Synthetic adaptation benchmark, 2-D, *trained* base model: five target scenarios × all methods, 5 seeds.

Base model: an ``MLPDenoiser`` (3 residual blocks, width 128) trained on 20 000 samples of the 8-mode ring
(50 epochs) — an imperfect score, as in practice. References: N = 50 draws of the target.
Methods: no guidance; MMD guidance (the sampler's defaults, and evaluated against noised references);
classifier guidance (scale 2);
Doob's matching; fine-tuning the MLP on the references (200 epochs at lr 5e-4, and 1000 epochs at
lr 1e-3); the N references themselves. No exact oracle (the base is not analytic).
Sampler: ancestral DDPM, 50 steps, same initial noise for every method.
"""

from __future__ import annotations

from ._benchmark import markdown_table, plot_bars, plot_scatter_grid, scenario_table, scenarios, sync_doc_tables
from ._common import check_config, save_figure, save_json, use_agg

NAME = "bench_scenarios_mlp"
METHODS = ["none", "mmd", "mmd_nr", "classifier", "doob_matching", "finetune", "finetune_long", "refs"]
CONFIGS = {
    "full": dict(N=50, n=400, seeds=5, methods=METHODS, keys=None, kind="mlp"),
    "fast": dict(N=50, n=120, seeds=2, methods=["none", "mmd", "finetune"], keys=["subset", "reweight"], kind="mlp_small"),
}


def run(config="full", out_dir="paper_figures", random_state=0) -> dict:
    cfg = CONFIGS[check_config(config)]
    _, scen = scenarios(2)
    keys = list(scen) if cfg["keys"] is None else cfg["keys"]
    titles = {k: scen[k].title for k in keys}
    results, samples = scenario_table(kind=cfg["kind"], dim=2, methods=cfg["methods"], N=cfg["N"], n=cfg["n"], seeds=cfg["seeds"],
                                      keys=keys, random_state=random_state, desc=NAME, full_metrics=config == "full")
    data = {
        "name": NAME, "config": config,
        "settings": {**cfg, "base": "MLPDenoiser(hidden=128, depth=3) trained 50 epochs on 20000 ring samples", "sampler": "ddpm, 50 steps"},
        "random_state": random_state, "scenarios": titles, "results": results,
        "table_md": markdown_table(results, titles, cfg["methods"]),
    }
    save_json(data, out_dir, NAME)
    sync_doc_tables(out_dir, NAME, {"table": data["table_md"]})
    _plot(scen, keys, samples, results, cfg["methods"], out_dir)
    return data


def _plot(scen, keys, samples, results, methods, out_dir):
    use_agg()
    import matplotlib.pyplot as plt

    rows = [m for m in methods if m != "refs"]
    fig = plt.figure(figsize=(2.6 * len(keys), 2.5 * len(rows) + 3.2))
    gs = fig.add_gridspec(len(rows) + 1, len(keys), height_ratios=[1] * len(rows) + [1.25], hspace=0.35)
    plot_scatter_grid(fig, gs, {k: scen[k].title for k in keys}, samples, results, rows, {k: scen[k].target for k in keys})
    for j, k in enumerate(keys):
        plot_bars(fig.add_subplot(gs[len(rows), j]), results, k, methods, title="exact MMD² to target (5 seeds)" if j == 0 else None)
    fig.suptitle("Adaptation scenarios, trained MLP base (2-D): red circles = 3σ of the target modes, x = the N = 50 references; "
                 "seed 0 shown, titles: mean ± std over seeds", fontsize=10)
    save_figure(fig, out_dir, NAME)
