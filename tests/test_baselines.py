"""Baselines: exact Doob oracle, Doob's matching, classifier guidance, fine-tuning."""

import numpy as np
import pytest
import torch

from mmdguidance.baselines import (
    ClassifierGuidedDenoiser,
    DoobMatchingDenoiser,
    DoobOracleDenoiser,
    NoisyDomainClassifier,
    draw_base_samples,
    finetune,
)
from mmdguidance.diffusion import GMMDenoiser, MLPDenoiser, sample
from mmdguidance.gmm import GaussianMixture
from mmdguidance.metrics import mode_weight_error

K = 6
SUBSET = np.array([0.5, 0.5, 0.0, 0.0, 0.0, 0.0])  # target: modes 0 and 1 of the base


@pytest.fixture(scope="module")
def base():
    a = 2 * np.pi * np.arange(K) / K
    return GaussianMixture(weights=np.full(K, 1 / K), means=3 * np.c_[np.cos(a), np.sin(a)], covariances=np.full(K, 0.1))


@pytest.fixture(scope="module")
def model(base):
    return GMMDenoiser(mixture=base)


@pytest.fixture(scope="module")
def refs(base):
    return base.reweighted(SUBSET).sample(60, random_state=1)


@pytest.fixture(scope="module")
def negatives(model):
    return draw_base_samples(model, 600, num_steps=20, random_state=2)


def mode_hist(X, base):
    return np.bincount(np.asarray(base.mode_assignment(X)), minlength=K) / len(X)


# --------------------------------------------------------------------------- exact oracle
def test_doob_oracle_eps_equals_target_denoiser(base, model):
    """Closed form: base eps - sqrt(1-ab) grad log h_t equals the target mixture's exact eps (zero weights included)."""
    w = np.array([0.4, 0.3, 0.1, 0.1, 0.1, 0.0])
    oracle = DoobOracleDenoiser(base=model, target_weights=w)
    target = GMMDenoiser(mixture=base.reweighted(w))
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    for t in (0, 100, 500, 999):
        torch.testing.assert_close(oracle.predict_eps(x, t), target.predict_eps(x, t), rtol=1e-7, atol=1e-9)
    tt = torch.tensor([0, 999] * 10)  # per-row timesteps
    torch.testing.assert_close(oracle.predict_eps(x, tt), target.predict_eps(x, tt), rtol=1e-7, atol=1e-9)


