r"""Reverse-diffusion samplers with one signature and a per-step hook.

All samplers walk the grid ``schedule.timesteps(num_steps)`` (``t_0 = T-1 > ... > 0``) and a
final step to clean data (``t = -1``, :math:`\bar\alpha = 1`). With
:math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\hat\epsilon)/\sqrt{\bar\alpha_t}`:

* ``'ddim'`` (Song et al. 2021):
  :math:`x_{t'} = \sqrt{\bar\alpha_{t'}}\hat x_0 + \sqrt{1-\bar\alpha_{t'}-\sigma^2}\,\hat\epsilon + \sigma z`,
  :math:`\sigma = \eta\sqrt{\tfrac{1-\bar\alpha_{t'}}{1-\bar\alpha_t}}\sqrt{1-\tfrac{\bar\alpha_t}{\bar\alpha_{t'}}}`;
* ``'ddpm'``: ancestral sampling, the same formula with :math:`\eta = 1` (the DDPM posterior variance
  :math:`\tilde\beta`; with ``num_steps == T`` it is exactly Ho et al.'s sampler);
* ``'euler'`` / ``'heun'``: the probability-flow ODE in the variables
  :math:`\bar x = x/\sqrt{\bar\alpha}`, :math:`s = \sqrt{(1-\bar\alpha)/\bar\alpha}`, where
  :math:`d\bar x/ds = \hat\epsilon`. Euler is algebraically DDIM with :math:`\eta=0`; Heun is the
  2nd-order trapezoidal corrector (Karras et al. 2022), skipped on the final step to :math:`s = 0`.

After every step the optional ``hook(StepInfo)`` may return a replacement for the new ``x``
(this is where MMD guidance acts); returning ``None`` leaves the trajectory bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .._utils import as_tensor, check_option, check_random_state_torch, progress

__all__ = ["StepInfo", "sample", "SAMPLERS"]

SAMPLERS = ("ddpm", "ddim", "euler", "heun")


@dataclass
class StepInfo:
    """What a hook sees after one sampler step (all tensors ``(B, D)`` unless noted)."""

    step: int
    num_steps: int
    t: int
    t_next: int
    alpha_bar: torch.Tensor
    alpha_bar_next: torch.Tensor
    x: torch.Tensor
    x_prev: torch.Tensor
    eps: torch.Tensor
    x0_hat: torch.Tensor
    cond: torch.Tensor | None
    generator: torch.Generator


def _model_dtype(model, fallback):
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.dtype, p.device
    return fallback.dtype, fallback.device


@torch.no_grad()
def _eps(model, x, t, cond):
    e = model.predict_eps(x, t, cond)
    return e.to(dtype=x.dtype, device=x.device)


def sample(
    model,
    x_T=None,
    *,
    n=None,
    sampler: str = "ddim",
    num_steps: int = 50,
    eta: float = 0.0,
    cond=None,
    generator=None,
    hook: Callable[[StepInfo], torch.Tensor | None] | None = None,
    progress=None,
    return_trajectory: bool = False,
):
    """Run a reverse-diffusion sampler.

    Parameters
    ----------
    model : Denoiser
    x_T : tensor of shape (B, D), optional
        Initial noise; drawn as ``randn(n, model.dim)`` from ``generator`` if omitted.
    n : int, optional
        Number of samples when ``x_T`` is omitted.
    sampler : {'ddpm', 'ddim', 'euler', 'heun'}
    num_steps : int
    eta : float
        DDIM stochasticity (ignored by the other samplers).
    cond : tensor of shape (B, Dc), optional
        Conditioning passed to ``model.predict_eps``.
    generator : torch.Generator, int or None
    hook : callable, optional
        ``hook(StepInfo) -> tensor | None`` after every step.
    progress : bool, optional
        tqdm bar over steps (default: only when interactive).
    return_trajectory : bool
        Also return the list of ``x`` after every step.

    Returns
    -------
    x : tensor of shape (B, D) (and the trajectory list)
    """
    check_option(sampler, SAMPLERS, name="sampler")
    if float(eta) < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    g = check_random_state_torch(generator)
    if x_T is None:
        if n is None or isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive int when x_T is not given, got {n!r}")
        dtype = torch.float64
        if isinstance(model, torch.nn.Module):
            dtype = next(model.parameters()).dtype
        x = torch.randn(n, model.dim, generator=g, dtype=dtype)
    else:
        x = as_tensor(x_T).clone()
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"x_T must have shape (B, D) with B >= 1, got {tuple(x.shape)}")
    dim = getattr(model, "dim", None)
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"x_T has {x.shape[1]} features but the model generates {dim}")
    sch = model.schedule
    ts = sch.timesteps(num_steps).tolist()
    eta_eff = 1.0 if sampler == "ddpm" else float(eta)
    traj = []
    for i in progress_iter(range(len(ts)), progress):
        t = ts[i]
        t_next = ts[i + 1] if i + 1 < len(ts) else -1
        ab = sch.alpha_bar(t).to(dtype=x.dtype)
        ab_next = sch.alpha_bar(t_next).to(dtype=x.dtype)
        x_prev = x
        eps = _eps(model, x, t, cond)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        if sampler in ("ddim", "ddpm"):
            sigma = eta_eff * torch.sqrt((1 - ab_next) / (1 - ab)) * torch.sqrt(1 - ab / ab_next) if t_next >= 0 else ab * 0
            x = ab_next.sqrt() * x0 + (1 - ab_next - sigma**2).clamp_min(0).sqrt() * eps
            if t_next >= 0 and float(sigma) > 0:
                z = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
                x = x + sigma * z
            eps_eff = eps
        else:
            s = torch.sqrt((1 - ab) / ab)
            s_next = torch.sqrt((1 - ab_next) / ab_next)
            xb = x / ab.sqrt()
            xb_next = xb + (s_next - s) * eps
            eps_eff = eps
            if sampler == "heun" and t_next >= 0:
                eps2 = _eps(model, xb_next * ab_next.sqrt(), t_next, cond)
                eps_eff = 0.5 * (eps + eps2)
                xb_next = xb + (s_next - s) * eps_eff
            x = xb_next * ab_next.sqrt()
        if hook is not None:
            info = StepInfo(i, len(ts), t, t_next, ab, ab_next, x, x_prev, eps_eff, x0, cond, g)
            new = hook(info)
            if new is not None:
                x = new
        if return_trajectory:
            traj.append(x.clone())
    return (x, traj) if return_trajectory else x


def progress_iter(it, enable):
    return progress(it, total=len(it), desc="sampling", enable=enable)
