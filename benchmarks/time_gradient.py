"""Closed-form MMD² gradient vs autograd, and the chunked path's peak memory.

Ratios are measured in one run (median of repeated timings with ``torch.utils.benchmark``);
bare times are shown only next to the ratio. Accuracy: max |closed - autograd| / max |autograd|.

Peak memory of the chunked gradient is measured in a fresh subprocess per size (Linux): the peak
resident-set counter (``VmHWM``) is reset by writing ``5`` to ``/proc/self/clear_refs`` after the inputs
are allocated, and the peak minus the resident size before the call counts the gradient's temporaries only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch
from mmdguidance.kernels import GaussianKernel
from mmdguidance.mmd import MMD

from ._common import median_time as _time

DIMS = (2, 64, 1024, 16384, 65536)


def gradient_vs_autograd(B=256, N=256, dims=DIMS, dtype=torch.float32, min_run_time=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for D in dims:
        Y = torch.randn(N, D, generator=g, dtype=dtype)
        X = torch.randn(B, D, generator=g, dtype=dtype) * 1.1 + 0.1
        m = MMD(kernel=GaussianKernel(bandwidth="median")).fit(Y)

        def closed():
            return m.gradient(X)

        def auto():
            Xr = X.clone().requires_grad_(True)
            m.score(Xr).backward()
            return Xr.grad

        gc, ga = closed(), auto()
        err = float((gc - ga).abs().max() / ga.abs().max())
        tc, ta = _time(closed, min_run_time), _time(auto, min_run_time)
        rows.append({"D": D, "speedup": ta / tc, "closed_ms": 1e3 * tc, "autograd_ms": 1e3 * ta, "rel_err": err})
    return rows


_MEM_CHILD = r"""
import sys, torch
from mmdguidance.kernels import GaussianKernel
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024.0  # MiB
B, N, D, chunk = (int(v) for v in sys.argv[1:5])
g = torch.Generator().manual_seed(0)
X = torch.randn(B, D, generator=g); Y = torch.randn(N, D, generator=g)
k = GaussianKernel(bandwidth=1.0, chunk_size=chunk if chunk > 0 else None).fit(Y)
W = torch.full((N,), 1.0 / N)
k.grad_tensor(X[:2], Y, W)  # warm-up (allocator, threads)
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
out = k.grad_tensor(X, Y, W)
print(status("VmHWM:") - before)
"""


def chunked_memory(D=64, N=4096, Bs=(1024, 4096, 16384), chunk=256):
    """Extra peak memory (MiB) of the gradient for growing B at fixed N: chunked vs one block."""
    rows = []
    for B in Bs:
        out = {}
        for label, c in (("chunked", chunk), ("one_block", B)):
            r = subprocess.run([sys.executable, "-c", _MEM_CHILD, str(B), str(N), str(D), str(c)],
                               capture_output=True, text=True, check=True)
            out[label] = float(r.stdout.strip())
        block_model = 4 * chunk * N * 3 / 2**20  # three float32 (chunk, N) temporaries
        rows.append({"B": B, "N": N, "D": D, "B*N": B * N, "chunked_MiB": out["chunked"],
                     "one_block_MiB": out["one_block"], "model_chunk_MiB": block_model})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="fewer sizes, shorter timings")
    a = p.parse_args(argv)
    dims = (2, 64, 1024) if a.quick else DIMS
    rows = gradient_vs_autograd(dims=dims, min_run_time=0.2 if a.quick else 0.6)
    print("### Closed-form MMD² gradient vs autograd (Gaussian kernel, float32, B = N = 256)\n")
    print("| D | speedup (autograd / closed form) | closed form ms | autograd ms | max rel. difference |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['D']} | **{r['speedup']:.2f}x** | {r['closed_ms']:.3g} | {r['autograd_ms']:.3g} | {r['rel_err']:.1e} |")
    mem = chunked_memory(Bs=(1024, 4096) if a.quick else (1024, 4096, 16384))
    print("\n### Peak extra memory of the gradient vs B·N (D = 64, N = 4096, chunk = 256 rows)\n")
    print("| B | B·N | chunked MiB | one block MiB | ratio one block / chunked |")
    print("|---|---|---|---|---|")
    for r in mem:
        print(f"| {r['B']} | {r['B*N']:.3g} | {r['chunked_MiB']:.1f} | {r['one_block_MiB']:.1f} | "
              f"{r['one_block_MiB'] / max(r['chunked_MiB'], 1e-3):.1f}x |")
    return {"gradient": rows, "memory": mem}


if __name__ == "__main__":
    main()
