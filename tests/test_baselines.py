"""Baselines: the exact Doob h-transform oracle."""

import numpy as np
import pytest
import torch

from mmdguidance.baselines import DoobOracleDenoiser
from mmdguidance.diffusion import GMMDenoiser, sample
from mmdguidance.gmm import GaussianMixture
from mmdguidance.metrics import mode_weight_error


@pytest.fixture(scope="module")
def base():
    a = 2 * np.pi * np.arange(6) / 6
    return GaussianMixture(weights=np.full(6, 1 / 6), means=3 * np.c_[np.cos(a), np.sin(a)], covariances=np.full(6, 0.1))


def test_doob_eps_equals_target_denoiser(base):
    w = np.array([0.4, 0.3, 0.1, 0.1, 0.1, 0.0])
    oracle = DoobOracleDenoiser(base=GMMDenoiser(mixture=base), target_weights=w)
    target = GMMDenoiser(mixture=base.reweighted(w))
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    for t in (0, 100, 500, 999):
        torch.testing.assert_close(oracle.predict_eps(x, t), target.predict_eps(x, t), rtol=1e-7, atol=1e-9)


def test_doob_samples_the_reweighted_target(base):
    w = np.array([0.5, 0.25, 0.25, 0.0, 0.0, 0.0])
    oracle = DoobOracleDenoiser(base=GMMDenoiser(mixture=base), target_weights=w)
    X = sample(oracle, n=2000, sampler="ddpm", num_steps=100, generator=0).numpy()
    err = mode_weight_error(X, base, w)
    assert err < 3 * np.sqrt(0.25 / 2000) + 0.01


def test_doob_bad_input(base):
    with pytest.raises(ValueError, match="target_weights"):
        DoobOracleDenoiser(base=GMMDenoiser(mixture=base), target_weights=[0.5, 0.5])
    with pytest.raises(TypeError, match="GMMDenoiser"):
        DoobOracleDenoiser(base=object(), target_weights=np.full(6, 1 / 6))
