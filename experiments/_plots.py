"""Figures of the synthetic benchmark: 2-D scatter grids and metric bars (see :mod:`experiments._benchmark`)."""

from __future__ import annotations

import math

import numpy as np

from ._methods import METHOD_LABELS
from ._scenarios import frame


COLORS = {"none": "tab:blue", "mmd": "tab:green", "mmd_nr": "tab:olive", "classifier": "tab:orange", "doob_matching": "tab:brown",
          "finetune": "tab:pink", "finetune_long": "tab:purple", "doob_oracle": "tab:red", "refs": "0.3"}


def draw_target(ax, target, color="tab:red"):
    """3σ circles of the target's (positive-weight) components, in the plane of the embedding."""
    th = np.linspace(0, 2 * np.pi, 60)
    F = frame(target.dim)
    for mu, S, wk in zip(target.means, target.covariances, target.weights):
        if wk <= 0:
            continue
        c = mu @ F.T
        r = 3 * math.sqrt(S[0, 0])
        ax.plot(c[0] + r * np.cos(th), c[1] + r * np.sin(th), color=color, lw=0.8)


def plot_scatter_grid(fig, gs_rows, scen_titles, samples, results, methods, targets):
    """Rows = methods, columns = scenarios; samples of the first seed projected onto the ring's plane."""
    axes = []
    keys = list(scen_titles)
    for i, m in enumerate(methods):
        row = []
        for j, key in enumerate(keys):
            ax = fig.add_subplot(gs_rows[i, j])
            ax.set_xlim(-6, 6), ax.set_ylim(-6, 6), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
            draw_target(ax, targets[key])
            if (key, m) not in samples:
                ax.text(0, 0, "not applicable", ha="center", va="center", fontsize=8, color="0.4")
            else:
                X, refs = samples[(key, m)]
                P = X @ frame(X.shape[1]).T
                ax.scatter(P[:, 0], P[:, 1], s=2, alpha=0.5, color=COLORS[m])
                if m == "mmd":
                    R = refs @ frame(refs.shape[1]).T
                    ax.scatter(R[:, 0], R[:, 1], s=7, marker="x", color="k", lw=0.6)
                s = results[key][m]["summary"]["exact_mmd2"]
                ax.set_title(f"MMD²={s[0]:.3g}±{s[1]:.2g}", fontsize=7)
            if j == 0:
                ax.set_ylabel(METHOD_LABELS[m], fontsize=8)
            if i == 0:
                ax.text(0.5, 1.22, scen_titles[key].replace(" (", "\n("), transform=ax.transAxes, ha="center", va="bottom",
                        fontsize=8, weight="bold")
            row.append(ax)
        axes.append(row)
    return axes


def plot_bars(ax, results, key, methods, metric="exact_mmd2", title=None):
    """Mean ± std of ``metric`` per method for one scenario (log scale)."""
    ms = [m for m in methods if m in results[key]]
    vals = [results[key][m]["summary"][metric] for m in ms]
    ax.bar(range(len(ms)), [v[0] for v in vals], yerr=[v[1] for v in vals], color=[COLORS[m] for m in ms], capsize=2)
    ax.set_xticks(range(len(ms)))
    ax.set_xticklabels([METHOD_LABELS[m] for m in ms], rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter

    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="y", labelsize=7)
    if title:
        ax.set_title(title, fontsize=8)
