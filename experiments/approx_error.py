r"""Error of the random-feature (RFF) and Nyström MMD² gradients vs the number of features.

References: 500 samples of a 2-mode mixture in d = 16; generated: 200 shifted samples. For each
number of features R (landmarks m for Nyström) the relative error
‖ĝ − g‖ / ‖g‖ of the full MMD² gradient (exact g from :class:`~mmdguidance.mmd.MMD`) is averaged
over seeds; the RFF slope in R is fitted (theory: −1/2). Also reported: time per gradient relative to
the exact one (a ratio measured in the same run).
"""

from __future__ import annotations

import time

import numpy as np

from mmdguidance.approx import NystromMMD, RFFMMD
from mmdguidance.kernels import GaussianKernel
from mmdguidance.mmd import MMD

from ._common import check_config, loglog_slope, save_figure, save_json, use_agg
from ._theory import target_mixture

NAME = "approx_error"

CONFIGS = {
    "full": dict(d=16, N=500, B=200, Rs=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096), ms=(10, 25, 50, 100, 200, 500), seeds=10),
    "fast": dict(d=8, N=200, B=100, Rs=(16, 64, 256, 1024), ms=(10, 50, 200), seeds=4),
}


def _timeit(f, reps=5):
    f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps


def run(config="full", out_dir="paper_figures", random_state=0) -> dict:
    cfg = CONFIGS[check_config(config)]
    mix = target_mixture(cfg["d"])
    Y = mix.sample(cfg["N"], random_state=random_state)
    X = mix.sample(cfg["B"], random_state=random_state + 1) + 0.5
    bw = 1.0
    exact = MMD(kernel=GaussianKernel(bandwidth=bw)).fit(Y)
    g = exact.gradient(X)
    gn = np.linalg.norm(g)
    t_exact = _timeit(lambda: exact.gradient(X))
    rff, nys = [], []
    for R in cfg["Rs"]:
        errs = [np.linalg.norm(RFFMMD(n_features=R, bandwidth=bw, random_state=random_state + s).fit(Y).gradient(X) - g) / gn
                for s in range(cfg["seeds"])]
        est = RFFMMD(n_features=R, bandwidth=bw, random_state=random_state).fit(Y)
        rff.append({"R": R, "rel_err": float(np.mean(errs)), "rel_err_sd": float(np.std(errs)),
                    "time_ratio": _timeit(lambda: est.gradient(X)) / t_exact})
    for m in cfg["ms"]:
        errs = [np.linalg.norm(NystromMMD(kernel=GaussianKernel(bandwidth=bw), n_landmarks=m, random_state=random_state + s)
                               .fit(Y).gradient(X) - g) / gn for s in range(cfg["seeds"])]
        est = NystromMMD(kernel=GaussianKernel(bandwidth=bw), n_landmarks=m, random_state=random_state).fit(Y)
        nys.append({"m": m, "rel_err": float(np.mean(errs)), "rel_err_sd": float(np.std(errs)),
                    "time_ratio": _timeit(lambda: est.gradient(X)) / t_exact})
    summary = {"rff_slope": loglog_slope([r["R"] for r in rff], [r["rel_err"] for r in rff])[0],
               "nystrom_err_at_max_m": nys[-1]["rel_err"]}
    data = {"name": NAME, "config": config, "random_state": random_state, "settings": cfg, "bandwidth": bw,
            "summary": summary, "rff": rff, "nystrom": nys}
    save_json(data, out_dir, NAME)
    use_agg()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].errorbar([r["R"] for r in rff], [r["rel_err"] for r in rff], yerr=[r["rel_err_sd"] for r in rff], marker="o",
                   ms=3, capsize=2, label=f"RFF (slope {summary['rff_slope']:.2f})")
    ny_p = [r for r in nys if r["m"] < cfg["N"]]  # m = N is exact to round-off (kept in the JSON)
    ax[0].errorbar([r["m"] for r in ny_p], [r["rel_err"] for r in ny_p], yerr=[r["rel_err_sd"] for r in ny_p], marker="s",
                   ms=3, capsize=2, label="Nyström, m landmarks (m = N: exact)")
    Rs = np.array(cfg["Rs"], float)
    ax[0].plot(Rs, rff[0]["rel_err"] * np.sqrt(Rs[0] / Rs), "k:", label="∝ R^-1/2")
    ax[0].set_xscale("log"), ax[0].set_yscale("log")
    ax[0].set_xlabel("features R / landmarks m"), ax[0].set_ylabel("relative gradient error ‖ĝ−g‖/‖g‖")
    ax[0].legend(fontsize=8)
    ax[1].loglog([r["R"] for r in rff], [r["time_ratio"] for r in rff], "o-", label="RFF")
    ax[1].loglog([r["m"] for r in nys], [r["time_ratio"] for r in nys], "s-", label="Nyström")
    ax[1].axhline(1.0, color="k", ls=":", label="exact")
    ax[1].set_xlabel("features R / landmarks m"), ax[1].set_ylabel("time per gradient / exact")
    ax[1].legend(fontsize=8)
    fig.suptitle(f"Approximate MMD² gradients (d = {cfg['d']}, N = {cfg['N']} references, B = {cfg['B']})", fontsize=11)
    fig.tight_layout()
    save_figure(fig, out_dir, NAME)
    return data
