"""``python -m benchmarks [NAME ...] [--quick] [--out DIR]``: run the timing benchmarks, write one JSON each.

Benchmarks are the modules ``benchmarks/time_*.py``: CPU ratio benchmarks and ``time_diffusers.py``
(the diffusers adapter; needs the diffusers extra); each has ``main(argv) -> JSON-able result``. The result is
written to ``<out>/<name>[_quick].json`` together with the machine and thread settings it was measured under.
"""

import argparse
import datetime
import importlib
import json
import os
import platform
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
FOUND = sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("time_"))


def machine() -> dict:
    """What the timings depend on: CPU count, thread settings, versions."""
    import torch

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "load_average_1_5_15_min": [round(v, 2) for v in os.getloadavg()],
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(FOUND)}")
    p.add_argument("--quick", action="store_true", help="fewer sizes and shorter timings")
    p.add_argument("--out", default=str(HERE / "results"), help="folder of the JSON results (default: benchmarks/results)")
    a = p.parse_args(argv)
    unknown = [n for n in a.names if n not in FOUND]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(FOUND)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.names or FOUND:
        print(f"\n## {name}\n", flush=True)
        result = importlib.import_module(f"benchmarks.{name}").main(["--quick"] if a.quick else [])
        path = out / f"{name}{'_quick' if a.quick else ''}.json"
        path.write_text(json.dumps({"benchmark": name, "quick": a.quick, "machine": machine(), "result": result},
                                   indent=2))
        print(f"\nwrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
