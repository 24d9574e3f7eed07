r"""Reverse-diffusion samplers as small step functions (k-diffusion style) and one loop.

All samplers walk the grid ``schedule.timesteps(num_steps)`` (``t_0 = T-1 > ... > 0``) and a
final step to clean data (``t = -1``, :math:`\bar\alpha = 1`). A *step* maps
:math:`(x_t, \hat\epsilon)` at :math:`\bar\alpha = \bar\alpha_t` to :math:`x_{t'}` at
:math:`\bar\alpha' = \bar\alpha_{t'}`; with :math:`\hat x_0` = :func:`~mmdguidance.diffusion.eps_to_x0`:

* :func:`ddim_step` (Song et al. 2021):
  :math:`x_{t'} = \sqrt{\bar\alpha'}\hat x_0 + \sqrt{1-\bar\alpha'-\sigma^2}\,\hat\epsilon + \sigma z`,
  :math:`\sigma = \eta\sqrt{\tfrac{1-\bar\alpha'}{1-\bar\alpha}}\sqrt{1-\tfrac{\bar\alpha}{\bar\alpha'}}`;
* :func:`ddpm_step`: ancestral sampling, DDIM with :math:`\eta = 1` (the DDPM posterior variance
  :math:`\tilde\beta`; with ``num_steps == T`` it is exactly Ho et al.'s sampler);
* :func:`euler_step` / :func:`heun_step`: the probability-flow ODE in the variables
  :math:`\bar x = x/\sqrt{\bar\alpha}`, :math:`s = \sqrt{(1-\bar\alpha)/\bar\alpha}`, where
  :math:`d\bar x/ds = \hat\epsilon`. Euler is algebraically DDIM with :math:`\eta=0`; Heun is the
  2nd-order trapezoidal corrector (Karras et al. 2022), which calls ``eps_fn`` at the predicted point
  (a second model evaluation) and is skipped on the final step to :math:`s = 0`.

Every step has the signature ``step(x, eps, ab, ab_next, *, eps_fn=None, eta=0.0, generator=None)``
(``x``, ``eps`` of shape ``(B, D)``, ``ab``/``ab_next`` 0-d tensors) and runs under autograd when the
caller wants it (:func:`~mmdguidance.baselines.mmd_ddm.ddim_sample` backpropagates through
:func:`ddim_step`). :data:`SAMPLERS` maps names to steps.

The loop :func:`sample` reads like the algorithm: per step,
:math:`\hat\epsilon` = model(x, t) -> ``pre_hook`` (may replace :math:`\hat\epsilon`, e.g. guidance
in :math:`\hat x_0`-space) -> step -> ``hook`` (may replace the new x, e.g. guidance on :math:`x_t`).
Hooks returning ``None`` leave the trajectory bit-identical.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable

import torch

from .._utils import as_tensor, check_int, check_option, check_random_state_torch, model_dtype_device, progress
from .denoisers import eps_to_x0

__all__ = ["StepInfo", "sample", "SAMPLERS", "ddim_step", "ddpm_step", "euler_step", "heun_step", "model_eps"]


@dataclass
class StepInfo:
    """What a hook sees at one sampler step (all tensors ``(B, D)`` unless noted).

    For the ``pre_hook`` (before the step) ``x`` is :math:`x_t` and ``x_prev`` is the same tensor;
    for the post-step ``hook`` ``x`` is :math:`x_{t'}` and ``x_prev`` is :math:`x_t`. ``eps`` is the
    model's prediction at :math:`x_t` (after a ``pre_hook`` replaced it: the replacement) and
    ``x0_hat`` its Tweedie estimate ``eps_to_x0(x_prev, eps, alpha_bar)``. ``alpha_bar`` and
    ``alpha_bar_next`` are 0-d tensors.
    """

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
    eps_fn: Callable | None = None


# --------------------------------------------------------------------------- steps
def ddim_step(x, eps, ab, ab_next, *, eps_fn=None, eta=0.0, generator=None):
    r"""One DDIM step from :math:`\bar\alpha` = ``ab`` to ``ab_next`` (see the module docstring); ``(B, D) -> (B, D)``.

    ``eta > 0`` draws :math:`z` from ``generator`` (required then); the final step (``ab_next == 1``)
    is deterministic.
    """
    x0 = eps_to_x0(x, eps, ab)  # (B, D)
    final = bool(ab_next >= 1)
    sigma = ab * 0 if final else eta * torch.sqrt((1 - ab_next) / (1 - ab)) * torch.sqrt(1 - ab / ab_next)
    out = ab_next.sqrt() * x0 + (1 - ab_next - sigma**2).clamp_min(0).sqrt() * eps
    if not final and float(sigma) > 0:
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)  # (B, D)
        out = out + sigma * z
    return out


def ddpm_step(x, eps, ab, ab_next, *, eps_fn=None, eta=0.0, generator=None):
    """Ancestral DDPM step: :func:`ddim_step` with ``eta = 1`` (the ``eta`` argument is ignored)."""
    return ddim_step(x, eps, ab, ab_next, eta=1.0, generator=generator)


def _ode_vars(ab):
    return ab.sqrt(), torch.sqrt((1 - ab) / ab)  # sqrt(ab), s


def euler_step(x, eps, ab, ab_next, *, eps_fn=None, eta=0.0, generator=None):
    r"""Euler step of :math:`d\bar x/ds = \hat\epsilon` (algebraically DDIM with :math:`\eta = 0`)."""
    (a, s), (a_next, s_next) = _ode_vars(ab), _ode_vars(ab_next)
    xb_next = x / a + (s_next - s) * eps  # (B, D)
    return xb_next * a_next


def heun_step(x, eps, ab, ab_next, *, eps_fn=None, eta=0.0, generator=None):
    r"""Heun (trapezoidal) step; ``eps_fn(x_pred) -> eps`` evaluates the model at the Euler prediction
    (at ``ab_next``). The corrector is skipped on the final step (``ab_next == 1``, :math:`s' = 0`)."""
    if bool(ab_next >= 1):
        return euler_step(x, eps, ab, ab_next)
    if eps_fn is None:
        raise ValueError("heun_step needs eps_fn (the model at the predicted point) for its corrector")
    (a, s), (a_next, s_next) = _ode_vars(ab), _ode_vars(ab_next)
    xb = x / a  # (B, D)
    eps2 = eps_fn((xb + (s_next - s) * eps) * a_next)  # (B, D)
    return (xb + (s_next - s) * (0.5 * (eps + eps2))) * a_next


#: sampler name -> step function
SAMPLERS = {"ddpm": ddpm_step, "ddim": ddim_step, "euler": euler_step, "heun": heun_step}


# --------------------------------------------------------------------------- the loop
@torch.no_grad()
def model_eps(model, x, t, cond=None):
    r""":math:`\hat\epsilon` = ``model.predict_eps(x, t, cond)`` in ``x``'s dtype/device; raises on non-finite output."""
    e = model.predict_eps(x, t, cond).to(dtype=x.dtype, device=x.device)
    if not bool(torch.isfinite(e).all()):
        raise FloatingPointError(
            f"the model {type(model).__name__}.predict_eps returned {int((~torch.isfinite(e)).sum())} non-finite "
            f"value(s) at t={t}; check the model (weights, dtype, inputs)"
        )
    return e


