#!/usr/bin/env python3
"""One entry script (needs only Python >= 3.11 and pip): creates ./.venv, installs, runs a job.

    python3 tasks.py demo      # install everything, run the synthetic demo (figure + metrics table)
    python3 tasks.py test      # install everything (with dev extras), run the test suite
    python3 tasks.py figures   # install everything, regenerate every figure in paper_figures/
    python3 tasks.py bench     # install everything, run the ratio benchmarks

torch is installed first and pinned (``torch==2.13.0``), so pip never pulls a CUDA build on CPU.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MMDG_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
TORCH = "torch==2.13.0"


def run(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, **kw)


def install() -> None:
    stamp = VENV / ".mmdguidance-installed"
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == key and PY.exists():
        return
    if not PY.exists():
        if run([sys.executable, "-m", "venv", VENV]) != 0:
            sys.exit("could not create the virtual environment")
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if run(pip + [TORCH]) != 0 or run(pip + ["-e", ".[dev]"]) != 0:
        sys.exit("installation failed")
    stamp.write_text(key)


def main(argv) -> int:
    jobs = ("demo", "test", "figures", "bench", "install")
    if not argv or argv[0] not in jobs:
        print(__doc__)
        return 2
    job, rest = argv[0], argv[1:]
    install()
    env = dict(os.environ, MPLBACKEND="Agg")
    if job == "install":
        return 0
    if job == "demo":
        return run([BIN / "mmdguidance", "demo", *rest], env=env)
    if job == "figures":
        return run([BIN / "mmdguidance", "figures", *rest], env=env)
    if job == "bench":
        return run([PY, "-m", "benchmarks", *rest], env=env)
    return run([PY, "-m", "pytest", "-q", *rest], env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
