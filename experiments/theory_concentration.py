r"""Theorem 1: the empirical cross-term gradient concentrates at a fixed point, at rate N^{-1/2}.

At fixed points z (on a mode, between the modes, far from both) the error

    e_N(z) = ‖(1/N) Σ_j ∇₁k(z, y_j) − E_Q ∇₁k(z, Y)‖,   y_j ~ Q i.i.d.,

is measured over many independent reference sets, against the exact population gradient
(closed form for a Gaussian mixture Q and a Gaussian kernel). For each dimension d and bandwidth σ
we report the mean error and its 95% quantile vs N, the fitted log-log slope, and two bounds with
explicit constants, G = sup‖∇₁k‖ = 1/(σ√e):

* the mean: E e_N ≤ sqrt(E‖v − Ev‖²/N) ≤ G/√N (i.i.d. vectors bounded by G);
* the 1−δ quantile (δ = 0.05): e_N ≤ (G/√N)(1 + sqrt(2 log(1/δ))) (McDiarmid, bounded differences 2G/N):
  Theorem 1's O(L sqrt(log(1/δ)/N)) with its constants made explicit for the Gaussian kernel.
"""

from __future__ import annotations

import numpy as np
import torch

from mmdguidance._utils import progress

from ._common import check_config, loglog_slope, save_figure, save_json, use_agg
from ._theory import draw_refs, empirical_cross_grad, exact_cross_grad, grad_bound, high_prob_bound, target_mixture

NAME = "theory_concentration"

CONFIGS = {
    "full": dict(dims=(2, 8, 32, 128), sigmas=(0.5, 1.0, 2.0), Ns=(10, 30, 100, 300, 1000, 3000, 10000), reps=200),
    "fast": dict(dims=(2, 32), sigmas=(1.0,), Ns=(10, 30, 100, 300, 1000), reps=60),
}


def points(d: int, sigma: float) -> dict[str, np.ndarray]:
    """Fixed evaluation points: on mode 0, between the modes, far from both (4σ off-axis)."""
    near = np.zeros(d)
    near[0] = 2.0
    between = np.zeros(d)
    far = np.zeros(d)
    far[0], far[1 % d] = 2.0, 4.0 * sigma
    if d == 1:
        far[0] = 2.0 + 4.0 * sigma
    return {"near_mode": near, "between_modes": between, "far": far}


