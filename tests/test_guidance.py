"""MMDGuidance (the per-step update) and MMDGuidedSampler."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone

from mmdguidance.diffusion import GMMDenoiser, VPSchedule
from mmdguidance.diffusion.samplers import sample as run_sampler
from mmdguidance.gmm import GaussianMixture, mmd2_to_mixture
from mmdguidance.guidance import GuidanceWarning, MMDGuidance, MMDGuidedSampler, schedule_factor
from mmdguidance.kernels import ConstantKernel, GaussianKernel, IMQKernel, PolynomialKernel
from mmdguidance.mmd import MMD


def ring(n_modes=8, radius=4.0, std=0.25):
    ang = 2 * np.pi * np.arange(n_modes) / n_modes
    means = radius * np.stack([np.cos(ang), np.sin(ang)], 1)
    return GaussianMixture(weights=np.full(n_modes, 1 / n_modes), means=means, covariances=np.full(n_modes, std**2))


@pytest.fixture(scope="module")
def setup():
    base = ring()
    target = base.subset([0, 1, 2])
    refs = target.sample(50, random_state=1)
    model = GMMDenoiser(mixture=base, schedule=VPSchedule.linear())
    return base, target, refs, model


# ------------------------------------------------------------------ the per-step update
def test_x0_gradient_chain_matches_autograd():
    """evaluate_on='x0': grad wrt x of MMD^2(x0_hat(x)) with eps held fixed equals grad_x0 / sqrt(ab)."""
    g = torch.Generator().manual_seed(0)
    Y = torch.randn(20, 3, generator=g, dtype=torch.float64)
    m = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(Y)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, generator=g, dtype=torch.float64)
    ab = 0.6
    xr = x.clone().requires_grad_(True)
    m.score((xr - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).backward()
    lam = 0.01
    gd = MMDGuidance(mmd=m, scale=lam, step_rule="raw", schedule="constant", evaluate_on="x0")
    new = gd(x, step=0, num_steps=1, alpha_bar=ab, eps=eps)
    torch.testing.assert_close(new, x - lam * xr.grad, rtol=1e-10, atol=1e-12)
    # xt evaluation: the plain gradient
    gx = MMDGuidance(mmd=m, scale=lam, step_rule="raw", schedule="constant", evaluate_on="xt")
    torch.testing.assert_close(gx(x, step=0, num_steps=1, alpha_bar=ab), x - lam * m.gradient(x))


def test_normalized_step_rule_is_authors_formula():
    g = torch.Generator().manual_seed(1)
    Y = torch.randn(10, 4, generator=g, dtype=torch.float64)
    m = MMD(kernel=PolynomialKernel()).fit(Y)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    gr = m.gradient(x)
    a = 0.002
    expected = x - a * x.norm(dim=1, keepdim=True) * gr / (gr.norm(dim=1, keepdim=True) + 1e-5)
    out = MMDGuidance(mmd=m, scale=a, step_rule="normalized", schedule="constant", evaluate_on="xt")(x, step=0, num_steps=1, alpha_bar=1.0)
    torch.testing.assert_close(out, expected)


def test_batch_normalized_step_rule():
    g = torch.Generator().manual_seed(5)
    Y = torch.randn(10, 4, generator=g, dtype=torch.float64)
    m = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(Y)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    gr = m.gradient(x)
    a = 0.05
    expected = x - a * x.norm(dim=1).mean() * gr / (gr.norm(dim=1).mean() + 1e-5)
    gd = MMDGuidance(mmd=m, scale=a, step_rule="batch_normalized", schedule="constant", evaluate_on="xt")
    torch.testing.assert_close(gd(x, step=0, num_steps=1, alpha_bar=1.0), expected)
    # relative gradient sizes survive: the per-sample update norms are proportional to the gradient norms
    d = (gd(x, step=0, num_steps=1, alpha_bar=1.0) - x).norm(dim=1)
    torch.testing.assert_close(d / d.max(), gr.norm(dim=1) / gr.norm(dim=1).max())


def test_terms_memory_and_inner_steps():
    g = torch.Generator().manual_seed(2)
    Y = torch.randn(10, 2, generator=g, dtype=torch.float64)
    M = torch.randn(5, 2, generator=g, dtype=torch.float64)
    m = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(Y)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64)
    for terms in ("full", "cross", "self"):
        out = MMDGuidance(mmd=m, scale=0.1, step_rule="raw", schedule="constant", terms=terms, evaluate_on="xt")(
            x, step=0, num_steps=1, alpha_bar=1.0, memory=M
        )
        torch.testing.assert_close(out, x - 0.1 * m.gradient(x, terms=terms, memory=M))
    # two inner steps = two successive raw steps
    gd = MMDGuidance(mmd=m, scale=0.1, step_rule="raw", schedule="constant", inner_steps=2, evaluate_on="xt")
    x1 = x - 0.1 * m.gradient(x)
    torch.testing.assert_close(gd(x, step=0, num_steps=1, alpha_bar=1.0), x1 - 0.1 * m.gradient(x1))


def test_schedule_window_every():
    assert schedule_factor("constant", 0.3) == 1.0
    assert schedule_factor("increasing", 0.25) == pytest.approx(0.5)
    assert schedule_factor("decreasing", 0.25) == pytest.approx(1.5)
    assert schedule_factor(lambda p: p**2, 0.5) == 0.25
    m = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(np.random.default_rng(0).normal(size=(5, 2)))
    gd = MMDGuidance(mmd=m, window=(0.5, 1.0), every=2)
    active = [s for s in range(11) if gd.is_active(s, 11)]
    assert active == [5, 7, 9]
    assert not any(MMDGuidance(mmd=m, scale=0.0).is_active(s, 5) for s in range(5))


def test_noised_refs_is_seeded():
    g = torch.Generator().manual_seed(3)
    Y = torch.randn(10, 2, generator=g, dtype=torch.float64)
    m = MMD(kernel=GaussianKernel(bandwidth=1.0)).fit(Y)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64)
    gd = MMDGuidance(mmd=m, scale=0.1, evaluate_on="noised_refs")
    a = gd(x, step=0, num_steps=2, alpha_bar=0.5, generator=torch.Generator().manual_seed(7))
    b = gd(x, step=0, num_steps=2, alpha_bar=0.5, generator=torch.Generator().manual_seed(7))
    c = gd(x, step=0, num_steps=2, alpha_bar=0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_guards_never_emit_nan():
    g = torch.Generator().manual_seed(4)
    Y = torch.randn(10, 3, generator=g, dtype=torch.float64)
    m = MMD(kernel=GaussianKernel(bandwidth=0.05)).fit(Y)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64) * 1e3
    gd = MMDGuidance(mmd=m, scale=1e12, step_rule="raw", evaluate_on="xt")
    out = gd(x, step=0, num_steps=1, alpha_bar=1.0)
    assert torch.isfinite(out).all()
    # a non-finite eps (a broken model) produces non-finite features -> rows zeroed/reverted, never NaN
    eps = torch.full_like(x, float("nan"))
    gd2 = MMDGuidance(mmd=m, scale=1e6, step_rule="raw", evaluate_on="x0")
    out2 = gd2(x, step=0, num_steps=1, alpha_bar=0.5, eps=eps)
    assert torch.isfinite(out2).all()
    with pytest.warns(GuidanceWarning, match="guards acted"):
        gd2.warn_if_guarded()


# ------------------------------------------------------------------ the sampler
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "heun"])
def test_scale_zero_is_bit_identical_to_plain_sampler(setup, sampler):
    base, target, refs, model = setup
    xT = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = run_sampler(model, xT.clone(), sampler=sampler, num_steps=20, eta=0.5, generator=11)
    s = MMDGuidedSampler(model, scale=0.0, sampler=sampler, num_steps=20, eta=0.5).fit(refs)
    out = s.sample(64, x_T=xT.numpy(), random_state=11)
    assert np.array_equal(out, plain.numpy())


def test_guided_beats_unguided_on_ring(setup):
    """Issue criterion: >= 5x lower exact MMD^2 to the target, >= 95% of samples within 3 sigma of a target mode."""
    base, target, refs, model = setup
    n = 400
    xT = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    unguided = run_sampler(model, xT.clone(), sampler="ddpm", num_steps=50, generator=0).numpy()
    guided = MMDGuidedSampler(model, num_steps=50, random_state=0).fit(refs).sample(n, x_T=xT.numpy())  # defaults
    m_u, m_g = mmd2_to_mixture(unguided, target, 1.0), mmd2_to_mixture(guided, target, 1.0)
    assert m_u / m_g >= 5.0
    d = np.linalg.norm(guided[:, None] - base.means[None, [0, 1, 2]], axis=-1).min(1)
    assert np.mean(d <= 3 * 0.25) >= 0.95
    # within-mode spread is kept (no collapse onto curves): smallest covariance eigenvalue per target mode
    nearest = np.linalg.norm(guided[:, None] - base.means[None], axis=-1).argmin(1)
    for k in (0, 1, 2):
        Z = guided[nearest == k]
        assert np.linalg.eigvalsh(np.cov(Z.T)).min() > 0.25 * 0.25**2


def test_unguided_matches_base_mixture(setup):
    base, target, refs, model = setup
    X = MMDGuidedSampler(model, scale=0.0, num_steps=50).fit(refs).sample(400, random_state=3)
    exact_draws = [mmd2_to_mixture(base.sample(400, random_state=r), base, 1.0) for r in range(20)]
    assert mmd2_to_mixture(X, base, 1.0) <= np.mean(exact_draws) + 3 * np.std(exact_draws)


def test_same_seed_same_output_and_batching(setup):
    base, target, refs, model = setup
    s = MMDGuidedSampler(model, scale=0.1, num_steps=15, sampler="ddpm", memory_size=16).fit(refs)
    a = s.sample(40, batch_size=16, random_state=5)
    b = s.sample(40, batch_size=16, random_state=5)
    c = s.sample(40, batch_size=16, random_state=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_batch_of_one_with_memory_matches_sequential(setup):
    """Batch mode, batch size 1 and a memory bank, starting from the same first sample, follows the authors' update."""
    base, target, refs, model = setup
    n = 6
    xT = np.random.default_rng(0).normal(size=(n, 2))
    common = dict(scale=0.1, num_steps=10, memory_size=100, evaluate_on="xt", sampler="ddim")  # deterministic sampler
    seq = MMDGuidedSampler(model, population="sequential", **common)
    S = seq.fit(refs).sample(n, x_T=xT, random_state=0)
    # the authors' first sample is unguided
    plain0 = run_sampler(model, torch.as_tensor(xT[:1]), sampler="ddim", num_steps=10, generator=0).numpy()
    assert np.array_equal(S[:1], plain0)
    bat = MMDGuidedSampler(model, population="batch", **common).fit(refs)
    bat.memory_ = torch.as_tensor(S[:1])
    B = bat.sample(n - 1, x_T=xT[1:], batch_size=1, reset_memory=False, random_state=0)
    np.testing.assert_allclose(B, S[1:], rtol=0, atol=1e-12)


