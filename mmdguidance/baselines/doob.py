r"""Exact Doob h-transform guidance for targets that re-weight the base mixture's components.

Base :math:`p = \sum_k \pi_k N(m_k, S_k)`, target :math:`q = \sum_k \rho_k N(m_k, S_k)` (same components,
new weights; a mode subset is :math:`\rho_k = 0` outside it). With the density ratio
:math:`r = q/p`, Doob's h-function is

.. math:: h_t(x) = E[r(X_0) \mid X_t = x] = \frac{q_t(x)}{p_t(x)} = \sum_k \frac{\rho_k}{\pi_k}\, r^t_k(x),

with :math:`r^t_k` the posterior component probabilities of the *noised* base mixture. The guided
denoiser is :math:`\hat\epsilon_h = \hat\epsilon - \sqrt{1-\bar\alpha_t}\,\nabla\log h_t(x)`, which is exactly
the target's noised score: an oracle that samples the target exactly (up to the sampler's error).
It needs the base mixture and the true target weights — information MMD guidance does not have.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._utils import as_tensor
from ..diffusion.denoisers import GMMDenoiser, _per_row_t


class DoobOracleDenoiser:
    """Base analytic denoiser plus the exact :math:`\\nabla\\log h_t` for re-weighted components.

    Parameters
    ----------
    base : GMMDenoiser
        The pre-trained (here: analytic) base model.
    target_weights : array of shape (K,)
        Target weights of the base's components (non-negative, sum 1).
    """

    def __init__(self, *, base: GMMDenoiser, target_weights):
        if not isinstance(base, GMMDenoiser):
            raise TypeError("the exact Doob oracle needs an analytic GMMDenoiser base")
        w = np.asarray(target_weights, float)
        K = base.mixture.n_components
        if w.shape != (K,) or (w < 0).any() or not np.isclose(w.sum(), 1.0):
            raise ValueError(f"target_weights must be {K} non-negative numbers summing to 1, got {target_weights!r}")
        self.base = base
        self.schedule = base.schedule
        self.dim = base.dim
        self.ratio = w / base.mixture.weights  # rho_k / pi_k

    def log_h_grad(self, x, t: int) -> torch.Tensor:
        r""":math:`\nabla_x \log h_t(x)` with :math:`h_t = \sum_k (\rho_k/\pi_k) r_k^t(x)`, shape ``(B, D)``.

        Using :math:`\nabla r_k = r_k(s_k - \bar s)` with :math:`s_k = -(\text{cov}_k^t)^{-1}(x - \text{mean}_k^t)`
        and :math:`\bar s = \sum_k r_k s_k`: :math:`\nabla\log h = \sum_k \tilde r_k s_k - \bar s`, where
        :math:`\tilde r_k \propto (\rho_k/\pi_k) r_k`.
        """
        x = as_tensor(x)
        noised = self.base._noised(int(t))
        post = as_tensor(noised.posterior(x)).to(x)  # (B, K)
        covs = torch.as_tensor(noised.covariances).to(x)
        means = torch.as_tensor(noised.means).to(x)
        diff = x[:, None, :] - means[None]  # (B, K, D)
        sk = -torch.linalg.solve(covs[None].expand(x.shape[0], -1, -1, -1), diff[..., None])[..., 0]  # (B, K, D)
        sbar = (post[..., None] * sk).sum(1)
        wt = post * torch.as_tensor(self.ratio).to(x)[None]
        wt = wt / wt.sum(1, keepdim=True).clamp_min(1e-300)
        return (wt[..., None] * sk).sum(1) - sbar

    def predict_eps(self, x, t, cond=None):
        x = as_tensor(x)
        tt = _per_row_t(t, x.shape[0], "cpu")
        eps = self.base.predict_eps(x, t)
        out = torch.empty_like(x)
        for tv in torch.unique(tt).tolist():
            rows = (tt == tv).nonzero().reshape(-1)
            ab = float(self.schedule.alpha_bars[tv])
            out[rows] = eps[rows] - math.sqrt(1 - ab) * self.log_h_grad(x[rows], tv)
        return out
