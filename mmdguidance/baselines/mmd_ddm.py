r"""MMD fine-tuning for few-step sampling (MMD-DDM, Aiello, Valsesia & Magli 2023).

A trained denoiser :math:`\hat\epsilon_\theta` sampled with few deterministic DDIM steps
(:math:`K` = 5 or 10 instead of hundreds) produces blurry or distorted samples. MMD-DDM fine-tunes
:math:`\theta` so that the :math:`K`-step sampler's *output distribution* matches the data:

.. math:: \min_\theta\; \mathrm{MMD}^2_b\big(\{S^K_\theta(z_i)\}_{i=1}^B,\; \{x_j\}_{j=1}^M\big),
          \qquad z_i \sim \mathcal N(0, I),\; x_j \text{ a data batch},

with :math:`S^K_\theta` the :math:`K`-step DDIM (:math:`\eta = 0`) map from noise to data,
**differentiated through all K steps** (backpropagation through the sampler; memory grows with K).
The step is :func:`mmdguidance.diffusion.samplers.ddim_step` (the one the standard sampler uses), run with autograd:

.. math:: x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t'}}\,\hat\epsilon_\theta(x_t, t),
          \qquad \hat x_0 = \big(x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon_\theta\big)/\sqrt{\bar\alpha_t},

on the same time grid ``schedule.timesteps(K)`` (a test checks :func:`ddim_sample` against it).
:math:`\mathrm{MMD}^2_b` is the project's biased estimator (:func:`mmdguidance.mmd.mmd2`) with a
multi-scale Gaussian kernel whose bandwidths are the median heuristic of the data times
(0.5, 1, 2) by default. The fine-tuned model is meant to be sampled with the same :math:`K`.
"""

from __future__ import annotations

import copy

import torch

from .._utils import check_array_2d, check_positive, check_random_state_torch, logger, progress
from ..kernels import GaussianKernel, Kernel
from ..mmd import mmd2
from ..diffusion.samplers import ddim_step
from ._guided import check_denoiser, check_int

__all__ = ["ddim_sample", "mmd_ddm"]


def ddim_sample(model, x_T: torch.Tensor, num_steps: int) -> torch.Tensor:
    r"""Deterministic DDIM (:math:`\eta = 0`) from ``x_T`` ``(B, D)`` in ``num_steps`` steps, **with autograd**.

    Same grid and update as ``mmdguidance.diffusion.sample(model, x_T, sampler='ddim', eta=0)``,
    which runs under ``no_grad``; here gradients flow to ``x_T`` and to the model's parameters.
    """
    sch = model.schedule
    ts = sch.timesteps(num_steps).tolist() + [-1]
    x = x_T
    for t, t_next in zip(ts[:-1], ts[1:]):
        ab, ab_next = sch.alpha_bar(t).to(x), sch.alpha_bar(t_next).to(x)  # 0-d
        x = ddim_step(x, model.predict_eps(x, t).to(x), ab, ab_next, eta=0.0)  # (B, D), differentiable
    return x


def mmd_ddm(model, X, *, num_steps: int = 10, kernel: Kernel | None = None, iterations: int = 300, batch_size: int = 128,
            lr: float = 1e-4, random_state=None, progress_bar=None):
    r"""Return a copy of ``model`` fine-tuned with the MMD-DDM loss for ``num_steps``-step DDIM sampling.

    Parameters
    ----------
    model : torch.nn.Module Denoiser
        A trained denoiser (e.g. :class:`~mmdguidance.diffusion.MLPDenoiser`); not modified.
    X : array of shape (n, D), n >= 2
        Training data.
    num_steps : int >= 1
        :math:`K`, DDIM steps of the sampler being tuned.
    kernel : Kernel, optional
        Default ``GaussianKernel(bandwidth='median', multipliers=(0.5, 1, 2))``, fitted on ``X``.
    iterations : int >= 1
        Optimiser steps; each draws ``batch_size`` fresh noises and ``batch_size`` data rows.
    batch_size : int >= 2
    lr : float > 0
        Adam learning rate (constant).
    random_state : int, Generator or None
        Seeds the noise and the data batches.

    Returns
    -------
    model : a new denoiser in eval mode, with ``mmd_history_`` (the loss :math:`\mathrm{MMD}^2_b` per iteration).
    """
    check_denoiser(model, name="model")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"mmd_ddm fine-tunes a torch.nn.Module denoiser, got {type(model).__name__}")
    K = check_int(num_steps, "num_steps", 1)
    iterations = check_int(iterations, "iterations", 1)
    bs = check_int(batch_size, "batch_size", 2)
    lr = check_positive(lr, name="lr")
    p0 = next(model.parameters())
    Xt = check_array_2d(X, name="X", min_samples=2, n_features=int(model.dim), owner="the model").to(dtype=p0.dtype, device=p0.device)
    if kernel is None:
        kernel = GaussianKernel(bandwidth="median", multipliers=(0.5, 1.0, 2.0))
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a mmdguidance Kernel, got {type(kernel).__name__}")
    from sklearn.base import clone

    kern = clone(kernel).fit(Xt)
    g = check_random_state_torch(random_state)
    new = copy.deepcopy(model)
    new.train()
    opt = torch.optim.Adam(new.parameters(), lr=lr)
    hist = []
    for _ in progress(range(iterations), total=iterations, desc="MMD-DDM fine-tuning", enable=progress_bar):
        z = torch.randn(bs, Xt.shape[1], generator=g, dtype=Xt.dtype).to(Xt.device)  # (B, D)
        data = Xt[torch.randint(0, Xt.shape[0], (bs,), generator=g).to(Xt.device)]  # (B, D)
        loss = mmd2(kern, ddim_sample(new, z, K), data)  # 0-d, differentiable in the parameters
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append(loss.item())
    new.eval()
    new.mmd_history_ = hist
    logger.info("MMD-DDM (K=%d): MMD^2 %.4g -> %.4g", K, hist[0], hist[-1])
    return new
