r"""Classifier guidance with a noise-conditioned domain classifier (references vs base-model samples).

A classifier :math:`c_\phi(x, t)` (logit) is trained on forward-noised inputs at uniform random
:math:`t` to tell references (domain "ref", label 1) from samples of the base model (label 0), with
a class-balanced logistic loss. At its optimum
:math:`c_\phi(x,t) = \log q_t(x)/p_t(x) = \log h_t(x)` (the Doob h-function, see
:mod:`mmdguidance.baselines.doob`) and :math:`p(\text{ref}\mid x_t,t) = \sigma(c_\phi) = h_t/(1+h_t)`.

Guidance (Dhariwal & Nichol 2021):

* ``objective='log_prob'`` (classifier guidance):
  :math:`\hat\epsilon_g = \hat\epsilon - s\sqrt{1-\bar\alpha_t}\,\nabla_x\log p(\text{ref}\mid x_t, t)`;
  note :math:`\nabla\log\sigma(c) = (1-\sigma(c))\nabla c` fades where the classifier is already
  confident, so :math:`s > 1` is usually needed.
* ``objective='logit'``: :math:`\nabla_x c_\phi`, i.e. the density-ratio estimate of
  :math:`\nabla\log h_t` — Doob guidance learned by classification; exact for a perfect classifier at ``scale=1``.
"""

from __future__ import annotations

import torch
from torch import nn

from .._utils import check_array_2d, check_option, check_positive, check_random_state_torch, logger
from ._guided import GuidedDenoiser, TimeMLP, balanced_logistic_loss, check_int, draw_base_samples, noised_batch, optimize

__all__ = ["NoisyDomainClassifier", "ClassifierGuidedDenoiser", "OBJECTIVES"]

OBJECTIVES = ("log_prob", "logit")


class NoisyDomainClassifier:
    r"""Noise-conditioned binary classifier :math:`c_\phi(x_t, t)`: references (1) vs base samples (0).

    Each training step draws ``batch_size/2`` references and ``batch_size/2`` base samples (with
    replacement), noises them at independent uniform timesteps and takes an AdamW step on the
    class-balanced logistic loss; ``steps`` steps, cosine learning-rate decay.

    Parameters
    ----------
    dim : int
    schedule : VPSchedule
    hidden, depth : int
        MLP width and hidden layers; the input is ``[x_t, emb(t)]``.
    steps, batch_size, lr, weight_decay : optimisation
    random_state : int, Generator or None

    Attributes
    ----------
    net_ : TimeMLP
    loss_history_ : list of float
        Loss averaged over blocks of 50 steps.
    """

    def __init__(self, *, dim, schedule, hidden=64, depth=2, steps=600, batch_size=256, lr=2e-3, weight_decay=1e-4, random_state=None):
        self.dim = check_int(dim, "dim", 1)
        self.schedule = schedule
        self.hidden = check_int(hidden, "hidden", 1)
        self.depth = check_int(depth, "depth", 1)
        self.steps = check_int(steps, "steps", 1)
        self.batch_size = check_int(batch_size, "batch_size", 2)
        self.lr = check_positive(lr, name="lr")
        self.weight_decay = check_positive(weight_decay, name="weight_decay", allow_zero=True)
        self.random_state = random_state

    def fit(self, refs, base_samples):
        """Train on references ``(N, D)`` (label 1) and base samples ``(M, D)`` (label 0); returns ``self``."""
        Y = check_array_2d(refs, name="references", min_samples=2, n_features=self.dim, owner="the classifier").to(torch.float32)
        X0 = check_array_2d(base_samples, name="base_samples", min_samples=2, n_features=self.dim, owner="the classifier").to(torch.float32)
        g = check_random_state_torch(self.random_state)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        self.net_ = TimeMLP(dim=self.dim, hidden=self.hidden, depth=self.depth, time_embed_dim=16,
                            num_train_timesteps=self.schedule.num_train_timesteps, random_state=seed)
        half = self.batch_size // 2
        lab = torch.cat([torch.ones(half), torch.zeros(half)])

        def loss_fn(_):
            x0 = torch.cat([Y[torch.randint(0, len(Y), (half,), generator=g)], X0[torch.randint(0, len(X0), (half,), generator=g)]])
            xt, t, _, _ = noised_batch(x0, self.schedule, g)
            return balanced_logistic_loss(self.net_(xt, t), lab)

        hist = optimize(self.net_, loss_fn, steps=self.steps, lr=self.lr, weight_decay=self.weight_decay)
        self.loss_history_ = hist
        logger.info("NoisyDomainClassifier fitted: final loss %.4f", hist[-1])
        return self

    def _check_fitted(self):
        if not hasattr(self, "net_"):
            raise RuntimeError("NoisyDomainClassifier is not fitted: call fit(refs, base_samples) first")

    def logit(self, X, t):
        r""":math:`c_\phi(x, t) \approx \log q_t(x)/p_t(x)`, shape ``(n,)`` (``t`` int or per-row); numpy in -> numpy out."""
        self._check_fitted()
        Xt = check_array_2d(X, name="X", n_features=self.dim, owner="the classifier")
        tt = torch.as_tensor(t, dtype=torch.long)
        tt = tt.expand(Xt.shape[0]) if tt.ndim == 0 else tt
        with torch.no_grad():
            out = self.net_(Xt.to(torch.float32), tt).to(Xt.dtype)
        return out if isinstance(X, torch.Tensor) else out.numpy()

    def grad(self, x: torch.Tensor, t: torch.Tensor, objective: str = "log_prob") -> torch.Tensor:
        r""":math:`\nabla_x \log\sigma(c_\phi)` (``'log_prob'``) or :math:`\nabla_x c_\phi` (``'logit'``) on a tensor ``(B, D)``."""
        self._check_fitted()
        check_option(objective, OBJECTIVES, name="objective")
        with torch.enable_grad():
            xx = x.detach().to(torch.float32).requires_grad_(True)
            c = self.net_(xx, t)  # (B,)
            f = nn.functional.logsigmoid(c) if objective == "log_prob" else c
            (gx,) = torch.autograd.grad(f.sum(), xx)  # (B, D)
        return gx.to(x)


