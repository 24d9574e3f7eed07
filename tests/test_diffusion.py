"""Schedules, denoisers and samplers (mmdguidance.diffusion)."""

import math

import numpy as np
import pytest
import torch

from experiments._common import loglog_slope
from mmdguidance.diffusion import (
    ConditionalGMMDenoiser,
    GMMDenoiser,
    MLPDenoiser,
    VPSchedule,
    eps_to_x0,
    sample,
    x0_to_eps,
)
from mmdguidance.gmm import GaussianMixture, mmd2_to_mixture


def ring(n=4, r=3.0, std=0.3):
    a = 2 * np.pi * np.arange(n) / n
    return GaussianMixture(weights=np.full(n, 1 / n), means=r * np.c_[np.cos(a), np.sin(a)], covariances=np.full(n, std**2))


# ------------------------------------------------------------------ schedules
@pytest.mark.parametrize("sch", [VPSchedule.linear(), VPSchedule.cosine()], ids=["linear", "cosine"])
def test_schedule_properties(sch):
    ab = sch.alpha_bars
    assert (ab > 0).all() and (ab < 1).all() and (ab[1:] < ab[:-1]).all()
    assert ab[-1] < 1e-3 and ab[0] > 0.99
    ts = sch.timesteps(50)
    assert ts[0] == sch.num_train_timesteps - 1 and ts[-1] == 0 and len(ts) == 50 and (ts[1:] < ts[:-1]).all()
    assert torch.equal(sch.timesteps(sch.num_train_timesteps), torch.arange(sch.num_train_timesteps - 1, -1, -1))
    assert float(sch.alpha_bar(-1)) == 1.0


