r"""The synthetic adaptation benchmark shared by the ``bench_*`` experiments: one import point for its parts.

Base distribution: 8 equal-weight isotropic Gaussians (std 0.25) on a circle of radius 4, embedded
in :math:`\mathbb R^d` through a fixed orthonormal 2-frame; base models: the analytic ``GMMDenoiser``
or a small trained ``MLPDenoiser``; five targets (subset, re-weighting, shifted means, variance,
partly outside the support). Every method starts from the same initial noise for a given seed and
uses the same sampler (ancestral DDPM, 50 steps), so differences are due to the method only.

Each role lives in its own module (this one only re-exports them):

* :mod:`experiments._scenarios` — geometry, :class:`Scenario`, :func:`scenarios`, base models (cached), noise, references;
* :mod:`experiments._methods` — method settings and labels, :data:`METHODS` (name -> sampling function), :func:`run_method`;
* :mod:`experiments._evaluation` — :func:`evaluate` (metrics against the target; fixed target draws cached), :func:`summarize`;
* :mod:`experiments._runs` — :func:`scenario_table` (methods x scenarios x seeds) and the option sweeps;
* :mod:`experiments._tables` — :func:`fmt`, :func:`markdown_table`, :func:`sync_doc_tables` (docs/benchmark.md blocks);
* :mod:`experiments._plots` — colours, scatter grids and bar charts.
"""

from __future__ import annotations

from ._evaluation import evaluate, summarize, support_mixture, target_draws
from ._methods import (
    CLASSIFIER,
    DOOB_MATCHING,
    FINETUNE,
    METHOD_LABELS,
    METHODS,
    NUM_STEPS,
    PRE_ISSUE13_MMD,
    SAMPLER,
    applicable,
    quiet,
    run_method,
)
from ._plots import COLORS, draw_target, plot_bars, plot_scatter_grid
from ._runs import scenario_table, sweep_groups, sweep_options
from ._scenarios import (
    RADIUS,
    REWEIGHT,
    STD,
    K,
    Scenario,
    base_mixture,
    base_model,
    base_samples,
    frame,
    initial_noise,
    metric_bandwidth,
    mixture,
    references,
    ring_means,
    scenarios,
)
from ._tables import DOC, FIGURES, TABLE_METRICS, fmt, markdown_table, sync_doc_tables

__all__ = [
    "CLASSIFIER", "COLORS", "DOC", "DOOB_MATCHING", "FIGURES", "FINETUNE", "K", "METHODS", "METHOD_LABELS", "NUM_STEPS",
    "PRE_ISSUE13_MMD", "RADIUS", "REWEIGHT", "SAMPLER", "STD", "TABLE_METRICS", "Scenario", "applicable", "base_mixture",
    "base_model", "base_samples", "draw_target", "evaluate", "fmt", "frame", "initial_noise", "markdown_table",
    "metric_bandwidth", "mixture", "plot_bars", "plot_scatter_grid", "quiet", "references", "ring_means", "run_method",
    "scenario_table", "scenarios", "summarize", "support_mixture", "sweep_groups", "sweep_options", "sync_doc_tables",
    "target_draws",
]
