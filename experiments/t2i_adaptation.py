r"""MMD guidance on the trained shapes text-to-image pipeline (``assets/shapes-ldm``), scored exactly.

Tasks (prompt -> references, rendered by :mod:`mmdguidance.t2i.data` and encoded by the pipeline's VAE):

* ``subset``     : "a circle" -> red circles only (attribute subset: colour);
* ``reweight``   : "a red shape" -> 70% circles / 30% squares (re-weighting of shapes);
* ``style``      : "a small yellow square" -> the same on striped backgrounds (a style the prompt omits);
* ``prompt_aware``: "a circle" (half the batch) and "a square" (other half) -> red circles captioned
  "a circle" and blue squares captioned "a square" (product kernel on the prompt embeddings);
* ``unseen``     : "a triangle" -> blue triangles (never in the training data).

Methods: ``none`` (the pipeline as is), ``mmd_xt`` / ``mmd_x0`` (the adapter's defaults: Gaussian
kernel, median bandwidth, batch-normalised step, decreasing schedule over the first 80% of steps,
all samples guided jointly), ``memory`` (x_t, batches of 8 with a memory bank of 64 finished latents),
``sequential`` (the authors' algorithm as the adapter can run it: one sample per call, memory bank of
100 (sliding, not reset), cubic polynomial kernel, per-sample normalised step, guidance at every step).
``mmd_x0`` guides the scheduler's own x̂₀ before each step, through the model prediction (docs/diffusers.md).

Protocol: the guidance scale of each method is chosen from one grid on *development* seeds (DDIM),
minimising the target-attribute error; the reported numbers use *held-out* seeds (same noise for every
method), for DDIM, DPM-Solver++, Euler, Euler ancestral and UniPC with the scales chosen on DDIM. Metrics per run: target-attribute error (total-variation distance
between the read-out attribute frequencies and the target's, averaged over the task's attributes),
prompt fidelity (share of images with the prompt's attributes), FD / KD / recall / coverage in the
feature space of :func:`mmdguidance.t2i.features` against 500 fresh target images. Paired differences
to ``none`` with 95% t-intervals over the held-out seeds.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from experiments._common import check_config, logger, save_figure, save_json
from experiments.t2i_train import ASSET_DIR, load_pipeline
from mmdguidance.kernels import GaussianKernel, PolynomialKernel
from mmdguidance.metrics import frechet_distance, kernel_distance, precision_recall_density_coverage
from mmdguidance.t2i import data as D
from mmdguidance._utils import progress
from mmdguidance.t2i.score import features, read_attributes

NAME = "t2i_adaptation"
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 9: 2.262}
CONFIGS = {
    # one geometric grid for every method, wide enough that every method's optimum is interior: x_t guidance
    # peaks near 0.1, guidance of the scheduler's x̂₀ through the model prediction is weaker per unit scale
    "full": dict(n=16, n_refs=32, steps=15, cfg=4.0, scales=(0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8),
                 dev_seeds=(100,), test_seeds=(0, 1, 2, 3, 4), schedulers=("ddim", "euler_a", "dpm++", "unipc", "euler"),
                 n_target=500, methods=("none", "mmd_xt", "mmd_x0", "memory", "sequential"),
                 # CPU budget (2 shared cores): the memory bank (batches of 8) on one deterministic and one stochastic
                 # scheduler, the batch-1 sequential algorithm (about 3.4x a joint run) on DDIM only
                 small_batch_schedulers=("ddim", "euler_a"), sequential_schedulers=("ddim",)),
    "fast": dict(n=4, n_refs=4, steps=2, cfg=4.0, scales=(0.2,), dev_seeds=(100,), test_seeds=(0, 1),
                 schedulers=("ddim",), n_target=16, methods=("none", "mmd_xt", "memory"), small_batch_schedulers=("ddim",),
                 sequential_schedulers=("ddim",)),
}


def task_specs() -> dict:
    """name -> dict(prompts, refs, target, prompt_attrs); with two prompts the first half of the batch gets
    the first one. ``refs``: list of (fraction, fixed attributes, caption or None); ``target`` and
    ``prompt_attrs``: one entry per prompt (target attribute frequencies; attributes the prompt states)."""
    return {
        "subset": dict(prompts=("a circle",), refs=[(1.0, dict(colour="red", shape="circle"), None)],
                       target=[{"colour": {"red": 1.0}}], prompt_attrs=[dict(shape="circle")]),
        "reweight": dict(prompts=("a red shape",),
                         refs=[(0.7, dict(colour="red", shape="circle"), None), (0.3, dict(colour="red", shape="square"), None)],
                         target=[{"shape": {"circle": 0.7, "square": 0.3}}], prompt_attrs=[dict(colour="red")]),
        "style": dict(prompts=("a small yellow square",),
                      refs=[(1.0, dict(colour="yellow", shape="square", size="small", background="striped"), None)],
                      target=[{"background": {"striped": 1.0}}],
                      prompt_attrs=[dict(colour="yellow", shape="square", size="small")]),
        "prompt_aware": dict(prompts=("a circle", "a square"),
                             refs=[(0.5, dict(colour="red", shape="circle"), "a circle"),
                                   (0.5, dict(colour="blue", shape="square"), "a square")],
                             target=[{"colour": {"red": 1.0}}, {"colour": {"blue": 1.0}}], prompt_attrs=[dict(shape="circle"), dict(shape="square")]),
        "unseen": dict(prompts=("a triangle",), refs=[(1.0, dict(colour="blue", shape="triangle"), None)],
                       target=[{"colour": {"blue": 1.0}}], prompt_attrs=[dict(shape="triangle")]),
    }


def _draw(parts, n: int, seed: int):
    """Images, attributes and captions of a mixture of fixed-attribute groups (fractions sum to 1)."""
    imgs, attrs, caps = [], [], []
    counts = np.floor(np.array([p[0] for p in parts]) * n + 0.5).astype(int)
    counts[-1] = n - counts[:-1].sum()
    for j, ((_, fixed, cap), c) in enumerate(zip(parts, counts)):
        x, a = D.make_dataset(int(c), random_state=seed + 1000 * j, **fixed)
        imgs.append(x)
        attrs.append(a)
        caps += [cap] * int(c)
    attrs = {k: np.concatenate([a[k] for a in attrs]) for k in attrs[0]}
    return np.concatenate(imgs), attrs, caps


def _target_error(codes: dict, target: dict) -> float:
    """Mean over the target's attributes of the total-variation distance of the frequencies."""
    errs = []
    for name, freq in target.items():
        values = D.ATTRIBUTES[name]
        got = np.array([np.mean(codes[name] == i) for i in range(len(values))])
        want = np.array([freq.get(v, 0.0) for v in values])
        errs.append(0.5 * np.abs(got - want).sum() + 0.5 * float(np.mean(codes[name] < 0)))
    return float(np.mean(errs))


