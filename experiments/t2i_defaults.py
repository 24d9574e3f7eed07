r"""Re-choosing the diffusers adapter's defaults on the shapes pipeline (issue 13 item "adapter defaults not re-chosen").

The adapter's defaults (median-bandwidth Gaussian kernel, ``step_rule='batch_normalized'``, scale 0.2, evaluation on
x_t) against the toy sampler's choices from the synthetic benchmark (multi-scale ``'span'`` Gaussian kernel,
``step_rule='normalized'``, evaluation on noised references or on the scheduler's x̂₀), everything else equal
(decreasing schedule over the first 80% of steps, all 16 samples guided jointly). Same tasks, references, noise and
metrics as :mod:`experiments.t2i_adaptation`.

Selection uses the DEVELOPMENT seeds only: per configuration one scale from the common grid (the one with the smallest
mean target error over tasks and development schedulers); a configuration replaces the defaults only if it beats the
current defaults (each at its own chosen scale) on every development scheduler. The held-out seeds then measure the
chosen configurations (paired differences to the current defaults and to no guidance).
"""

from __future__ import annotations

import time

import numpy as np

from experiments import t2i_adaptation as T
from experiments._common import check_config, logger, save_json
from experiments.t2i_train import ASSET_DIR, load_pipeline
from mmdguidance._utils import progress
from mmdguidance.kernels import GaussianKernel

NAME = "t2i_defaults"
CANDIDATES = {
    "current": dict(bandwidth="median", step_rule="batch_normalized", evaluate_on="xt"),
    "span_normalized_noised_refs": dict(bandwidth="span", step_rule="normalized", evaluate_on="noised_refs"),
    "span_normalized_x0": dict(bandwidth="span", step_rule="normalized", evaluate_on="x0"),
}
CONFIGS = {
    # CPU budget: two development schedulers, one deterministic and one stochastic
    "full": dict(T.CONFIGS["full"], dev_schedulers=("ddim", "euler_a"), candidates=tuple(CANDIDATES)),
    "fast": dict(T.CONFIGS["fast"], dev_schedulers=("ddim",), candidates=("current", "span_normalized_x0")),
}


def settings(name: str):
    """``(adapter keyword arguments, batch_size)`` of a candidate configuration (joint batch)."""
    c = CANDIDATES[name]
    return dict(kernel=GaussianKernel(bandwidth=c["bandwidth"]), step_rule=c["step_rule"], schedule="decreasing",
                window=(0.0, 0.8), evaluate_on=c["evaluate_on"]), None


def _errors(pipe, tasks, name, scale, seeds, cfg) -> dict:
    """task -> seed -> metrics of one configuration at one scale."""
    return {t: {s: T.evaluate(T.generate(pipe, spec, refs, "cfg", scale, s, cfg, settings=settings(name)), spec, tgt)
                for s in seeds} for t, (spec, refs, tgt) in tasks.items()}


def development(tasks, cfg, path) -> dict:
    """dev[scheduler][candidate][scale] = mean target error over tasks (and per task)."""
    dev = {}
    for sched in cfg["dev_schedulers"]:
        pipe = load_pipeline(path, scheduler=sched)
        for name, scale in progress([(n, s) for n in cfg["candidates"] for s in cfg["scales"]], desc=f"dev {sched}"):
            t0 = time.perf_counter()
            r = _errors(pipe, tasks, name, scale, cfg["dev_seeds"], cfg)
            per_task = {t: float(np.mean([m["target_error"] for m in v.values()])) for t, v in r.items()}
            dev.setdefault(sched, {}).setdefault(name, {})[f"{scale:g}"] = {"mean": float(np.mean(list(per_task.values()))),
                                                                            "per_task": per_task}
            logger.info("dev %s %s %g: %.3f (%.1f s)", sched, name, scale, dev[sched][name][f"{scale:g}"]["mean"],
                        time.perf_counter() - t0)
    return dev


def decide(dev: dict, cfg: dict) -> dict:
    """Chosen scale per candidate (mean over development schedulers) and whether it beats 'current' on every one."""
    scheds = list(dev)
    chosen, at_best = {}, {}
    for name in cfg["candidates"]:
        score = {sc: np.mean([dev[s][name][sc]["mean"] for s in scheds]) for sc in dev[scheds[0]][name]}
        chosen[name] = float(min(score, key=score.get))
        at_best[name] = {s: dev[s][name][f"{chosen[name]:g}"]["mean"] for s in scheds}
    wins = {n: all(at_best[n][s] < at_best["current"][s] for s in scheds) for n in cfg["candidates"] if n != "current"}
    winners = [n for n in wins if wins[n]]
    best = min(winners, key=lambda n: np.mean(list(at_best[n].values()))) if winners else "current"
    others = [n for n in cfg["candidates"] if n != "current"]
    challenger = best if best != "current" else min(others, key=lambda n: np.mean(list(at_best[n].values())))
    return {"chosen_scale": chosen, "dev_error_at_chosen": at_best, "beats_current_on_every_scheduler": wins,
            "winner": best, "challenger": challenger}


def held_out(tasks, decision: dict, cfg: dict, path) -> dict:
    """Held-out runs of 'none', 'current' and the challenger (the winner, else the best other candidate on dev) at
    their chosen scales, with paired differences (CPU budget: not every candidate)."""
    out = {}
    for sched in cfg["dev_schedulers"]:
        pipe = load_pipeline(path, scheduler=sched)
        runs = {"none": {t: {s: T.evaluate(T.generate(pipe, spec, refs, "none", 0.0, s, cfg), spec, tgt)
                             for s in cfg["test_seeds"]} for t, (spec, refs, tgt) in tasks.items()}}
        for name in ("current", decision["challenger"]):
            runs[name] = _errors(pipe, tasks, name, decision["chosen_scale"][name], cfg["test_seeds"], cfg)
            logger.info("held-out %s %s done", sched, name)
        out[sched] = {"runs": runs, "diff": {
            name: {t: {"vs_none": T.paired(runs[name][t], runs["none"][t], "target_error"),
                       "vs_current": T.paired(runs[name][t], runs["current"][t], "target_error")}
                   for t in tasks} for name in ("current", decision["challenger"])}}
    return out


def run(config: str = "full", out_dir="paper_figures", random_state: int = 0, pipeline_dir=ASSET_DIR) -> dict:
    """Writes ``<out_dir>/t2i_defaults.json`` (development grid, decision, held-out runs)."""
    cfg = dict(CONFIGS[check_config(config)])
    cfg["test_seeds"] = tuple(int(random_state) + s for s in cfg["test_seeds"])
    t0 = time.perf_counter()
    tasks = T._setup(cfg)
    dev = development(tasks, cfg, pipeline_dir)
    decision = decide(dev, cfg)
    logger.info("decision: %s", decision)
    res = {"config": config, "settings": cfg, "candidates": {n: CANDIDATES[n] for n in cfg["candidates"]},
           "dev": dev, **decision}
    save_json({**res, "partial": True}, out_dir, NAME)
    res["held_out"] = held_out(tasks, decision, cfg, pipeline_dir)
    res["seconds"] = time.perf_counter() - t0
    save_json(res, out_dir, NAME)
    return res
