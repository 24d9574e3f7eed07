r"""Scenarios, methods and metrics of the synthetic adaptation benchmark (shared by the ``bench_*`` experiments).

Base distribution: 8 equal-weight isotropic Gaussians (std 0.25) on a circle of radius 4, embedded
in :math:`\mathbb R^d` through a fixed orthonormal 2-frame (``d = 2``: the plane itself; ``d > 2``:
the same ring, isotropic noise in every coordinate). Base *models*: the analytic ``GMMDenoiser``
(exact noised score) or a small ``MLPDenoiser`` trained on 20 000 base samples.

Targets (``scenarios``): a subset of modes, shifted means, a different variance, a pure
re-weighting of the equal-weight modes, and a target partly outside the base support.

Every method starts from the same initial noise for a given seed and uses the same sampler
(ancestral DDPM, 50 steps), so differences are due to the method only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmdguidance.baselines import (
    ClassifierGuidedDenoiser,
    DoobMatchingDenoiser,
    DoobOracleDenoiser,
    draw_base_samples,
    finetune,
)
from mmdguidance.diffusion import GMMDenoiser, MLPDenoiser
from mmdguidance.diffusion.samplers import sample as run_sampler
from mmdguidance.gmm import GaussianMixture
from mmdguidance.kernels import GaussianKernel
from mmdguidance.guidance import GuidanceWarning, MMDGuidedSampler
from mmdguidance.metrics import (
    exact_mmd2_to_mixture,
    mode_coverage,
    mode_weight_error,
    precision_recall_density_coverage,
    sliced_wasserstein2,
    wasserstein2,
)

RADIUS, STD, K = 4.0, 0.25, 8
NUM_STEPS = 50
SAMPLER = "ddpm"

#: the MMD guidance settings of these (pre-issue-13) experiments: the sampler's defaults at the time, pinned so
#: that their committed JSON stays reproducible after the defaults changed (see bench_defaults / bench_heldout)
PRE_ISSUE13_MMD = dict(kernel=GaussianKernel(bandwidth="median"), scale=0.2, step_rule="batch_normalized")

#: baseline settings used throughout the benchmark (chosen once, see docs/benchmark.md)
CLASSIFIER = dict(scale=2.0, objective="log_prob", steps=1000, batch_size=256, n_base_samples=2000)
DOOB_MATCHING = dict(scale=1.0, steps=500, batch_size=512, n_base_samples=2000)
FINETUNE = {"finetune": dict(epochs=200, lr=5e-4), "finetune_long": dict(epochs=1000, lr=1e-3)}

METHOD_LABELS = {
    "none": "no guidance",
    "mmd": "MMD guidance",
    "mmd_nr": "MMD guidance (noised refs)",
    "classifier": "classifier guidance",
    "doob_matching": "Doob's matching",
    "finetune": "fine-tune (200 ep)",
    "finetune_long": "fine-tune (1000 ep)",
    "doob_oracle": "Doob oracle",
    "refs": "the N references",
}


# --------------------------------------------------------------------------- geometry
def frame(dim: int) -> np.ndarray:
    """Fixed orthonormal rows ``(2, dim)`` embedding the plane (identity for ``dim = 2``)."""
    if dim == 2:
        return np.eye(2)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((dim, 2)))
    return q.T


def ring_means(k=K, radius=RADIUS, angles=None) -> np.ndarray:
    a = 2 * np.pi * np.arange(k) / k if angles is None else np.asarray(angles, float)
    return radius * np.c_[np.cos(a), np.sin(a)]


def mixture(weights, means2d, std, dim: int) -> GaussianMixture:
    """Isotropic mixture with 2-D means embedded in ``dim`` dimensions."""
    w = np.asarray(weights, float)
    return GaussianMixture(weights=w / w.sum(), means=np.asarray(means2d) @ frame(dim),
                           covariances=np.full(len(w), float(std) ** 2))


def base_mixture(dim: int = 2) -> GaussianMixture:
    return mixture(np.full(K, 1 / K), ring_means(), STD, dim)


@dataclass
class Scenario:
    key: str
    title: str
    target: GaussianMixture
    weights: np.ndarray | None  # target weights over the base components (re-weighting targets only)


REWEIGHT = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05, 0.05])


def scenarios(dim: int = 2) -> tuple[GaussianMixture, dict[str, Scenario]]:
    """The base mixture and the five target scenarios (keyed ``subset, reweight, shifted, variance, outside``)."""
    base = base_mixture(dim)
    a = 2 * np.pi * np.arange(K) / K
    out = {}
    w = np.zeros(K)
    w[:3] = 1 / 3
    out["subset"] = Scenario("subset", "subset (3 of 8 modes)", base.reweighted(w), w)
    out["reweight"] = Scenario("reweight", "re-weighting (8 modes, 0.3..0.05)", base.reweighted(REWEIGHT), REWEIGHT)
    out["shifted"] = Scenario("shifted", "shifted means (3 modes, +0.75 radially)",
                              mixture(np.ones(3), ring_means(angles=a[:3], radius=RADIUS + 0.75), STD, dim), None)
    out["variance"] = Scenario("variance", "different variance (3 modes, 2x std)",
                               mixture(np.ones(3), ring_means(angles=a[:3]), 2 * STD, dim), None)
    out["outside"] = Scenario("outside", "partly outside the support (centre + 2 modes)",
                              mixture(np.ones(3), np.r_[[[0.0, 0.0]], ring_means(angles=a[:2])], STD, dim), None)
    return base, out


def metric_bandwidth(dim: int) -> float:
    """Gaussian bandwidth of the exact-MMD² metric: 1 in 2-D, growing like the within-mode distance (0.35 sqrt(d)) in high d."""
    return float(max(1.0, 0.35 * math.sqrt(dim)))


# --------------------------------------------------------------------------- models
_MODELS: dict = {}
_BASE_SAMPLES: dict = {}


def base_model(kind: str, dim: int = 2):
    """``'gmm'``: the analytic denoiser of the base mixture; ``'mlp'``: an MLPDenoiser trained on 20 000 base samples
    (``'mlp_small'``: a smaller, briefly trained one for the fast configurations); cached per process."""
    key = (kind, dim)
    if key not in _MODELS:
        base = base_mixture(dim)
        if kind == "gmm":
            _MODELS[key] = GMMDenoiser(mixture=base)
        elif kind == "mlp":
            _MODELS[key] = MLPDenoiser(dim=dim, hidden=128, depth=3, random_state=0).fit(
                base.sample(20000, random_state=0), epochs=50, batch_size=256, lr=2e-3, random_state=0, progress_bar=False)
        elif kind == "mlp_small":  # for the fast (test) configurations only: a few seconds of training, rough score
            _MODELS[key] = MLPDenoiser(dim=dim, hidden=64, depth=2, random_state=0).fit(
                base.sample(3000, random_state=0), epochs=25, batch_size=256, lr=3e-3, random_state=0, progress_bar=False)
        else:
            raise ValueError(f"unknown base model kind {kind!r}")
    return _MODELS[key]


def base_samples(model, seed: int, n: int = 2000) -> torch.Tensor:
    """Samples of the base model for the learned baselines' negative class (cached per model and seed)."""
    key = (id(model), seed, n)
    if key not in _BASE_SAMPLES:
        _BASE_SAMPLES[key] = draw_base_samples(model, n, num_steps=25, random_state=10_000 + seed)
    return _BASE_SAMPLES[key]


