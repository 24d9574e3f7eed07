r"""Noise levels of diffusers schedulers and the model-output <-> :math:`\hat x_0` conversion (one home).

Every supported scheduler writes the sample it steps on as :math:`x = A\,x_0 + S\,\epsilon`:

* variance preserving (DDPM, DDIM, DPM-Solver, UniPC, ...): :math:`A = \sqrt{\bar\alpha}`, :math:`S = \sqrt{1-\bar\alpha}`,
  with :math:`\bar\alpha` = ``alphas_cumprod[t]`` at the step's timestep, or, where the scheduler keeps per-step
  ``sigmas`` (DPM-Solver, UniPC: :math:`\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}`), :math:`\bar\alpha = 1/(1+\sigma^2)`
  (exact with Karras sigmas);
* variance exploding / Karras (Euler, Euler ancestral, ``init_noise_sigma > 1``): :math:`A = 1, S = \sigma`;
* flow matching (SD3): :math:`A = 1-\sigma, S = \sigma`.

The sigma used is the scheduler's own: ``sigmas[step_index]`` (``begin_index`` / ``index_for_timestep(t)`` before the
first step), so img2img's shortened schedules are read correctly.

The model output :math:`m` maps *linearly* to the Tweedie estimate, :math:`\hat x_0 = c_x\,x + c_m\,m`:

=================  ==================  =====================
prediction         :math:`c_x`         :math:`c_m`
=================  ==================  =====================
``epsilon``        :math:`1/A`         :math:`-S/A`
``v_prediction``   :math:`A/(A^2+S^2)` :math:`-S/\sqrt{A^2+S^2}`
``sample``         0                   1
flow velocity      1                   :math:`-\sigma`
=================  ==================  =====================

which are the very formulas of the schedulers' ``pred_original_sample`` (DDIM, DDPM, Euler, Euler ancestral),
DPM-Solver's ``convert_model_output`` and flow matching's :math:`x - \sigma v`; :func:`to_x0` and :func:`from_x0` are
the pair of conversions (model channels beyond the sample's, a learned variance, pass through unchanged).

The *landing* level of a step (where the post-step sample lives) follows the scheduler's own previous-timestep
rule: DDIM :math:`t - T/n` (``final_alpha_cumprod`` below 0), DDPM ``previous_timestep(t)``, sigma-based and flow
schedulers ``sigmas[step_index + 1]``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["scheduler_family", "step_index", "input_level", "landing_level", "x0_coefficients", "to_x0", "from_x0",
           "prediction_type"]


def scheduler_family(scheduler) -> str:
    """'flow', 'sigma' (variance exploding) or 'vp'; ``TypeError`` for a scheduler with none of these."""
    if "FlowMatch" in type(scheduler).__name__:
        return "flow"
    if hasattr(scheduler, "sigmas") and float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0 + 1e-6:
        return "sigma"
    if hasattr(scheduler, "alphas_cumprod"):
        return "vp"
    raise TypeError(f"unsupported scheduler {type(scheduler).__name__}: no alphas_cumprod, sigmas or flow matching")


def _uses_sigmas(scheduler) -> bool:
    """Whether the scheduler indexes its noise levels by step (``sigmas`` of length n + 1) rather than by timestep."""
    sig = getattr(scheduler, "sigmas", None)
    return sig is not None and len(sig) == len(scheduler.timesteps) + 1


def step_index(scheduler, timestep, fallback: int) -> int:
    """Index of the step about to be taken at ``timestep``: the scheduler's ``step_index``, else its ``begin_index``,
    else ``index_for_timestep(timestep)``, else ``fallback`` (a step counter)."""
    si = getattr(scheduler, "step_index", None)
    if si is not None:
        return int(si)
    bi = getattr(scheduler, "begin_index", None)
    if bi is not None:
        return int(bi)
    if hasattr(scheduler, "index_for_timestep"):
        return int(scheduler.index_for_timestep(timestep))
    return int(fallback)


def _from_alpha_bar(ab: float) -> tuple[float, float]:
    ab = min(max(float(ab), 0.0), 1.0)
    return math.sqrt(ab), math.sqrt(1.0 - ab)


def _from_sigma(scheduler, sigma: float) -> tuple[float, float]:
    fam = scheduler_family(scheduler)
    if fam == "flow":
        return 1.0 - sigma, sigma
    if fam == "sigma":
        return 1.0, sigma
    return _from_alpha_bar(1.0 / (1.0 + sigma**2))


def input_level(scheduler, timestep, index: int) -> tuple[float, float]:
    """``(A, S)`` of the sample that the step at ``timestep`` (step ``index``) takes as input."""
    if scheduler_family(scheduler) != "vp" or _uses_sigmas(scheduler):
        return _from_sigma(scheduler, float(scheduler.sigmas[index]))
    return _from_alpha_bar(float(scheduler.alphas_cumprod[int(timestep)]))


def landing_level(scheduler, timestep, index: int) -> tuple[float, float]:
    """``(A, S)`` of the sample that the step at ``timestep`` (step ``index``) returns (``(1, 0)``: clean)."""
    if scheduler_family(scheduler) != "vp" or _uses_sigmas(scheduler):
        return _from_sigma(scheduler, float(scheduler.sigmas[index + 1]))
    t = int(timestep)
    if hasattr(scheduler, "previous_timestep"):  # DDPM (and others that define the rule)
        prev = int(scheduler.previous_timestep(t))
        final = 1.0
    elif "DDIM" in type(scheduler).__name__:
        prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        final = float(getattr(scheduler, "final_alpha_cumprod", 1.0))
    else:  # the next entry of the schedule
        ts = scheduler.timesteps
        prev = int(ts[index + 1]) if index + 1 < len(ts) else -1
        final = 1.0
    return _from_alpha_bar(float(scheduler.alphas_cumprod[prev]) if prev >= 0 else final)


def prediction_type(scheduler) -> str:
    """'epsilon', 'v_prediction', 'sample' or 'flow' (flow-matching velocity :math:`\\epsilon - x_0`)."""
    if scheduler_family(scheduler) == "flow":
        return "flow"
    pt = getattr(scheduler.config, "prediction_type", "epsilon")
    if pt not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"unsupported prediction_type={pt!r} (expected 'epsilon', 'v_prediction' or 'sample')")
    return pt


def x0_coefficients(scheduler, timestep, index: int) -> tuple[float, float]:
    r"""``(c_x, c_m)`` with :math:`\hat x_0 = c_x x + c_m m` at the step's input (see the module table)."""
    A, S = input_level(scheduler, timestep, index)
    pt = prediction_type(scheduler)
    if pt == "flow":
        return 1.0, -S
    if pt == "sample":
        return 0.0, 1.0
    if pt == "epsilon":
        return 1.0 / A, -S / A
    r = math.hypot(A, S)
    return A / r**2, -S / r


def to_x0(model_output: torch.Tensor, sample: torch.Tensor, coef) -> torch.Tensor:
    r"""Tweedie :math:`\hat x_0` (B, C, ...) float32 from the model output (its first ``C`` channels) and the sample."""
    c_x, c_m = coef
    C = sample.shape[1]
    return c_x * sample.float() + c_m * model_output[:, :C].float()  # (B, C, ...)


def from_x0(x0: torch.Tensor, model_output: torch.Tensor, sample: torch.Tensor, coef) -> torch.Tensor:
    r"""The model output (same shape and dtype as ``model_output``) whose :func:`to_x0` is ``x0``.

    Extra channels of ``model_output`` (a learned variance) are kept. ``ValueError`` when :math:`c_m = 0`.
    """
    c_x, c_m = coef
    if c_m == 0.0:
        raise ValueError("the model output does not determine x0 at this noise level (c_m = 0)")
    C = sample.shape[1]
    mo = ((x0.float() - c_x * sample.float()) / c_m).to(model_output.dtype)  # (B, C, ...)
    if model_output.shape[1] == C:
        return mo
    return torch.cat([mo, model_output[:, C:]], 1)
