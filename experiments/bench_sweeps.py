r"""MMD-guidance sweeps, kernel side: guidance scale, bandwidth rule, kernel family, gradient terms.

Scenarios: the mode subset and the pure re-weighting (2-D, analytic base, N = 50 references,
n = 300 samples, 5 seeds). Every other option is the sampler's default (Gaussian kernel with the
median bandwidth, full gradient, x_t evaluation, batch-normalised step, decreasing schedule, window
(0, 0.8), ancestral DDPM, 50 steps). Each option is run at scales {0.05, 0.1, 0.2, 0.4}; the table
reports the default scale (0.2) and the best scale *selected on the same seeds* (optimistic for
every option alike). The scale curve itself spans 0.025 ... 0.8.
"""

from __future__ import annotations

import numpy as np

from mmdguidance.kernels import GaussianKernel, IMQKernel, PolynomialKernel

from ._benchmark import fmt, scenarios, sweep_groups, sync_doc_tables
from ._common import check_config, save_figure, save_json, use_agg

NAME = "bench_sweeps"
SCALES = (0.05, 0.1, 0.2, 0.4)
SCALE_CURVE = (0.025, 0.05, 0.1, 0.2, 0.4, 0.8)
DEFAULT_SCALE = 0.2

GROUPS = {
    "bandwidth": {
        "median (default)": lambda: {},
        "0.5 x median": lambda: {"kernel": GaussianKernel(bandwidth="median", multipliers=(0.5,))},
        "2 x median": lambda: {"kernel": GaussianKernel(bandwidth="median", multipliers=(2.0,))},
        "fixed 0.5": lambda: {"kernel": GaussianKernel(bandwidth=0.5)},
        "fixed 1": lambda: {"kernel": GaussianKernel(bandwidth=1.0)},
        "fixed 2": lambda: {"kernel": GaussianKernel(bandwidth=2.0)},
    },
    "kernel": {
        "Gaussian (median)": lambda: {},
        "multi-scale Gaussian (median x 0.5, 1, 2)": lambda: {"kernel": GaussianKernel(bandwidth="median", multipliers=(0.5, 1.0, 2.0))},
        "IMQ (median scale)": lambda: {"kernel": IMQKernel(scale="median")},
        "KID polynomial (authors')": lambda: {"kernel": PolynomialKernel()},
    },
    "terms": {
        "full (self + cross)": lambda: {},
        "cross only (attraction)": lambda: {"terms": "cross"},
    },
}
DEFAULT_ALIASES = {"median (default)", "Gaussian (median)", "full (self + cross)"}

CONFIGS = {
    "full": dict(keys=("subset", "reweight"), N=50, n=300, seeds=5, groups=tuple(GROUPS), scales=SCALES, scale_curve=SCALE_CURVE),
    "fast": dict(keys=("subset",), N=50, n=120, seeds=2, groups=("kernel",), scales=(0.1, 0.2), scale_curve=(0.05, 0.2)),
}


def run(config="full", out_dir="paper_figures", random_state=0) -> dict:
    cfg = CONFIGS[check_config(config)]
    _, scen = scenarios(2)
    # the default configuration is shared by every group (one run set, several names)
    raw, groups = sweep_groups({g: GROUPS[g] for g in cfg["groups"]}, DEFAULT_ALIASES, scales=cfg["scales"],
                               default_scales=tuple(sorted(set(cfg["scales"]) | set(cfg["scale_curve"]))), keys=cfg["keys"],
                               N=cfg["N"], n=cfg["n"], seeds=cfg["seeds"], random_state=random_state, desc=NAME)
    data = {"name": NAME, "config": config, "random_state": random_state,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "scenarios": {k: scen[k].title for k in cfg["keys"]}, "scale_curve": raw["default"], "groups": groups,
            "table_md": table(groups, cfg)}
    save_json(data, out_dir, NAME)
    sync_doc_tables(out_dir, NAME, {"table": data["table_md"]})
    _plot(data, cfg, out_dir)
    return data


