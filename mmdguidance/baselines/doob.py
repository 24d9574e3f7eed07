r"""Doob h-transform guidance: the exact oracle for re-weighted mixtures and Doob's matching (learned).

Let :math:`p` be the base model's data distribution and :math:`q` the target, with density ratio
:math:`r = q/p`. Doob's h-function of the forward (noising) process is

.. math:: h_t(x) = E_p[r(X_0) \mid X_t = x] = \frac{q_t(x)}{p_t(x)},

so :math:`\nabla\log q_t = \nabla\log p_t + \nabla\log h_t`: adding :math:`\nabla\log h_t` to the base
score turns the base reverse process into the target's. In :math:`\epsilon` form
(:class:`~mmdguidance.baselines._guided.GuidedDenoiser`)
:math:`\hat\epsilon_h = \hat\epsilon - \sqrt{1-\bar\alpha_t}\,\nabla\log h_t(x)`.

* :class:`DoobOracleDenoiser` — the *exact* :math:`h_t` when the base is a Gaussian mixture
  :math:`p = \sum_k \pi_k N(m_k, S_k)` and the target re-weights its components,
  :math:`q = \sum_k \rho_k N(m_k, S_k)` (a mode subset is :math:`\rho_k = 0` outside it):
  :math:`h_t(x) = \sum_k (\rho_k/\pi_k)\, r^t_k(x)` with :math:`r^t_k` the posterior component
  probabilities of the *noised* base mixture. It needs the base mixture and the true target
  weights — information MMD guidance does not have — and samples the target exactly (up to the
  sampler's discretisation error).
* :class:`DoobMatchingDenoiser` — :math:`h_t` and :math:`\nabla h_t` *learned* from references by
  gradient-penalised regression (see its docstring for exactly what is fitted).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .._utils import as_tensor, check_array_2d, check_positive, check_random_state_torch, logger
from ..diffusion.denoisers import GMMDenoiser
from ._guided import (
    GuidedDenoiser,
    TimeMLP,
    balanced_logistic_loss,
    check_int,
    draw_base_samples,
    optimize,
)

__all__ = ["DoobOracleDenoiser", "DoobMatchingDenoiser"]


class DoobOracleDenoiser(GuidedDenoiser):
    r"""Base analytic denoiser plus the exact :math:`\nabla\log h_t` for re-weighted components.

    Parameters
    ----------
    base : GMMDenoiser
        The pre-trained (here: analytic) base model.
    target_weights : array of shape (K,)
        Target weights :math:`\rho` of the base's components (non-negative, sum 1).
    scale : float >= 0, default 1
        1 is the exact h-transform; other values are a tempered/over-guided variant.

    Notes
    -----
    With :math:`s_k(x) = -C_k^{-1}(x - \mu_k)` the score of noised component :math:`k`
    (:math:`\mu_k = \sqrt{\bar\alpha}m_k`, :math:`C_k = \bar\alpha S_k + (1-\bar\alpha)I`),
    :math:`\nabla r_k = r_k(s_k - \bar s)` with :math:`\bar s = \sum_k r_k s_k`, hence

    .. math:: \nabla\log h_t(x) = \sum_k \tilde r_k(x)\, s_k(x) - \bar s(x), \qquad
              \tilde r_k \propto (\rho_k/\pi_k)\, r_k,

    computed in log space (no underflow far from the target's components).
    """

    def __init__(self, *, base, target_weights, scale: float = 1.0):
        if not isinstance(base, GMMDenoiser):
            raise TypeError(f"the exact Doob oracle needs an analytic GMMDenoiser base, got {type(base).__name__}")
        super().__init__(base=base, scale=scale)
        K = base.mixture.n_components
        w = np.asarray(target_weights, dtype=float)
        if w.shape != (K,) or not np.all(np.isfinite(w)) or (w < 0).any() or not np.isclose(w.sum(), 1.0):
            raise ValueError(f"target_weights must be {K} non-negative numbers summing to 1 (one per base component), got {target_weights!r}")
        self.target_weights = w / w.sum()
        with np.errstate(divide="ignore"):
            self.log_ratio = np.log(self.target_weights) - np.log(base.mixture.weights)  # (K,), -inf where rho_k = 0
        self._params: dict[int, tuple] = {}

    def _noised_params(self, t: int):
        """Per timestep: log pi_k - logdet_k/2 (K,), means (K, D), precisions (K, D, D) of the noised base (float64)."""
        if t not in self._params:
            m = self.base.noised_mixture(int(t))
            prec = np.linalg.inv(m.covariances)  # (K, D, D)
            _, logdet = np.linalg.slogdet(m.covariances)  # (K,)
            with np.errstate(divide="ignore"):
                c = np.log(m.weights) - 0.5 * logdet
            self._params[t] = (torch.as_tensor(c), torch.as_tensor(np.array(m.means)), torch.as_tensor(prec))
        return self._params[t]

    def log_h(self, x, t: int) -> torch.Tensor:
        r""":math:`\log h_t(x) = \log\sum_k (\rho_k/\pi_k) r^t_k(x)`, shape ``(B,)`` (``-inf`` off the target's support)."""
        lj, _ = self._log_joint(as_tensor(x), int(t))
        lr = torch.as_tensor(self.log_ratio).to(lj)
        return torch.logsumexp(lj + lr, 1) - torch.logsumexp(lj, 1)

    def _log_joint(self, x: torch.Tensor, t: int):
        c, means, prec = (a.to(x) for a in self._noised_params(t))
        diff = x[:, None, :] - means[None]  # (B, K, D)
        sol = torch.einsum("bkd,kde->bke", diff, prec)  # (B, K, D) = C_k^{-1}(x - mu_k)
        lj = c[None] - 0.5 * (diff * sol).sum(-1)  # (B, K) log pi_k N(x; mu_k, C_k) + const
        return lj, sol

    def log_h_grad(self, x, t: int) -> torch.Tensor:
        r""":math:`\nabla_x \log h_t(x)` at one timestep ``t``, shape ``(B, D)``."""
        x = as_tensor(x)
        lj, sol = self._log_joint(x, int(t))
        post = torch.softmax(lj, 1)  # (B, K) r_k
        wt = torch.softmax(lj + torch.as_tensor(self.log_ratio).to(lj)[None], 1)  # (B, K) r~_k
        return -((wt - post)[..., None] * sol).sum(1)  # sum_k (r~_k - r_k) s_k,  s_k = -sol_k

    def guidance_grad(self, x, t):
        out = torch.empty_like(x)
        for tv in torch.unique(t).tolist():
            rows = (t == tv).nonzero().reshape(-1).to(x.device)
            out[rows] = self.log_h_grad(x[rows], int(tv))
        return out


class DoobMatchingDenoiser(GuidedDenoiser):
    r"""Doob's matching: :math:`h_t` and :math:`\nabla h_t` learned from references, then :math:`\nabla\log h = \nabla h/h`.

    What is fitted (:meth:`fit`), all seeded by ``random_state``:

    1. **Base samples.** ``n_base_samples`` draws :math:`x_0^{(i)}` of the base model (DDIM,
       ``base_sampler_steps`` steps), unless given.
    2. **Density ratio.** A time-independent MLP classifier :math:`c(x)` separates the references
       (label 1) from the base samples (label 0) with a *class-balanced* logistic loss, so its logit
       estimates :math:`\log q(x)/p(x)`; ``ratio_steps`` full-batch AdamW steps with weight decay
       ``ratio_weight_decay``. Then :math:`\hat r = \min(e^{c}, r_{\max})`, renormalised so that
       :math:`\frac1M\sum_i \hat r(x_0^{(i)}) = 1` (the identity :math:`E_p[r] = 1`).
    3. **Gradient-penalised regression.** :math:`h_\theta(x, t) = \mathrm{softplus}(f_\theta(x,t)) + h_{\min}`
       with a small MLP :math:`f_\theta` on :math:`[x, \mathrm{emb}(t)]`, trained on forward-noised base
       samples :math:`x_t = \sqrt{\bar\alpha_t}x_0 + \sigma_t\epsilon` (:math:`\sigma_t = \sqrt{1-\bar\alpha_t}`,
       :math:`t` uniform) by minimising

       .. math:: E\Big[\big(h_\theta(x_t,t) - \hat r(x_0)\big)^2\Big]
                 + \lambda\, E\Big[\big\|\sigma_t\nabla_x h_\theta(x_t,t)
                 + (\hat r(x_0) - \bar h)(\epsilon - \hat\epsilon(x_t,t))\big\|^2\Big],

       :math:`\bar h` = :math:`h_\theta(x_t,t)` without gradient and :math:`\hat\epsilon` the base model's
       prediction. The first term's minimiser is :math:`h_t = E[\hat r(X_0)\mid X_t]`. The second is the
       gradient penalty: since :math:`\nabla_x \log p(x_t\mid x_0) = -\epsilon/\sigma_t` and
       :math:`E[\epsilon\mid x_t] = \hat\epsilon`, differentiating :math:`h_t` gives
       :math:`\sigma_t\nabla h_t(x) = -E[(\hat r(X_0) - h_t(x))(\epsilon - \hat\epsilon)\mid X_t = x]`,
       so the penalty's target is an unbiased (control-variate) regression target for
       :math:`\sigma_t\nabla h_t` and the two heads are estimated jointly and consistently.
       ``steps`` AdamW steps (cosine decay) on mini-batches of ``batch_size`` rows drawn from a pool of
       ``min(steps * batch_size, 2**18)`` noised base samples made once (so the base model is
       evaluated in one pass).

    Guidance: :math:`\hat\epsilon_h = \hat\epsilon - s\,\sigma_t\,\nabla_x h_\theta / h_\theta` (autograd of the MLP).

    Parameters
    ----------
    base : Denoiser
    scale : float >= 0, default 1
    hidden, depth : int
        Width and number of hidden layers of both MLPs.
    n_base_samples : int
    base_sampler_steps : int
    ratio_steps : int
    ratio_weight_decay : float
    max_ratio : float > 1
        Clip :math:`r_{\max}` of the estimated density ratio (before renormalisation).
    steps, batch_size, lr : regression optimisation
    gradient_penalty : float >= 0
        :math:`\lambda` (0 = plain regression of :math:`h`; its autograd gradient is then used as is).
    h_min : float > 0
        Floor of :math:`h_\theta` (keeps :math:`\nabla h/h` finite).
    random_state : int, Generator or None

    Attributes
    ----------
    ratio_net_, h_net_ : torch.nn.Module
    ratio_normaliser_ : float
        Mean of the clipped ratio over the base samples (divided out).
    loss_history_ : list of float
        Regression loss, averaged over blocks of 50 steps.
    """

    def __init__(
        self,
        *,
        base,
        scale: float = 1.0,
        hidden: int = 64,
        depth: int = 2,
        n_base_samples: int = 2000,
        base_sampler_steps: int = 25,
        ratio_steps: int = 200,
        ratio_weight_decay: float = 1e-2,
        max_ratio: float = 100.0,
        steps: int = 300,
        batch_size: int = 512,
        lr: float = 3e-3,
        gradient_penalty: float = 1.0,
        h_min: float = 1e-3,
        random_state=None,
    ):
        super().__init__(base=base, scale=scale)
        self.hidden = check_int(hidden, "hidden", 1)
        self.depth = check_int(depth, "depth", 1)
        self.n_base_samples = check_int(n_base_samples, "n_base_samples", 2)
        self.base_sampler_steps = check_int(base_sampler_steps, "base_sampler_steps", 1)
        self.ratio_steps = check_int(ratio_steps, "ratio_steps", 1)
        self.ratio_weight_decay = check_positive(ratio_weight_decay, name="ratio_weight_decay", allow_zero=True)
        self.max_ratio = check_positive(max_ratio, name="max_ratio")
        if self.max_ratio <= 1:
            raise ValueError(f"max_ratio must be > 1, got {max_ratio!r}")
        self.steps = check_int(steps, "steps", 1)
        self.batch_size = check_int(batch_size, "batch_size", 8)
        self.lr = check_positive(lr, name="lr")
        self.gradient_penalty = check_positive(gradient_penalty, name="gradient_penalty", allow_zero=True)
        self.h_min = check_positive(h_min, name="h_min")
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, refs, *, base_samples=None):
        """Fit the density ratio and the h-regression (see the class docstring).

        Parameters
        ----------
        refs : array of shape (N, D), N >= 2
            Reference samples of the target.
        base_samples : array of shape (M, D), optional
            Samples of the base model (drawn with the sampler if omitted).

        Returns
        -------
        self
        """
        D = self.dim
        Y = check_array_2d(refs, name="references", min_samples=2, n_features=D, owner="the base model").to(torch.float32)
        g = check_random_state_torch(self.random_state)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
        if base_samples is None:
            X0 = draw_base_samples(self.base, self.n_base_samples, num_steps=self.base_sampler_steps, random_state=g)
        else:
            X0 = check_array_2d(base_samples, name="base_samples", min_samples=2, n_features=D, owner="the base model")
        X0 = X0.to(torch.float32)
        # ---- 2. density ratio r(x) = q/p by balanced logistic regression
        self.ratio_net_ = TimeMLP(dim=D, hidden=self.hidden, depth=self.depth, time_embed_dim=0, random_state=seed)
        Z = torch.cat([Y, X0], 0)  # (N + M, D)
        lab = torch.cat([torch.ones(len(Y)), torch.zeros(len(X0))])
        optimize(self.ratio_net_, lambda _: balanced_logistic_loss(self.ratio_net_(Z), lab), steps=self.ratio_steps,
                 lr=self.lr, weight_decay=self.ratio_weight_decay, cosine=False)
        with torch.no_grad():
            r_raw = self._raw_ratio(X0)  # (M,)
            self.ratio_normaliser_ = float(r_raw.mean())
            r0 = r_raw / self.ratio_normaliser_  # (M,) regression targets
        # ---- 3. gradient-penalised regression of h_t
        self.h_net_ = TimeMLP(dim=D, hidden=self.hidden, depth=self.depth, time_embed_dim=16,
                              num_train_timesteps=self.schedule.num_train_timesteps, random_state=seed + 1)
        xt_pool, t_pool, r_pool, sig_pool, res_pool = self._regression_pool(X0, r0, g)
        B, P = self.batch_size, len(t_pool)

        def loss_fn(_):
            b = torch.randint(0, P, (B,), generator=g)
            xt, t, r, sig = xt_pool[b].clone().requires_grad_(True), t_pool[b], r_pool[b], sig_pool[b]  # (B, D), (B,), (B,), (B, 1)
            h = self._h(xt, t)  # (B,)
            loss = ((h - r) ** 2).mean()
            if self.gradient_penalty > 0:
                (gh,) = torch.autograd.grad(h.sum(), xt, create_graph=True)  # (B, D)
                target = -(r - h.detach())[:, None] * res_pool[b]  # (B, D) unbiased for sigma * grad h
                loss = loss + self.gradient_penalty * ((sig * gh - target) ** 2).sum(1).mean()
            return loss

        hist = optimize(self.h_net_, loss_fn, steps=self.steps, lr=self.lr, weight_decay=0.01)  # AdamW default decay
        self.loss_history_ = hist
        logger.info("DoobMatchingDenoiser fitted: ratio normaliser %.3g, final loss %.4g", self.ratio_normaliser_, hist[-1])
        return self

    def _regression_pool(self, X0, r0, g):
        """Forward-noised base samples with their targets, drawn once: ``min(steps * batch_size, 2**18)`` rows.

        Returns ``x_t`` (P, D), ``t`` (P,) uniform, ``r(x_0)`` (P,), ``sigma_t`` (P, 1) and
        ``eps - eps_hat(x_t, t)`` (P, D), the base prediction evaluated in one pass.
        """
        P = min(self.steps * self.batch_size, 2**18)
        idx = torch.randint(0, len(X0), (P,), generator=g)
        x0 = X0[idx]  # (P, D)
        t = torch.randint(0, self.schedule.num_train_timesteps, (P,), generator=g).sort().values  # sorted: few distinct t per chunk
        eps = torch.randn(x0.shape, generator=g)
        ab = self.schedule.alpha_bars.to(torch.float32)[t][:, None]  # (P, 1)
        sig = (1 - ab).sqrt()
        xt = self.schedule.add_noise(x0, t, eps)  # (P, D)
        res = torch.empty_like(eps)
        with torch.no_grad():
            for s in range(0, P, 2**15):
                res[s : s + 2**15] = eps[s : s + 2**15] - self.base.predict_eps(xt[s : s + 2**15], t[s : s + 2**15]).to(eps)
        return xt, t, r0[idx], sig, res

    def _raw_ratio(self, X: torch.Tensor) -> torch.Tensor:
        return self.ratio_net_(X).clamp(max=math.log(self.max_ratio)).exp()

    def _check_fitted(self):
        if not hasattr(self, "h_net_"):
            raise RuntimeError("DoobMatchingDenoiser is not fitted: call fit(refs) first")

    def _h(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.h_net_(x, t)) + self.h_min

    # ------------------------------------------------------------------ evaluation
    def density_ratio(self, X):
        r"""Estimated :math:`\hat r(x) = q/p` at clean points, shape ``(n,)`` (numpy in -> numpy out)."""
        self._check_fitted()
        Xt = check_array_2d(X, name="X", n_features=self.dim, owner="the base model")
        with torch.no_grad():
            r = self._raw_ratio(Xt.to(torch.float32)) / self.ratio_normaliser_
        out = r.to(Xt.dtype)
        return out if isinstance(X, torch.Tensor) else out.numpy()

    def h(self, X, t):
        r"""Learned :math:`h_\theta(x, t)`, shape ``(n,)`` (``t`` an int or per-row timesteps)."""
        self._check_fitted()
        Xt = check_array_2d(X, name="X", n_features=self.dim, owner="the base model")
        tt = torch.as_tensor(t, dtype=torch.long).expand(Xt.shape[0]) if np.ndim(t) == 0 else torch.as_tensor(t, dtype=torch.long)
        with torch.no_grad():
            out = self._h(Xt.to(torch.float32), tt).to(Xt.dtype)
        return out if isinstance(X, torch.Tensor) else out.numpy()

    def guidance_grad(self, x, t):
        self._check_fitted()
        with torch.enable_grad():
            xx = x.detach().to(torch.float32).requires_grad_(True)
            h = self._h(xx, t)  # (B,)
            (gh,) = torch.autograd.grad(h.sum(), xx)  # (B, D)
        return (gh / h.detach()[:, None]).to(x)