def _fidelity(codes: dict, prompt_attrs: dict) -> float:
    ok = np.ones(len(codes["colour"]), bool)
    for name, v in prompt_attrs.items():
        ok &= codes[name] == D.ATTRIBUTES[name].index(v)
    return float(ok.mean())


def method_settings(method: str):
    """``(adapter keyword arguments, batch_size)`` of a method (``None`` for ``'none'``)."""
    if method == "none":
        return None, None
    pinned = dict(kernel=GaussianKernel(bandwidth="median"), step_rule="batch_normalized", schedule="decreasing",
                  window=(0.0, 0.8))  # the adapter's defaults when these runs were made, pinned
    if method == "mmd_xt":
        return dict(evaluate_on="xt", **pinned), None
    if method == "mmd_x0":
        return dict(evaluate_on="x0", **pinned), None
    if method == "memory":
        return dict(evaluate_on="xt", memory_size=64, **pinned), 8
    if method == "sequential":
        return dict(kernel=PolynomialKernel(), step_rule="normalized", window=(0.0, 1.0), schedule="constant",
                    memory_size=100, evaluate_on="xt"), 1
    raise ValueError(f"unknown method {method!r}")


def _halves(items, n: int) -> list:
    """One entry per sample: the first half of the batch gets ``items[0]``, the rest ``items[-1]``."""
    return [items[0] if i < (n + 1) // 2 or len(items) == 1 else items[1] for i in range(n)]


def generate(pipe, spec: dict, refs, method: str, scale: float, seed: int, cfg: dict, settings=None) -> np.ndarray:
    """uint8 images ``(n, 32, 32, 3)`` of one method; the initial noise depends on ``seed`` only. ``settings``:
    ``(adapter keyword arguments, batch_size)`` replacing :func:`method_settings` (other adapter configurations)."""
    from mmdguidance.adapters.diffusers import DiffusersMMDGuidance

    n = cfg["n"]
    prompts = _halves(spec["prompts"], n)
    lat = torch.randn((n, 4, 8, 8), generator=torch.Generator().manual_seed(seed))  # (n, 4, 8, 8)
    kw, bs = method_settings(method) if settings is None else settings
    call = dict(num_inference_steps=cfg["steps"], guidance_scale=cfg["cfg"], output_type="np",
                generator=torch.Generator().manual_seed(seed + 1))  # the step noise of ancestral schedulers
    if kw is None:
        with torch.no_grad():
            out = pipe(prompts, latents=lat, **call).images
    else:
        imgs, _, caps = refs
        aware = spec["refs"][0][2] is not None
        ad = DiffusersMMDGuidance(pipe, scale=scale, prompt_kernel=GaussianKernel() if aware else None,
                                  diagnostics=False, **kw)
        ad.fit(reference_images=imgs, prompts=caps if aware else None)
        out = ad.sample(prompts, n=n, batch_size=bs, latents=lat, progress_bar=False, **call).images
    return np.round(np.asarray(out) * 255).astype(np.uint8)


def evaluate(images: np.ndarray, spec: dict, target_feats: np.ndarray) -> dict:
    """Target-attribute error, prompt fidelity, FD / KD / recall / coverage in the feature space."""
    codes = read_attributes(images)
    n = len(images)
    owner = np.array(_halves(list(range(len(spec["prompts"]))), n))
    err = [_target_error({k: v[owner == j] for k, v in codes.items()}, t) for j, t in enumerate(spec["target"])]
    fid = [_fidelity({k: v[owner == j] for k, v in codes.items()}, a) for j, a in enumerate(spec["prompt_attrs"])]
    f = features(images)
    prdc = precision_recall_density_coverage(target_feats, f, k=3)
    return {
        "target_error": float(np.mean(err)), "prompt_fidelity": float(np.mean(fid)),
        "fd": frechet_distance(f, target_feats),
        "kd": kernel_distance(f, target_feats, n_subsets=20, subset_size=n, random_state=0)["mean"],
        "recall": prdc["recall"], "coverage": prdc["coverage"],
    }


def paired(values: dict, base: dict, key: str) -> dict:
    """Mean and 95% t-interval of the per-seed differences ``values[s][key] - base[s][key]``."""
    d = np.array([values[s][key] - base[s][key] for s in sorted(values)])
    half = T_975.get(len(d) - 1, 1.96) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)]}


