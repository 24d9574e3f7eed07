"""Guided vs unguided sampling cost with a trained MLP denoiser (B = N = 256, D = 64)."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mmdguidance.diffusion import MLPDenoiser
from mmdguidance.diffusion.samplers import sample as run_sampler
from mmdguidance.sampler import MMDGuidedSampler

from ._common import median_time, print_table


def run(B=256, N=256, D=64, num_steps=20, quick=False, min_run_time=1.0):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4000, D)).astype(np.float32)
    model = MLPDenoiser(dim=D, hidden=256, depth=3, random_state=0).fit(data, epochs=2 if quick else 10, random_state=0)
    refs = torch.as_tensor(rng.normal(size=(N, D)) + 0.5, dtype=torch.float32)
    xT = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    rows = []
    for label, kw in (("default (with per-step MMD² diagnostics)", {}), ("diagnostics off", {"diagnostics": False})):
        s = MMDGuidedSampler(model, num_steps=num_steps, window=(0.0, 1.0), random_state=0, **kw).fit(refs)
        t_g = median_time(lambda: s.sample(B, x_T=xT), min_run_time)
        t_u = median_time(lambda: run_sampler(model, xT, sampler="ddpm", num_steps=num_steps, generator=0), min_run_time)
        rows.append({"variant": label, "ratio": t_g / t_u, "guided_ms": 1e3 * t_g, "unguided_ms": 1e3 * t_u})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    rows = run(quick=a.quick, min_run_time=0.3 if a.quick else 1.0)
    print_table("Guided / unguided sampling time (MLP denoiser 3x256, B = N = 256, D = 64, 20 steps, guidance every step)",
                ("variant", "ratio guided / unguided", "guided ms", "unguided ms"),
                [(r["variant"], f"**{r['ratio']:.2f}x**", f"{r['guided_ms']:.1f}", f"{r['unguided_ms']:.1f}") for r in rows])
    return rows


if __name__ == "__main__":
    main()
