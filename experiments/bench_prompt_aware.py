r"""Prompt-aware toy: per-prompt references, product-kernel guidance vs the unconditional kernel.

Conditional base (``ConditionalGMMDenoiser``, exact): a prompt embedding :math:`c \in \mathbb R^3` selects
the mixture family of its nearest anchor (anchors :math:`e_1, e_2, e_3`; prompts are the anchors plus
N(0, 0.05²) jitter, i.e. continuous embeddings):

* prompt A: 8 modes on a circle of radius 4 -> target: its modes at 0°, 45°, 90°;
* prompt B: 4 modes at radius 2.5 (0°, 90°, 180°, 270°) -> target: its modes at 0° and 90°;
* prompt C: 4 modes at radius 2.5 (45°, 135°, 225°, 315°) -> target: unchanged (its references are
  draws of its own base: guidance should leave it alone).

N = 50 references per prompt (with their prompt embeddings), n = 200 samples per prompt guided jointly
(600 in one batch). Methods: no guidance; MMD guidance with the product kernel
:math:`k_X(x,x')\,k_T(c,c')` (Gaussian median on x, Gaussian σ_T on prompts); the unconditional kernel on
the pooled references (prompts only condition the model); and per-prompt guidance (a separate sampler per
prompt, the ideal the product kernel should reach). Also a sweep of σ_T (large σ_T -> unconditional).
Metric per prompt: exact MMD² (σ = 1) to that prompt's target, mode-weight TV within its family, and the
fraction of its samples in modes its target does not contain ("off-target").
"""

from __future__ import annotations

import numpy as np
import torch

from mmdguidance._utils import progress
from mmdguidance.diffusion import ConditionalGMMDenoiser
from mmdguidance.diffusion.samplers import sample as run_sampler
from mmdguidance.gmm import GaussianMixture
from mmdguidance.guidance import MMDGuidedSampler
from mmdguidance.kernels import ConstantKernel, GaussianKernel
from mmdguidance.metrics import exact_mmd2_to_mixture, mode_weight_error

from ._benchmark import fmt, quiet, sync_doc_tables
from ._common import check_config, save_figure, save_json, use_agg

NAME = "bench_prompt_aware"
PROMPTS = ("A", "B", "C")
STD = 0.25


def _ring(k, radius, offset=0.0):
    a = np.deg2rad(offset) + 2 * np.pi * np.arange(k) / k
    return radius * np.c_[np.cos(a), np.sin(a)]


def families():
    """Base mixture, target weights over its components, per prompt."""
    bases = {
        "A": GaussianMixture(weights=np.full(8, 1 / 8), means=_ring(8, 4.0), covariances=np.full(8, STD**2)),
        "B": GaussianMixture(weights=np.full(4, 1 / 4), means=_ring(4, 2.5), covariances=np.full(4, STD**2)),
        "C": GaussianMixture(weights=np.full(4, 1 / 4), means=_ring(4, 2.5, 45.0), covariances=np.full(4, STD**2)),
    }
    tw = {"A": np.r_[1, 1, 1, 0, 0, 0, 0, 0] / 3, "B": np.r_[1, 1, 0, 0] / 2, "C": np.full(4, 1 / 4)}
    return bases, tw


ANCHORS = np.eye(3)

CONFIGS = {
    "full": dict(N=50, n=200, seeds=5, scale=0.2, prompt_bw=0.3, bw_sweep=(0.1, 0.3, 1.0, 3.0, 10.0),
                 methods=("none", "product", "unconditional", "per_prompt")),
    "fast": dict(N=40, n=60, seeds=2, scale=0.2, prompt_bw=0.3, bw_sweep=(), methods=("none", "product", "unconditional")),
}
LABELS = {"none": "no guidance", "product": "product kernel (σ_T = 0.3)", "unconditional": "unconditional kernel",
          "per_prompt": "separate sampler per prompt"}


def _prompts(n_each, seed):
    rng = np.random.default_rng(seed)
    P = np.repeat(ANCHORS, n_each, axis=0)
    return P + 0.05 * rng.standard_normal(P.shape)


