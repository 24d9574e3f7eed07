"""MMD-DDM: the differentiable DDIM equals the project's sampler, the loss is the project's MMD² (vs a brute-force
numpy estimate), its parameter gradient matches finite differences, and a tiny fine-tuning decreases it."""

import copy

import numpy as np
import pytest
import torch

from mmdguidance.baselines import ddim_sample, mmd_ddm
from mmdguidance.diffusion import MLPDenoiser, sample
from mmdguidance.kernels import GaussianKernel
from mmdguidance.mmd import mmd2

BW = [0.5, 1.0, 2.0]


@pytest.fixture(scope="module")
def data():
    g = np.random.default_rng(0)
    return np.r_[g.normal([-2, 0], 0.3, (200, 2)), g.normal([2, 1], 0.3, (200, 2))]  # two blobs, (400, 2)


@pytest.fixture(scope="module")
def model(data):
    torch.set_num_threads(1)
    return MLPDenoiser(dim=2, hidden=32, depth=1, random_state=0).fit(data, epochs=100, batch_size=50, lr=3e-3, random_state=0,
                                                                      progress_bar=False)


def test_ddim_sample_equals_project_sampler(model):
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    for K in (1, 3, 10):
        torch.testing.assert_close(ddim_sample(model, x, K).detach(), sample(model, x, sampler="ddim", num_steps=K), rtol=1e-5, atol=1e-6)


def _brute_mmd2(X, Y, bws):
    def k(A, B):
        d2 = ((A[:, None] - B[None]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (2 * s * s)) for s in bws)

    return k(X, X).mean() + k(Y, Y).mean() - 2 * k(X, Y).mean()


@pytest.mark.slow
def test_first_loss_is_the_project_mmd2_and_loss_decreases(model, data):
    K, bs = 3, 64
    before = copy.deepcopy(model.state_dict())
    ft = mmd_ddm(model, data, num_steps=K, kernel=GaussianKernel(bandwidth=BW), iterations=80, batch_size=bs, lr=3e-4, random_state=5)
    # replay the first iteration's noise and data batch (same generator order as mmd_ddm)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(bs, 2, generator=g)
    batch = data[torch.randint(0, len(data), (bs,), generator=g).numpy()]
    with torch.no_grad():
        xs = ddim_sample(model, z, K).double().numpy()
    kern = GaussianKernel(bandwidth=BW).fit(data)
    assert ft.mmd_history_[0] == pytest.approx(mmd2(kern, xs, batch), rel=1e-4)
    assert ft.mmd_history_[0] == pytest.approx(_brute_mmd2(xs, batch, BW), rel=1e-4)
    first, last = np.mean(ft.mmd_history_[:10]), np.mean(ft.mmd_history_[-10:])
    assert last < 0.5 * first, (first, last)
    # the original model is untouched
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert ft.training is False


def test_gradient_through_the_sampler_matches_finite_differences(model, data):
    m = copy.deepcopy(model).double()  # trained: its samples overlap the data, so the kernel gradient is not ~0
    kern = GaussianKernel(bandwidth=BW).fit(data)
    z = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Y = torch.as_tensor(data[:40])
    p = m.out.weight  # (2, 16)

    def loss():
        return mmd2(kern, ddim_sample(m, z, 4), Y)

    (grad,) = torch.autograd.grad(loss(), p)
    h = 1e-6
    for idx in [(0, 0), (1, 5), (0, 11)]:
        with torch.no_grad():
            p[idx] += h
            up = float(loss())
            p[idx] -= 2 * h
            down = float(loss())
            p[idx] += h
        assert float(grad[idx]) == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-8)
    assert float(grad.abs().max()) > 1e-3


def test_seeded_and_bad_input(model, data):
    a = mmd_ddm(model, data, num_steps=2, iterations=3, batch_size=16, random_state=0)
    b = mmd_ddm(model, data, num_steps=2, iterations=3, batch_size=16, random_state=0)
    assert a.mmd_history_ == b.mmd_history_
    with pytest.raises(ValueError, match="num_steps"):
        mmd_ddm(model, data, num_steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        mmd_ddm(model, data, batch_size=1)
    with pytest.raises(ValueError, match="expecting 2 features"):
        mmd_ddm(model, np.zeros((10, 3)))
    with pytest.raises(TypeError, match="Denoiser"):
        mmd_ddm(object(), data)
    with pytest.raises(TypeError, match="Kernel"):
        mmd_ddm(model, data, kernel="rbf")
