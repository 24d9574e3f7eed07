r"""Multi-process MMD-guided generation with ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Design: the *denoiser evaluation* — the expensive part (a UNet/transformer pass) — is sharded: each
rank evaluates :math:`\hat\epsilon` on its contiguous slice of the batch and the slices are
all-gathered, so every rank holds the full batch's :math:`\hat\epsilon` at every step. The sampler
update, the noise (drawn from the same seeded generator on every rank) and the MMD guidance (whose
cost :math:`O((B+N)BD)` is small next to the network) then run *replicated* on the full batch. Hence

* every rank's result equals single-process batch guidance with the same seed (the generated set is the
  whole batch — the memory bank is global by construction), which ``tests/test_distributed.py`` checks;
* the only communication is one all-gather of a ``(B, D)`` tensor per network evaluation.

Usage (every rank runs the same code)::

    torch.distributed.init_process_group("gloo")            # or "nccl"; torchrun sets the env
    sampler = MMDGuidedSampler(ShardedDenoiser(model)).fit(refs)
    X = sampler.sample(n, random_state=0)                   # identical on all ranks

or ``torchrun --nproc_per_node=2 -m mmdguidance.distributed --num-samples 512 --out samples.npy`` for the
synthetic ring demo.
"""

from __future__ import annotations

import argparse
import os
import socket

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["ShardedDenoiser", "shard_bounds", "free_port"]


def shard_bounds(B: int, world: int, rank: int) -> tuple[int, int]:
    """Contiguous slice ``[start, stop)`` of a batch of ``B`` rows owned by ``rank`` (sizes differ by at most 1)."""
    base, extra = divmod(B, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardedDenoiser:
    """Wrap a Denoiser so each rank evaluates only its slice of the batch, then all-gathers ε̂.

    Parameters
    ----------
    model : Denoiser
    group : torch.distributed ProcessGroup, optional
    """

    def __init__(self, model, *, group=None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_process_group first")
        self.model = model
        self.group = group
        self.schedule = model.schedule
        self.dim = model.dim
        dtype, device = torch.float64, torch.device("cpu")
        if isinstance(model, torch.nn.Module):
            p = next(model.parameters(), None)
            if p is not None:
                dtype, device = p.dtype, p.device
        self.dtype, self.device = getattr(model, "dtype", dtype), getattr(model, "device", device)

    def predict_eps(self, x, t, cond=None):
        world = dist.get_world_size(self.group)
        rank = dist.get_rank(self.group)
        B = x.shape[0]
        s, e = shard_bounds(B, world, rank)
        tt = torch.as_tensor(t)
        t_loc = tt if tt.ndim == 0 else tt[s:e]
        local = self.model.predict_eps(x[s:e], int(t_loc) if t_loc.ndim == 0 else t_loc, None if cond is None else cond[s:e])
        local = local.to(dtype=x.dtype, device=x.device)
        width = shard_bounds(B, world, 0)[1]  # the largest shard (rank 0's)
        pad = torch.zeros(width, x.shape[1], dtype=x.dtype, device=x.device)  # (width, D)
        pad[: e - s] = local
        parts = [torch.empty_like(pad) for _ in range(world)]
        dist.all_gather(parts, pad, group=self.group)
        return torch.cat([parts[r][: shard_bounds(B, world, r)[1] - shard_bounds(B, world, r)[0]] for r in range(world)])


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for local multi-process runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ring_problem():
    from .diffusion import GMMDenoiser
    from .gmm import GaussianMixture

    base = GaussianMixture.ring(n_modes=8, radius=4.0, std=0.25)
    refs = base.subset([0, 1, 2]).sample(50, random_state=1)
    return GMMDenoiser(mixture=base), refs


def run_ring(n: int, *, seed: int = 0, batch_size=None, memory_size=None, sharded: bool = True, num_steps: int = 30):
    """The synthetic ring demo with (``sharded=True``, inside an initialised process group) or without sharding."""
    from .guidance import MMDGuidedSampler

    model, refs = _ring_problem()
    if sharded:
        model = ShardedDenoiser(model)
    s = MMDGuidedSampler(model, num_steps=num_steps, memory_size=memory_size, random_state=seed).fit(refs)
    return s.sample(n, batch_size=batch_size)


def _worker(rank: int, world: int, port: int, out_path: str, n: int, batch_size, memory_size):
    """``torch.multiprocessing.spawn`` entry point used by the tests."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        X = run_ring(n, batch_size=batch_size, memory_size=memory_size)
        np.save(f"{out_path}.rank{rank}.npy", X)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmdguidance.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.npy")
    a = p.parse_args(argv)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)  # torchrun provides RANK, WORLD_SIZE, MASTER_ADDR/PORT
    try:
        X = run_ring(a.num_samples, seed=a.seed, batch_size=a.batch_size)
        if dist.get_rank() == 0:
            np.save(a.out, X)
            print(f"rank 0 of {dist.get_world_size()}: wrote {a.out} with {len(X)} samples")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
