"""Batched guidance vs the authors' sequential batch-1 memory-bank algorithm.

Same number of samples, same denoiser, same number of steps; the only difference is
``population='batch'`` (all samples guided jointly) vs ``population='sequential'`` (one sample at a
time against a memory of finished samples). One timed run each (the sequential one is long).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mmdguidance.diffusion import GMMDenoiser, MLPDenoiser
from mmdguidance.gmm import GaussianMixture
from mmdguidance.sampler import MMDGuidedSampler

from ._common import print_table


def _ring(d=2, k=8):
    a = 2 * np.pi * np.arange(k) / k
    means = np.zeros((k, d))
    means[:, 0], means[:, 1] = 4 * np.cos(a), 4 * np.sin(a)
    return GaussianMixture(weights=np.full(k, 1 / k), means=means, covariances=np.full(k, 0.0625))


def run(n=500, num_steps=50, quick=False):
    base = _ring()
    refs = base.subset([0, 1, 2]).sample(50, random_state=1)
    mlp = MLPDenoiser(dim=2, hidden=128, depth=3, random_state=0).fit(base.sample(4000, random_state=0), epochs=5 if quick else 30, random_state=0)
    rows = []
    for name, model in (("GMMDenoiser (analytic)", GMMDenoiser(mixture=base)), ("MLPDenoiser", mlp)):
        times = {}
        for pop in ("batch", "sequential"):
            s = MMDGuidedSampler(model, population=pop, num_steps=num_steps, random_state=0).fit(refs)
            t0 = time.perf_counter()
            s.sample(n)
            times[pop] = time.perf_counter() - t0
        rows.append({"model": name, "n": n, "speedup": times["sequential"] / times["batch"],
                     "batch_s": times["batch"], "sequential_s": times["sequential"]})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    rows = run(n=100 if a.quick else 500, quick=a.quick)
    print_table(f"Batched vs sequential guidance ({rows[0]['n']} samples, 50 ancestral steps, 50 references, CPU)",
                ("denoiser", "speedup (sequential / batched)", "batched s", "sequential s"),
                [(str(r["model"]), f"**{r['speedup']:.1f}x**", f"{r['batch_s']:.2f}", f"{r['sequential_s']:.1f}") for r in rows])
    return rows


if __name__ == "__main__":
    main()
