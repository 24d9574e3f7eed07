"""Shared timing helper: median of repeated runs (``torch.utils.benchmark``)."""

from torch.utils import benchmark


def median_time(fn, min_run_time=0.5):
    """Median seconds per call of ``fn`` over repeated blocked runs."""
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median
