"""The paper's theoretical claims, checked on reduced configurations of the theory experiments."""

import numpy as np
import pytest
import torch

from experiments import theory_concentration, theory_estimators, theory_uniform
from experiments._theory import draw_refs, empirical_cross_grad, exact_cross_grad, grad_bound, target_mixture
from mmdguidance.kernels import GaussianKernel


def test_batched_empirical_gradient_matches_kernel_grad():
    mix = target_mixture(5)
    Y = draw_refs(mix, 3, 40, torch.Generator().manual_seed(0))
    Z = torch.randn(4, 5, dtype=torch.float64)
    batched = empirical_cross_grad(Z, Y, 1.3)
    for s in range(3):
        k = GaussianKernel(bandwidth=1.3).fit(Y[s])
        torch.testing.assert_close(batched[s], k.grad(Z, Y[s]), rtol=1e-10, atol=1e-12)


def test_grad_bound_is_the_sup():
    r = np.linspace(0, 10, 100001)
    sigma = 0.7
    assert np.max(r * np.exp(-(r**2) / (2 * sigma**2)) / sigma**2) == pytest.approx(grad_bound(sigma), rel=1e-6)


def test_theorem1_pointwise_rate(tmp_path):
    data = theory_concentration.run(config="fast", out_dir=tmp_path, random_state=0)
    s = data["summary"]
    assert -0.6 <= s["slope_mean_min"] and s["slope_mean_max"] <= -0.4
    assert s["all_means_below_bound_G_over_sqrtN"]
    assert (tmp_path / "theory_concentration.png").exists()


def test_theorem2_uniform_rate_and_dimension(tmp_path):
    data = theory_uniform.run(config="fast", out_dir=tmp_path, random_state=0)
    s = data["summary"]
    for slope in s["slope_in_N_per_d"].values():
        assert -0.6 <= slope <= -0.4
    # no faster growth in d than the eps-net rate sqrt(d) (exponent 1/2), with a tolerance for noise
    assert s["exponent_in_d_median"] <= 0.5 + 0.15


def test_estimators_and_descent(tmp_path):
    data = theory_estimators.run(config="fast", out_dir=tmp_path, random_state=0)
    s = data["summary"]
    assert s["mmd_unbiased_within_3se_all_N"]
    assert s["descent_at_smallest_eta"]
    d = data["descent"]
    assert d["directional_derivative"] < 0  # the empirical guidance direction is a descent direction of the exact MMD²
    # the plug-in Frechet distance is strongly biased with few samples (the motivation for MMD)
    assert s["fd_rel_bias_at_smallest_N"] > 0.5
