r"""Synthetic adaptation benchmark: five target scenarios × methods, 5 seeds.

Base model: the analytic 8-mode ring (``GMMDenoiser``, exact). References: N = 50 draws of the target.
Methods: no guidance; MMD guidance (the sampler's defaults); the exact Doob h-transform oracle where the
target re-weights the base components (it knows the base mixture and the true target weights).
Metrics: exact MMD² to the target mixture (Gaussian kernel σ = 1), fraction of samples within 3σ of a
target mode, number of target modes covered, sliced W₂ to target draws.
"""

from __future__ import annotations

import numpy as np

from mmdguidance._utils import progress

from ._bench import evaluate, mean_std, run_method, scenarios
from ._common import check_config, save_figure, save_json, use_agg

NAME = "bench_scenarios"
CONFIGS = {"full": dict(n=400, n_refs=50, seeds=5), "fast": dict(n=150, n_refs=50, seeds=2)}


def run(config="full", out_dir="paper_figures", random_state=0) -> dict:
    cfg = CONFIGS[check_config(config)]
    base, scen = scenarios()
    results = {}
    jobs = [(name, m) for name, (tgt, w) in scen.items() for m in (["none", "mmd"] + (["doob_oracle"] if w is not None else []))]
    samples_for_plot = {}
    for name, method in progress(jobs, total=len(jobs), desc=NAME):
        target, tw = scen[name]
        rows = []
        for s in range(cfg["seeds"]):
            seed = random_state + s
            refs = target.sample(cfg["n_refs"], random_state=1000 + seed)
            X = run_method(method, base, target, tw, refs, cfg["n"], seed)
            rows.append(evaluate(X, target, base))
            if s == 0:
                samples_for_plot[(name, method)] = (X, refs)
        results.setdefault(name, {})[method] = {
            "runs": rows, **{k: mean_std(rows, k) for k in rows[0]}}
    data = {"name": NAME, "config": config, "settings": cfg, "random_state": random_state, "results": results}
    save_json(data, out_dir, NAME)
    _plot(base, scen, samples_for_plot, results, out_dir)
    return data


def _plot(base, scen, samples, results, out_dir):
    use_agg()
    import matplotlib.pyplot as plt

    names = list(scen)
    methods = ["none", "mmd", "doob_oracle"]
    titles = {"none": "no guidance", "mmd": "MMD guidance", "doob_oracle": "Doob oracle (knows the target)"}
    fig, axes = plt.subplots(len(methods), len(names), figsize=(3.4 * len(names), 3.3 * len(methods)), squeeze=False)
    th = np.linspace(0, 2 * np.pi, 60)
    for j, name in enumerate(names):
        target = scen[name][0]
        for i, m in enumerate(methods):
            ax = axes[i][j]
            ax.set_xlim(-6, 6), ax.set_ylim(-6, 6), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
            for mu, S, wk in zip(target.means, target.covariances, target.weights):
                if wk <= 0:  # components a re-weighting switched off are not target modes
                    continue
                r = 3 * np.sqrt(S[0, 0])
                ax.plot(mu[0] + r * np.cos(th), mu[1] + r * np.sin(th), color="tab:red", lw=0.8)
            if (name, m) not in samples:
                ax.text(0, 0, "not applicable\n(not a re-weighting)", ha="center", va="center", fontsize=8, color="0.4")
                continue
            X, refs = samples[(name, m)]
            ax.scatter(X[:, 0], X[:, 1], s=2, alpha=0.5, color={"none": "tab:blue", "mmd": "tab:green", "doob_oracle": "tab:purple"}[m])
            if m == "mmd":
                ax.scatter(refs[:, 0], refs[:, 1], s=6, marker="x", color="tab:red", lw=0.6)
            r = results[name][m]
            ax.set_title(f"{titles[m]}\nMMD²={r['exact_mmd2'][0]:.3g}±{r['exact_mmd2'][1]:.2g}", fontsize=8)
        axes[0][j].set_ylabel(name, fontsize=8)
        axes[0][j].yaxis.set_label_position("left")
    for j, name in enumerate(names):
        axes[-1][j].set_xlabel(name, fontsize=8)
    fig.suptitle("Adaptation scenarios (red circles: 3σ of the target modes; x: the 50 references)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, out_dir, NAME)
