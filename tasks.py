#!/usr/bin/env python3
"""One entry script (needs only Python >= 3.11 and pip): creates ./.venv, installs what the job needs, runs it.

    python3 tasks.py demo [--n N ...]    # core install; synthetic demo -> demo_out/demo.png + demo_metrics.{json,md}
    python3 tasks.py test [PYTEST ARGS]  # dev install (diffusers, pytest, ...); the whole test suite
    python3 tasks.py test -m "not slow"  # the fast tier, for the edit-test loop
    python3 tasks.py figures [--fast]    # core install; regenerate every figure in paper_figures/
    python3 tasks.py bench [--quick]     # core + diffusers install; the timing benchmarks (benchmarks/)
    python3 tasks.py install [EXTRA ...] # only install (e.g. `install dev`)

Arguments after the job name go to the job (`python3 tasks.py bench --help`).
torch is installed first with the exact CPU pin below (``torch==2.13.0``) and repeated on every pip call,
so pip never pulls a CUDA build; the package itself declares only a torch range. A stamp in the venv
records what was installed: the install is redone when pyproject.toml changes or a job needs more extras.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MMDG_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
TORCH = "torch==2.13.0"  # the CPU wheel; the only place this exact pin is written
#: extras each job needs (core = the package's own dependencies)
EXTRAS = {"demo": (), "figures": (), "bench": ("diffusers",), "test": ("dev",), "install": ()}
#: extras an extra already contains
IMPLIED = {"dev": {"dev", "diffusers"}, "diffusers": {"diffusers"}}


def say(msg: str) -> None:
    print(f"[tasks] {msg}", flush=True)


def run(cmd, **kw) -> int:
    say("$ " + " ".join(str(c) for c in cmd))
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, **kw)


def _covered(extras) -> set[str]:
    return set().union(*(IMPLIED.get(e, {e}) for e in extras)) if extras else set()


def install(extras=()) -> None:
    """Create the venv and install torch (CPU pin) then the project with ``extras``, unless the stamp says done."""
    stamp = VENV / ".mmdguidance-installed"
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    try:
        done = json.loads(stamp.read_text())
    except (OSError, ValueError):
        done = {}
    if PY.exists() and done.get("pyproject") == key and _covered(extras) <= set(done.get("extras", ())):
        return
    if not PY.exists():
        say(f"creating the virtual environment {VENV}")
        if run([sys.executable, "-m", "venv", VENV]) != 0:
            sys.exit("could not create the virtual environment")
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check"]
    target = ".[" + ",".join(extras) + "]" if extras else "."
    say(f"installing {TORCH} (CPU build, about 20 s on a first install)")
    if run(pip + [TORCH]) != 0:
        sys.exit("installing torch failed")
    size = "about 60 s" if "dev" in _covered(extras) or "diffusers" in extras else "about 30 s"
    say(f"installing mmdguidance from {ROOT} with {target!r} ({size} on a first install)")
    if run(pip + ["-e", target, TORCH]) != 0:  # TORCH again: the resolver must keep the CPU pin
        sys.exit("installation failed")
    kept = set(done.get("extras", ())) if done.get("pyproject") == key else set()
    stamp.write_text(json.dumps({"pyproject": key, "extras": sorted(kept | _covered(extras))}))
    say("installed")


def main(argv) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job not in EXTRAS:
        print(f"unknown job {job!r}; jobs: {', '.join(EXTRAS)}\n{__doc__}")
        return 2
    install(tuple(rest) if job == "install" else EXTRAS[job])
    env = dict(os.environ, MPLBACKEND="Agg")
    if job == "install":
        return 0
    if job == "demo":  # a 2-D problem: more OpenMP threads only contend (demo wall time 69 s vs 4.9 s at load 10, 2 cores)
        env.setdefault("OMP_NUM_THREADS", "1")
    if job in ("demo", "figures"):
        return run([PY, "-m", "mmdguidance", job, *rest], env=env)
    if job == "bench":
        return run([PY, "-m", "benchmarks", *rest], env=env)
    return run([PY, "-m", "pytest", "-q", *rest], env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
