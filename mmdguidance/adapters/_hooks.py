r"""The per-call guidance hook: a wrapper of ``scheduler.step`` (public API) and the post-step callbacks.

Two evaluation points (see :mod:`._schedulers` for the noise levels and the conversions):

* ``evaluate_on='x0'`` -- *before* the scheduler step, through the model's prediction: the step's model output
  (after classifier-free guidance, which the pipelines combine before ``scheduler.step``) is converted to the Tweedie
  :math:`\hat x_0` at the step's own input point and noise level, :class:`~mmdguidance.guidance.MMDGuidance` updates
  :math:`\hat x_0` (with ``alpha_bar=1`` it evaluates on its input directly), the updated :math:`\hat x_0` is converted
  back to the model output the scheduler expects, and the original step runs. The :math:`\hat x_0` the kernel sees is
  exactly the scheduler's ``pred_original_sample`` (DDIM any spacing / prediction, DDPM, Euler, Euler ancestral),
  DPM-Solver's converted model output and flow matching's :math:`x - \sigma v`; stochastic steps add their noise
  after the guidance, and multistep solvers store the guided prediction in their history.
* ``evaluate_on='xt'`` / ``'noised_refs'`` -- *after* the step, on the returned sample, at its landing noise level
  by the scheduler's own previous-timestep rule, in VP coordinates :math:`\tilde x = x / r`,
  :math:`r = \sqrt{A^2+S^2}`, :math:`\bar\alpha = A^2/r^2` (the update is mapped back by :math:`r`). Applied from
  ``callback_on_step_end``, the legacy ``callback`` (in place) or the wrapper itself (``hook='step'``).

One pipeline call at a time per scheduler: entering a :class:`GuidedCall` on a scheduler whose ``step`` is
already wrapped raises ``RuntimeError`` (two threads sharing one pipeline would interleave the scheduler's own
state anyway; use one pipeline, or one scheduler copy, per thread).
"""

from __future__ import annotations

import functools
import math

import torch

from ._schedulers import from_x0, landing_level, step_index, to_x0, x0_coefficients

__all__ = ["GuidedCall"]

_WRAPPED = "_mmdguidance_wrapped"


class GuidedCall:
    r"""State of one guided pipeline call: wraps ``scheduler.step`` and applies the guidance.

    The step counter ``count`` indexes the guidance schedule (never raw timestep values); ``final`` is the
    last sample the pipeline holds (after any post-step guidance).

    Parameters
    ----------
    scheduler : diffusers scheduler
    guidance : MMDGuidance
    mode : {'callback_on_step_end', 'callback', 'step'}
        Where the post-step (``'xt'``) update is applied; ``'x0'`` always acts inside the wrapper.
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
        self._wrapped = False

    @property
    def pre_step(self) -> bool:
        """Whether the guidance acts before the step (``evaluate_on='x0'``)."""
        return self.guidance.evaluate_on == "x0"

    # -------------------------------------------------------------- scheduler.step wrapper
    def __enter__(self):
        sch = self.scheduler
        if getattr(sch.step, _WRAPPED, False):
            raise RuntimeError(
                f"{type(sch).__name__}.step is already wrapped by a running MMD-guided call: one guided call at a time "
                "per pipeline (use one pipeline, or a copy of its scheduler, per thread)"
            )
        self._had_attr = "step" in vars(sch)
        self._orig_attr = vars(sch).get("step")
        orig = sch.step

        def step(model_output, timestep, sample, *args, **kwargs):
            idx = step_index(sch, timestep, self.count)
            self._last = (timestep, idx, self.count)
            if self.pre_step:
                model_output = self.guide_x0(model_output, timestep, sample, idx)
            out = orig(model_output, timestep, sample, *args, **kwargs)
            self.count += 1
            prev = out[0] if isinstance(out, tuple) else out.prev_sample
            if self.mode == "step" and not self.pre_step:
                prev = self.guide(prev)
                if isinstance(out, tuple):
                    out = (prev,) + tuple(out[1:])
                else:
                    out.prev_sample = prev
            self.final = prev
            return out

        # keep the original signature visible (inspect follows __wrapped__): pipelines pass `generator` and `eta` to
        # scheduler.step only if its signature names them, so stochastic schedulers keep the caller's noise
        step = functools.wraps(orig)(step)
        setattr(step, _WRAPPED, True)
        sch.step = step
        self._wrapped = True
        return self

    def __exit__(self, *exc):
        self._wrapped = False
        if self._had_attr:
            self.scheduler.step = self._orig_attr
        else:
            del self.scheduler.step
        return False

    # -------------------------------------------------------------- the updates
    @torch.no_grad()
    def guide_x0(self, model_output, timestep, sample, idx: int):
        """The model output with its Tweedie :math:`\\hat x_0` guided (unchanged where guidance is inactive)."""
        g = self.guidance
        num_steps = len(self.scheduler.timesteps)
        if not g.is_active(self.count, num_steps):
            g.record_skip(self.count, timestep)
            return model_output
        coef = x0_coefficients(self.scheduler, timestep, idx)
        x0 = to_x0(model_output, sample, coef)  # (B, C, h, w) float32
        flat = x0.reshape(x0.shape[0], -1)  # (B, D)
        new = g(flat, step=self.count, num_steps=num_steps, alpha_bar=1.0, eps=torch.zeros_like(flat),
                prompts=self.prompts, memory=self.memory, generator=self.generator, t=timestep)
        return from_x0(new.reshape(x0.shape), model_output, sample, coef)

    @torch.no_grad()
    def guide(self, latents: torch.Tensor) -> torch.Tensor:
        """Guided latents after the step just taken (same shape, dtype, device); identity in ``'x0'`` mode."""
        if self._last is None:
            raise RuntimeError("guidance hook called before any scheduler step")
        if self.pre_step:
            self.final = latents
            return latents
        t, idx, count = self._last
        num_steps = len(self.scheduler.timesteps)
        g = self.guidance
        if not g.is_active(count, num_steps):
            g.record_skip(count, t)
            self.final = latents
            return latents
        a, s = landing_level(self.scheduler, t, idx)
        r = math.hypot(a, s)
        x = latents.reshape(latents.shape[0], -1).float() / r  # (B, D) VP coordinates, float32
        new = g(x, step=count, num_steps=num_steps, alpha_bar=(a / r) ** 2, prompts=self.prompts, memory=self.memory,
                generator=self.generator, t=t)
        out = (new * r).reshape(latents.shape).to(latents.dtype)
        self.final = out
        return out

    def post_step(self, i: int, t, latents: torch.Tensor) -> torch.Tensor:
        """The post-step hook (callbacks): guided ``latents`` after step ``i`` at timestep ``t``.

        Without the ``scheduler.step`` wrapper (a bare :class:`~.callback.MMDGuidanceCallback`), the step is read
        from the callback's arguments and the scheduler's ``step_index`` (already advanced by the step).
        """
        if not self._wrapped:
            if self.pre_step:
                raise RuntimeError(
                    "evaluate_on='x0' guides before scheduler.step, which a callback cannot do: run the pipeline "
                    "inside `with callback.attached(pipe):` (or use DiffusersMMDGuidance.sample), or use evaluate_on='xt'"
                )
            si = getattr(self.scheduler, "step_index", None)
            self._last = (t, int(si) - 1 if si is not None else int(i), int(i))
            self.count = int(i) + 1
        return self.guide(latents)

    def legacy_callback(self, i, t, latents):
        """Legacy ``callback(step, t, latents)``: edits the latents in place."""
        latents.copy_(self.post_step(i, t, latents))


