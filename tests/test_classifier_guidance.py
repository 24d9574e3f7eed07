"""Latent classifier guidance (mmdguidance.adapters.classifier_guidance): the guidance gradient against finite
differences, the density ratio against its closed form, the model-output shift against Dhariwal & Nichol's
epsilon formula, the scheduler hook, training, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("diffusers")
import torch  # noqa: E402

from mmdguidance.adapters.classifier_guidance import (  # noqa: E402
    LatentAttributeClassifier,
    LatentClassifierGuidance,
    fit_latent_classifier,
)


@pytest.fixture
def clf():
    net = LatentAttributeClassifier(in_channels=4, heads={"colour": 4, "shape": 3}, width=8, seed=0).eval()
    net.priors_ = {"colour": np.array([0.1, 0.2, 0.3, 0.4]), "shape": np.array([0.5, 0.25, 0.25])}
    return net


def test_gradient_matches_finite_differences(clf):
    targets = {"colour": [0.0, 0.7, 0.3, 0.0], "shape": np.eye(3)[[0, 1, 2, 0, 1]]}  # shared and per-sample rows
    cg = LatentClassifierGuidance(classifier=clf, targets=targets, scale=1.0)
    x = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    g = cg.gradient(x, 0.3)
    assert g.shape == x.shape
    h = 1e-2
    rng = np.random.default_rng(0)
    for _ in range(12):
        b, c, i, j = (int(rng.integers(0, n)) for n in x.shape)
        e = torch.zeros_like(x)
        e[b, c, i, j] = h
        with torch.no_grad():
            fd = (cg.log_density(x + e, 0.3) - cg.log_density(x - e, 0.3))[b] / (2 * h)
        assert float(fd) == pytest.approx(float(g[b, c, i, j]), rel=2e-2, abs=2e-4)


def test_log_density_is_the_prior_corrected_mixture(clf):
    w = np.array([0.0, 0.7, 0.3, 0.0])
    cg = LatentClassifierGuidance(classifier=clf, targets={"colour": w})
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p = clf(x, torch.full((3,), 0.6))["colour"].softmax(-1).double().numpy()  # (3, 4)
        got = cg.log_density(x, 0.6).double().numpy()
    np.testing.assert_allclose(got, np.log(p @ (w / clf.priors_["colour"])), rtol=1e-5)
    one = LatentClassifierGuidance(classifier=clf, targets={"colour": np.eye(4)[2]})
    with torch.no_grad():
        np.testing.assert_allclose(one.log_density(x, 0.6).numpy(), np.log(p[:, 2] / 0.3), rtol=1e-5)


def test_model_output_shift_is_dhariwal_nichol_on_ddim(clf):
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sch.set_timesteps(10)
    t = int(sch.timesteps[3])
    ab = float(sch.alphas_cumprod[t])
    gen = torch.Generator().manual_seed(2)
    sample, eps = torch.randn(4, 4, 8, 8, generator=gen), torch.randn(4, 4, 8, 8, generator=gen)
    cg = LatentClassifierGuidance(classifier=clf, targets={"shape": np.eye(3)[1]}, scale=2.5)
    out = cg.guide_model_output(sch, eps, sch.timesteps[3], sample, 3)
    want = eps - 2.5 * math.sqrt(1 - ab) * cg.gradient(sample, ab)  # VP sample: r = 1
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    cg0 = LatentClassifierGuidance(classifier=clf, targets={"shape": np.eye(3)[1]}, scale=0.0)
    assert cg0.guide_model_output(sch, eps, sch.timesteps[3], sample, 3) is eps


def test_attached_counts_the_window_and_restores_the_step(clf):
    from diffusers import DDIMScheduler

    class Pipe:
        scheduler = DDIMScheduler()

    pipe = Pipe()
    pipe.scheduler.set_timesteps(10)
    before = pipe.scheduler.step
    cg = LatentClassifierGuidance(classifier=clf, targets={"colour": np.eye(4)[0]}, scale=1.0, window=(0.0, 0.5))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with cg.attached(pipe):
        for t in pipe.scheduler.timesteps:
            x = pipe.scheduler.step(torch.zeros_like(x), t, x).prev_sample
    assert cg.steps_ == 5 and torch.isfinite(x).all()
    assert pipe.scheduler.step == before and "step" not in vars(pipe.scheduler)


def test_fit_learns_a_separable_label():
    gen = torch.Generator().manual_seed(4)
    y = np.arange(200) % 2
    z = torch.randn(200, 4, 8, 8, generator=gen) * 0.3 + torch.as_tensor(2.0 * y - 1.0)[:, None, None, None].float()
    ab = torch.linspace(0.999, 0.5, 50)
    net = fit_latent_classifier(z, {"sign": y}, alphas_cumprod=ab, steps=60, batch_size=64, lr=3e-3, width=8,
                                random_state=0)
    np.testing.assert_allclose(net.priors_["sign"], [0.5, 0.5])
    with torch.no_grad():
        acc = (net(z, torch.full((200,), 0.9))["sign"].argmax(1).numpy() == y).mean()
    assert acc > 0.95 and net.loss_history_[-1] < net.loss_history_[0]


def test_bad_input(clf):
    with pytest.raises(ValueError, match="unknown attribute"):
        LatentClassifierGuidance(classifier=clf, targets={"size": [0.5, 0.5]})
    with pytest.raises(ValueError, match="summing to 1"):
        LatentClassifierGuidance(classifier=clf, targets={"colour": [1.0, 1.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match="window"):
        LatentClassifierGuidance(classifier=clf, targets={"colour": np.eye(4)[0]}, window=(0.5, 0.2))
    with pytest.raises(TypeError, match="LatentAttributeClassifier"):
        LatentClassifierGuidance(classifier=object(), targets={"colour": np.eye(4)[0]})
    with pytest.raises(ValueError, match="finite"):
        fit_latent_classifier(torch.full((4, 4, 2, 2), float("nan")), {"a": [0, 1, 0, 1]}, alphas_cumprod=[0.5])
    with pytest.raises(ValueError, match="class codes"):
        fit_latent_classifier(torch.zeros(4, 4, 2, 2), {"a": [0, 1]}, alphas_cumprod=[0.5])
