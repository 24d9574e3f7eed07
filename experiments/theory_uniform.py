r"""Theorem 2: uniform convergence of the cross-term gradient over a ball ‖z‖ ≤ R.

    U_N = sup_{‖z‖≤R} ‖(1/N) Σ_j ∇₁k(z, y_j) − E_Q ∇₁k(z, Y)‖

is estimated per reference set by a dense grid in 2-D, and in higher d by projected gradient ascent
(Adam on the error, autograd through the empirical and the exact gradients) from many random starts in
the ball. The ascent gives a *lower bound* on the supremum. We fit the slope of the mean U_N in N
(claim: −1/2 up to logs) and its growth exponent in d at fixed N (claim of the ε-net argument:
no faster than Õ(√d), i.e. exponent ≤ 1/2). The mixture keeps its total spread fixed as d grows
(see ``_theory.target_mixture``) so the kernel bandwidth stays meaningful.

Beside this lower bound every reference set also gets a certified *upper* bound on the supremum over
all of R^d (not only the ball): for the Gaussian kernel the derivative reproducing property gives
U_N ≤ ‖μ̂_N − μ_Q‖_H / σ = sqrt(MMD²(Q̂_N, Q))/σ, computed exactly with the mixture oracle, whose mean is
at most sqrt((1 − E_QQ k)/N)/σ — a dimension-free Õ(1/√N) rate (see ``docs/theory.md``). The
supremum is thus bracketed: ascent value ≤ U_N ≤ RKHS bound.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mmdguidance._utils import progress

from ._common import check_config, loglog_slope, save_figure, save_json, use_agg
from ._theory import draw_refs, empirical_cross_grad, exact_cross_grad, rkhs_mean_bound, rkhs_sup_bound, target_mixture

NAME = "theory_uniform"

CONFIGS = {
    "full": dict(dims=(2, 8, 32, 128), Ns=(10, 30, 100, 300, 1000, 3000), reps=20, starts=48, iters=60, grid=61,
                 sigma=1.0, radius=3.0),
    "fast": dict(dims=(2, 16), Ns=(10, 30, 100, 300, 1000), reps=12, starts=8, iters=15, grid=25, sigma=1.0,
                 radius=3.0),
}


def _err(Z, Y, mix, sigma):
    """Error at points Z (P, d) for one reference set Y (N, d); differentiable in Z."""
    emp = empirical_cross_grad(Z, Y[None], sigma)[0]  # (P, d)
    return (emp - exact_cross_grad(Z, mix, sigma)).norm(dim=1)  # (P,)


def _err_paired(Z, Y, mix, sigma):
    """Errors at per-set points Z (S, P, d) for reference sets Y (S, N, d) -> (S, P); differentiable in Z."""
    S, P, d = Z.shape
    N = Y.shape[1]
    d2 = (Y * Y).sum(-1)[:, None, :] + (Z * Z).sum(-1)[:, :, None] - 2 * torch.einsum("snd,spd->spn", Y, Z)  # (S, P, N)
    K = torch.exp(-d2.clamp_min(0) / (2 * sigma**2))  # (S, P, N)
    emp = (torch.bmm(K, Y) - K.sum(-1, keepdim=True) * Z) / (N * sigma**2)  # (S, P, d)
    exact = exact_cross_grad(Z.reshape(S * P, d), mix, sigma).reshape(S, P, d)
    return (emp - exact).norm(dim=-1)  # (S, P)


def _project(Z, R):
    n = Z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(n > R, Z * (R / n), Z)


def sup_errors(Y, mix, sigma, R, gen, starts, iters, grid):
    """Lower bounds on sup_{‖z‖≤R} of the error for reference sets ``Y`` of shape (S, N, d).

    d = 2: maximum over a dense grid of the disc (grid × grid points, those inside the disc).
    d > 2: multi-start projected Adam ascent on the error, run for all S sets at once (Adam acts
    elementwise, so this is S independent ascents); half the starts uniform in the ball, half within
    0.7 of a mode (where the error is usually largest). Returns ``(best (S,), best_at_start (S,))``.
    """
    S, N, d = Y.shape
    if d == 2:
        u = torch.linspace(-R, R, grid, dtype=torch.float64)
        Z = torch.cartesian_prod(u, u)
        Z = Z[Z.norm(dim=1) <= R]
        with torch.no_grad():
            v = torch.stack([_err(Z, Y[s], mix, sigma).max() for s in range(S)])
        return v, v
    dirs = torch.randn(S, starts, d, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    radii = R * torch.rand(S, starts, 1, generator=gen, dtype=torch.float64) ** (1.0 / d)
    Z0 = dirs * radii  # uniform in the ball, (S, starts, d)
    h = starts // 2
    means = torch.tensor(np.array(mix.means))  # (K, d)
    Z0[:, :h] = means[torch.arange(h) % mix.n_components] + 0.7 * Z0[:, :h] / R
    Z = _project(Z0, R).clone().requires_grad_(True)
    opt = torch.optim.Adam([Z], lr=0.05)
    best = start = None
    for _ in range(iters):
        e = _err_paired(Z, Y, mix, sigma)  # (S, starts)
        m = e.detach().max(dim=1).values
        start = m.clone() if start is None else start
        best = m if best is None else torch.maximum(best, m)
        opt.zero_grad()
        (-e.sum()).backward()
        opt.step()
        with torch.no_grad():
            Z.copy_(_project(Z, R))
    with torch.no_grad():
        m = _err_paired(Z, Y, mix, sigma).max(dim=1).values
    best = m if best is None else torch.maximum(best, m)
    return best, (m if start is None else start)


def run(config="full", out_dir="paper_figures", random_state=0) -> dict:
    cfg = CONFIGS[check_config(config)]
    gen = torch.Generator().manual_seed(random_state)
    sigma, R = cfg["sigma"], cfg["radius"]
    table = []
    combos = [(d, N) for d in cfg["dims"] for N in cfg["Ns"]]
    for d, N in progress(combos, total=len(combos), desc=NAME):
        mix = target_mixture(d)
        Ys = draw_refs(mix, cfg["reps"], N, gen)  # (reps, N, d)
        best, at_start = sup_errors(Ys, mix, sigma, R, gen, cfg["starts"], cfg["iters"], cfg["grid"])
        vals = best.tolist()
        ubs = [rkhs_sup_bound(Y, mix, sigma) for Y in Ys]
        table.append({"d": d, "N": N, "mean": float(np.mean(vals)), "se": float(np.std(vals, ddof=1) / math.sqrt(len(vals))),
                      "upper_mean": float(np.mean(ubs)), "upper_population": float(rkhs_mean_bound(mix, sigma, N)),
                      "ascent_gain": float(np.mean(vals) / at_start.mean()), "values": vals, "upper": ubs})
    slopes_N = {d: loglog_slope(cfg["Ns"], [r["mean"] for r in table if r["d"] == d])[0] for d in cfg["dims"]}
    d_exponent = {N: loglog_slope(cfg["dims"], [r["mean"] for r in table if r["N"] == N])[0] for N in cfg["Ns"]}
    up_slopes_N = {d: loglog_slope(cfg["Ns"], [r["upper_mean"] for r in table if r["d"] == d])[0] for d in cfg["dims"]}
    up_d_exponent = {N: loglog_slope(cfg["dims"], [r["upper_mean"] for r in table if r["N"] == N])[0] for N in cfg["Ns"]}
    ratios = [v / u for r in table for v, u in zip(r["values"], r["upper"])]
    convergence = _ascent_convergence(cfg, gen) if max(cfg["dims"]) > 2 else None
    summary = {
        "slope_in_N_per_d": slopes_N,
        "exponent_in_d_per_N": d_exponent,
        "exponent_in_d_median": float(np.median(list(d_exponent.values()))),
        "exponent_in_d_max": float(np.max(list(d_exponent.values()))),
        "upper_bound_slope_in_N_per_d": up_slopes_N,
        "upper_bound_exponent_in_d_per_N": up_d_exponent,
        "upper_bound_exponent_in_d_max": float(np.max(list(up_d_exponent.values()))),
        "ascent_gain_min_max_d_gt_2": [min(r["ascent_gain"] for r in table if r["d"] > 2),
                                       max(r["ascent_gain"] for r in table if r["d"] > 2)] if max(cfg["dims"]) > 2 else None,
        "ascent_convergence_check": convergence,
        "lower_le_upper_every_set": bool(max(ratios) <= 1.0 + 1e-9),
        "lower_over_upper_min_median_max": [float(np.min(ratios)), float(np.median(ratios)), float(np.max(ratios))],
        "method": "d=2: dense grid of the disc (a near-exact sup); d>2: best of multi-start projected Adam ascent "
                  "(a lower bound on the sup); upper: sqrt(exact MMD^2(refs, Q))/sigma (certified, all of R^d)",
    }
    data = {"name": NAME, "config": config, "random_state": random_state, "settings": cfg, "summary": summary,
            "table": table}
    save_json(data, out_dir, NAME)
    _plot(table, cfg, summary, out_dir)
    return data


def _ascent_convergence(cfg, gen, n_sets=4):
    """Does a longer search find more? Largest d, N = 300: the ascent as configured vs 4x the starts and 3x the iterations
    on the same reference sets; returns the largest relative increase of the found supremum."""
    d = max(cfg["dims"])
    mix = target_mixture(d)
    Ys = draw_refs(mix, n_sets, 300, gen)
    a, _ = sup_errors(Ys, mix, cfg["sigma"], cfg["radius"], gen, cfg["starts"], cfg["iters"], cfg["grid"])
    b, _ = sup_errors(Ys, mix, cfg["sigma"], cfg["radius"], gen, 4 * cfg["starts"], 3 * cfg["iters"], cfg["grid"])
    return {"d": d, "N": 300, "sets": n_sets, "starts": [cfg["starts"], 4 * cfg["starts"]],
            "iters": [cfg["iters"], 3 * cfg["iters"]], "max_relative_gain_of_longer_search": float((b / a - 1).max())}


def _plot(table, cfg, summary, out_dir):
    use_agg()
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13.5, 4.8), gridspec_kw=dict(width_ratios=(1, 1)))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, d in enumerate(cfg["dims"]):
        rows = [r for r in table if r["d"] == d]
        Ns = [r["N"] for r in rows]
        c = colors[i % len(colors)]
        a1.errorbar(Ns, [r["mean"] for r in rows], yerr=[2 * r["se"] for r in rows], marker="o", ms=3, capsize=2,
                    color=c, label=f"d = {d}: ascent/grid (slope {summary['slope_in_N_per_d'][d]:.2f})")
        a1.plot(Ns, [r["upper_mean"] for r in rows], "--", color=c, lw=1,
                label=f"d = {d}: RKHS upper bound (slope {summary['upper_bound_slope_in_N_per_d'][d]:.2f})")
    Ns = np.array(cfg["Ns"], float)
    first = [r["mean"] for r in table if r["d"] == cfg["dims"][0]][0]
    a1.plot(Ns, first * np.sqrt(Ns[0] / Ns), "k:", label="∝ N^-1/2")
    a1.set_xscale("log"), a1.set_yscale("log")
    a1.set_xlabel("number of references N"), a1.set_ylabel("sup over ‖z‖≤R of the gradient error")
    a1.legend(fontsize=6.5, ncol=1)
    for i, N in enumerate(cfg["Ns"]):
        rows = [r for r in table if r["N"] == N]
        c = colors[i % len(colors)]
        a2.plot([r["d"] for r in rows], [r["mean"] for r in rows], "o-", ms=3, color=c,
                label=f"N = {N}: exponent {summary['exponent_in_d_per_N'][N]:.2f}")
        a2.plot([r["d"] for r in rows], [r["upper_mean"] for r in rows], "--", lw=1, color=c,
                label=f"N = {N}: RKHS bound, exp. {summary['upper_bound_exponent_in_d_per_N'][N]:.2f}")
    ds = np.array(cfg["dims"], float)
    base = [r["mean"] for r in table if r["N"] == cfg["Ns"][0]][0]
    a2.plot(ds, base * np.sqrt(ds / ds[0]), "k:", label="∝ √d (ε-net rate)")
    a2.set_xscale("log"), a2.set_yscale("log")
    a2.set_xticks(ds, [str(int(d)) for d in ds])
    a2.xaxis.set_minor_formatter(plt.NullFormatter())
    a2.set_xlabel("dimension d"), a2.set_title("vs d (solid: sup / lower bound; dashed: certified upper bound)", fontsize=10)
    a2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    a1.set_title("vs N (solid: grid for d = 2, ascent lower bound for d > 2)", fontsize=10)
    fig.suptitle(f"Theorem 2: sup over ‖z‖ ≤ {cfg['radius']} of the cross-gradient error (σ = {cfg['sigma']}, "
                 f"{cfg['reps']} reference sets per point)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, out_dir, NAME)