class ClassifierGuidedDenoiser(GuidedDenoiser):
    r"""Base denoiser guided by a :class:`NoisyDomainClassifier` trained on references vs base samples.

    :math:`\hat\epsilon_g = \hat\epsilon - s\sqrt{1-\bar\alpha_t}\,\nabla_x \log p(\text{ref}\mid x_t,t)`
    (``objective='log_prob'``) or with :math:`\nabla_x c_\phi` (``objective='logit'``).

    Parameters
    ----------
    base : Denoiser
    scale : float >= 0
        Guidance scale :math:`s`.
    objective : {'log_prob', 'logit'}
    n_base_samples, base_sampler_steps : int
        Base samples drawn with DDIM for the negative class (unless passed to :meth:`fit`).
    hidden, depth, steps, batch_size, lr, weight_decay
        Passed to :class:`NoisyDomainClassifier`.
    random_state : int, Generator or None

    Attributes
    ----------
    classifier_ : NoisyDomainClassifier
    """

    def __init__(self, *, base, scale=1.0, objective="log_prob", n_base_samples=2000, base_sampler_steps=25, hidden=64, depth=2,
                 steps=600, batch_size=256, lr=2e-3, weight_decay=1e-4, random_state=None):
        super().__init__(base=base, scale=scale)
        self.objective = check_option(objective, OBJECTIVES, name="objective")
        self.n_base_samples = check_int(n_base_samples, "n_base_samples", 2)
        self.base_sampler_steps = check_int(base_sampler_steps, "base_sampler_steps", 1)
        self._clf_params = dict(hidden=hidden, depth=depth, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
        NoisyDomainClassifier(dim=self.dim, schedule=self.schedule, **self._clf_params)  # validate now
        self.random_state = random_state

    def fit(self, refs, *, base_samples=None):
        """Train the domain classifier on ``refs`` ``(N, D)`` vs base samples (drawn if omitted); returns ``self``."""
        check_array_2d(refs, name="references", min_samples=2, n_features=self.dim, owner="the base model")
        g = check_random_state_torch(self.random_state)
        if base_samples is None:
            base_samples = draw_base_samples(self.base, self.n_base_samples, num_steps=self.base_sampler_steps, random_state=g)
        self.classifier_ = NoisyDomainClassifier(dim=self.dim, schedule=self.schedule, random_state=g, **self._clf_params).fit(refs, base_samples)
        return self

    def guidance_grad(self, x, t):
        if not hasattr(self, "classifier_"):
            raise RuntimeError("ClassifierGuidedDenoiser is not fitted: call fit(refs) first")
        return self.classifier_.grad(x, t, self.objective)
