r"""Guidance window and scale of the default, re-chosen with high-dimensional dev scenarios (protocol amendment 7).

The held-out run of amendment 5 showed the Heun-50 default (span ladder, batch-normalised step, noised
references, decreasing schedule, window (0, 0.8), scale 0.2) losing recall in d = 16 / 64 and throwing samples
off the support in d = 64; no dev scenario (all rings in a 2-D plane) showed it. This experiment

1. re-chooses the window end :math:`w` (guidance acts on the first :math:`w` fraction of the steps) and the
   scale on the grid ``WINDOW_ENDS`` × ``SCALES`` over the dev scenarios of ``bench_eval_point`` plus two
   high-dimensional random-mean dev scenarios (``_protocol.dev_scenarios_hd``), seeds 0–1, n = 300. Rule:
   eligible = mean far fraction ≤ 1% AND mean recall ≥ ``RECALL_KEEP`` × no guidance's recall on every dev
   scenario; winner = lowest geometric mean of exact MMD² / no guidance among the eligible (all if none is).
2. evaluates the winner once on the fresh held-out set v2 (``_protocol.held_out_v2_scenarios``), seeds
   200–204, n = 2000 (protocol amendment 8; amendment 7 ran n = 1000), against no guidance, the amendment-5 default and the exact Doob oracle, with paired 95%
   intervals; and, as secondary (the set is spent for this question), on held-out v1 paired with the runs of
   ``bench_heldout.json``.

Writes ``bench_window.json`` / ``.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._benchmark import sync_doc_tables
from ._common import check_config, save_figure, save_json, use_agg
from ._protocol import all_scenarios, evaluate, iid_floor, paired_ci, references, run_parallel, sample_method
from .bench_defaults import FAST_SAMPLING, SAMPLING, mmd_kwargs, pick, rank
from .bench_eval_point import KEYS as EVAL_POINT_KEYS

WINDOW_ENDS = (0.3, 0.5, 0.65, 0.8)
SCALES = (0.05, 0.1, 0.2, 0.4, 0.8)
DEV_KEYS = EVAL_POINT_KEYS + ("dev_random3_d64", "dev_random5_d32")
DEV_SEEDS = (0, 1)
DEV_N = 300
RECALL_KEEP = 0.8
MAX_FAR = 0.01
HO2_KEYS = ("ho2_hexagon", "ho2_ring7_d12", "ho2_random8_d24", "ho2_random4_d48", "ho2_random3_d96")
HO1_KEYS = ("ho_grid9", "ho_aniso_line", "ho_pentagon_d4", "ho_random6_d16", "ho_random3_d64")
HO_SEEDS = (200, 201, 202, 203, 204)
HO_N = 2000  # amendment 8 (the protocol's n; amendment 7 ran 1000)
PREVIOUS = (0.8, 0.2)  # the amendment-5 default: window end, scale
CANDIDATE = "span/batch"  # bench_defaults' winner at Heun-50
METRICS = ("exact_mmd2", "recall", "frac_far", "mode_weight_tv", "sliced_w2")


def _cfg(end: float, scale: float) -> str:
    return f"window (0, {end:g}) @ {scale:g}"


def _job(args):
    """One cell: ``(method, end, scale, key, seed, n, sampling)``; method in {'none', 'oracle', 'mmd'}."""
    import torch

    torch.set_num_threads(1)
    method, end, scale, key, seed, n, sampling = args
    sc = all_scenarios()[key]
    refs = references(sc, seed)
    mmd = None
    if method == "mmd":
        mmd = dict(mmd_kwargs(CANDIDATE, scale, refs), evaluate_on="noised_refs", window=(0.0, float(end)))
    X = sample_method(method, sc, refs, seed, sampling=sampling, n=n, mmd=mmd)
    return args[:5], evaluate(X, sc, full=True)


def rank_with_recall(table: dict, none_runs: dict) -> dict:
    """:func:`bench_defaults.rank` plus the amendment-7 recall condition (``eligible`` updated, ``min_recall_ratio``)."""
    none_mean = {k: float(np.mean([r["exact_mmd2"] for r in v])) for k, v in none_runs.items()}
    none_recall = {k: float(np.mean([r["recall"] for r in v])) for k, v in none_runs.items()}
    ranking = rank(table, none_mean)
    for cfg, r in ranking.items():
        ratio = min(float(np.mean([x["recall"] for x in table[cfg][k]])) / max(none_recall[k], 1e-12) for k in table[cfg])
        r["min_recall_ratio"] = ratio
        r["eligible"] = bool(r["max_far"] <= MAX_FAR and ratio >= RECALL_KEEP)
    return ranking


def _dev(fast: bool, sampling: dict, seed0: int):
    keys = DEV_KEYS[:1] + DEV_KEYS[-1:] if fast else DEV_KEYS
    ends, scales = ((0.5, 0.8), (0.1, 0.4)) if fast else (WINDOW_ENDS, SCALES)
    seeds = [seed0 + s for s in (DEV_SEEDS[:1] if fast else DEV_SEEDS)]
    n = 80 if fast else DEV_N
    jobs = [("none", None, None, k, s, n, sampling) for k in keys for s in seeds]
    jobs += [("mmd", e, c, k, s, n, sampling) for e in ends for c in scales for k in keys for s in seeds]
    none_runs, table = {}, {}
    for (m, e, c, k, _), ev in run_parallel(_job, jobs):
        if m == "none":
            none_runs.setdefault(k, []).append(ev)
        else:
            table.setdefault(_cfg(e, c), {}).setdefault(k, []).append(ev)
    ranking = rank_with_recall(table, none_runs)
    winner = pick(ranking)
    end, scale = _parse(winner)
    return {"keys": list(keys), "ends": list(ends), "scales": list(scales), "seeds": seeds, "n": n, "none": none_runs,
            "table": table, "ranking": ranking, "winner": winner, "any_eligible": any(r["eligible"] for r in ranking.values()),
            "winner_end": end, "winner_scale": scale,
            "scale_interior": scales[0] < scale < scales[-1], "end_interior": ends[0] < end < ends[-1]}


def _parse(cfg: str) -> tuple[float, float]:
    win, scale = cfg.split(" @ ")
    return float(win.split(", ")[1].rstrip(")")), float(scale)


def _held_out(keys, seeds, n, sampling, arms: dict) -> dict:
    """``{key: {"runs": {arm: [per-seed metrics]}, "floor", "minus_winner": {arm: {metric: [mean, lo, hi]}}}}``."""
    jobs = [(m, e, c, k, s, n, sampling) for k in keys for s in seeds for (m, e, c) in arms.values()]
    res = dict(run_parallel(_job, jobs))
    out = {}
    for k in keys:
        runs = {a: [res[(m, e, c, k, s)] for s in seeds] for a, (m, e, c) in arms.items()}
        out[k] = {"runs": runs, "floor": iid_floor(all_scenarios()[k], n)}
    return out


def _intervals(block: dict, ref: str = "winner") -> None:
    """Adds ``minus_winner[arm][metric] = [mean, lo, hi]`` (arm − winner over paired seeds) to every key."""
    for v in block.values():
        w = v["runs"][ref]
        v["minus_winner"] = {a: {m: paired_ci([r[m] for r in runs], [r[m] for r in w]) for m in METRICS}
                             for a, runs in v["runs"].items() if a != ref}


def _held_out_v1(out_dir, sampling, end, scale) -> dict:
    """The winner on the spent held-out set v1, paired with ``bench_heldout.json``'s no-guidance and default runs
    (at that run's seeds and n)."""
    p = Path(out_dir) / "bench_heldout.json"
    if not p.exists():
        return {}
    prev = json.loads(p.read_text())
    if prev.get("config") != "full" or prev.get("sampling") != sampling:
        return {}
    seeds, n = list(prev["seeds"]), int(prev["n"])
    block = _held_out(HO1_KEYS, seeds, n, sampling, {"winner": ("mmd", end, scale)})
    for k, v in block.items():
        for a_new, a_old in (("none", "none"), ("previous_default", "mmd"), ("oracle", "oracle")):
            v["runs"][a_new] = prev["results"][k]["runs"][a_old]
    _intervals(block)
    return {"seeds": seeds, "n": n, "results": block}


def run(config: str = "full", out_dir="paper_figures", random_state: int = 0) -> dict:
    check_config(config)
    fast = config == "fast"
    sampling = dict(FAST_SAMPLING) if fast else dict(SAMPLING)
    dev = _dev(fast, sampling, random_state)
    end, scale = dev["winner_end"], dev["winner_scale"]
    ho_keys = HO2_KEYS[:1] if fast else HO2_KEYS
    ho_seeds = list(HO_SEEDS[:2] if fast else HO_SEEDS)
    n = 150 if fast else HO_N
    arms = {"none": ("none", None, None), "winner": ("mmd", end, scale), "previous_default": ("mmd", *PREVIOUS),
            "oracle": ("oracle", None, None)}
    v2 = _held_out(ho_keys, ho_seeds, n, sampling, arms)
    _intervals(v2)
    out = {"name": "bench_window", "config": config, "sampling": sampling, "candidate": CANDIDATE,
           "evaluate_on": "noised_refs", "dev": dev, "held_out_v2": {"seeds": ho_seeds, "n": n, "results": v2},
           "held_out_v1_secondary": {} if fast else _held_out_v1(out_dir, sampling, end, scale)}
    out["table_md"] = markdown(out)
    save_json(out, out_dir, "bench_window")
    sync_doc_tables(out_dir, "bench_window", {"table": out["table_md"]})
    _plot(dev, out_dir)
    return out


def _fmt(ci) -> str:
    return f"{ci[0]:+.3g} [{ci[1]:+.3g}, {ci[2]:+.3g}]"


def markdown(out: dict) -> str:
    """Held-out tables: mean of each arm and paired intervals (arm − winner) for MMD², recall and far."""
    lines = []
    for name, block in (("held-out v2", out["held_out_v2"]), ("held-out v1 (secondary)", out["held_out_v1_secondary"])):
        if not block:
            continue
        lines += [f"**{name}** (n = {block['n']}, seeds {', '.join(map(str, block['seeds']))})", "", "| scenario (floor) | arm | MMD² | recall | far | mode TV | Δ MMD² vs winner | Δ recall vs winner |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, v in block["results"].items():
            for a, runs in v["runs"].items():
                mean = {m: float(np.mean([r[m] for r in runs])) for m in ("exact_mmd2", "recall", "frac_far", "mode_weight_tv")}
                ci = v["minus_winner"].get(a)
                d1, d2 = (_fmt(ci["exact_mmd2"]), _fmt(ci["recall"])) if ci else ("–", "–")
                lines.append(f"| {k} ({v['floor']:.2g}) | {a} | {mean['exact_mmd2']:.3g} | {mean['recall']:.3g} | "
                             f"{mean['frac_far']:.3f} | {mean['mode_weight_tv']:.3g} | {d1} | {d2} |")
        lines.append("")
    return "\n".join(lines)


def _plot(dev: dict, out_dir) -> None:
    """Dev score (geometric mean MMD² / none) and worst recall ratio against the scale, one line per window end."""
    use_agg()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for e in dev["ends"]:
        rs = [dev["ranking"][_cfg(e, c)] for c in dev["scales"]]
        axes[0].plot(dev["scales"], [r["score"] for r in rs], "o-", ms=3, label=f"window (0, {e:g})")
        axes[1].plot(dev["scales"], [r["min_recall_ratio"] for r in rs], "o-", ms=3, label=f"window (0, {e:g})")
    axes[1].axhline(RECALL_KEEP, color="0.5", lw=0.8, ls="--", label="eligibility (amendment 7)")
    for ax, lab in zip(axes, ("dev score: geo-mean MMD² / no guidance", "worst dev recall / no guidance")):
        ax.set_xscale("log"), ax.set_xlabel("scale"), ax.set_ylabel(lab)
        ax.set_xticks(dev["scales"], [f"{c:g}" for c in dev["scales"]])
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0].set_yscale("log")
    axes[0].set_title(f"winner: {dev['winner']}", fontsize=8)
    axes[1].legend(fontsize=7)
    save_figure(fig, out_dir, "bench_window")
