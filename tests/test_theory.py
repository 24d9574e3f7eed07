"""The paper's theoretical claims, checked on reduced configurations of the theory experiments."""

import numpy as np
import pytest
import torch

from experiments import theory_concentration, theory_estimators, theory_uniform
from experiments._theory import (
    draw_refs,
    empirical_cross_grad,
    exact_cross_grad,
    grad_bound,
    rkhs_mean_bound,
    rkhs_sup_bound,
    target_mixture,
)
from mmdguidance.gmm import mmd2_to_mixture
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


@pytest.mark.parametrize("d", [1, 3, 12])
def test_rkhs_bound_dominates_the_error_everywhere(d):
    # sup_z ||empirical - exact cross gradient|| <= sqrt(MMD^2(refs, Q)) / sigma at every z, inside or outside any ball
    mix = target_mixture(d)
    gen = torch.Generator().manual_seed(d)
    sigma = 0.8
    for _ in range(3):
        Y = draw_refs(mix, 1, 25, gen)[0]
        Z = 3.0 * torch.randn(2000, d, generator=gen, dtype=torch.float64)
        Z[:200] = Y[torch.arange(200) % 25] + 0.3 * Z[:200] / 3.0  # also points right next to the references
        err = (empirical_cross_grad(Z, Y[None], sigma)[0] - torch.as_tensor(exact_cross_grad(Z, mix, sigma))).norm(dim=1)
        bound = rkhs_sup_bound(Y, mix, sigma)
        assert float(err.max()) <= bound * (1 + 1e-9)
        assert float(err.max()) >= 0.2 * bound  # and it is not vacuous


def test_rkhs_mean_bound_is_the_exact_second_moment():
    # E ||mu_hat - mu_Q||_H^2 = (1 - E_QQ k) / N exactly: Monte Carlo within 3 standard errors
    mix = target_mixture(4)
    sigma, N = 1.0, 20
    gen = torch.Generator().manual_seed(1)
    vals = np.array([mmd2_to_mixture(Y, mix, sigma) for Y in draw_refs(mix, 400, N, gen)])
    exact = (rkhs_mean_bound(mix, sigma, N) * sigma) ** 2
    assert abs(vals.mean() - exact) <= 3 * vals.std(ddof=1) / np.sqrt(len(vals))


@pytest.mark.slow
def test_theorem1_pointwise_rate(tmp_path):
    data = theory_concentration.run(config="fast", out_dir=tmp_path, random_state=0)
    s = data["summary"]
    assert -0.6 <= s["slope_mean_min"] and s["slope_mean_max"] <= -0.4
    assert s["all_means_below_bound_G_over_sqrtN"]
    assert s["all_q95_below_mcdiarmid_bound"]  # Theorem 1's high-probability form with explicit constants
    assert (tmp_path / "theory_concentration.png").exists()


@pytest.mark.slow
def test_theorem2_uniform_rate_and_dimension(tmp_path):
    data = theory_uniform.run(config="fast", out_dir=tmp_path, random_state=0)
    s = data["summary"]
    for slope in s["slope_in_N_per_d"].values():
        assert -0.6 <= slope <= -0.4
    # the ascent/grid value never exceeds the certified RKHS upper bound (checks the ascent and the oracle)
    assert s["lower_le_upper_every_set"]
    # The d-exponent of the certified upper bound is not asserted: that bound is sqrt(MMD^2(refs, Q)) / sigma, bounded
    # by a dimension-free constant by construction, so a test on it could not fail (issue 13, item 7). The exponent
    # is reported in the JSON only.
    for slope in s["upper_bound_slope_in_N_per_d"].values():
        assert -0.6 <= slope <= -0.4


@pytest.mark.slow
def test_estimators_and_descent(tmp_path):
    data = theory_estimators.run(config="fast", out_dir=tmp_path, random_state=0)
    s = data["summary"]
    assert s["mmd_unbiased_within_3se_all_N"]
    assert s["descent_at_smallest_eta"]
    d = data["descent"]
    assert d["directional_derivative"] < 0  # the empirical guidance direction is a descent direction of the exact MMD²
    # for small steps the decrease equals the first-order prediction eta * <grad F, g>
    assert s["first_order_ratio_at_smallest_eta"] == pytest.approx(1.0, abs=0.05)
    # the plug-in Frechet distance is strongly biased with few samples (the motivation for MMD)
    assert s["fd_rel_bias_at_smallest_N"] > 0.5