def test_sequential_memory_resets_to_newest(setup):
    base, target, refs, model = setup
    s = MMDGuidedSampler(model, scale=0.1, num_steps=3, population="sequential", memory_size=3).fit(refs)
    out = s.sample(7, random_state=0)
    # sizes after each sample: 1, 2, 3->reset to [s3], 2, 3->reset to [s5], 2, 3->reset to [s7]
    np.testing.assert_array_equal(s.memory_.numpy(), out[-1:])
    s.sample(6, random_state=0)  # sizes 1, 2, 3->[s3], 2, 3->[s5], 2
    assert s.memory_.shape[0] == 2


def test_diagnostics_and_mmd_decreases(setup):
    base, target, refs, model = setup
    s = MMDGuidedSampler(model, scale=0.1, num_steps=20, random_state=0).fit(refs)
    X, diag = s.sample(100, return_diagnostics=True)
    steps = diag[0]["steps"]
    applied = [d for d in steps if d["applied"]]
    assert len(steps) == 20 and len(applied) == 16  # default window (0, 0.8): p = step/19 <= 0.8
    assert all({"mmd2", "grad_norm", "step_size", "lambda", "n_clipped"} <= set(d) for d in applied)
    assert applied[-1]["mmd2"] < applied[0]["mmd2"]
    assert s.diagnostics_ is not None and s.score(X) < s.score(run_sampler(model, n=100, generator=0).numpy())