def run(config="full", out_dir="paper_figures", random_state=0) -> dict:
    cfg = CONFIGS[check_config(config)]
    gen = torch.Generator().manual_seed(random_state)
    results = []
    combos = [(d, s) for d in cfg["dims"] for s in cfg["sigmas"]]
    for d, sigma in progress(combos, total=len(combos), desc=NAME):
        mix = target_mixture(d)
        pts = points(d, sigma)
        Z = torch.as_tensor(np.stack(list(pts.values())))  # (P, d)
        exact = torch.as_tensor(exact_cross_grad(Z.numpy(), mix, sigma))  # (P, d)
        per_N = []
        for N in cfg["Ns"]:
            errs = []
            chunk = max(1, int(4e6 // (N * d)))
            for s in range(0, cfg["reps"], chunk):
                Y = draw_refs(mix, min(chunk, cfg["reps"] - s), N, gen)  # (S, N, d)
                errs.append((empirical_cross_grad(Z, Y, sigma) - exact[None]).norm(dim=-1))  # (S, P)
            E = torch.cat(errs).numpy()  # (reps, P)
            per_N.append({"N": N, "mean": E.mean(0).tolist(), "q95": np.quantile(E, 0.95, axis=0).tolist(),
                          "se": (E.std(0, ddof=1) / np.sqrt(len(E))).tolist()})
        entry = {"d": d, "sigma": sigma, "bound_G": grad_bound(sigma), "points": list(pts), "per_N": per_N, "slopes": {}}
        for p_i, name in enumerate(pts):
            mean = [r["mean"][p_i] for r in per_N]
            q95 = [r["q95"][p_i] for r in per_N]
            entry["slopes"][name] = {"mean": loglog_slope(cfg["Ns"], mean)[0], "q95": loglog_slope(cfg["Ns"], q95)[0]}
        entry["below_bound"] = all(
            r["mean"][p_i] <= entry["bound_G"] / np.sqrt(r["N"]) for r in per_N for p_i in range(len(pts))
        )
        entry["q95_below_high_prob_bound"] = all(
            r["q95"][p_i] <= high_prob_bound(sigma, r["N"], 0.05) for r in per_N for p_i in range(len(pts))
        )
        # how tight the mean bound is (largest mean error / (G/sqrt N)) and the d-dependence at the largest N
        entry["max_mean_over_bound"] = max(
            r["mean"][p_i] * np.sqrt(r["N"]) / entry["bound_G"] for r in per_N for p_i in range(len(pts))
        )
        results.append(entry)
    slopes = [v["mean"] for e in results for v in e["slopes"].values()]
    summary = {
        "slope_mean_min": float(np.min(slopes)),
        "slope_mean_max": float(np.max(slopes)),
        "slope_mean_median": float(np.median(slopes)),
        "slope_q95_min": float(np.min([v["q95"] for e in results for v in e["slopes"].values()])),
        "slope_q95_max": float(np.max([v["q95"] for e in results for v in e["slopes"].values()])),
        "all_means_below_bound_G_over_sqrtN": all(e["below_bound"] for e in results),
        "all_q95_below_mcdiarmid_bound": all(e["q95_below_high_prob_bound"] for e in results),
        "max_mean_over_bound": float(max(e["max_mean_over_bound"] for e in results)),
        # dimension dependence at fixed sigma and point: mean error at the largest N, d = max vs d = min
        "ratio_mean_error_dmax_over_dmin_at_Nmax": {
            f"sigma={s}/{p}": _d_ratio(results, s, i) for s in cfg["sigmas"] for i, p in enumerate(results[0]["points"])
        },
    }
    data = {"name": NAME, "config": config, "random_state": random_state, "settings": cfg, "summary": summary,
            "results": results,
            "setup": "Q = two equal modes at ±2e1, total within-mode spread fixed (per-coordinate std 0.5·sqrt(2/d)); "
                     "Gaussian kernel; exact population gradient from mmdguidance.gmm"}
    save_json(data, out_dir, NAME)
    _plot(results, cfg, out_dir)
    return data


def _d_ratio(results, sigma, p_i):
    rows = sorted((e for e in results if e["sigma"] == sigma), key=lambda e: e["d"])
    return rows[-1]["per_N"][-1]["mean"][p_i] / rows[0]["per_N"][-1]["mean"][p_i]


def _plot(results, cfg, out_dir):
    use_agg()
    import matplotlib.pyplot as plt

    dims, sigmas = cfg["dims"], cfg["sigmas"]
    fig, axes = plt.subplots(len(sigmas), len(dims), figsize=(4.0 * len(dims), 3.3 * len(sigmas)), squeeze=False,
                             sharex=True)
    colors = {"near_mode": "tab:red", "between_modes": "tab:blue", "far": "tab:gray"}
    for row, sigma in enumerate(sigmas):
        for ax, d in zip(axes[row], dims):
            e = next(r for r in results if r["d"] == d and r["sigma"] == sigma)
            Ns = np.array([r["N"] for r in e["per_N"]])
            for p_i, name in enumerate(e["points"]):
                m = [r["mean"][p_i] for r in e["per_N"]]
                q = [r["q95"][p_i] for r in e["per_N"]]
                ax.loglog(Ns, m, "o-", color=colors[name], ms=3, label=f"{name}: mean error")
                ax.loglog(Ns, q, "--", color=colors[name], lw=1, label=f"{name}: 95% quantile")
            ax.loglog(Ns, e["bound_G"] / np.sqrt(Ns), "k:", label="G/√N (bound on the mean)")
            ax.loglog(Ns, high_prob_bound(sigma, Ns, 0.05), "k-.", lw=1, label="McDiarmid bound on the 95% quantile")
            txt = "fitted slopes (mean)\n" + "\n".join(
                f"{name.replace('_modes', '').replace('_mode', '')}: {e['slopes'][name]['mean']:.2f}" for name in e["points"])
            ax.text(0.97, 0.97, txt, transform=ax.transAxes, ha="right", va="top", fontsize=7,
                    bbox=dict(boxstyle="round", fc="white", ec="0.8", alpha=0.9))
            ax.set_title(f"d = {d}, σ = {sigma}", fontsize=10)
            if row == len(sigmas) - 1:
                ax.set_xlabel("number of references N")
        axes[row][0].set_ylabel("gradient error")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.045))
    fig.suptitle("Theorem 1: pointwise error ‖(1/N)Σ∇₁k(z,y_j) − E_Q∇₁k(z,Y)‖ at fixed z vs N "
                 f"({cfg['reps']} reference sets per N)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, out_dir, NAME)