def test_doob_oracle_log_h_grad_matches_autograd(model):
    w = np.array([0.05, 0.15, 0.3, 0.3, 0.15, 0.05])
    oracle = DoobOracleDenoiser(base=model, target_weights=w)
    x = (torch.randn(15, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2).requires_grad_(True)
    for t in (5, 300):
        (g,) = torch.autograd.grad(oracle.log_h(x, t).sum(), x)
        torch.testing.assert_close(oracle.log_h_grad(x.detach(), t), g, rtol=1e-8, atol=1e-10)


def test_doob_oracle_samples_the_reweighted_target(base, model):
    """Mode weights of oracle samples are within 3 standard errors of the target weights, mode by mode."""
    w = np.array([0.45, 0.25, 0.2, 0.1, 0.0, 0.0])
    n = 1500
    X = sample(DoobOracleDenoiser(base=model, target_weights=w), n=n, sampler="ddpm", num_steps=200, generator=0).numpy()  # 200 steps: discretisation bias << SE
    p = mode_hist(X, base)
    se = np.sqrt(np.maximum(w * (1 - w), 1e-12) / n)
    assert np.all(np.abs(p - w) <= 3 * se + 1e-12), (p, w)
    # while the unguided base stays uniform (far from w): the test can fail
    X0 = sample(model, n=n, sampler="ddpm", num_steps=50, generator=0).numpy()
    assert mode_weight_error(X0, base, w) > 0.2


def test_doob_oracle_bad_input(base, model):
    with pytest.raises(ValueError, match="target_weights"):
        DoobOracleDenoiser(base=model, target_weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="target_weights"):
        DoobOracleDenoiser(base=model, target_weights=np.full(K, 0.5))
    with pytest.raises(TypeError, match="GMMDenoiser"):
        DoobOracleDenoiser(base=object(), target_weights=np.full(K, 1 / K))
    with pytest.raises(ValueError, match="scale"):
        DoobOracleDenoiser(base=model, target_weights=np.full(K, 1 / K), scale=-1.0)


def test_guided_scale_zero_is_the_base(model):
    oracle = DoobOracleDenoiser(base=model, target_weights=SUBSET, scale=0.0)
    x = torch.randn(7, 2, dtype=torch.float64)
    torch.testing.assert_close(oracle.predict_eps(x, 400), model.predict_eps(x, 400), rtol=0, atol=0)


# --------------------------------------------------------------------------- Doob's matching
@pytest.fixture(scope="module")
def doob_matching(model, refs, negatives):
    return DoobMatchingDenoiser(base=model, steps=200, random_state=0).fit(refs, base_samples=negatives)


@pytest.mark.slow
def test_doob_matching_ratio_normalised_and_h_close_to_exact(base, model, doob_matching, negatives):
    # E_p[r] = 1 on the base samples, by construction
    assert np.isclose(doob_matching.density_ratio(negatives.numpy()).mean(), 1.0, rtol=1e-4)
    # the learned h_t tracks the exact h_t = sum_k (rho_k / pi_k) r_k^t at a moderate noise level
    oracle = DoobOracleDenoiser(base=model, target_weights=SUBSET)
    t = 300
    ab = float(model.schedule.alpha_bars[t])
    x0 = torch.as_tensor(base.sample(400, random_state=5))
    xt = ab**0.5 * x0 + (1 - ab) ** 0.5 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(6), dtype=x0.dtype)
    exact = oracle.log_h(xt, t).exp().numpy()
    learned = doob_matching.h(xt.numpy(), t)
    rel = np.sqrt(np.mean((learned - exact) ** 2) / np.mean(exact**2))
    assert rel < 0.35, rel


@pytest.mark.slow
def test_doob_matching_moves_mode_weights_toward_target(base, model, doob_matching):
    X = sample(doob_matching, n=400, sampler="ddpm", num_steps=30, generator=0).numpy()
    X0 = sample(model, n=400, sampler="ddpm", num_steps=30, generator=0).numpy()
    assert mode_weight_error(X, base, SUBSET) < 0.5 * mode_weight_error(X0, base, SUBSET)


@pytest.mark.slow
def test_doob_matching_seeded_and_validated(model, refs, negatives):
    kw = dict(base=model, steps=20, ratio_steps=20)
    a = DoobMatchingDenoiser(random_state=4, **kw).fit(refs, base_samples=negatives)
    b = DoobMatchingDenoiser(random_state=4, **kw).fit(refs, base_samples=negatives)
    c = DoobMatchingDenoiser(random_state=5, **kw).fit(refs, base_samples=negatives)
    x = torch.randn(9, 2, dtype=torch.float64)
    torch.testing.assert_close(a.predict_eps(x, 200), b.predict_eps(x, 200), rtol=0, atol=0)
    assert not torch.allclose(a.predict_eps(x, 200), c.predict_eps(x, 200))
    with pytest.raises(RuntimeError, match="not fitted"):
        DoobMatchingDenoiser(**kw).predict_eps(x, 10)
    with pytest.raises(ValueError, match="features"):
        DoobMatchingDenoiser(**kw).fit(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="max_ratio"):
        DoobMatchingDenoiser(base=model, max_ratio=0.5)
    with pytest.raises(ValueError, match="steps"):
        DoobMatchingDenoiser(base=model, steps=0)
    with pytest.raises(TypeError, match="Denoiser"):
        DoobMatchingDenoiser(base="not a model")


# --------------------------------------------------------------------------- classifier guidance
@pytest.fixture(scope="module")
def clf_guided(model, refs, negatives):
    return ClassifierGuidedDenoiser(base=model, scale=2.0, steps=300, random_state=0).fit(refs, base_samples=negatives)