@pytest.mark.parametrize("evaluate_on", ["xt", "x0", "noised_refs"])
@pytest.mark.parametrize("kernel", [GaussianKernel(), IMQKernel(), PolynomialKernel()], ids=["gauss", "imq", "poly"])
def test_every_option_runs_and_reduces_mmd(setup, evaluate_on, kernel):
    base, target, refs, model = setup
    s = MMDGuidedSampler(model, kernel=kernel, evaluate_on=evaluate_on, scale=0.1, num_steps=20, random_state=0).fit(refs)
    X = s.sample(128)
    U = run_sampler(model, n=128, num_steps=20, generator=0).numpy()
    assert np.isfinite(X).all()
    assert mmd2_to_mixture(X, target, 1.0) < mmd2_to_mixture(U, target, 1.0)


def test_prompt_aware_with_constant_prompt_kernel_equals_unconditional(setup):
    base, target, refs, model = setup
    rng = np.random.default_rng(0)
    C_ref, C = rng.normal(size=(len(refs), 3)), rng.normal(size=(64, 3))
    common = dict(scale=0.1, num_steps=15, random_state=0, kernel=GaussianKernel(bandwidth=1.0))
    unc = MMDGuidedSampler(model, **common).fit(refs).sample(64)
    pa = MMDGuidedSampler(model, prompt_kernel=ConstantKernel(), **common).fit(refs, prompts=C_ref).sample(64, prompts=C)
    np.testing.assert_allclose(pa, unc, rtol=0, atol=1e-12)