def initial_noise(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def references(sc: Scenario, N: int, seed: int) -> np.ndarray:
    return sc.target.sample(N, random_state=1000 + seed)


# --------------------------------------------------------------------------- methods
@contextlib.contextmanager
def quiet():
    """Silence the guidance's clipping warnings (counted in its diagnostics) inside the benchmark loops."""
    lg = logging.getLogger("mmdguidance")
    old = lg.level
    lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GuidanceWarning)
            yield
    finally:
        lg.setLevel(old)


def run_method(method: str, model, sc: Scenario, refs: np.ndarray, n: int, seed: int, *, mmd: dict | None = None,
               num_steps: int = NUM_STEPS, x_T=None) -> np.ndarray:
    """Samples ``(n, D)`` of one method (numpy float64).

    ``mmd``: keyword arguments of :class:`MMDGuidedSampler` (the sampler's own defaults otherwise);
    ``'mmd_nr'`` is MMD guidance evaluated against noised references (``evaluate_on='noised_refs'``).
    """
    dim = refs.shape[1]
    xT = initial_noise(n, dim, seed) if x_T is None else torch.as_tensor(x_T, dtype=torch.float64)
    with quiet():
        if method == "refs":
            return np.asarray(refs, float)
        if method == "none":
            X = run_sampler(model, xT, sampler=SAMPLER, num_steps=num_steps, generator=seed)
        elif method in ("mmd", "mmd_nr"):
            kw = dict(sampler=SAMPLER, num_steps=num_steps, **PRE_ISSUE13_MMD)
            if method == "mmd_nr":  # the sampler's defaults except the evaluation point
                kw["evaluate_on"] = "noised_refs"
            kw.update(mmd or {})
            X = MMDGuidedSampler(model, random_state=seed, **kw).fit(refs).sample(n, x_T=xT.numpy())
        elif method == "doob_oracle":
            if sc.weights is None or not isinstance(model, GMMDenoiser):
                raise ValueError("the Doob oracle needs a re-weighting target and an analytic base")
            X = run_sampler(DoobOracleDenoiser(base=model, target_weights=sc.weights), xT, sampler=SAMPLER, num_steps=num_steps, generator=seed)
        elif method == "classifier":
            g = ClassifierGuidedDenoiser(base=model, random_state=seed, **CLASSIFIER).fit(refs, base_samples=base_samples(model, seed))
            X = run_sampler(g, xT, sampler=SAMPLER, num_steps=num_steps, generator=seed)
        elif method == "doob_matching":
            g = DoobMatchingDenoiser(base=model, random_state=seed, **DOOB_MATCHING).fit(refs, base_samples=base_samples(model, seed))
            X = run_sampler(g, xT, sampler=SAMPLER, num_steps=num_steps, generator=seed)
        elif method in FINETUNE:
            if not isinstance(model, MLPDenoiser):
                raise ValueError("fine-tuning needs a trained MLPDenoiser base")
            ft = finetune(model, refs, random_state=seed, **FINETUNE[method])
            X = run_sampler(ft, xT, sampler=SAMPLER, num_steps=num_steps, generator=seed)
        else:
            raise ValueError(f"unknown method {method!r}")
    X = np.asarray(X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X, dtype=float)
    return X


