"""Helpers shared by the experiment scripts: output paths, JSON with numpy, figure saving, slope fits."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger("mmdguidance.experiments")

CONFIGS = ("full", "fast")


def check_config(config: str) -> str:
    if config not in CONFIGS:
        raise ValueError(f"unknown config={config!r}; expected one of {CONFIGS}")
    return config


def out_path(out_dir, name: str, suffix: str) -> Path:
    """``<out_dir>/<name><suffix>``, creating ``out_dir``."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}{suffix}"


def _to_jsonable(o):
    if isinstance(o, dict):
        return {str(k): _to_jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_to_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _to_jsonable(o.tolist())
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if np.isfinite(v) else str(v)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if hasattr(o, "item") and callable(o.item) and getattr(o, "ndim", 1) == 0:
        return _to_jsonable(o.item())
    return o


def save_json(data: dict, out_dir, name: str) -> Path:
    """Write the numbers behind a figure to ``<out_dir>/<name>.json`` (numpy/torch scalars converted)."""
    p = out_path(out_dir, name, ".json")
    p.write_text(json.dumps(_to_jsonable(data), indent=2, sort_keys=False))
    logger.info("wrote %s", p)
    return p


def save_figure(fig, out_dir, name: str, dpi: int = 130) -> Path:
    """Save a matplotlib figure as ``<out_dir>/<name>.png`` and close it."""
    import matplotlib.pyplot as plt

    p = out_path(out_dir, name, ".png")
    fig.savefig(p, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    logger.info("wrote %s", p)
    return p


def loglog_slope(x, y) -> tuple[float, float]:
    """Least-squares slope and intercept of log(y) against log(x)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


def use_agg():
    """Select the non-interactive matplotlib backend (experiments never open windows)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg", force=True)