def test_clone_shares_model_and_params(setup):
    base, target, refs, model = setup
    s = MMDGuidedSampler(model, kernel=GaussianKernel(bandwidth=2.0), scale=0.3)
    c = clone(s)
    assert c.model is model and c.get_params()["scale"] == 0.3 and c.kernel is not s.kernel
    assert c.kernel.get_params() == s.kernel.get_params()


def test_torch_refs_give_torch_samples(setup):
    base, target, refs, model = setup
    out = MMDGuidedSampler(model, num_steps=5).fit(torch.as_tensor(refs)).sample(8, random_state=0)
    assert isinstance(out, torch.Tensor) and out.shape == (8, 2)


# ------------------------------------------------------------------ bad input
def test_bad_input(setup):
    base, target, refs, model = setup
    with pytest.raises(ValueError, match="references have 3 features but the model generates 2"):
        MMDGuidedSampler(model).fit(np.zeros((5, 3)) + np.arange(3))
    with pytest.raises(ValueError, match="prompts"):
        MMDGuidedSampler(model, prompt_kernel=GaussianKernel()).fit(refs)
    s = MMDGuidedSampler(model, prompt_kernel=GaussianKernel()).fit(refs, prompts=np.random.default_rng(0).normal(size=(50, 2)))
    with pytest.raises(ValueError, match="prompt"):
        s.sample(4)
    with pytest.raises(ValueError, match="one prompt embedding per sample|exactly one per sample"):
        s.sample(4, prompts=np.zeros((3, 2)))
    ok = MMDGuidedSampler(model).fit(refs)
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n must be a positive int"):
            ok.sample(n)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        MMDGuidedSampler(model, scale=-1.0).fit(refs)
    bad = refs.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MMDGuidedSampler(model).fit(bad)
    with pytest.raises(ValueError, match="minimum of 2"):
        MMDGuidedSampler(model).fit(refs[:1])
    with pytest.raises(ValueError, match="unknown evaluate_on"):
        MMDGuidedSampler(model, evaluate_on="x_0").fit(refs)
    with pytest.raises(ValueError, match="unknown sampler"):
        MMDGuidedSampler(model, sampler="dpm").fit(refs)
    with pytest.raises(TypeError, match="Denoiser"):
        MMDGuidedSampler(object()).fit(refs)
    with pytest.raises(ValueError, match="window"):
        MMDGuidedSampler(model, window=(0.8, 0.2)).fit(refs)


def test_too_large_scale_is_guarded_with_warning(setup):
    base, target, refs, model = setup
    s = MMDGuidedSampler(model, scale=1e8, step_rule="raw", num_steps=10)
    with pytest.warns(GuidanceWarning):
        X = s.fit(refs).sample(32, random_state=0)
    assert np.isfinite(X).all()