def test_classifier_logit_separates_domains(base, clf_guided):
    """At low noise the logit (~ log q_t/p_t) is positive on the target modes and negative on the others."""
    X, lab = base.sample(600, random_state=7, return_labels=True)
    c = clf_guided.classifier_.logit(X, 10)
    inside = SUBSET[lab] > 0
    assert np.median(c[inside]) > 0.5 and np.median(c[~inside]) < -0.5


def test_classifier_log_prob_gradient_identity(clf_guided):
    r"""grad log sigma(c) = (1 - sigma(c)) grad c."""
    clf = clf_guided.classifier_
    x = torch.randn(11, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    t = torch.full((11,), 250)
    gl = clf.grad(x, t, "logit")
    gp = clf.grad(x, t, "log_prob")
    s = torch.sigmoid(torch.as_tensor(clf.logit(x, t)))
    torch.testing.assert_close(gp, (1 - s)[:, None] * gl, rtol=1e-4, atol=1e-6)


def test_classifier_guidance_moves_mode_weights_toward_target(base, model, clf_guided):
    X = sample(clf_guided, n=400, sampler="ddpm", num_steps=30, generator=0).numpy()
    X0 = sample(model, n=400, sampler="ddpm", num_steps=30, generator=0).numpy()
    assert mode_weight_error(X, base, SUBSET) < 0.5 * mode_weight_error(X0, base, SUBSET)


def test_classifier_seeded_and_validated(model, refs, negatives):
    kw = dict(dim=2, schedule=model.schedule, steps=20)
    a = NoisyDomainClassifier(random_state=3, **kw).fit(refs, negatives)
    b = NoisyDomainClassifier(random_state=3, **kw).fit(refs, negatives)
    x = np.random.default_rng(0).standard_normal((5, 2))
    np.testing.assert_array_equal(a.logit(x, 100), b.logit(x, 100))
    assert isinstance(a.logit(x, 100), np.ndarray) and isinstance(a.logit(torch.as_tensor(x), 100), torch.Tensor)
    with pytest.raises(RuntimeError, match="not fitted"):
        NoisyDomainClassifier(**kw).logit(x, 1)
    with pytest.raises(ValueError, match="objective"):
        ClassifierGuidedDenoiser(base=model, objective="bogus")
    with pytest.raises(ValueError, match="features"):
        NoisyDomainClassifier(**kw).fit(np.zeros((4, 3)), negatives)
    with pytest.raises(RuntimeError, match="not fitted"):
        ClassifierGuidedDenoiser(base=model).predict_eps(torch.zeros(2, 2), 5)


# --------------------------------------------------------------------------- fine-tuning
@pytest.mark.slow
def test_finetune_copies_and_moves_toward_target(base, refs):
    mlp = MLPDenoiser(dim=2, hidden=64, depth=2, random_state=0).fit(base.sample(3000, random_state=0), epochs=25, batch_size=256, lr=3e-3, random_state=0)
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    ft = finetune(mlp, refs, epochs=300, lr=1e-3, random_state=0)
    assert ft is not mlp
    for k, v in mlp.state_dict().items():  # the original is untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    X0 = sample(mlp, n=400, sampler="ddpm", num_steps=30, generator=0).numpy()
    X = sample(ft, n=400, sampler="ddpm", num_steps=30, generator=0).numpy()
    assert mode_weight_error(X, base, SUBSET) < 0.5 * mode_weight_error(X0, base, SUBSET)
    ft2 = finetune(mlp, refs, epochs=3, random_state=1)
    ft3 = finetune(mlp, refs, epochs=3, random_state=1)
    x = torch.randn(4, 2)
    torch.testing.assert_close(ft2.predict_eps(x, 50), ft3.predict_eps(x, 50), rtol=0, atol=0)


def test_finetune_bad_input(model, refs):
    with pytest.raises(TypeError, match="MLPDenoiser"):
        finetune(model, refs)
    mlp = MLPDenoiser(dim=2, hidden=8, depth=1)
    with pytest.raises(ValueError, match="epochs"):
        finetune(mlp, refs, epochs=0)
    with pytest.raises(ValueError, match="features"):
        finetune(mlp, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="unconditional"):
        finetune(MLPDenoiser(dim=2, hidden=8, depth=1, cond_dim=2), refs)
