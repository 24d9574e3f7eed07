"""Command line: ``mmdguidance demo | figures | experiment NAME | generate ...`` (also ``python -m mmdguidance``).

Imports are lazy: ``--help`` and argument errors never import torch. ``figures`` and ``experiment``
run the scripts of the repository's ``experiments/`` folder, so they work only inside a clone.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("mmdguidance")
#: the repository root when running from a clone (holds experiments/)
REPO_ROOT = Path(__file__).resolve().parents[1]
CLONE_ONLY = "works only inside a clone of the repository: runs its experiments/ scripts"


# --------------------------------------------------------------------------- argument types
def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    parse.__name__ = f"int >= {lo}"
    return parse


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def check_out_dir(path) -> str | None:
    """Create ``path`` (a folder) if needed and probe that a file can be written there.

    Returns ``None`` when it is usable, else the reason (so that a command fails before any work).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        return f"output folder {str(out)!r} is not a folder (a file of that name exists)"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        return f"output folder {str(out)!r} is not usable: {exc.strerror or exc}"
    return None


# --------------------------------------------------------------------------- figures / experiments
def experiment_names() -> list[str] | None:
    """Names of the registered experiments, or ``None`` outside a clone (no torch import)."""
    if not (REPO_ROOT / "experiments" / "__init__.py").is_file():
        return None
    return _experiments_module().EXPERIMENTS


def _experiments_module():
    if not (REPO_ROOT / "experiments" / "__init__.py").is_file():
        raise SystemExit(f"the experiments/ folder was not found: `figures`/`experiment` work {CLONE_ONLY}")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import experiments

    return experiments


def run_figures(names=None, fast=False, out_dir="paper_figures", seed=0) -> int:
    """Run the registered experiments (by default all but the retraining ones, ``experiments.RETRAIN``);
    returns 1 if any failed (the others still run)."""
    exps = _experiments_module()
    names = names or exps.FIGURES
    failed = []
    for name in names:
        t0 = time.perf_counter()
        logger.info("experiment %s ...", name)
        try:
            exps.load(name).run(config="fast" if fast else "full", out_dir=out_dir, random_state=seed)
        except Exception:  # keep going, report at the end
            logger.exception("experiment %s failed", name)
            failed.append(name)
        else:
            logger.info("experiment %s done in %.1f s", name, time.perf_counter() - t0)
    if failed:
        logger.error("failed experiments: %s", ", ".join(failed))
        return 1
    return 0


# --------------------------------------------------------------------------- parser
def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="synthetic 2-D demo: writes demo.png and a metrics table",
                       description="8-mode ring model, references from 3 modes: unguided vs MMD-guided sampling. "
                                   "Exits 0 on any valid run; the comparison is printed and saved.")
    d.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    d.add_argument("--n", type=_int_at_least(1), default=500, help="number of generated samples (default: 500)")
    d.add_argument("--refs", type=_int_at_least(2), default=50, help="number of reference samples, >= 2 (default: 50)")
    d.add_argument("--scale", type=_nonnegative_float, default=0.1,
                   help="guidance scale, >= 0; 0 = unguided (default: 0.1, the library default)")
    d.add_argument("--steps", type=_int_at_least(1), default=100, help="ancestral DDPM steps (default: 100, the library default)")
    d.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed, >= 0 (default: 0)")


def _add_experiments(sub) -> None:
    names = experiment_names()
    f = sub.add_parser("figures", help=f"regenerate every figure in paper_figures/ ({CLONE_ONLY})")
    f.add_argument("--out", default="paper_figures", help="output folder (default: paper_figures)")
    f.add_argument("--fast", action="store_true", help="reduced configurations (as in the tests)")
    f.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed, >= 0 (default: 0)")
    f.add_argument("names", nargs="*", metavar="NAME",  # checked in main: argparse rejects [] with choices
                   help="subset of experiments (default: all)" + (f"; one of: {', '.join(names)}" if names else ""))
    e = sub.add_parser("experiment", help=f"run one experiment ({CLONE_ONLY}); same as python -m experiments NAME")
    e.add_argument("name", choices=names, metavar="NAME",
                   help="experiment name" + (f": one of {', '.join(names)}" if names else ""))
    e.add_argument("--out", default="paper_figures", help="output folder (default: paper_figures)")
    e.add_argument("--fast", action="store_true", help="reduced configuration (as in the tests)")
    e.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed, >= 0 (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``mmdguidance`` (building it imports neither torch nor diffusers)."""
    from . import __version__
    from .adapters.generate_cli import add_arguments

    p = argparse.ArgumentParser(prog="mmdguidance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (default: WARNING for generate)")
    p.add_argument("--version", action="version", version=f"mmdguidance {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="the command to run")
    _add_demo(sub)
    _add_experiments(sub)
    g = sub.add_parser("generate", help="MMD-guided generation with a locally saved diffusers pipeline "
                                        "(needs the diffusers extra: pip install 'mmdguidance[diffusers]')")
    add_arguments(g)
    return p


# --------------------------------------------------------------------------- main
def configure_logging(verbose: bool, command: str) -> None:
    """Give the ``mmdguidance`` logger (only it, not the root logger) one stderr handler."""
    for h in list(logger.handlers):
        if getattr(h, "_mmdguidance_cli", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler()
    handler._mmdguidance_cli = True
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose or command != "generate" else logging.WARNING)


def _run_demo(args) -> int:
    from .demo import comparison_line, run_demo

    m = run_demo(args.out, n=args.n, n_refs=args.refs, scale=args.scale, num_steps=args.steps, seed=args.seed)
    print((Path(args.out) / "demo_metrics.md").read_text().split("\n\n")[0])
    print(comparison_line(m))
    print(f"wrote {Path(args.out) / 'demo.png'}, demo_metrics.json, demo_metrics.md")
    return 0


def _run_generate(args) -> int:
    try:
        import diffusers  # noqa: F401
    except ImportError as exc:
        print(f"error: generate needs the diffusers extra: pip install 'mmdguidance[diffusers]' ({exc})",
              file=sys.stderr)
        return 2
    from .adapters.generate_cli import main as generate_main

    return generate_main(args)


def main(argv=None) -> int:
    """Entry point of ``mmdguidance``; returns the process exit code (2 on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = sorted(set(getattr(args, "names", None) or ()) - set(experiment_names() or ()))
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(experiment_names() or ())}")
    reason = check_out_dir(args.out) if getattr(args, "out", None) else None
    if reason:  # an argument error (exit 2), returned rather than raised so that main() stays callable
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {reason}", file=sys.stderr)
        return 2
    configure_logging(args.verbose, args.command)
    if args.command == "demo":
        return _run_demo(args)
    if args.command == "figures":
        return run_figures(args.names, fast=args.fast, out_dir=args.out, seed=args.seed)
    if args.command == "experiment":
        return run_figures([args.name], fast=args.fast, out_dir=args.out, seed=args.seed)
    return _run_generate(args)


if __name__ == "__main__":
    sys.exit(main())
