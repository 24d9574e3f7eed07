"""Shared helpers of the timing benchmarks: median of repeated runs (``torch.utils.benchmark``), markdown tables."""

from torch.utils import benchmark


def median_time(fn, min_run_time=0.5):
    """Median seconds per call of ``fn`` over repeated blocked runs."""
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def print_table(title, header, rows):
    """Print ``### title``, a blank line, then a markdown table with ``header`` cells and one line per row of cells."""
    print(f"### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
