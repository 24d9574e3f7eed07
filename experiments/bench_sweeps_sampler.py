r"""MMD-guidance sweeps, sampler side: evaluation point, window, schedule, step rule, sampler, estimator,
and batch vs the authors' sequential algorithm.

Scenarios: the mode subset and the pure re-weighting (2-D, analytic base, N = 50 references,
n = 300 samples, 5 seeds); all other options at the sampler's defaults. Each option runs at scales
{0.05, 0.1, 0.2, 0.4} (the ``'raw'`` step rule at those values times n, since its step is
:math:`\lambda g` with :math:`\|g\| = O(1/n)`); best scale selected on the same seeds.
Batch vs sequential uses n = 100 samples for both (the sequential algorithm runs n sampler passes of batch 1).
The evaluation-point and window groups are repeated on the trained ``MLPDenoiser`` base (groups marked
``[MLP base]``): an imperfect score that does not pull samples back from where it was never trained,
so the table also reports ``frac_far`` (samples thrown off the support).
"""

from __future__ import annotations

import numpy as np

from ._benchmark import fmt, scenarios, sweep_groups, sync_doc_tables
from ._common import check_config, save_figure, save_json, use_agg

NAME = "bench_sweeps_sampler"
SCALES = (0.05, 0.1, 0.2, 0.4)
DEFAULT_SCALE = 0.2


def _groups(n, n_pop):
    return {
        "evaluate_on": {
            "x_t (default)": lambda: {},
            "x̂₀ (Tweedie)": lambda: {"evaluate_on": "x0"},
            "noised references": lambda: {"evaluate_on": "noised_refs"},
        },
        "window": {
            "(0, 0.8) (default)": lambda: {},
            "every step (0, 1)": lambda: {"window": (0.0, 1.0)},
            "early (0, 0.5)": lambda: {"window": (0.0, 0.5)},
            "late (0.5, 1)": lambda: {"window": (0.5, 1.0)},
        },
        "schedule": {
            "decreasing (default)": lambda: {},
            "constant": lambda: {"schedule": "constant"},
            "increasing": lambda: {"schedule": "increasing"},
        },
        "step_rule": {
            "batch-normalized (default)": lambda: {},
            "per-sample normalized (authors')": lambda: {"step_rule": "normalized"},
            "raw (λ = scale · n)": lambda: {"step_rule": "raw", "_scale_factor": float(n)},
        },
        "sampler": {
            "ancestral DDPM (default)": lambda: {},
            "DDIM η=0 (deterministic)": lambda: {"sampler": "ddim"},
        },
        "estimator": {
            "biased V (default)": lambda: {},
            "unbiased U": lambda: {"estimator": "unbiased"},
        },
        "population": {
            f"batch, n={n_pop}": lambda: {"_n": n_pop},
            f"sequential (authors'), n={n_pop}": lambda: {"_n": n_pop, "population": "sequential"},
        },
    }


DEFAULT_NAMES = ("x_t (default)", "(0, 0.8) (default)", "decreasing (default)", "batch-normalized (default)",
                 "ancestral DDPM (default)", "biased V (default)")

CONFIGS = {
    "full": dict(keys=("subset", "reweight"), N=50, n=300, n_pop=100, seeds=5, scales=SCALES, pop_scales=(0.1, 0.2, 0.4),
                 groups=("evaluate_on", "window", "schedule", "step_rule", "sampler", "estimator", "population"),
                 mlp_groups=("evaluate_on", "window"), mlp_kind="mlp"),
    "fast": dict(keys=("subset",), N=50, n=120, n_pop=30, seeds=2, scales=(0.1, 0.2), pop_scales=(0.2,), groups=("evaluate_on",),
                 mlp_groups=("evaluate_on",), mlp_kind="mlp_small"),
}