def applicable(method: str, model, sc: Scenario) -> bool:
    if method == "doob_oracle":
        return sc.weights is not None and isinstance(model, GMMDenoiser)
    if method in FINETUNE:
        return isinstance(model, MLPDenoiser)
    return True


# --------------------------------------------------------------------------- metrics
_TARGET_DRAWS: dict = {}


def target_draws(sc: Scenario, n: int) -> np.ndarray:
    key = (sc.key, sc.target.dim, n)  # scenarios are deterministic given key and dimension (ids can be reused)
    if key not in _TARGET_DRAWS:
        _TARGET_DRAWS[key] = sc.target.sample(n, random_state=424242)
    return _TARGET_DRAWS[key]


def support_mixture(sc: Scenario) -> GaussianMixture:
    """Equal-weight mixture of every component of the base and of the target (for the far-sample count)."""
    base = base_mixture(sc.target.dim)
    covs = np.concatenate([base.covariances, sc.target.covariances])  # (K_b + K_t, d, d)
    return GaussianMixture(weights=np.full(len(covs), 1 / len(covs)), means=np.r_[base.means, sc.target.means], covariances=covs)


def evaluate(X: np.ndarray, sc: Scenario, refs: np.ndarray | None = None, *, n_eval: int = 500, full: bool = True) -> dict:
    """Metrics of samples ``X`` against the scenario's target.

    ``exact_mmd2``: exact MMD² (Gaussian kernel, :func:`metric_bandwidth`) to the target mixture;
    ``exact_mmd2_fine`` (2-D only): the same at σ = 0.25 (the mode std, sees within-mode shape);
    ``mode_weight_tv``: TV between the histogram of target-component assignments and the target weights;
    ``frac_near_mode``/``modes_covered``: :func:`mode_coverage` against the target's components;
    ``w2``/``sliced_w2``: to ``n_eval`` fixed target draws; PRDC (k=5) against the same draws;
    ``frac_far``: fraction of samples outside the 6σ-equivalent ellipsoid of every base and
    target component (samples thrown off the support; the bounded-kernel MMD² barely sees a few);
    ``ref_nn_ratio``: median distance of a sample to its nearest reference divided by the same for
    fresh target draws (< 1: samples cling to the references, i.e. memorisation).
    """
    dim = X.shape[1]
    cov = mode_coverage(X, sc.target)
    out = {
        "exact_mmd2": exact_mmd2_to_mixture(X, sc.target, metric_bandwidth(dim)),
        "mode_weight_tv": mode_weight_error(X, sc.target),
        "frac_near_mode": cov["frac_near_mode"],
        "modes_covered": cov["modes_covered"],
        "frac_far": 1.0 - mode_coverage(X, support_mixture(sc), threshold_sigma=6.0)["frac_near_mode"],
    }
    if dim == 2:
        out["exact_mmd2_fine"] = exact_mmd2_to_mixture(X, sc.target, STD)
    if full:
        Z = target_draws(sc, n_eval)
        out["sliced_w2"] = sliced_wasserstein2(X, Z, n_projections=128, random_state=0)
        out["w2"] = wasserstein2(X, Z)
        prdc = precision_recall_density_coverage(Z, X, k=5)
        out.update({k: float(prdc[k]) for k in ("precision", "recall", "coverage")})
        if refs is not None and len(refs) >= 2:
            def med_nn(A):
                return float(np.median(np.min(np.linalg.norm(A[:, None, :] - refs[None], axis=-1), 1)))

            out["ref_nn_ratio"] = med_nn(X) / med_nn(Z)
    return out


