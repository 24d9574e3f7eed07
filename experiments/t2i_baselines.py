r"""Baselines for MMD guidance on the trained shapes pipeline: latent classifier guidance and UNet fine-tuning.

Same tasks, references, noise, seeds, schedulers and metrics as :mod:`experiments.t2i_adaptation` (its helpers);
``none`` is rerun here so that every paired interval is computed inside this run.

* ``classifier``: :class:`~mmdguidance.adapters.classifier_guidance.LatentClassifierGuidance` with one
  noise-conditional classifier (heads colour, shape, background) trained on the pipeline's VAE latents of
  ``n_classifier`` renders of the training distribution (seed 700, blue triangles excluded as in training), noised
  with the pipeline's ``alphas_cumprod``; the target of a task is its target attribute frequencies (per prompt half);
  the scale is chosen on the development seed (DDIM) from the common grid of ``t2i_adaptation``.
* ``finetune``: :func:`~mmdguidance.adapters.finetune.finetune_unet` (full fine-tuning of a UNet copy, frozen text
  encoder) on the task's reference latents captioned with the task prompt (or the references' own captions in
  ``prompt_aware``); the learning rate x steps pair is chosen on the development seed (DDIM) from ``ft_lrs`` x
  ``ft_steps`` (checkpoints of one constant-rate run per learning rate) by the mean target error over tasks.

Cost, measured in this run: classifier training, fine-tuning (per task, chosen configuration) and the sampling of 16
images without guidance, with MMD guidance (``mmd_xt`` at the adapter's scale 0.2) and with classifier guidance.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from experiments import t2i_adaptation as T
from experiments._common import check_config, logger, save_figure, save_json
from experiments.t2i_train import ASSET_DIR, HELD_OUT, encode, load_pipeline
from mmdguidance._utils import progress
from mmdguidance.adapters.classifier_guidance import LatentClassifierGuidance, fit_latent_classifier
from mmdguidance.adapters.finetune import finetune_unet, with_unet
from mmdguidance.t2i import data as D

NAME = "t2i_baselines"
HEADS = ("colour", "shape", "background")
CONFIGS = {
    "full": dict(T.CONFIGS["full"], methods=("none", "classifier", "finetune"), n_classifier=3000,
                 classifier_steps=800, ft_lrs=(1e-5, 1e-4, 1e-3), ft_steps=(8, 25, 75), ft_batch=16),
    "fast": dict(T.CONFIGS["fast"], methods=("none", "classifier", "finetune"), n_classifier=64,
                 classifier_steps=5, ft_lrs=(1e-4,), ft_steps=(1, 2), ft_batch=4),
}


def classifier_targets(spec: dict, n: int, heads: dict) -> dict:
    """Per attribute head, the ``(n, K)`` target frequencies of the samples (one row per sample, prompt halves);
    heads the task does not target are left out."""
    names = sorted({a for t in spec["target"] for a in t})
    out = {}
    for a in names:
        rows = []
        for t in spec["target"]:
            w = np.array([t.get(a, {}).get(v, 0.0) for v in D.ATTRIBUTES[a]][:heads[a]])
            rows.append(w if w.sum() > 0 else np.full(heads[a], 1.0 / heads[a]))  # untargeted half: flat ratio
        out[a] = np.stack(T._halves(rows, n))  # (n, K)
    return out


def train_classifier(pipe, cfg: dict, seed: int = 700):
    """The latent attribute classifier of the run and its training seconds (encoding included)."""
    t0 = time.perf_counter()
    x, a = D.make_dataset(cfg["n_classifier"], random_state=seed, exclude=HELD_OUT)
    z = encode(pipe.vae, x)[0] * pipe.vae.config.scaling_factor  # (N, 4, 8, 8)
    clf = fit_latent_classifier(z, {h: a[h] for h in HEADS}, alphas_cumprod=pipe.scheduler.alphas_cumprod,
                                steps=cfg["classifier_steps"], random_state=seed)
    return clf, time.perf_counter() - t0


def generate(pipe, spec, refs, method: str, param, seed: int, cfg: dict, clf=None) -> np.ndarray:
    """uint8 images of a baseline with the noise of :func:`experiments.t2i_adaptation.generate`; ``param`` is the
    classifier scale, or the fine-tuned UNet."""
    if method == "none":
        return T.generate(pipe, spec, refs, "none", 0.0, seed, cfg)
    if method == "finetune":
        return T.generate(with_unet(pipe, param), spec, refs, "none", 0.0, seed, cfg)
    if method == "classifier":
        cg = LatentClassifierGuidance(classifier=clf, targets=classifier_targets(spec, cfg["n"], clf.heads),
                                      scale=param)
        with cg.attached(pipe):
            return T.generate(pipe, spec, refs, "none", 0.0, seed, cfg)
    raise ValueError(f"unknown baseline {method!r}")


def _dev_error(pipe, tasks, method, params: dict, cfg, clf=None) -> float:
    """Mean development target error over tasks (``params``: task -> parameter)."""
    return float(np.mean([T.evaluate(generate(pipe, spec, refs, method, params[t], s, cfg, clf), spec, tgt)
                          ["target_error"] for t, (spec, refs, tgt) in tasks.items() for s in cfg["dev_seeds"]]))


def finetune_all(pipe, tasks: dict, cfg: dict) -> dict:
    """task -> {(lr, steps): fine-tuned UNet}: one constant-rate run per learning rate, checkpoints at ``ft_steps``."""
    out = {}
    for tname, (spec, (imgs, _, caps), _) in progress(list(tasks.items()), desc="fine-tune"):
        z = encode(pipe.vae, imgs)[0] * pipe.vae.config.scaling_factor  # (N, 4, 8, 8)
        captions = [c if c is not None else spec["prompts"][0] for c in caps]
        for lr in cfg["ft_lrs"]:
            unets = finetune_unet(pipe, z, captions, steps=list(cfg["ft_steps"]), lr=lr, batch_size=cfg["ft_batch"],
                                  random_state=0)
            for st, u in zip(cfg["ft_steps"], unets):
                out.setdefault(tname, {})[(lr, st)] = u
            logger.info("fine-tune %s lr %g: %.1f s for %d steps", tname, lr, unets[-1].seconds_, cfg["ft_steps"][-1])
    return out


def choose(pipe, tasks: dict, clf, unets: dict, cfg: dict) -> dict:
    """Development tables and the chosen classifier scale and fine-tuning (lr, steps)."""
    cls = {}
    for scale in progress(cfg["scales"], desc="classifier dev"):
        cls[f"{scale:g}"] = _dev_error(pipe, tasks, "classifier", {t: scale for t in tasks}, cfg, clf)
        logger.info("dev classifier scale %g: target error %.3f", scale, cls[f"{scale:g}"])
    ft = {}
    for lr in cfg["ft_lrs"]:
        for st in cfg["ft_steps"]:
            ft[f"lr={lr:g},steps={st}"] = _dev_error(pipe, tasks, "finetune", {t: unets[t][(lr, st)] for t in tasks}, cfg)
            logger.info("dev finetune lr %g steps %d: target error %.3f", lr, st, ft[f"lr={lr:g},steps={st}"])
    best_ft = min(((lr, st) for lr in cfg["ft_lrs"] for st in cfg["ft_steps"]),
                  key=lambda p: ft[f"lr={p[0]:g},steps={p[1]}"])
    return {"dev_target_error": {"classifier": cls, "finetune": ft},
            "best": {"classifier": float(min(cls, key=cls.get)), "finetune": {"lr": best_ft[0], "steps": best_ft[1]}}}


def _summary(res: dict) -> dict:
    return {m: {k: {"mean": float(np.mean([r[s][k] for s in r])),
                    **({"diff_vs_none": T.paired(r, res["none"], k)} if m != "none" else {})}
                for k in next(iter(r.values()))} for m, r in res.items()}


def held_out(tasks, clf, unets, best: dict, cfg: dict, path) -> dict:
    runs, summary = {}, {}
    ft = (best["finetune"]["lr"], best["finetune"]["steps"])
    for sched in progress(cfg["schedulers"], desc="baselines held-out"):
        pipe = load_pipeline(path, scheduler=sched)
        for tname, (spec, refs, tgt) in tasks.items():
            param = {"none": None, "classifier": best["classifier"], "finetune": unets[tname][ft]}
            res = {}
            for m in cfg["methods"]:
                t0 = time.perf_counter()
                res[m] = {s: T.evaluate(generate(pipe, spec, refs, m, param[m], s, cfg, clf), spec, tgt)
                          for s in cfg["test_seeds"]}
                logger.info("%s %s %s: %.1f s", sched, tname, m, time.perf_counter() - t0)
            runs.setdefault(sched, {})[tname] = res
            summary.setdefault(sched, {})[tname] = _summary(res)
    return {"runs": runs, "summary": summary}


def timings(pipe, tasks, clf, best: dict, cfg: dict, seed: int, repeats: int = 3) -> dict:
    """Seconds per 16-image sampling call of none, mmd_xt (scale 0.2) and classifier (DDIM): median over
    ``repeats`` interleaved rounds of the mean over tasks, after one warm-up round."""
    def one(m):
        t0 = time.perf_counter()
        for spec, refs, _ in tasks.values():
            if m == "mmd_xt":
                T.generate(pipe, spec, refs, "mmd_xt", 0.2, seed, cfg)
            else:
                generate(pipe, spec, refs, m, best["classifier"], seed, cfg, clf)
        return (time.perf_counter() - t0) / len(tasks)

    methods = ("none", "mmd_xt", "classifier")
    for m in methods:
        one(m)  # warm-up
    rounds = [{m: one(m) for m in methods} for _ in range(repeats)]
    return {m: float(np.median([r[m] for r in rounds])) for m in methods}


def _ratios(ft_s: float, sample_s: dict) -> dict:
    over = sample_s["mmd_xt"] - sample_s["none"]
    return {"finetune_training_over_mmd_sampling": ft_s / sample_s["mmd_xt"],
            "finetune_training_over_mmd_overhead": ft_s / over if over > 0 else None}  # None: overhead below noise


def run(config: str = "full", out_dir="paper_figures", random_state: int = 0, pipeline_dir=ASSET_DIR) -> dict:
    """Writes ``<out_dir>/t2i_baselines.{json,png}``."""
    cfg = dict(CONFIGS[check_config(config)])
    cfg["test_seeds"] = tuple(int(random_state) + s for s in cfg["test_seeds"])
    t_start = time.perf_counter()
    tasks = T._setup(cfg)
    pipe = load_pipeline(pipeline_dir, scheduler="ddim")
    clf, clf_seconds = train_classifier(pipe, cfg)
    unets = finetune_all(pipe, tasks, cfg)
    dev = choose(pipe, tasks, clf, unets, cfg)
    ft = (dev["best"]["finetune"]["lr"], dev["best"]["finetune"]["steps"])
    sample_s = timings(pipe, tasks, clf, dev["best"], cfg, cfg["test_seeds"][0])
    ft_s = float(np.mean([unets[t][ft].seconds_ for t in tasks]))
    cost = {"classifier_training_s": clf_seconds, "finetune_training_s_per_task": ft_s, "sampling_s_per_16": sample_s,
            **_ratios(ft_s, sample_s)}
    logger.info("cost: %s", cost)
    test = held_out(tasks, clf, unets, dev["best"], cfg, pipeline_dir)
    res = {"config": config, "settings": cfg, **dev, **test, "cost": cost,
           "classifier_loss": clf.loss_history_, "seconds": time.perf_counter() - t_start,
           "torch_threads": torch.get_num_threads()}
    save_figure(T._bar_figure(test["summary"], cfg), out_dir, NAME)
    save_json(res, out_dir, NAME)
    return res


def merged_runs(baselines: dict, adaptation: dict) -> dict:
    """``{'runs': ...}`` with the held-out runs of both JSONs side by side (schedulers present in both), for
    :func:`experiments.t2i_adaptation.compare_table` (same seeds and noise, so the differences are paired).

    ``python -c "import json; from experiments.t2i_adaptation import compare_table as c;
    from experiments.t2i_baselines import merged_runs as m; l = lambda n: json.load(open(f'paper_figures/{n}.json'));
    print(c(m(l('t2i_baselines'), l('t2i_adaptation')), 'classifier', 'mmd_xt'))"``
    """
    scheds = [s for s in adaptation["runs"] if s in baselines["runs"]]
    return {"runs": {s: {t: {**adaptation["runs"][s][t], **baselines["runs"][s][t]} for t in adaptation["runs"][s]}
                     for s in scheds}}


def extend(*, ft_lrs=(), ft_steps=(), scales=(), config="full", redo_held_out=True, out_dir="paper_figures",
           pipeline_dir=ASSET_DIR) -> dict:
    """Widen the development grids of ``<out_dir>/t2i_baselines.json`` (fine-tuning learning rates x steps, classifier
    scales) when a chosen value lies on the edge; re-choose on the union and, where the choice changes, redo that
    method's held-out runs. Same seeds, same classifier and fine-tuning recipe as :func:`run` (what a full run with
    the wider grids computes). ``redo_held_out=False`` only records the wider development grids (CPU budget): ``best``
    then keeps the held-out choice and ``extended['dev_best']`` names the optimum of the union."""
    import json
    from pathlib import Path

    cfg = dict(CONFIGS[check_config(config)])
    cfg.update(ft_lrs=tuple(ft_lrs), ft_steps=tuple(sorted(ft_steps)), scales=tuple(scales))
    tasks = T._setup(cfg)
    pipe = load_pipeline(pipeline_dir, scheduler="ddim")
    clf = train_classifier(pipe, cfg)[0] if scales else None
    unets = finetune_all(pipe, tasks, cfg) if ft_lrs else {}
    new = {"classifier": {}, "finetune": {}}
    for scale in scales:
        new["classifier"][f"{scale:g}"] = _dev_error(pipe, tasks, "classifier", {t: scale for t in tasks}, cfg, clf)
    for lr in ft_lrs:
        for st in cfg["ft_steps"]:
            new["finetune"][f"lr={lr:g},steps={st}"] = _dev_error(pipe, tasks, "finetune",
                                                                  {t: unets[t][(lr, st)] for t in tasks}, cfg)
    logger.info("extended dev: %s", new)
    res = json.loads((Path(out_dir) / f"{NAME}.json").read_text())
    kept = json.loads(json.dumps(res["best"]))
    changed = _merge_choice(res, new)
    dev_best = json.loads(json.dumps(res["best"]))
    if not redo_held_out:
        res["best"] = kept
    elif changed:
        ft = (res["best"]["finetune"]["lr"], res["best"]["finetune"]["steps"])
        _redo_held_out(res, changed, tasks, clf, unets, cfg, pipeline_dir)
        if "finetune" in changed:
            ft_s = float(np.mean([unets[t][ft].seconds_ for t in tasks]))  # measured apart from the sampling: rerun
            res["cost"].update(finetune_training_s_per_task=ft_s,  # remeasure_cost for ratios measured together
                               **_ratios(ft_s, res["cost"]["sampling_s_per_16"]))
    ext = res.setdefault("extensions", [res.pop("extended")] if "extended" in res else [])
    ext.append({"ft_lrs": list(ft_lrs), "ft_steps": list(ft_steps), "scales": list(scales), "changed": changed,
                "dev_best": dev_best, "held_out_redone": bool(redo_held_out and changed)})
    save_figure(T._bar_figure(res["summary"], dict(cfg, methods=res["settings"]["methods"])), out_dir, NAME)
    save_json(res, out_dir, NAME)
    return res


def _merge_choice(res: dict, new: dict) -> list:
    """Add the new development errors and re-choose; returns the methods whose choice changed."""
    changed = []
    for m, table in new.items():
        res["dev_target_error"][m].update(table)
    cls = res["dev_target_error"]["classifier"]
    best_c = float(min(cls, key=cls.get))
    if best_c != res["best"]["classifier"]:
        res["best"]["classifier"] = best_c
        changed.append("classifier")
    ft = res["dev_target_error"]["finetune"]
    key = min(ft, key=ft.get)
    lr, st = key.split(",")
    best_f = {"lr": float(lr.split("=")[1]), "steps": int(st.split("=")[1])}
    if best_f != res["best"]["finetune"]:
        res["best"]["finetune"] = best_f
        changed.append("finetune")
    return changed


def _redo_held_out(res, methods, tasks, clf, unets, cfg, path):
    ft = (res["best"]["finetune"]["lr"], res["best"]["finetune"]["steps"])
    for sched in res["settings"]["schedulers"]:
        pipe = load_pipeline(path, scheduler=sched)
        for tname, (spec, refs, tgt) in tasks.items():
            r = res["runs"][sched][tname]
            for m in list(r):
                r[m] = {int(s): v for s, v in r[m].items()}
            for m in methods:
                param = res["best"]["classifier"] if m == "classifier" else unets[tname][ft]
                r[m] = {s: T.evaluate(generate(pipe, spec, refs, m, param, s, cfg, clf), spec, tgt)
                        for s in cfg["test_seeds"]}
            res["summary"][sched][tname] = _summary(r)
            logger.info("redone %s %s %s", sched, tname, methods)


def remeasure_cost(out_dir="paper_figures", pipeline_dir=ASSET_DIR) -> dict:
    """Re-measure ``cost`` of ``<out_dir>/t2i_baselines.json`` in one process at the chosen configurations
    (classifier training, fine-tuning every task, sampling), so that the ratios compare seconds measured together
    (after :func:`extend` changed a choice). Rewrites the JSON."""
    import json
    from pathlib import Path

    res = json.loads((Path(out_dir) / f"{NAME}.json").read_text())
    lr, st = res["best"]["finetune"]["lr"], res["best"]["finetune"]["steps"]
    cfg = dict(CONFIGS[res["config"]], ft_lrs=(lr,), ft_steps=(st,))
    tasks = T._setup(cfg)
    pipe = load_pipeline(pipeline_dir, scheduler="ddim")
    clf, clf_seconds = train_classifier(pipe, cfg)
    unets = finetune_all(pipe, tasks, cfg)
    sample_s = timings(pipe, tasks, clf, res["best"], cfg, cfg["test_seeds"][0])
    ft_s = float(np.mean([unets[t][(lr, st)].seconds_ for t in tasks]))
    res["cost"] = {"classifier_training_s": clf_seconds, "finetune_training_s_per_task": ft_s,
                   "sampling_s_per_16": sample_s, **_ratios(ft_s, sample_s), "measured": "remeasure_cost, one process"}
    logger.info("cost: %s", res["cost"])
    save_json(res, out_dir, NAME)
    return res
