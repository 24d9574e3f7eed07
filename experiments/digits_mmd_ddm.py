r"""MMD-DDM on digits: fine-tune the pixel DDPM for few-step DDIM with an MMD loss, compare with plain DDIM.

The pixel DDPM of ``experiments/_digits.py`` (trained on the 1497-digit training split) is sampled with
deterministic DDIM at K steps. For each K in ``tuned_K`` and each seed, :func:`mmdguidance.baselines.mmd_ddm`
fine-tunes a copy with the biased MMD² (multi-scale Gaussian kernel on pixels) between K-step DDIM samples —
backpropagated through the K steps — and training batches. Metrics of 300 samples against the 300 held-out
digits in the classifier's penultimate-layer features (FD, KD ×1e3, precision/recall/density/coverage); the
reference points are plain DDIM at every K in ``Ks`` and 100-step ancestral DDPM. Seeds change the fine-tuning
noise/batches and the evaluation noise (the base model is fixed).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from mmdguidance.baselines import mmd_ddm

from . import _digits as D
from ._common import check_config, save_figure, save_json, use_agg

NAME = "digits_mmd_ddm"
CONFIGS = {
    "full": dict(Ks=[2, 5, 10, 20, 50], tuned_K=[2, 5, 10], seeds=5, n=300, iterations=200, batch_size=128, lr=3e-5),
    "fast": dict(Ks=[5, 10], tuned_K=[5], seeds=1, n=100, iterations=60, batch_size=64, lr=2e-4),
}
METRICS = ["fd", "kd_x1e3", "precision", "recall", "density", "coverage"]


def run(config="full", out_dir="paper_figures", random_state=0) -> dict:
    cfg = CONFIGS[check_config(config)]
    torch.set_num_threads(1)
    Xtr, ytr, Xte, _ = D.load_data(0)
    models = D.get_models(config, Xtr, ytr, random_state=0)
    ev = lambda X, seed: {k: v for k, v in D.evaluate(models.clf, X, Xte, random_state=seed).items() if k in METRICS}  # noqa: E731
    plain = {str(K): [] for K in cfg["Ks"]}
    tuned = {str(K): [] for K in cfg["tuned_K"]}
    ddpm100, histories, secs, shown = [], {str(K): [] for K in cfg["tuned_K"]}, {str(K): [] for K in cfg["tuned_K"]}, {}
    for s in range(cfg["seeds"]):
        seed = random_state + s
        for K in cfg["Ks"]:
            X = D.sample_pixels(models.ddpm, cfg["n"], num_steps=K, sampler="ddim", random_state=seed)
            plain[str(K)].append(ev(X, seed))
            if s == 0 and K in cfg["tuned_K"]:
                shown[f"DDIM {K}"] = X
        X = D.sample_pixels(models.ddpm, cfg["n"], num_steps=100, sampler="ddpm", random_state=seed)
        ddpm100.append(ev(X, seed))
        if s == 0:
            shown["DDPM 100"] = X
        for K in cfg["tuned_K"]:
            t0 = time.perf_counter()
            ft = mmd_ddm(models.ddpm, Xtr, num_steps=K, iterations=cfg["iterations"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                         random_state=seed)
            secs[str(K)].append(time.perf_counter() - t0)
            histories[str(K)].append(ft.mmd_history_)
            X = D.sample_pixels(ft, cfg["n"], num_steps=K, sampler="ddim", random_state=seed)
            tuned[str(K)].append(ev(X, seed))
            if s == 0:
                shown[f"MMD-DDM {K}"] = X
    summary = {"ddim": {K: D.summarize(v) for K, v in plain.items()}, "mmd_ddm": {K: D.summarize(v) for K, v in tuned.items()},
               "ddpm_100": D.summarize(ddpm100)}
    findings = {}
    for K in tuned:
        fd_t, fd_p = np.array([r["fd"] for r in tuned[K]]), np.array([r["fd"] for r in plain[K]])
        findings[K] = {"fd_ddim": float(fd_p.mean()), "fd_mmd_ddm": float(fd_t.mean()), "fd_ratio_mmd_ddm_over_ddim": float(fd_t.mean() / fd_p.mean()),
                       "seeds_improved": int((fd_t < fd_p).sum()), "finetune_seconds_mean": float(np.mean(secs[K])),
                       "mmd2_first_last": [float(np.mean([h[0] for h in histories[K]])), float(np.mean([np.mean(h[-20:]) for h in histories[K]]))]}
    data = {"name": NAME, "config": config, "random_state": random_state,
            "settings": {**cfg, "model_config": D.MODEL_CONFIGS[config]["ddpm"], "models": models.source,
                         "kernel": "Gaussian, median bandwidth x (0.5, 1, 2), biased MMD^2 on pixels"},
            "summary": summary, "findings": findings, "table_md": table_md(summary, cfg), "per_seed": {"ddim": plain, "mmd_ddm": tuned, "ddpm_100": ddpm100},
            "mmd_history_mean": {K: np.mean(np.array(h), 0).tolist() for K, h in histories.items()}}
    save_json(data, out_dir, NAME)
    _plot(summary, data["mmd_history_mean"], shown, cfg, out_dir)
    return data


def table_md(summary, cfg) -> str:
    lines = ["| sampler | steps | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    row = lambda name, K, sm: f"| {name} | {K} | " + " | ".join(f"{sm[c][0]:.3g} ± {sm[c][1]:.2g}" for c in METRICS) + " |"  # noqa: E731
    for K in cfg["Ks"]:
        lines.append(row("DDIM", K, summary["ddim"][str(K)]))
        if str(K) in summary["mmd_ddm"]:
            lines.append(row("MMD-DDM", K, summary["mmd_ddm"][str(K)]))
    lines.append(row("DDPM (ancestral)", 100, summary["ddpm_100"]))
    return "\n".join(lines)


def _plot(summary, hist, shown, cfg, out_dir):
    use_agg()
    import matplotlib.pyplot as plt

    order = [f"{kind} {K}" for K in cfg["tuned_K"] for kind in ("DDIM", "MMD-DDM")] + ["DDPM 100"]
    fig = plt.figure(figsize=(15, max(4.2, 0.62 * len(order) + 1.0)))
    gs = fig.add_gridspec(len(order), 3, width_ratios=[1.1, 1.0, 1.5], hspace=0.25, wspace=0.3)
    ax = fig.add_subplot(gs[:, 0])
    Ks = cfg["Ks"]
    ax.errorbar(Ks, [summary["ddim"][str(K)]["fd"][0] for K in Ks], yerr=[summary["ddim"][str(K)]["fd"][1] for K in Ks],
                marker="o", capsize=3, label="plain DDIM")
    tk = cfg["tuned_K"]
    ax.errorbar(tk, [summary["mmd_ddm"][str(K)]["fd"][0] for K in tk], yerr=[summary["mmd_ddm"][str(K)]["fd"][1] for K in tk],
                marker="s", ls="none", capsize=3, color="C3", label="MMD-DDM (tuned for K)")
    ax.axhline(summary["ddpm_100"]["fd"][0], color="gray", ls="--", label="DDPM, 100 ancestral steps")
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xticks(Ks, [str(K) for K in Ks])
    D.log_axis(ax, "y")
    ax.set_xlabel("sampling steps K")
    ax.set_ylabel("FD to held-out digits (classifier features)")
    ax.set_title(f"FD vs steps (mean ± std, {cfg['seeds']} seed(s))", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax = fig.add_subplot(gs[:, 1])
    w = 10  # moving average: the batch MMD² is noisy
    for K, h in hist.items():
        sm = np.convolve(h, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(w, len(h) + 1), sm, label=f"K = {K}")
    D.log_axis(ax, "y")
    ax.set_xlabel("fine-tuning iteration")
    ax.set_ylabel(f"MMD² (batch of pixels, moving average of {w})")
    ax.set_title("MMD-DDM training loss (mean over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    for i, name in enumerate(order):
        D.plot_grid(fig.add_subplot(gs[i, 2]), shown[name], ncols=16, title=name)
    fig.suptitle("MMD-DDM on 8×8 digits: few-step DDIM before and after MMD fine-tuning (rows = samplers, seed 0)", fontsize=11)
    save_figure(fig, out_dir, NAME)