def _setup(cfg: dict):
    """Per task: the spec, the references (images, attributes, captions) and target features."""
    out = {}
    for i, (name, spec) in enumerate(task_specs().items()):
        refs = _draw(spec["refs"], cfg["n_refs"], seed=10 * i + 1)
        target = features(_draw(spec["refs"], cfg["n_target"], seed=10 * i + 5)[0])
        out[name] = (spec, refs, target)
    return out


def choose_scales(pipe, tasks: dict, cfg: dict) -> dict:
    """Per method, the grid scale with the smallest mean target error over tasks and development seeds."""
    table = {}
    cells = [(m, sc) for m in cfg["methods"] if m != "none" for sc in cfg["scales"]]
    for method, scale in progress(cells, desc="t2i dev grid"):
        t0 = time.perf_counter()
        errs = [evaluate(generate(pipe, spec, refs, method, scale, s, cfg), spec, tgt)["target_error"]
                for spec, refs, tgt in tasks.values() for s in cfg["dev_seeds"]]
        table.setdefault(method, {})[f"{scale:g}"] = float(np.mean(errs))
        logger.info("dev %s scale %g: target error %.3f (%.1f s)", method, scale, np.mean(errs), time.perf_counter() - t0)
    best = {m: float(min(t, key=t.get)) for m, t in table.items()}
    return {"dev_target_error": table, "best_scale": best}