def summarize(rows: list[dict]) -> dict:
    """``{metric: [mean, std]}`` over seeds (population std)."""
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
    return {k: [float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))] for k in keys}


def fmt(ms, digits=3) -> str:
    """``mean ± std`` with a shared number of significant digits."""
    m, s = ms
    return f"{m:.{digits}g} ± {s:.2g}"


# --------------------------------------------------------------------------- scenario tables
def scenario_table(*, kind: str, dim: int, methods, N: int, n: int, seeds: int, keys=None, random_state: int = 0,
                   desc: str = "benchmark", full_metrics: bool = True, keep_samples: bool = True):
    """Run ``methods`` on the scenarios of one base model; returns ``(results, samples)``.

    ``results[scenario][method] = {"runs": [metrics per seed], "summary": {metric: [mean, std]}}``;
    ``samples[(scenario, method)] = (X, refs)`` of the first seed (2-D plots).
    """
    from mmdguidance._utils import progress

    _, scen = scenarios(dim)
    model = base_model(kind, dim)
    keys = list(scen) if keys is None else list(keys)
    jobs = [(k, m) for k in keys for m in methods if applicable(m, model, scen[k])]
    results: dict = {}
    samples: dict = {}
    for key, method in progress(jobs, total=len(jobs), desc=desc):
        sc = scen[key]
        rows = []
        for s in range(seeds):
            seed = random_state + s
            refs = references(sc, N, seed)
            X = run_method(method, model, sc, refs, n, seed)
            rows.append(evaluate(X, sc, refs if method != "refs" else None, full=full_metrics))
            if s == 0 and keep_samples:
                samples[(key, method)] = (X, refs)
        results.setdefault(key, {})[method] = {"runs": rows, "summary": summarize(rows)}
    return results, samples


TABLE_METRICS = (("exact_mmd2", "MMD²"), ("mode_weight_tv", "mode TV"), ("frac_near_mode", "near mode"),
                 ("recall", "recall"), ("w2", "W₂"), ("frac_far", "far (>6σ)"))


