r"""Noise levels of diffusers schedulers and the per-call guidance hook.

Every supported scheduler writes its latents as :math:`x = a\,x_0 + s\,\epsilon`:

* variance preserving (DDPM, DDIM, DPM-Solver, PNDM, UniPC, ...): :math:`a = \sqrt{\bar\alpha_t}`,
  :math:`s = \sqrt{1-\bar\alpha_t}` from ``scheduler.alphas_cumprod`` at the timestep, or, where the scheduler
  keeps per-step ``sigmas`` (DPM-Solver, UniPC: :math:`\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}`),
  :math:`\bar\alpha = 1/(1+\sigma^2)` from them (exact with Karras sigmas);
* variance exploding / Karras (Euler, Euler ancestral, ``init_noise_sigma > 1``): :math:`a = 1, s = \sigma`;
* flow matching (SD3, Flux): :math:`a = 1-\sigma, s = \sigma`.

The guidance works in the equivalent *VP coordinates* :math:`\tilde x = x / r`, :math:`r = \sqrt{a^2+s^2}`,
:math:`\bar\alpha = a^2/r^2`, so :class:`~mmdguidance.guidance.MMDGuidance` sees the same problem for
every scheduler (its update is applied to :math:`\tilde x` and mapped back by :math:`r`). The model
output of the step is converted to the VP noise :math:`\epsilon` (``epsilon``: itself; ``v_prediction``:
:math:`\epsilon = \tilde a v + \tilde s \tilde x`; ``sample``: from :math:`\hat x_0`; flow velocity
:math:`v = \epsilon - x_0`: :math:`\epsilon = x + (1-\sigma) v`), which gives the Tweedie estimate
:math:`\hat x_0 = (\tilde x' - \sqrt{1-\bar\alpha'}\,\epsilon)/\sqrt{\bar\alpha'}` at the post-step point
(for DDIM with :math:`\eta = 0` and for Euler this is exactly the scheduler's ``pred_original_sample``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["noise_level", "vp_eps", "scheduler_family", "GuidedCall"]


def scheduler_family(scheduler) -> str:
    """'flow', 'sigma' (variance exploding) or 'vp'; ``TypeError`` for a scheduler with none of these."""
    if "FlowMatch" in type(scheduler).__name__:
        return "flow"
    if hasattr(scheduler, "sigmas") and float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0 + 1e-6:
        return "sigma"
    if hasattr(scheduler, "alphas_cumprod"):
        return "vp"
    raise TypeError(f"unsupported scheduler {type(scheduler).__name__}: no alphas_cumprod, sigmas or flow matching")


def noise_level(scheduler, index: int) -> tuple[float, float]:
    r"""``(a, s)`` of the latents after ``index`` completed steps (``index = len(timesteps)``: clean, ``(1, 0)``)."""
    fam = scheduler_family(scheduler)
    n = len(scheduler.timesteps)
    if index >= n:
        return 1.0, 0.0
    if fam == "vp":
        sig = getattr(scheduler, "sigmas", None)
        if sig is not None and len(sig) == n + 1:  # DPM-Solver / UniPC: VE sigmas of the VP latents, exact under Karras
            ab = 1.0 / (1.0 + float(sig[index]) ** 2)
        else:
            ab = float(scheduler.alphas_cumprod[int(scheduler.timesteps[index])])
        return math.sqrt(ab), math.sqrt(1.0 - ab)
    sig = float(scheduler.sigmas[index])
    return (1.0 - sig, sig) if fam == "flow" else (1.0, sig)


def vp_eps(scheduler, model_output: torch.Tensor, sample: torch.Tensor, index: int) -> torch.Tensor:
    r"""The noise :math:`\epsilon` (B, ...) float32 implied by ``model_output`` at the step's input ``sample``."""
    C = sample.shape[1]
    mo = model_output.float()
    if mo.shape[1] == 2 * C:  # learned variance: the first half is the mean prediction
        mo = mo[:, :C]
    x = sample.float()
    a, s = noise_level(scheduler, index)
    if scheduler_family(scheduler) == "flow":
        return x + (1.0 - s) * mo
    pt = getattr(scheduler.config, "prediction_type", "epsilon")
    if pt == "epsilon":
        return mo
    r = math.hypot(a, s)
    an, sn = a / r, s / r
    if pt == "v_prediction":
        return an * mo + sn * (x / r)
    if pt == "sample":
        return (x / r - an * mo) / max(sn, 1e-12)
    raise ValueError(f"unsupported prediction_type={pt!r} (expected 'epsilon', 'v_prediction' or 'sample')")