def held_out(tasks: dict, best: dict, cfg: dict, path, on_scheduler=None) -> dict:
    """Every scheduler x task x method on the held-out seeds; paired differences to ``none``.
    ``on_scheduler(partial)`` is called with the results so far after each scheduler (checkpointing)."""
    runs, summary = {}, {}
    for sched in progress(cfg["schedulers"], desc="t2i held-out schedulers"):
        pipe = load_pipeline(path, scheduler=sched)
        for tname, (spec, refs, tgt) in tasks.items():
            res = {}
            for method in cfg["methods"]:
                allowed = cfg.get("sequential_schedulers", cfg["small_batch_schedulers"]) if method == "sequential" \
                    else cfg["small_batch_schedulers"]
                if method in ("sequential", "memory") and sched not in allowed:
                    continue  # batches of 1 or 8: the slowest methods, on the schedulers the config lists
                t0 = time.perf_counter()
                res[method] = {s: evaluate(generate(pipe, spec, refs, method, best.get(method, 0.0), s, cfg), spec, tgt)
                               for s in cfg["test_seeds"]}
                logger.info("%s %s %s: %.1f s", sched, tname, method, time.perf_counter() - t0)
            runs.setdefault(sched, {})[tname] = res
            summary.setdefault(sched, {})[tname] = {
                m: {k: {"mean": float(np.mean([r[s][k] for s in r])), **({"diff_vs_none": paired(r, res["none"], k)}
                                                                          if m != "none" else {})}
                    for k in next(iter(r.values()))}
                for m, r in res.items()}
        if on_scheduler is not None:
            on_scheduler({"runs": runs, "summary": summary})
    return {"runs": runs, "summary": summary}


def extend(schedulers, out_dir="paper_figures", pipeline_dir=ASSET_DIR) -> dict:
    """Add held-out runs for more ``schedulers`` to ``<out_dir>/t2i_adaptation.json`` with its chosen scales (what a
    full run with those schedulers in its config computes for them); rewrites the JSON and the bar figure."""
    import json

    res = json.loads((Path(out_dir) / f"{NAME}.json").read_text())
    cfg = dict(CONFIGS[res["config"]], test_seeds=tuple(res["settings"]["test_seeds"]), schedulers=tuple(schedulers))
    more = held_out(_setup(cfg), res["best_scale"], cfg, pipeline_dir)
    for k in ("runs", "summary"):
        res[k].update(more[k])
    res["settings"]["schedulers"] = list(res["summary"])
    save_figure(_bar_figure(res["summary"], dict(cfg, schedulers=list(res["summary"]))), out_dir, NAME)
    save_json(res, out_dir, NAME)
    return res


