r"""Real-data adaptation on scikit-learn's 8×8 digits: MMD guidance (pixel and mini-LDM latent) vs baselines.

Base models (``experiments/_digits.py``): a pixel DDPM (``MLPDenoiser`` on 64 pixels) and a mini LDM
(MLP autoencoder, 12-D standardised latents + a latent ``MLPDenoiser``), trained on the 1497-digit
training split; all metrics in the penultimate-layer features of an MLP digit classifier.

Tasks (the paper's attribute subsets in miniature), references = N random images of the target:

* ``class``: digit 3 only;  * ``pair``: digits 0 and 6;
* ``style``: any digit with thicker strokes (2×2 grey dilation), a style the base never saw.

Evaluation set: every image of the target (all 1797 digits, thickened for ``style``) except the N
references. Methods (ancestral DDPM, 100 steps; the pixel-space methods share the initial noise, the latent ones share theirs):
``none`` (unguided pixel DDPM), ``mmd_pixel`` (MMD guidance on pixels), ``mmd_latent`` (MMD guidance on
the mini-LDM latent, references encoded by its encoder, decoded at the end), ``classifier``
(noise-conditioned domain-classifier guidance, references vs the unguided samples, scale 8), ``finetune``
(the pixel DDPM fine-tuned on the references), ``refs_only`` (a DDPM trained on the references alone),
plus ``none_latent`` (the unguided mini LDM, the reference point of ``mmd_latent``).
Cost: wall time of each method's sampling (training included for the trained baselines) measured in the
same run, reported as ratios.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from mmdguidance import MMDGuidedSampler
from mmdguidance.baselines import ClassifierGuidedDenoiser, finetune
from mmdguidance.diffusion import MLPDenoiser, sample
from mmdguidance.kernels import GaussianKernel

from . import _digits as D
from ._common import check_config, save_figure, save_json, use_agg

NAME = "digits_adaptation"
METHODS = ["none", "mmd_pixel", "none_latent", "mmd_latent", "classifier", "finetune", "refs_only"]
TASKS = {"class": dict(classes=[3], style=False, title="class: digit 3"),
         "pair": dict(classes=[0, 6], style=False, title="pair: digits 0 and 6"),
         "style": dict(classes=None, style=True, title="style: thick strokes")}
GUIDANCE = dict(pixel=dict(scale=0.2), latent=dict(scale=0.2))
CLASSIFIER_SCALE = 8.0  # checked at 2 / 4 / 8 on one seed (class, N = 50): target fraction 0.63 / 0.82 / 0.93
CONFIGS = {
    "full": dict(Ns=[10, 25, 50, 100], seeds=5, n=300, num_steps=100, tasks=list(TASKS), methods=METHODS, show_N=50,
                 clf_steps=600, ft_epochs=200, ro_epochs=1000),
    "fast": dict(Ns=[25], seeds=1, n=100, num_steps=25, tasks=["class", "style"], methods=METHODS, show_N=25,
                 clf_steps=100, ft_epochs=30, ro_epochs=60),
}


def _target(task, X_all, y_all):
    t = TASKS[task]
    X = X_all if t["classes"] is None else X_all[np.isin(y_all, t["classes"])]
    return D.thicken(X) if t["style"] else X


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _mmd_sample(model, refs, n, cfg, seed, scale):
    s = MMDGuidedSampler(model, scale=scale, sampler="ddpm", num_steps=cfg["num_steps"], diagnostics=False, random_state=seed,
                         kernel=GaussianKernel(bandwidth="median"), step_rule="batch_normalized",
                         evaluate_on="xt", window=(0.0, 0.8))  # settings of the committed run
    return s.fit(refs).sample(n)


def run_methods(models, refs, base_samples, cfg, seed, methods) -> tuple[dict, dict]:
    """Samples ``(n, 64)`` and seconds of every method for one reference set."""
    n, steps = cfg["n"], cfg["num_steps"]
    out, secs = {}, {}
    g = lambda: torch.Generator().manual_seed(seed)  # noqa: E731 - the same initial noise for every pixel method
    for m in methods:
        if m == "none":
            out[m], secs[m] = base_samples
        elif m == "mmd_pixel":
            out[m], secs[m] = _timed(lambda: _mmd_sample(models.ddpm, refs, n, cfg, seed, GUIDANCE["pixel"]["scale"]))
        elif m == "none_latent":
            out[m], secs[m] = _timed(lambda: D.sample_latent(models, n, num_steps=steps, random_state=seed))
        elif m == "mmd_latent":
            def lat():
                Z = _mmd_sample(models.ldm, models.ae.encode(refs), n, cfg, seed, GUIDANCE["latent"]["scale"])
                return models.ae.decode(Z)
            out[m], secs[m] = _timed(lat)
        elif m == "classifier":
            def clf():
                cg = ClassifierGuidedDenoiser(base=models.ddpm, scale=CLASSIFIER_SCALE, steps=cfg["clf_steps"], random_state=seed)
                cg.fit(refs, base_samples=base_samples[0])
                x_T = torch.randn(n, 64, generator=g())  # float32, the noise of the other pixel methods
                with torch.no_grad():
                    return sample(cg, x_T, sampler="ddpm", num_steps=steps, generator=g()).double().numpy()
            out[m], secs[m] = _timed(clf)
        elif m == "finetune":
            def ft():
                model = finetune(models.ddpm, refs, epochs=cfg["ft_epochs"], lr=5e-4, random_state=seed)
                return D.sample_pixels(model, n, num_steps=steps, random_state=seed)
            out[m], secs[m] = _timed(ft)
        elif m == "refs_only":
            def ro():
                model = MLPDenoiser(dim=64, hidden=128, depth=2, random_state=seed).fit(
                    refs, epochs=cfg["ro_epochs"], lr=2e-3, random_state=seed, progress_bar=False)
                return D.sample_pixels(model, n, num_steps=steps, random_state=seed)
            out[m], secs[m] = _timed(ro)
    return out, secs


def run(config="full", out_dir="paper_figures", random_state=0) -> dict:
    cfg = CONFIGS[check_config(config)]
    torch.set_num_threads(1)
    Xtr, ytr, Xte, yte = D.load_data(0)
    models = D.get_models(config, Xtr, ytr, random_state=0)
    X_all, y_all = np.concatenate([Xtr, Xte]), np.concatenate([ytr, yte])
    # base-model quality: unguided samples vs the held-out digits (and real train digits vs held-out, the floor)
    quality = {"pixel_ddpm": D.evaluate(models.clf, D.sample_pixels(models.ddpm, 300, num_steps=cfg["num_steps"], random_state=random_state), Xte),
               "mini_ldm": D.evaluate(models.clf, D.sample_latent(models, 300, num_steps=cfg["num_steps"], random_state=random_state), Xte),
               "real_train": D.evaluate(models.clf, Xtr[:300], Xte),
               "classifier_accuracy": float((models.clf.predict(Xte) == yte).mean()),
               "autoencoder_mse": models.ae.reconstruction_error(Xte),
               "mean_image_mse": float(((Xte - Xtr.mean(0)) ** 2).mean())}
    results = {task: {str(N): {m: [] for m in cfg["methods"]} for N in cfg["Ns"]} for task in cfg["tasks"]}
    seconds = {m: [] for m in cfg["methods"]}
    shown = {}
    for s in range(cfg["seeds"]):
        seed = random_state + s
        base = _timed(lambda: D.sample_pixels(models.ddpm, cfg["n"], num_steps=cfg["num_steps"], random_state=seed))
        for task in cfg["tasks"]:
            target = _target(task, X_all, y_all)
            rng = np.random.default_rng(1000 * seed + len(task))
            for N in cfg["Ns"]:
                idx = rng.permutation(len(target))
                refs, evalset = target[idx[:N]], target[idx[N:]]
                samples, secs = run_methods(models, refs, base, cfg, seed, cfg["methods"])
                for m, X in samples.items():
                    r = D.evaluate(models.clf, X, evalset, target_classes=TASKS[task]["classes"], real_all=Xte, random_state=seed)
                    r["seconds"] = secs[m]
                    results[task][str(N)][m].append(r)
                    seconds[m].append(secs[m])
                if s == 0 and N == cfg["show_N"]:
                    shown[task] = {"refs": refs, **samples}
    summary = {task: {N: {m: D.summarize(v) for m, v in per.items()} for N, per in res.items()} for task, res in results.items()}
    mean_s = {m: float(np.mean(v)) for m, v in seconds.items()}
    cost = {"seconds_mean": mean_s,
            "latent_over_pixel_guided": mean_s["mmd_latent"] / mean_s["mmd_pixel"],
            "pixel_guided_over_unguided": mean_s["mmd_pixel"] / mean_s["none"],
            "latent_guided_over_latent_unguided": mean_s["mmd_latent"] / mean_s["none_latent"]}
    data = {"name": NAME, "config": config, "random_state": random_state,
            "settings": {**cfg, "guidance": GUIDANCE, "classifier_scale": CLASSIFIER_SCALE, "tasks": {k: TASKS[k] for k in cfg["tasks"]},
                         "model_config": D.MODEL_CONFIGS[config], "models": models.source, "train_seconds": models.train_seconds},
            "quality": quality, "cost": cost, "summary": summary,
            "table_md": table_md(summary, cfg), "per_seed": results}
    save_json(data, out_dir, NAME)
    _plot(shown, summary, cfg, out_dir)
    return data


def table_md(summary, cfg) -> str:
    """Markdown table at ``show_N``: mean ± std over seeds."""
    N = str(cfg["show_N"])
    cols = ["frac_target", "fd", "kd_x1e3", "precision", "recall", "density", "coverage", "rrke", "precision_all", "density_all", "ink", "seconds"]
    lines = []
    for task, res in summary.items():
        lines.append(f"\n**{TASKS[task]['title']}**, N = {N}, {cfg['seeds']} seeds\n")
        use = [c for c in cols if c in next(iter(res[N].values()))]
        lines.append("| method | " + " | ".join(use) + " |")
        lines.append("|---" * (len(use) + 1) + "|")
        for m, sm in res[N].items():
            lines.append(f"| {m} | " + " | ".join(f"{sm[c][0]:.3g} ± {sm[c][1]:.2g}" for c in use) + " |")
    return "\n".join(lines)


def _plot(shown, summary, cfg, out_dir):
    use_agg()
    import matplotlib.pyplot as plt

    tasks, rows = list(shown), ["refs"] + cfg["methods"]
    fig = plt.figure(figsize=(5.2 * len(tasks), 0.72 * len(rows) + 3.4))
    gs = fig.add_gridspec(len(rows) + 1, len(tasks), height_ratios=[0.55] * len(rows) + [2.6], hspace=0.45, wspace=0.32)
    N = str(cfg["show_N"])
    for j, task in enumerate(tasks):
        for i, m in enumerate(rows):
            ax = fig.add_subplot(gs[i, j])
            D.plot_grid(ax, shown[task][m], ncols=12, title=m if j == 0 else None)
            if m != "refs":
                sm = summary[task][N][m]
                extra = f"target {sm['frac_target'][0]:.2f}, " if "frac_target" in sm else f"ink {sm['ink'][0]:.2f}, "
                ax.set_title(f"{extra}FD {sm['fd'][0]:.1f}, prec {sm['precision'][0]:.2f}", fontsize=7, pad=2)
            elif i == 0:
                ax.set_title(f"{TASKS[task]['title']} — references (N = {N})", fontsize=9, pad=2)
        ax = fig.add_subplot(gs[len(rows), j])
        Ns = [int(n) for n in summary[task]]
        for m in cfg["methods"]:
            mu = [summary[task][str(n)][m]["fd"][0] for n in Ns]
            sd = [summary[task][str(n)][m]["fd"][1] for n in Ns]
            ax.errorbar(Ns, mu, yerr=sd, marker="o", ms=3, capsize=2, label=m)
        D.log_axis(ax, "y")
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xticks(Ns, [str(n) for n in Ns])
        ax.set_xlabel("N references")
        ax.set_ylabel("FD to target (classifier features)")
        if j == 0:
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Digits adaptation: rows = methods (seed 0, N = {N}); panel titles and curves: mean over {cfg['seeds']} seed(s)",
                 fontsize=10, y=0.93)
    save_figure(fig, out_dir, NAME)
