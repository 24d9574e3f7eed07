"""Closed-form gradient time vs the time of its underlying matrix products (the roofline).

The full MMD² gradient for B samples against N references is one pass over ``V = [X; Y]``
(``n = B + N`` rows): the products ``X Vᵀ`` (B × n × D) and ``G V`` (B × n × D). We time exactly those
two products on the same shapes and report closed-form time / product time (1.0 = all time in GEMMs).
"""

from __future__ import annotations

import argparse

import torch

from mmdguidance.kernels import GaussianKernel
from mmdguidance.mmd import MMD

from ._common import median_time, print_table


def run(B=256, N=256, dims=(64, 1024, 16384), min_run_time=0.5):
    g = torch.Generator().manual_seed(0)
    rows = []
    for D in dims:
        X = torch.randn(B, D, generator=g)
        Y = torch.randn(N, D, generator=g)
        m = MMD(kernel=GaussianKernel(bandwidth="median")).fit(Y)
        V = torch.cat([X, Y])
        G = torch.rand(B, B + N, generator=g)
        t_grad = median_time(lambda: m.gradient(X), min_run_time)
        t_mm = median_time(lambda: (X @ V.T, G @ V), min_run_time)
        rows.append({"D": D, "ratio": t_grad / t_mm, "gradient_ms": 1e3 * t_grad, "products_ms": 1e3 * t_mm})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    rows = run(dims=(64, 1024) if a.quick else (64, 1024, 16384), min_run_time=0.2 if a.quick else 0.6)
    print_table("Closed-form gradient vs its two matrix products (B = N = 256, float32)",
                ("D", "ratio gradient / products", "gradient ms", "products ms"),
                [(str(r["D"]), f"**{r['ratio']:.2f}x**", f"{r['gradient_ms']:.3g}", f"{r['products_ms']:.3g}") for r in rows])
    return rows


if __name__ == "__main__":
    main()