def _bar_figure(summary: dict, cfg: dict, metric: str = "target_error"):
    import matplotlib.pyplot as plt

    scheds = list(summary)
    fig, axes = plt.subplots(1, len(scheds), figsize=(4.2 * len(scheds), 3.2), squeeze=False)
    for ax, sched in zip(axes[0], scheds):
        tasks = list(summary[sched])
        w = 0.8 / len(cfg["methods"])
        for j, m in enumerate(cfg["methods"]):
            vals = [summary[sched][t][m][metric]["mean"] if m in summary[sched][t] else np.nan for t in tasks]
            ax.bar(np.arange(len(tasks)) + j * w, vals, w, label=m)
        ax.set_xticks(np.arange(len(tasks)) + 0.4 - w / 2, tasks, fontsize=7)
        ax.set_ylabel(f"{metric} (held-out mean, lower is better)", fontsize=7)
        ax.set_title(f"{sched}, {cfg['steps']} steps, CFG {cfg['cfg']}, n={cfg['n']}, {len(cfg['test_seeds'])} seeds",
                     fontsize=8)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def _grid_figure(pipe, tasks: dict, method: str, scale: float, cfg: dict, seed: int, k: int = 8):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2 * len(tasks), k, figsize=(k * 0.8, 2 * len(tasks) * 0.85))
    for i, (tname, (spec, refs, _)) in enumerate(tasks.items()):
        for r, (m, sc) in enumerate((("none", 0.0), (method, scale))):
            imgs = generate(pipe, spec, refs, m, sc, seed, cfg)
            for j in range(k):
                ax = axes[2 * i + r, j]
                ax.imshow(imgs[j * len(imgs) // k])
                ax.set_xticks([])
                ax.set_yticks([])
            axes[2 * i + r, 0].set_ylabel(f"{tname}\n{m}", fontsize=5)
    fig.suptitle(f"unguided vs {method} (scale {scale:g}), same noise per column, DDIM", fontsize=7)
    return fig


def run(config: str = "full", out_dir="paper_figures", random_state: int = 0, pipeline_dir=ASSET_DIR) -> dict:
    """Choose scales on development seeds, measure on held-out seeds; writes ``<out_dir>/t2i_adaptation.{png,json}``
    and ``<out_dir>/t2i_adaptation_grid.png``."""
    cfg = dict(CONFIGS[check_config(config)])
    cfg["test_seeds"] = tuple(int(random_state) + s for s in cfg["test_seeds"])
    t0 = time.perf_counter()
    tasks = _setup(cfg)
    pipe = load_pipeline(pipeline_dir, scheduler="ddim")
    dev = choose_scales(pipe, tasks, cfg)
    info = {"config": config, "settings": dict(cfg), **dev}
    test = held_out(tasks, dev["best_scale"], cfg, pipeline_dir,
                    on_scheduler=lambda part: save_json({**info, **part, "partial": True}, out_dir, NAME))
    mmd_methods = [m for m in cfg["methods"] if m != "none"]
    ddim = test["summary"][cfg["schedulers"][0]]
    show = min(mmd_methods, key=lambda m: np.mean([ddim[t][m]["target_error"]["mean"] for t in ddim]))
    save_figure(_grid_figure(pipe, tasks, show, dev["best_scale"][show], cfg, cfg["test_seeds"][0]), out_dir,
                f"{NAME}_grid")
    res = {"config": config, "settings": {k: v for k, v in cfg.items()}, "tasks": {
        t: {"prompts": s["prompts"], "references": [(f, a, c) for f, a, c in s["refs"]], "target": s["target"]}
        for t, s in task_specs().items()}, **dev, **test, "grid_method": show,
        "seconds": time.perf_counter() - t0, "torch_threads": torch.get_num_threads()}
    save_figure(_bar_figure(test["summary"], cfg), out_dir, NAME)
    save_json(res, out_dir, NAME)
    return res


def markdown_tables(res: dict, metrics=("target_error", "prompt_fidelity", "kd", "coverage"), schedulers=None) -> str:
    """The held-out tables of docs/t2i.md: per scheduler, task x method, ``mean (diff vs none [95% CI])``.

    ``python -c "import json; from experiments.t2i_adaptation import markdown_tables as m;
    print(m(json.load(open('paper_figures/t2i_adaptation.json'))))"``
    """
    lines = []
    for sched, tasks in res["summary"].items():
        if schedulers is not None and sched not in schedulers:
            continue
        for metric in metrics:
            methods = list(next(iter(tasks.values())))
            lines += [f"\n{sched}, {metric}:\n", "| task | " + " | ".join(methods) + " |",
                      "|---" * (len(methods) + 1) + "|"]
            for t, row in tasks.items():
                cells = []
                for m in methods:
                    v = row[m][metric]
                    d = v.get("diff_vs_none")
                    cells.append(f"{v['mean']:.3g}" + (f" ({d['mean']:+.3g} [{d['ci95'][0]:+.3g}, {d['ci95'][1]:+.3g}])"
                                                       if d else ""))
                lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_table(res: dict, a: str, b: str, metric: str = "target_error", schedulers=None) -> str:
    """Paired held-out differences ``a - b`` of one metric, per scheduler (rows: tasks), ``mean [95% CI]``.

    ``python -c "import json; from experiments.t2i_adaptation import compare_table as c;
    print(c(json.load(open('paper_figures/t2i_adaptation.json')), 'mmd_x0', 'mmd_xt'))"``
    """
    scheds = [s for s in res["runs"] if schedulers is None or s in schedulers]
    tasks = list(res["runs"][scheds[0]])
    lines = [f"{metric}, {a} - {b} (paired over held-out seeds):\n", "| task | " + " | ".join(scheds) + " |",
             "|---" * (len(scheds) + 1) + "|"]
    for t in tasks:
        cells = []
        for s in scheds:
            r = res["runs"][s][t]
            if a not in r or b not in r:
                cells.append("-")
                continue
            d = paired(r[a], r[b], metric)
            cells.append(f"{d['mean']:+.3g} [{d['ci95'][0]:+.3g}, {d['ci95'][1]:+.3g}]")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