def _sample(method, model, refs, Prefs, Psamp, xT, seed, cfg, prompt_bw=None):
    kw = dict(scale=cfg["scale"], sampler="ddpm", num_steps=50, random_state=seed, step_rule="batch_normalized",
              evaluate_on="xt", window=(0.0, 0.8))  # the settings of the committed run
    with quiet():
        if method == "none":
            return run_sampler(model, xT, sampler="ddpm", num_steps=50, cond=torch.as_tensor(Psamp), generator=seed).numpy()
        if method == "product":
            bw = cfg["prompt_bw"] if prompt_bw is None else prompt_bw
            s = MMDGuidedSampler(model, kernel=GaussianKernel(), prompt_kernel=GaussianKernel(bandwidth=bw), **kw)
            return s.fit(refs, prompts=Prefs).sample(len(Psamp), prompts=Psamp, x_T=xT.numpy())
        if method == "constant_prompt":  # product kernel with k_T = 1: exactly the unconditional kernel
            s = MMDGuidedSampler(model, kernel=GaussianKernel(), prompt_kernel=ConstantKernel(), **kw)
            return s.fit(refs, prompts=Prefs).sample(len(Psamp), prompts=Psamp, x_T=xT.numpy())
        if method == "unconditional":
            s = MMDGuidedSampler(model, kernel=GaussianKernel(), **kw)
            return s.fit(refs).sample(len(Psamp), prompts=Psamp, x_T=xT.numpy())
        if method == "per_prompt":
            out = np.empty((len(Psamp), 2))
            ref_lab = np.argmax(Prefs @ ANCHORS.T, 1)
            lab = np.argmax(Psamp @ ANCHORS.T, 1)
            for p in range(len(ANCHORS)):
                s = MMDGuidedSampler(model, kernel=GaussianKernel(), **kw).fit(refs[ref_lab == p])
                out[lab == p] = s.sample(int((lab == p).sum()), prompts=Psamp[lab == p], x_T=xT.numpy()[lab == p])
            return out
    raise ValueError(method)


def _metrics(X, Psamp, bases, tw):
    lab = np.argmax(Psamp @ ANCHORS.T, 1)
    out = {}
    for p, name in enumerate(PROMPTS):
        Xp = X[lab == p]
        target = bases[name].reweighted(tw[name])
        assign = np.asarray(bases[name].mode_assignment(Xp))
        out[name] = {
            "exact_mmd2": exact_mmd2_to_mixture(Xp, target, 1.0),
            "mode_weight_tv": mode_weight_error(Xp, bases[name], tw[name]),
            "off_target": float(np.mean(tw[name][assign] == 0)),
            # distance to the family's nearest mode: samples pulled off the family's modes (mixing)
            "frac_far_from_family": float(np.mean(np.min(np.linalg.norm(Xp[:, None] - bases[name].means[None], axis=-1), 1) > 3 * STD)),
        }
    return out