def markdown_table(results: dict, titles: dict, methods, metrics=TABLE_METRICS) -> str:
    """One row per (scenario, method): mean ± std of ``metrics``; the best non-oracle, non-reference MMD² in bold."""
    head = "| scenario | method | " + " | ".join(lbl for _, lbl in metrics) + " |"
    lines = [head, "|" + "---|" * (2 + len(metrics))]
    for key, res in results.items():
        cands = [m for m in res if m not in ("doob_oracle", "refs", "none")]
        best = min(cands, key=lambda m: res[m]["summary"]["exact_mmd2"][0]) if cands else None
        for m in methods:
            if m not in res:
                continue
            summ = res[m]["summary"]
            cells = []
            for k, _ in metrics:
                if k not in summ:
                    cells.append("–")
                    continue
                c = fmt(summ[k])
                cells.append(f"**{c}**" if (k == "exact_mmd2" and m == best) else c)
            lines.append(f"| {titles[key]} | {METHOD_LABELS[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


# --------------------------------------------------------------------------- option sweeps
def sweep_options(options: dict, *, scales, keys=("subset", "reweight"), N: int = 50, n: int = 300, seeds: int = 5,
                  random_state: int = 0, desc: str = "sweep", kind: str = "gmm", dim: int = 2) -> dict:
    """MMD guidance with each option (a callable returning ``MMDGuidedSampler`` keyword arguments) at each scale.

    Returns ``{option: {scenario: {str(scale): {"runs", "summary"}}}}`` plus, per option and scenario,
    ``"best"``: the scale with the lowest mean exact MMD² (selected on the same seeds: an optimistic
    tuning, stated as such) and its summary.
    """
    from mmdguidance._utils import progress

    _, scen = scenarios(dim)
    model = base_model(kind, dim)
    out: dict = {}
    jobs = [(o, k, s) for o in options for k in keys for s in (scales[o] if isinstance(scales, dict) else scales)]
    for opt, key, scale in progress(jobs, total=len(jobs), desc=desc):
        sc = scen[key]
        rows = []
        for s in range(seeds):
            seed = random_state + s
            refs = references(sc, N, seed)
            kw = dict(options[opt]())
            n_run = kw.pop("_n", n)
            kw["scale"] = scale * kw.pop("_scale_factor", 1.0)
            X = run_method("mmd", model, sc, refs, n_run, seed, mmd=kw)
            rows.append(evaluate(X, sc, full=False))
        out.setdefault(opt, {}).setdefault(key, {})[str(scale)] = {"runs": rows, "summary": summarize(rows)}
    for opt, by_key in out.items():
        for key, by_s in by_key.items():
            best = min(by_s, key=lambda s: by_s[s]["summary"]["exact_mmd2"][0])
            by_s["best"] = {"scale": float(best), "summary": by_s[best]["summary"]}
    return out


def sweep_groups(groups: dict, default_names, *, scales, default_scales=None, group_scales=None, **kw) -> tuple[dict, dict]:
    """Run option groups through :func:`sweep_options`, the default configuration once for all groups.

    ``groups``: ``{group: {option name: callable -> sampler kwargs}}``; an option whose name is in
    ``default_names`` is the sampler's default and shares the single ``"default"`` run set
    (at ``default_scales``, ``scales`` if None). ``group_scales``: ``{group: scales}`` overrides.
    Returns ``(raw, by_group)``: the :func:`sweep_options` result and ``{group: {option name: result}}``.
    """
    options = {"default": lambda: {}}
    per_option = {"default": scales if default_scales is None else default_scales}
    for g, opts in groups.items():
        for name, f in opts.items():
            if name not in default_names:
                options[f"{g}: {name}"] = f
                per_option[f"{g}: {name}"] = (group_scales or {}).get(g, scales)
    raw = sweep_options(options, scales=per_option, **kw)
    by_group = {g: {name: raw["default" if name in default_names else f"{g}: {name}"] for name in opts} for g, opts in groups.items()}
    return raw, by_group


# --------------------------------------------------------------------------- docs
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmark.md"
FIGURES = Path(__file__).resolve().parents[1] / "paper_figures"


def sync_doc_tables(out_dir, name: str, tables: dict, doc=None) -> bool:
    """Replace the generated blocks of ``docs/benchmark.md`` with fresh tables.

    A block is the text between ``<!-- BEGIN name:key -->`` and ``<!-- END name:key -->``; ``tables``
    maps ``key`` to its markdown. Only runs that write the committed figures (``out_dir`` is the
    repository's ``paper_figures/``) touch the document, unless ``doc`` is given explicitly (tests).
    Blocks absent from the document are skipped. Returns whether the document was rewritten.
    """
    if doc is None:
        if Path(out_dir).resolve() != FIGURES or not DOC.exists():
            return False
        doc = DOC
    doc = Path(doc)
    text = old = doc.read_text()
    for key, md in tables.items():
        begin, end = f"<!-- BEGIN {name}:{key} -->", f"<!-- END {name}:{key} -->"
        i, j = text.find(begin), text.find(end)
        if i < 0 or j < i:
            continue
        text = text[: i + len(begin)] + "\n" + md.strip("\n") + "\n" + text[j:]
    if text != old:
        doc.write_text(text)
    return text != old
