"""``python -m experiments NAME [--fast] [--out DIR]`` runs one registered experiment."""

import argparse

from . import EXPERIMENTS, load

if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m experiments")
    p.add_argument("name", choices=EXPERIMENTS)
    p.add_argument("--fast", action="store_true", help="reduced configuration (as in the tests)")
    p.add_argument("--out", default="paper_figures")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    load(a.name).run(config="fast" if a.fast else "full", out_dir=a.out, random_state=a.seed)