class GuidedCall:
    r"""State of one guided pipeline call: wraps ``scheduler.step`` and applies the guidance.

    The wrapper records the step's model output and input latents and counts the steps (the
    guidance schedule is indexed by this counter, never by raw timestep values). The guidance is
    applied by :meth:`guide`, from ``callback_on_step_end``, the legacy ``callback`` (in place) or,
    in mode ``'step'``, inside the wrapper itself.

    Parameters
    ----------
    scheduler : diffusers scheduler
    guidance : MMDGuidance
    mode : {'callback_on_step_end', 'callback', 'step'}
    prompts : Tensor (B, Dc) or None
        Prompt features of the batch (prompt-aware guidance).
    memory : Tensor (M, D [+ Dc]) or None
    generator : torch.Generator or None
        Noise for ``evaluate_on='noised_refs'`` (on the latents' device).
    """

    def __init__(self, scheduler, guidance, *, mode, prompts=None, memory=None, generator=None):
        self.scheduler = scheduler
        self.guidance = guidance
        self.mode = mode
        self.prompts = prompts
        self.memory = memory
        self.generator = generator
        self.count = 0
        self.final = None
        self._last = None

    # -------------------------------------------------------------- scheduler.step wrapper
    def __enter__(self):
        sch = self.scheduler
        self._had_attr = "step" in vars(sch)
        self._orig_attr = vars(sch).get("step")
        orig = sch.step

        def step(model_output, timestep, sample, *args, **kwargs):
            self._last = (model_output, sample, timestep, self.count)
            out = orig(model_output, timestep, sample, *args, **kwargs)
            self.count += 1
            if self.mode == "step":
                if isinstance(out, tuple):
                    out = (self.guide(out[0]),) + tuple(out[1:])
                else:
                    out.prev_sample = self.guide(out.prev_sample)
            return out

        sch.step = step
        return self

    def __exit__(self, *exc):
        if self._had_attr:
            self.scheduler.step = self._orig_attr
        else:
            del self.scheduler.step
        return False

    # -------------------------------------------------------------- the update
    @torch.no_grad()
    def guide(self, latents: torch.Tensor) -> torch.Tensor:
        """Guided latents after the step just taken (same shape, dtype, device)."""
        if self._last is None:
            raise RuntimeError("guidance hook called before any scheduler step")
        model_output, sample, t, idx = self._last
        num_steps = len(self.scheduler.timesteps)
        g = self.guidance
        if not g.is_active(idx, num_steps):
            g.history.append({"step": idx, "t": float(t) if t is not None else None, "applied": False})
            self.final = latents
            return latents
        a, s = noise_level(self.scheduler, idx + 1)
        r = math.hypot(a, s)
        x = latents.reshape(latents.shape[0], -1).float() / r  # (B, D) VP coordinates, float32
        eps = None
        if g.evaluate_on == "x0":
            eps = vp_eps(self.scheduler, model_output, sample, idx).reshape(x.shape)  # (B, D)
        new = g(x, step=idx, num_steps=num_steps, alpha_bar=(a / r) ** 2, eps=eps, prompts=self.prompts,
                memory=self.memory, generator=self.generator, t=t)
        out = (new * r).reshape(latents.shape).to(latents.dtype)
        self.final = out
        return out

    def callback_on_step_end(self, pipe, i, t, callback_kwargs):
        """``callback_on_step_end`` hook: returns the guided ``latents``."""
        return {"latents": self.guide(callback_kwargs["latents"])}

    def legacy_callback(self, i, t, latents):
        """Legacy ``callback(step, t, latents)``: edits the latents in place."""
        latents.copy_(self.guide(latents))