def test_add_noise_moments():
    sch = VPSchedule.linear()
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200000, 1), 2.0, dtype=torch.float64)
    xt = sch.add_noise(x0, 300, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    ab = float(sch.alpha_bars[300])
    se_mean = math.sqrt((1 - ab) / len(x0))
    assert abs(float(xt.mean()) - 2 * math.sqrt(ab)) < 4 * se_mean
    assert abs(float(xt.var()) - (1 - ab)) < 0.01


def test_noise_at_is_the_forward_process_and_add_noise_uses_it():
    from mmdguidance.diffusion import noise_at, x0_to_eps

    sch = VPSchedule.linear()
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(7, 3, generator=g, dtype=torch.float64)
    xi = torch.randn(7, 3, generator=g, dtype=torch.float64)
    ab = float(sch.alpha_bars[400])
    out = noise_at(x0, xi, ab)
    assert torch.allclose(out, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * xi, atol=1e-14, rtol=0)
    assert torch.allclose(x0_to_eps(out, x0, ab), xi, atol=1e-10, rtol=0)  # its inverse recovers the noise
    assert torch.equal(sch.add_noise(x0, 400, xi), noise_at(x0, xi, sch.alpha_bars[400]))
    t = torch.tensor([0, 10, 200, 400, 600, 800, 999])  # one level per row
    assert torch.equal(sch.add_noise(x0, t, xi), noise_at(x0, xi, sch.alpha_bars[t][:, None]))
    assert torch.equal(noise_at(x0, xi, 1.0), x0)  # clean level


def test_schedule_bad_input():
    with pytest.raises(ValueError, match="betas"):
        VPSchedule(betas=[0.1, 1.5])
    with pytest.raises(ValueError, match="num_steps"):
        VPSchedule.linear().timesteps(0)
    with pytest.raises(ValueError, match="num_steps"):
        VPSchedule.linear(num_train_timesteps=10).timesteps(11)


# ------------------------------------------------------------------ denoisers
def test_gmm_denoiser_eps_is_exact_score():
    mix = ring()
    den = GMMDenoiser(mixture=mix)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    for t in (0, 250, 999):
        ab = float(den.schedule.alpha_bars[t])
        xr = x.clone().requires_grad_(True)
        mix.noised(ab).log_prob(xr).sum().backward()
        torch.testing.assert_close(den.predict_eps(x, t), -math.sqrt(1 - ab) * xr.grad, rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(den.predict_x0(x, t), mix.posterior_mean_x0(x, ab), rtol=1e-10, atol=1e-12)
    # Tweedie: the eps -> x0 conversion of the exact eps is the exact posterior mean
    ab = float(den.schedule.alpha_bars[400])
    torch.testing.assert_close(eps_to_x0(x, den.predict_eps(x, 400), ab), den.predict_x0(x, 400), rtol=1e-8, atol=1e-10)
    # per-row timesteps
    tt = torch.tensor([0, 250, 999, 250, 0, 999, 10])
    rows = torch.stack([den.predict_eps(x[i : i + 1], int(tt[i]))[0] for i in range(7)])
    torch.testing.assert_close(den.predict_eps(x, tt), rows)


def test_conditional_gmm_denoiser_selects_by_nearest_anchor():
    m1, m2 = ring(), ring(r=1.0)
    den = ConditionalGMMDenoiser(mixtures=[m1, m2], anchors=[[0.0, 0.0], [1.0, 1.0]])
    x = torch.randn(4, 2, dtype=torch.float64)
    cond = torch.tensor([[0.1, 0.0], [0.9, 1.2], [0.0, -0.2], [2.0, 2.0]], dtype=torch.float64)
    e = den.predict_eps(x, 100, cond)
    torch.testing.assert_close(e[[0, 2]], GMMDenoiser(mixture=m1).predict_eps(x[[0, 2]], 100))
    torch.testing.assert_close(e[[1, 3]], GMMDenoiser(mixture=m2).predict_eps(x[[1, 3]], 100))
    with pytest.raises(ValueError, match="cond"):
        den.predict_eps(x, 100)


@pytest.mark.slow
def test_mlp_denoiser_trains_and_is_reproducible():
    mix = ring()
    X = mix.sample(2000, random_state=0)
    a = MLPDenoiser(dim=2, hidden=64, depth=2, random_state=0).fit(X, epochs=25, random_state=0)
    b = MLPDenoiser(dim=2, hidden=64, depth=2, random_state=0).fit(X, epochs=25, random_state=0)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    h = a.loss_history_
    assert np.mean(h[-5:]) < 0.8 * np.mean(h[:2])  # the DDPM loss goes down
    # trained model beats an untrained one on held-out eps-MSE
    untrained = MLPDenoiser(dim=2, hidden=64, depth=2, random_state=1)
    g = torch.Generator().manual_seed(5)
    x0 = torch.as_tensor(mix.sample(2000, random_state=9), dtype=torch.float32)
    t = torch.randint(0, 1000, (2000,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    xt = a.schedule.add_noise(x0, t, eps)
    with torch.no_grad():
        assert ((a.predict_eps(xt, t) - eps) ** 2).mean() < 0.7 * ((untrained.predict_eps(xt, t) - eps) ** 2).mean()


# ------------------------------------------------------------------ samplers
def gaussian_denoiser(m, s2, schedule):
    """Analytic denoiser of N(m, s2) in 1-D."""
    return GMMDenoiser(mixture=GaussianMixture(weights=[1.0], means=[[m]], covariances=[s2]), schedule=schedule)


def ode_exact(xT, m, s2, ab_T):
    """Exact probability-flow map x_T -> x_0 for N(m, s2) data: affine in the sigma variables."""
    # marginal at ab: N(sqrt(ab) m, ab s2 + 1 - ab); the PF-ODE transports quantiles: z-score is conserved
    z = (xT - math.sqrt(ab_T) * m) / math.sqrt(ab_T * s2 + 1 - ab_T)
    return m + math.sqrt(s2) * z


def test_euler_equals_ddim_and_heun_is_second_order():
    sch = VPSchedule.linear()
    m, s2 = 1.5, 0.3
    den = gaussian_denoiser(m, s2, sch)
    xT = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    e = sample(den, xT, sampler="euler", num_steps=20)
    d = sample(den, xT, sampler="ddim", num_steps=20, eta=0.0)
    torch.testing.assert_close(e, d, rtol=1e-10, atol=1e-12)
    ab_T = float(sch.alpha_bars[-1])
    exact = ode_exact(xT, m, s2, ab_T)
    steps = [8, 16, 32, 64]
    err_e = [float((sample(den, xT, sampler="euler", num_steps=k) - exact).abs().max()) for k in steps]
    err_h = [float((sample(den, xT, sampler="heun", num_steps=k) - exact).abs().max()) for k in steps]
    se, _ = loglog_slope(steps, err_e)
    sh, _ = loglog_slope(steps, err_h)
    assert -1.4 < se < -0.7, se  # first order
    assert sh < -1.6, sh  # second order (the last Euler step to s = 0 keeps it below 2 at most)
    assert err_h[-1] < err_e[-1]


@pytest.mark.parametrize("sampler, steps", [("ddpm", 200), ("ddim", 50), ("euler", 50), ("heun", 30)])
def test_samplers_match_the_mixture(sampler, steps):
    mix = ring()
    den = GMMDenoiser(mixture=mix)
    X = sample(den, n=600, sampler=sampler, num_steps=steps, generator=0).numpy()
    ref = [mmd2_to_mixture(mix.sample(600, random_state=r), mix, 1.0) for r in range(20)]
    assert mmd2_to_mixture(X, mix, 1.0) < np.mean(ref) + 3 * np.std(ref)
    w = np.bincount(mix.mode_assignment(X), minlength=4) / 600
    assert np.all(np.abs(w - 0.25) < 3 * math.sqrt(0.25 * 0.75 / 600) + 0.01)


def test_seeds_hooks_and_bad_input():
    den = GMMDenoiser(mixture=ring())
    a = sample(den, n=16, sampler="ddpm", num_steps=10, generator=3)
    b = sample(den, n=16, sampler="ddpm", num_steps=10, generator=3)
    c = sample(den, n=16, sampler="ddpm", num_steps=10, generator=3, hook=lambda info: None)
    assert torch.equal(a, b) and torch.equal(a, c)
    seen = []

    def hook(info):
        seen.append((info.step, info.t, info.t_next, float(info.alpha_bar_next)))
        return info.x + 1.0 if info.step == info.num_steps - 1 else None

    d = sample(den, n=16, sampler="ddpm", num_steps=10, generator=3, hook=hook)
    torch.testing.assert_close(d, a + 1.0)
    assert len(seen) == 10 and seen[-1][2] == -1 and seen[-1][3] == 1.0
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(den, n=4, sampler="dpm++")
    with pytest.raises(ValueError, match="n must be a positive int"):
        sample(den, n=0)
    with pytest.raises(ValueError, match="features"):
        sample(den, torch.zeros(3, 5))


# ------------------------------------------------------------------ step functions
def test_step_functions_and_registry():
    from mmdguidance.diffusion.samplers import SAMPLERS, ddim_step, ddpm_step, euler_step, heun_step

    assert set(SAMPLERS) == {"ddpm", "ddim", "euler", "heun"} and SAMPLERS["heun"] is heun_step
    sch, den = VPSchedule.linear(), GMMDenoiser(mixture=ring())
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ab, ab_next = sch.alpha_bar(500), sch.alpha_bar(480)
    eps = den.predict_eps(x, 500)
    a = ddpm_step(x, eps, ab, ab_next, generator=torch.Generator().manual_seed(1))
    b = ddim_step(x, eps, ab, ab_next, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    torch.testing.assert_close(euler_step(x, eps, ab, ab_next), ddim_step(x, eps, ab, ab_next), rtol=1e-12, atol=1e-12)
    # the final step to clean data is the Tweedie estimate, for every step function
    one = sch.alpha_bar(-1)
    for step in SAMPLERS.values():
        torch.testing.assert_close(step(x, eps, ab, one, eps_fn=None), eps_to_x0(x, eps, ab), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="eps_fn"):
        heun_step(x, eps, ab, ab_next)
    # x0_to_eps inverts eps_to_x0
    torch.testing.assert_close(x0_to_eps(x, eps_to_x0(x, eps, ab), ab), eps, rtol=1e-10, atol=1e-12)


def test_pre_hook_replaces_the_prediction():
    den = GMMDenoiser(mixture=ring())
    plain = sample(den, n=8, sampler="heun", num_steps=6, generator=0)
    same = sample(den, n=8, sampler="heun", num_steps=6, generator=0, pre_hook=lambda info: info.eps)
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-12)
    seen = []

    def pre(info):  # x0_hat is the model's Tweedie estimate at the step's x_t
        seen.append(float((info.x0_hat - den.predict_x0(info.x, info.t)).abs().max()))
        return None

    sample(den, n=8, sampler="ddpm", num_steps=6, generator=0, pre_hook=pre)
    assert len(seen) == 6 and max(seen) < 1e-9


# ------------------------------------------------------------------ robustness (issue 14)
def test_sampler_input_errors():
    den = GMMDenoiser(mixture=ring())
    out = sample(den, n=np.int64(3), num_steps=3, generator=0)
    assert out.shape == (3, 2)
    with pytest.raises(ValueError, match="n=3 but x_T has 4 rows"):
        sample(den, torch.zeros(4, 2, dtype=torch.float64), n=3)
    with pytest.raises(ValueError, match="eta"):
        sample(den, n=3, eta=float("nan"))

    class Broken:
        schedule, dim = den.schedule, den.dim

        def predict_eps(self, x, t, cond=None):
            return torch.full_like(x, float("inf"))

    with pytest.raises(FloatingPointError, match="Broken.predict_eps"):
        sample(Broken(), n=3, num_steps=3)


def test_timestep_and_schedule_validation():
    sch = VPSchedule.linear()
    assert float(sch.alpha_bar(-1)) == 1.0 and float(sch.alpha_bar(np.int64(0))) == float(sch.alpha_bars[0])
    for bad in (1000, -2, -1000):
        with pytest.raises(ValueError, match="timesteps must lie in"):
            sch.alpha_bar(bad)
    with pytest.raises(ValueError, match="integers"):
        sch.alpha_bar(2.7)
    with pytest.raises(TypeError, match="timestep"):
        sch.alpha_bar("5")
    with pytest.raises(ValueError, match="num_train_timesteps"):
        VPSchedule.linear(num_train_timesteps=-1)
    with pytest.raises(ValueError, match="s must be"):
        VPSchedule.cosine(s=-1)
    den = GMMDenoiser(mixture=ring())
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="one timestep per row"):
        den.predict_eps(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="timesteps must lie in \\[0, 999\\]"):
        den.predict_eps(x, -1)
    with pytest.raises(ValueError, match="integers"):
        den.predict_eps(x, 2.5)
    torch.testing.assert_close(den.predict_eps(x, torch.tensor([7])), den.predict_eps(x, 7))
    with pytest.raises(TypeError, match="VPSchedule"):
        GMMDenoiser(mixture=ring(), schedule="linear")


def test_gmm_denoiser_cache_is_bounded():
    den = GMMDenoiser(mixture=ring())
    x = torch.zeros(2, 2, dtype=torch.float64)
    first = den.predict_eps(x, 0)
    for t in range(200):
        den.predict_eps(x, t)
    assert len(den._cache) == den.cache_size == 64
    torch.testing.assert_close(den.predict_eps(x, 0), first)  # recomputed after eviction, same value


def test_mlp_denoiser_validation():
    for kw, msg in [({"dim": 1.5}, "dim"), ({"dim": 2, "hidden": 0}, "hidden"), ({"dim": 2, "depth": -1}, "depth"),
                    ({"dim": 2, "time_embed_dim": 0}, "time_embed_dim"), ({"dim": 2, "cond_dim": -1}, "cond_dim")]:
        with pytest.raises(ValueError, match=msg):
            MLPDenoiser(**kw)
    net = MLPDenoiser(dim=2, hidden=8, depth=1)
    X = np.random.default_rng(0).normal(size=(32, 2))
    for kw, msg in [({"epochs": 0}, "epochs"), ({"epochs": 1.5}, "epochs"), ({"batch_size": 0}, "batch_size"),
                    ({"batch_size": -1}, "batch_size")]:
        with pytest.raises(ValueError, match=msg):
            net.fit(X, **kw)
    e_np = net.predict_eps(X[:4], 10)
    e_list = net.predict_eps(X[:4].tolist(), 10)
    e_t = net.predict_eps(torch.as_tensor(X[:4], dtype=torch.float32), 10)
    assert torch.equal(e_np, e_t) and torch.equal(e_list, e_t)
    for bad in (1000, -1):
        with pytest.raises(ValueError, match="timesteps must lie in"):
            net.predict_eps(X[:4], bad)


def test_mlp_denoiser_warns_when_training_diverges():
    net = MLPDenoiser(dim=2, hidden=8, depth=1)
    X = np.random.default_rng(0).normal(size=(64, 2)) * 1e30
    with pytest.warns(RuntimeWarning, match="diverged"):
        net.fit(X, epochs=2, batch_size=32, lr=1e30, random_state=0)


def test_heun_corrector_carries_the_pre_hook_shift():
    """A pre_hook adding a constant shift c to eps equals Heun on the model eps + c (corrector included)."""
    den = GMMDenoiser(mixture=ring())
    c = torch.tensor([[0.3, -0.2]], dtype=torch.float64)

    class Shifted:
        schedule, dim = den.schedule, den.dim

        def predict_eps(self, x, t, cond=None):
            return den.predict_eps(x, t) + c

    a = sample(Shifted(), n=8, sampler="heun", num_steps=8, generator=0)
    b = sample(den, n=8, sampler="heun", num_steps=8, generator=0, pre_hook=lambda info: info.eps + c)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