def _cell(by_s, scale_key):
    return by_s[scale_key]["summary"] if scale_key in by_s else None


def table(groups, cfg) -> str:
    keys = cfg["keys"]
    head = "| group | option | " + " | ".join(f"{k}: MMD² @0.2 | {k}: best MMD² (scale) | {k}: mode TV @best" for k in keys) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(keys))]
    for g, opts in groups.items():
        for name, by_key in opts.items():
            cells = []
            for k in keys:
                by_s = by_key[k]
                d = _cell(by_s, str(DEFAULT_SCALE))
                b = by_s["best"]
                cells += [fmt(d["exact_mmd2"]) if d else "–", f"{fmt(b['summary']['exact_mmd2'])} ({b['scale']:g})",
                          fmt(b["summary"]["mode_weight_tv"])]
            lines.append(f"| {g} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(data, cfg, out_dir):
    use_agg()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    keys = cfg["keys"]
    groups = list(data["groups"])
    fig, axes = plt.subplots(len(keys), 1 + len(groups), figsize=(4.6 * (1 + len(groups)), 3.9 * len(keys)), squeeze=False)
    for i, k in enumerate(keys):
        ax = axes[i][0]
        curve = data["scale_curve"][k]
        sc = [float(s) for s in curve if s != "best"]
        sc.sort()
        for metric, color, lbl in (("exact_mmd2", "tab:green", "exact MMD² (σ=1)"), ("exact_mmd2_fine", "tab:olive", "exact MMD² (σ=0.25)")):
            mu = np.array([curve[str(s)]["summary"][metric][0] for s in sc])
            sd = np.array([curve[str(s)]["summary"][metric][1] for s in sc])
            ax.errorbar(sc, mu, yerr=sd, marker="o", ms=3, capsize=2, color=color, label=lbl)
        ax2 = ax.twinx()
        tv = [curve[str(s)]["summary"]["mode_weight_tv"][0] for s in sc]
        ax2.plot(sc, tv, "s--", ms=3, color="tab:gray", label="mode TV (right)")
        ax2.set_ylabel("mode-weight TV", fontsize=8)
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(sc)
        ax.set_xticklabels([f"{v:g}" for v in sc], fontsize=7)
        ax.set_xlabel("guidance scale")
        ax.set_title(f"{data['scenarios'][k]}: scale", fontsize=9)
        ax.legend(fontsize=7, loc="upper center")
        for j, g in enumerate(groups):
            ax = axes[i][j + 1]
            opts = data["groups"][g]
            names = list(opts)
            best = [opts[o][k]["best"]["summary"]["exact_mmd2"] for o in names]
            dflt = [opts[o][k][str(DEFAULT_SCALE)]["summary"]["exact_mmd2"][0] if str(DEFAULT_SCALE) in opts[o][k] else np.nan for o in names]
            x = np.arange(len(names))
            ax.bar(x, [b[0] for b in best], yerr=[b[1] for b in best], color="tab:green", alpha=0.7, capsize=2, label="best scale")
            ax.plot(x, dflt, "k_", ms=14, mew=2, label=f"scale {DEFAULT_SCALE}")
            for xi, o in zip(x, names):
                ax.text(xi, 0.02, f"s={opts[o][k]['best']['scale']:g}", ha="center", fontsize=7, color="k", transform=ax.get_xaxis_transform())
            ax.set_xticks(x)
            ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
            ax.set_yscale("log")
            ax.set_title(f"{data['scenarios'][k]}: {g}", fontsize=9)
            ax.set_ylabel("exact MMD² (σ=1)", fontsize=8)
            ax.legend(fontsize=7)
    fig.suptitle(f"MMD guidance sweeps (2-D, analytic base, N = {cfg['N']}, n = {cfg['n']}, {cfg['seeds']} seeds, mean ± std; "
                 f"bars: best scale s, dash: scale {DEFAULT_SCALE})", fontsize=11)
    fig.tight_layout()
    save_figure(fig, out_dir, NAME)