def run(config="full", out_dir="paper_figures", random_state=0) -> dict:
    cfg = CONFIGS[check_config(config)]
    bases, tw = families()
    model = ConditionalGMMDenoiser(mixtures=[bases[p] for p in PROMPTS], anchors=ANCHORS)
    # the sweep's σ_T equal to the main product-kernel setting reuses that run (same seeds, same numbers)
    jobs = [(m, None) for m in cfg["methods"]] + [("product", bw) for bw in cfg["bw_sweep"] if bw != cfg["prompt_bw"]]
    results: dict = {}
    plot_samples = {}
    for method, bw in progress(jobs, total=len(jobs), desc=NAME):
        runs = []
        for s in range(cfg["seeds"]):
            seed = random_state + s
            refs = np.concatenate([bases[p].reweighted(tw[p]).sample(cfg["N"], random_state=100 * seed + i) for i, p in enumerate(PROMPTS)])
            Prefs = _prompts(cfg["N"], 7_000 + seed)
            Psamp = _prompts(cfg["n"], 9_000 + seed)
            xT = torch.randn(len(Psamp), 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            X = _sample(method, model, refs, Prefs, Psamp, xT, seed, cfg, prompt_bw=bw)
            runs.append(_metrics(X, Psamp, bases, tw))
            if s == 0 and bw is None:
                plot_samples[method] = (X, Psamp, refs, Prefs)
        summ = {p: {k: [float(np.mean([r[p][k] for r in runs])), float(np.std([r[p][k] for r in runs]))] for k in runs[0][p]} for p in PROMPTS}
        key = method if bw is None else f"product_bw={bw:g}"
        results[key] = {"runs": runs, "summary": summ}
    if cfg["prompt_bw"] in cfg["bw_sweep"] and "product" in results:
        results[f"product_bw={cfg['prompt_bw']:g}"] = results["product"]
    # the reduction check: k_T = const gives exactly the unconditional kernel's samples
    seed = random_state
    refs = np.concatenate([bases[p].reweighted(tw[p]).sample(cfg["N"], random_state=100 * seed + i) for i, p in enumerate(PROMPTS)])
    Prefs, Psamp = _prompts(cfg["N"], 7_000 + seed), _prompts(cfg["n"], 9_000 + seed)
    xT = torch.randn(len(Psamp), 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    reduction_gap = float(np.abs(_sample("constant_prompt", model, refs, Prefs, Psamp, xT, seed, cfg)
                                 - _sample("unconditional", model, refs, Prefs, Psamp, xT, seed, cfg)).max())
    data = {"name": NAME, "config": config, "random_state": random_state,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "results": results, "constant_prompt_kernel_max_abs_diff_to_unconditional": reduction_gap,
            "table_md": table(results, cfg)}
    save_json(data, out_dir, NAME)
    sync_doc_tables(out_dir, NAME, {"table": data["table_md"]})
    _plot(data, cfg, plot_samples, bases, tw, out_dir)
    return data


def table(results, cfg) -> str:
    """Per prompt: exact MMD² to its target, off-target fraction, mode-weight TV within its family."""
    cols = (("exact_mmd2", "MMD²"), ("off_target", "off-target"), ("mode_weight_tv", "mode TV"))
    lines = ["| method | " + " | ".join(f"{p}: {lbl}" for p in PROMPTS for _, lbl in cols) + " |",
             "|" + "---|" * (1 + len(cols) * len(PROMPTS))]
    for key, r in results.items():
        if key == f"product_bw={cfg['prompt_bw']:g}":  # the same run as "product"
            continue
        label = LABELS.get(key, key.replace("product_bw=", "product kernel, σ_T = "))
        lines.append(f"| {label} | " + " | ".join(fmt(r["summary"][p][m]) for p in PROMPTS for m, _ in cols) + " |")
    return "\n".join(lines)


def _plot(data, cfg, samples, bases, tw, out_dir):
    use_agg()
    import matplotlib.pyplot as plt

    methods = list(samples)
    cols = {"A": "tab:blue", "B": "tab:orange", "C": "tab:green"}
    extra = 1 if cfg["bw_sweep"] else 0
    n_panels = len(methods) + 1 + extra
    ncols = min(3, n_panels)
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 4.4 * nrows), squeeze=False)
    axes = list(axes.flat)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    axes = axes[:n_panels]
    th = np.linspace(0, 2 * np.pi, 60)
    for ax, m in zip(axes, methods):
        X, Ps, refs, Pr = samples[m]
        lab = np.argmax(Ps @ ANCHORS.T, 1)
        for p, name in enumerate(PROMPTS):
            ax.scatter(X[lab == p, 0], X[lab == p, 1], s=3, alpha=0.5, color=cols[name], label=f"prompt {name}")
            for mu, w in zip(bases[name].means, tw[name]):
                if w > 0:
                    ax.plot(mu[0] + 3 * STD * np.cos(th), mu[1] + 3 * STD * np.sin(th), color=cols[name], lw=0.8)
        r = data["results"][m]["summary"]
        ax.set_title(LABELS[m] + "\nMMD² A/B/C: " + "/".join(f"{r[p]['exact_mmd2'][0]:.3f}" for p in PROMPTS), fontsize=8)
        ax.set_xlim(-5.5, 5.5), ax.set_ylim(-5.5, 5.5), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
    axes[0].legend(fontsize=7, loc="lower left")
    ax = axes[len(methods)]
    x = np.arange(len(PROMPTS))
    for i, m in enumerate(methods):
        r = data["results"][m]["summary"]
        ax.bar(x + (i - len(methods) / 2 + 0.5) * 0.8 / len(methods), [r[p]["exact_mmd2"][0] for p in PROMPTS], 0.8 / len(methods),
               yerr=[r[p]["exact_mmd2"][1] for p in PROMPTS], capsize=2, label=LABELS[m])
    ax.set_xticks(x)
    ax.set_xticklabels([f"prompt {p}" for p in PROMPTS])
    ax.set_yscale("log")
    ax.set_ylabel("exact MMD² to the prompt's target")
    ax.legend(fontsize=6, loc="lower left")
    ax.set_title(f"per-prompt MMD² ({cfg['seeds']} seeds)", fontsize=9)
    if extra:
        ax = axes[-1]
        bws = list(cfg["bw_sweep"])
        for p in PROMPTS:
            mu = [data["results"][f"product_bw={b:g}"]["summary"][p]["exact_mmd2"][0] for b in bws]
            sd = [data["results"][f"product_bw={b:g}"]["summary"][p]["exact_mmd2"][1] for b in bws]
            ax.errorbar(bws, mu, yerr=sd, marker="o", ms=3, capsize=2, color=cols[p], label=f"prompt {p}")
            if "unconditional" in data["results"]:
                ax.axhline(data["results"]["unconditional"]["summary"][p]["exact_mmd2"][0], color=cols[p], ls=":", lw=1)
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel("prompt-kernel bandwidth σ_T (anchors √2 apart)")
        ax.set_ylabel("exact MMD² to the prompt's target")
        ax.set_title("σ_T sweep (dotted: unconditional kernel)", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Prompt-aware guidance: three prompts guided jointly in one batch (circles: 3σ of each prompt's target modes)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_dir, NAME)
