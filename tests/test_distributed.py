"""Multi-process generation (2 CPU processes, gloo) equals single-process batch guidance."""

import numpy as np
import pytest
import torch.multiprocessing as mp

from mmdguidance.distributed import _worker, free_port, run_ring, shard_bounds


def test_shard_bounds_partition():
    for B in (1, 5, 8, 13):
        for world in (1, 2, 3, 4):
            spans = [shard_bounds(B, world, r) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == B
            assert all(spans[r][1] == spans[r + 1][0] for r in range(world - 1))
            assert max(e - s for s, e in spans) - min(e - s for s, e in spans) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("n, batch_size, memory_size", [(37, None, None), (40, 16, 24)])
def test_two_processes_equal_single_process(tmp_path, n, batch_size, memory_size):
    out = str(tmp_path / "x")
    mp.spawn(_worker, args=(2, free_port(), out, n, batch_size, memory_size), nprocs=2, join=True)
    single = run_ring(n, batch_size=batch_size, memory_size=memory_size, sharded=False)
    for r in range(2):
        X = np.load(f"{out}.rank{r}.npy")
        np.testing.assert_allclose(X, single, rtol=0, atol=1e-10)


def test_requires_initialised_group():
    from mmdguidance.distributed import ShardedDenoiser

    with pytest.raises(RuntimeError, match="init_process_group"):
        ShardedDenoiser(object())