def run(config="full", out_dir="paper_figures", random_state=0) -> dict:
    cfg = CONFIGS[check_config(config)]
    _, scen = scenarios(2)
    G = _groups(cfg["n"], cfg["n_pop"])
    raw, groups = sweep_groups({g: G[g] for g in cfg["groups"]}, DEFAULT_NAMES, scales=cfg["scales"],
                               group_scales={"population": cfg["pop_scales"]}, keys=cfg["keys"], N=cfg["N"], n=cfg["n"],
                               seeds=cfg["seeds"], random_state=random_state, desc=NAME)
    # the same options on the trained MLP base (an imperfect score off the data manifold)
    _, mlp = sweep_groups({g: G[g] for g in cfg["mlp_groups"]}, DEFAULT_NAMES, scales=cfg["scales"], keys=cfg["keys"], N=cfg["N"],
                          n=cfg["n"], seeds=cfg["seeds"], random_state=random_state, desc=NAME + " (MLP)", kind=cfg["mlp_kind"])
    groups.update({f"{g} [MLP base]": v for g, v in mlp.items()})
    data = {"name": NAME, "config": config, "random_state": random_state,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "scenarios": {k: scen[k].title for k in cfg["keys"]}, "groups": groups, "table_md": table(groups, cfg)}
    save_json(data, out_dir, NAME)
    sync_doc_tables(out_dir, NAME, {"table": data["table_md"]})
    _plot(data, cfg, out_dir)
    return data


def table(groups, cfg) -> str:
    keys = cfg["keys"]
    mets = (("exact_mmd2", "MMD²"), ("exact_mmd2_fine", "MMD² σ=0.25"), ("mode_weight_tv", "mode TV"), ("frac_far", "far (>6σ)"))
    head = "| group | option | " + " | ".join(f"{k}: {lbl} @best" for k in keys for _, lbl in mets) + " | " + " | ".join(
        f"{k}: MMD² @0.2" for k in keys) + " |"
    lines = [head, "|" + "---|" * (2 + len(keys) * (len(mets) + 1))]
    for g, opts in groups.items():
        for name, by_key in opts.items():
            cells = []
            for k in keys:
                b = by_key[k]["best"]
                for m, _ in mets:
                    c = fmt(b["summary"][m])
                    cells.append(f"{c} ({b['scale']:g})" if m == "exact_mmd2" else c)
            for k in keys:
                d = by_key[k].get(str(DEFAULT_SCALE))
                cells.append(fmt(d["summary"]["exact_mmd2"]) if d else "–")
            lines.append(f"| {g} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(data, cfg, out_dir):
    use_agg()
    import matplotlib.pyplot as plt
    keys = cfg["keys"]
    groups = list(data["groups"])
    panels = [(k, g) for k in keys for g in groups]
    ncols = min(5, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (k, g) in zip(axes.flat, panels):
        opts = data["groups"][g]
        names = list(opts)
        x = np.arange(len(names))
        best = [opts[o][k]["best"]["summary"] for o in names]
        ax.bar(x - 0.2, [b["exact_mmd2"][0] for b in best], 0.4, yerr=[b["exact_mmd2"][1] for b in best], color="tab:green",
               alpha=0.75, capsize=2, label="MMD² σ=1")
        ax.bar(x + 0.2, [b["exact_mmd2_fine"][0] for b in best], 0.4, yerr=[b["exact_mmd2_fine"][1] for b in best],
               color="tab:olive", alpha=0.75, capsize=2, label="MMD² σ=0.25")
        for xi, o, b in zip(x, names, best):
            far = b.get("frac_far", [0.0])[0]
            lbl = f"s={opts[o][k]['best']['scale']:g}" + (f"\nfar {100 * far:.1f}%" if far > 0 else "")
            ax.text(xi, 0.02, lbl, ha="center", fontsize=6, color="darkred" if far > 0 else "k", transform=ax.get_xaxis_transform())
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
        ax.set_ylim(bottom=0)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"{k}: {g}", fontsize=9)
        ax.set_ylabel("exact MMD² at the best scale s", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"MMD guidance, sampler-side options (2-D, N = {cfg['N']}, n = {cfg['n']} (population: n = {cfg['n_pop']}), "
                 f"{cfg['seeds']} seeds, mean ± std at the best scale s; analytic base unless marked [MLP base]; "
                 "red: % of samples > 6σ from every mode)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    save_figure(fig, out_dir, NAME)
