"""``python -m benchmarks [name ...] [--quick]``: run the ratio benchmarks (modules ``benchmarks/bench_*.py``)."""

import importlib
import pkgutil
import sys
from pathlib import Path

if __name__ == "__main__":
    args = sys.argv[1:]
    flags = [a for a in args if a.startswith("-")]
    names = [a for a in args if not a.startswith("-")]
    found = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_"))
    for name in names or found:
        if name not in found:
            sys.exit(f"unknown benchmark {name!r}; available: {', '.join(found)}")
        print(f"\n## {name}\n", flush=True)
        importlib.import_module(f"benchmarks.{name}").main(flags)