def _initial_noise(model, x_T, n, g):
    if x_T is None:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
            raise ValueError(f"n must be a positive int when x_T is not given, got {n!r}")
        dtype, _ = model_dtype_device(model, torch.empty(0, dtype=torch.float64))
        return torch.randn(int(n), model.dim, generator=g, dtype=dtype)
    x = as_tensor(x_T).clone()
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x_T must have shape (B, D) with B >= 1, got {tuple(x.shape)}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or int(n) != x.shape[0]):
        raise ValueError(f"n={n} but x_T has {x.shape[0]} rows; pass one of them or make them agree")
    return x


def _check_eta(eta):
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta == eta or not 0 <= float(eta) < float("inf"):
        raise ValueError(f"eta must be a finite real >= 0, got {eta!r}")
    return float(eta)


def sample(model, x_T=None, *, n=None, sampler: str = "ddim", num_steps: int = 50, eta: float = 0.0, cond=None,
           generator=None, hook: Callable[[StepInfo], torch.Tensor | None] | None = None,
           pre_hook: Callable[[StepInfo], torch.Tensor | None] | None = None, progress=None,
           return_trajectory: bool = False):
    """Run a reverse-diffusion sampler.

    Parameters
    ----------
    model : Denoiser
    x_T : tensor of shape (B, D), optional
        Initial noise; drawn as ``randn(n, model.dim)`` from ``generator`` if omitted.
    n : int, optional
        Number of samples when ``x_T`` is omitted (if both are given they must agree).
    sampler : {'ddpm', 'ddim', 'euler', 'heun'}
    num_steps : int
    eta : float
        DDIM stochasticity (ignored by the other samplers).
    cond : tensor of shape (B, Dc), optional
        Conditioning passed to ``model.predict_eps``.
    generator : torch.Generator, int or None
    hook : callable, optional
        ``hook(StepInfo) -> tensor | None`` after every step: a tensor replaces the new ``x``.
    pre_hook : callable, optional
        ``pre_hook(StepInfo) -> tensor | None`` before every step: a tensor replaces :math:`\\hat\\epsilon`.
        Heun's corrector then sees its own model evaluation plus the same shift (the replacement minus
        the model's prediction), so the correction acts over the whole step at one cost.
    progress : bool, optional
        tqdm bar over steps (default: only when interactive).
    return_trajectory : bool
        Also return the list of ``x`` after every step.

    Returns
    -------
    x : tensor of shape (B, D) (and the trajectory list)

    Raises
    ------
    FloatingPointError
        If the model predicts a non-finite :math:`\\hat\\epsilon` (the error names the model).
    """
    check_option(sampler, SAMPLERS, name="sampler")
    step_fn, eta = SAMPLERS[sampler], _check_eta(eta)
    g = check_random_state_torch(generator)
    x = _initial_noise(model, x_T, n, g)
    dim = getattr(model, "dim", None)
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"x_T has {x.shape[1]} features but the model generates {dim}")
    sch = model.schedule
    ts = sch.timesteps(check_int(num_steps, "num_steps", 1)).tolist() + [-1]
    traj = []
    for i in progress_iter(range(len(ts) - 1), progress):
        t, t_next = ts[i], ts[i + 1]
        ab, ab_next = sch.alpha_bar(t).to(dtype=x.dtype), sch.alpha_bar(t_next).to(dtype=x.dtype)  # 0-d
        eps = model_eps(model, x, t, cond)  # (B, D)
        eps_fn = (lambda y, t_next=t_next: model_eps(model, y, t_next, cond))  # noqa: E731
        info = StepInfo(i, len(ts) - 1, t, t_next, ab, ab_next, x, x, eps, eps_to_x0(x, eps, ab), cond, g, eps_fn)
        new_eps = None if pre_hook is None else pre_hook(info)
        if new_eps is not None:
            shift, eps = new_eps - eps, new_eps  # (B, D)
            eps_fn = (lambda y, t_next=t_next, shift=shift: model_eps(model, y, t_next, cond) + shift)  # noqa: E731
        x_new = step_fn(x, eps, ab, ab_next, eps_fn=eps_fn, eta=eta, generator=g)
        if hook is not None:
            new = hook(StepInfo(i, len(ts) - 1, t, t_next, ab, ab_next, x_new, x, eps, eps_to_x0(x, eps, ab), cond, g))
            x_new = x_new if new is None else new
        x = x_new
        if return_trajectory:
            traj.append(x.clone())
    return (x, traj) if return_trajectory else x


def progress_iter(it, enable):
    return progress(it, total=len(it), desc="sampling", enable=enable)
