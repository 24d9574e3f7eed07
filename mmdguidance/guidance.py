r"""MMD guidance: the per-step operator :class:`MMDGuidance`.

At a reverse-diffusion step the guidance moves every sample of the batch down the gradient of a
discrepancy (by default MMD²) between the generated set and the references,

.. math:: \mathcal D\big(\{f(x_i)\} \cup M,\; \{y_j\}\big),

where :math:`M` is an optional memory bank of earlier finished samples and :math:`f` the
*evaluation point* (``evaluate_on``). The discrepancy is any fitted
:class:`~mmdguidance.discrepancy.Discrepancy` (:class:`~mmdguidance.mmd.MMD`,
:class:`~mmdguidance.approx.RFFMMD`, :class:`~mmdguidance.approx.NystromMMD`), driven through its
``grad_tensor`` / ``value_tensor`` fast paths.

**After the step**, on :math:`x = x_{t'}` (method :meth:`MMDGuidance.__call__`, the sampler's post-step hook):

* ``'xt'``          : :math:`f(x) = x`, the noisy sample against clean references (the paper);
* ``'noised_refs'`` : :math:`f(x) = x` against references (and memory) noised to the same level,
  :math:`\sqrt{\bar\alpha}\,y + \sqrt{1-\bar\alpha}\,\xi` (:func:`~mmdguidance.diffusion.noise_at`) with fresh
  :math:`\xi` each step, drawn from the ``generator`` passed in (:class:`~mmdguidance.sampler.MMDGuidedSampler`
  passes a stream of its own, derived from its seed, so the sampler's ancestral noise is untouched).

The update is :math:`x_i \leftarrow x_i + \Delta_i`, :math:`\Delta` = :func:`~mmdguidance.step_rules.step_rule`
of :math:`(x, g, \lambda_t)` with :math:`g_i = \nabla_{x_i}\mathcal D` and :math:`\lambda_t` = ``scale`` times the
``schedule`` factor, inside the guards of :func:`~mmdguidance.step_rules.guard_update`.

**Before the step, through the model's prediction** (method :meth:`MMDGuidance.guide_eps`, the sampler's
pre-step hook; one model call per step as for ``'xt'``). With :math:`\hat\epsilon = \hat\epsilon(x_t, t)`,

.. math:: \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}}, \qquad
          \Delta = \mathrm{rule}(\hat x_0, G, \lambda_t), \qquad
          \hat\epsilon' = \frac{x_t - \sqrt{\bar\alpha_t}\,(\hat x_0 + \Delta)}{\sqrt{1-\bar\alpha_t}}
                        = \hat\epsilon - \sqrt{\tfrac{\bar\alpha_t}{1-\bar\alpha_t}}\;\Delta,

and the sampler step runs with :math:`\hat\epsilon'` (so its own :math:`\hat x_0` is :math:`\hat x_0 + \Delta`).
For :class:`~mmdguidance.diffusion.GMMDenoiser`, :math:`\hat x_0` is exactly :math:`E[x_0 \mid x_t]`.

* ``'x0'``          : :math:`G = \nabla_{\hat x_0}\mathcal D` at :math:`\hat x_0` (the denoiser's Jacobian ignored);
* ``'x0_jacobian'`` : the exact gradient through the denoiser,
  :math:`G = \nabla_{x_t}\mathcal D(\hat x_0(x_t)) = J^\top \nabla_{\hat x_0}\mathcal D` with
  :math:`J = \partial\hat x_0/\partial x_t = \big(I - \sqrt{1-\bar\alpha_t}\,\partial\hat\epsilon/\partial x_t\big)/\sqrt{\bar\alpha_t}`,
  one vector-Jacobian product (``torch.autograd``) through ``model.predict_eps``.

With ``step_rule='raw'`` (:math:`\Delta = -\lambda G`) the :math:`\epsilon`-form is classifier guidance,
:math:`\hat\epsilon' = \hat\epsilon - \sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log h_t` with
:math:`\nabla_{x_t}\log h_t = -s_t G`, :math:`s_t = \lambda\sqrt{\bar\alpha_t}/(1-\bar\alpha_t)`; for
``'x0_jacobian'`` this is exactly guidance by :math:`h_t(x_t) = \exp(-s_t\,\mathcal D(\hat x_0(x_t)))`.
With ``inner_steps > 1`` the gradient is re-taken at the moved :math:`\hat x_0` (``'x0_jacobian'``: with
the Jacobian of the step's :math:`x_t`).

Scales are not comparable between the two families: a DDIM step moves :math:`x_{t'}` by only
:math:`\big(\sqrt{\bar\alpha_{t'}} - \sqrt{\bar\alpha_t}\sqrt{(1-\bar\alpha_{t'})/(1-\bar\alpha_t)}\big)\,\Delta`
for a displacement :math:`\Delta` of :math:`\hat x_0` (the step's weight on :math:`\hat x_0`), whereas
``'xt'`` moves :math:`x_{t'}` by :math:`\Delta` itself; choose ``scale`` per evaluation point.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from sklearn.utils.validation import check_is_fitted

from ._utils import check_int as _check_int
from ._utils import logger
from .bandwidth import negligible_share
from .diffusion.denoisers import eps_to_x0, x0_to_eps
from .diffusion.schedules import noise_at
from .discrepancy import Discrepancy
from .guidance_params import EVALUATE_ON, SCHEDULES, check_bool, validate_guidance_params
from .guidance_params import check_window as _check_window
from .step_rules import STEP_RULES, guard_update, sanitize_gradient, step_rule

__all__ = ["MMDGuidance", "MMDGuidedSampler", "GuidanceWarning", "EVALUATE_ON", "STEP_RULES", "SCHEDULES",
           "PRE_STEP", "schedule_factor"]

#: evaluation points applied before the step, through the model's prediction (:meth:`MMDGuidance.guide_eps`)
PRE_STEP = ("x0", "x0_jacobian")


class GuidanceWarning(RuntimeWarning):
    """Emitted when the numerical guards of the guidance had to act (non-finite, overflowed or clipped updates)."""


def schedule_factor(schedule, progress_frac: float) -> float:
    r"""Multiplier of ``scale`` at trajectory progress :math:`p \in [0, 1]` (0 = first step).

    ``'constant'`` -> 1, ``'increasing'`` -> :math:`2p`, ``'decreasing'`` -> :math:`2(1-p)`
    (both average to 1 over the trajectory), or any callable ``p -> factor``.
    """
    if callable(schedule):
        return float(schedule(progress_frac))
    if schedule == "constant":
        return 1.0
    if schedule == "increasing":
        return 2.0 * progress_frac
    if schedule == "decreasing":
        return 2.0 * (1.0 - progress_frac)
    raise ValueError(f"unknown schedule={schedule!r}; expected one of {SCHEDULES} or a callable")


#: a cross term below this fraction of the self term counts as negligible
CROSS_NEGLIGIBLE = 0.01


@dataclass
class _Stats:
    updates: int = 0
    clipped: int = 0
    overflow: int = 0
    nonfinite: int = 0
    reverted: int = 0
    cross_checks: list = field(default_factory=list)  # share of samples with a negligible cross term, per check


def _scalar(t):
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return t.item() if t.numel() == 1 else t.tolist()
    return t


def _check_alpha_bar(alpha_bar, hi_open=False):
    ab = float(alpha_bar)
    if not (0.0 < ab < 1.0 if hi_open else 0.0 < ab <= 1.0):
        raise ValueError(f"alpha_bar must be in (0, {'1)' if hi_open else '1]'}, got {ab}")
    return ab


class MMDGuidance:
    r"""The per-step guidance update, independent of any sampler loop (see the module docstring).

    Used by :class:`~mmdguidance.sampler.MMDGuidedSampler` through the samplers' hooks and by the
    diffusers adapter through pipeline callbacks. Works on flattened samples ``(B, D)``; with
    prompt-aware guidance, prompt embeddings ``(B, Dc)`` are appended as extra kernel inputs (they
    receive no update).

    Parameters
    ----------
    mmd : Discrepancy
        A *fitted* discrepancy on the references (``(N, D)`` or ``(N, D + Dc)`` with prompts), e.g.
        :class:`~mmdguidance.mmd.MMD`, :class:`~mmdguidance.approx.RFFMMD`, :class:`~mmdguidance.approx.NystromMMD`.
    scale : float >= 0
        :math:`\lambda` (``'raw'``) or :math:`\alpha` (``'normalized'``, ``'batch_normalized'``).
    step_rule : {'normalized', 'batch_normalized', 'raw'}
        See :mod:`mmdguidance.step_rules`.
    schedule : {'constant', 'increasing', 'decreasing'} or callable
        See :func:`schedule_factor`.
    window : (float, float)
        Guide only at trajectory progress :math:`p = \text{step}/(\text{num\_steps}-1)` within ``[start, stop]``.
    every : int
        Guide every ``every``-th step (counting from the first step of the window).
    terms : {'full', 'cross', 'self'}
        Must be supported by the discrepancy (``mmd.supported_terms``).
    evaluate_on : {'xt', 'x0', 'x0_jacobian', 'noised_refs'}
        ``'xt'``, ``'noised_refs'``: :meth:`__call__` after the step; ``'x0'``, ``'x0_jacobian'``:
        :meth:`guide_eps` before the step.
    inner_steps : int
        Gradient steps per sampler step (the gradient is recomputed after each).
    max_update_ratio : float
        Per-sample update norm cap relative to ``max(||x_i||, sqrt(D))``.
    record : bool
        Also record the discrepancy value after each update in ``history`` (one extra kernel pass);
        gradient norm, step size, λ and guard counters are always recorded.

    Attributes
    ----------
    history : list of dict
        One entry per guided (or skipped) step; read and clear it with :meth:`take_history`.
    """

    def __init__(self, *, mmd, scale=0.4, step_rule="batch_normalized", schedule="decreasing", window=(0.0, 0.65),
                 every=1, terms="full", evaluate_on="noised_refs", inner_steps=1, max_update_ratio=1.0, record=True):
        if not isinstance(mmd, Discrepancy):
            raise TypeError(f"mmd must be a fitted mmdguidance Discrepancy (MMD, RFFMMD, NystromMMD), got {type(mmd).__name__}")
        check_is_fitted(mmd, "reference_")
        self.mmd = mmd
        vals = validate_guidance_params(dict(scale=scale, step_rule=step_rule, schedule=schedule, window=window, every=every,
                                             terms=terms, evaluate_on=evaluate_on, inner_steps=inner_steps,
                                             max_update_ratio=max_update_ratio))
        for name, value in vals.items():
            setattr(self, name, value)
        mmd.check_terms(self.terms)
        self.record = check_bool(record, "record")
        self.history: list[dict] = []
        self._stats = _Stats()

    # ------------------------------------------------------------------ bookkeeping
    def is_active(self, step: int, num_steps: int) -> bool:
        """Whether guidance acts at ``step`` (0-based) of ``num_steps``."""
        if self.scale == 0.0:
            return False
        p = step / max(num_steps - 1, 1)
        lo, hi = self.window
        if not (lo - 1e-12 <= p <= hi + 1e-12):
            return False
        first = math.ceil(lo * max(num_steps - 1, 1) - 1e-9)
        return (step - first) % self.every == 0

    def record_skip(self, step: int, t=None):
        """Record a step at which the guidance did not act (``{'step', 't', 'applied': False}``)."""
        self.history.append({"step": step, "t": _scalar(t), "applied": False})

    def take_history(self) -> list:
        """The per-step records since the last call (or :meth:`reset_stats`), and clear them."""
        out, self.history = self.history, []
        return out

    def reset_stats(self):
        """Clear the guard counters and the history (done by the sampler at each ``sample`` call)."""
        self.history = []
        self._stats = _Stats()

    def warn_if_guarded(self, clip_fraction: float = 0.25):
        """Emit one :class:`GuidanceWarning` summarising guard events since :meth:`reset_stats`.

        Warns on any non-finite or overflow event, or when more than ``clip_fraction`` of all per-sample
        updates were clipped. The clip (an update no longer than the sampler's own step) is a trust region that
        the default configuration relies on: at the default scale it clips the updates of the samples farthest from
        the references at high noise (about 16% of them on the two-mode ring of issue 13), which is logged at INFO;
        a warning means that most of the guidance is being overridden.
        """
        s = self._stats
        if s.nonfinite or s.reverted or s.overflow or s.clipped > clip_fraction * max(s.updates, 1):
            msg = (
                f"MMD guidance guards acted: {s.clipped} update(s) clipped to max_update_ratio={self.max_update_ratio}"
                + (f" ({s.overflow} of them overflowed to a non-finite step, scale x gradient too large, and were "
                   "replaced by the capped step along -gradient)" if s.overflow else "")
                + f", {s.nonfinite} non-finite gradient row(s) zeroed, {s.reverted} non-finite update(s) reverted; "
                "consider a smaller scale"
            )
            warnings.warn(msg, GuidanceWarning, stacklevel=3)
            logger.warning(msg)
        elif s.clipped:
            logger.info("MMD guidance clipped %d of %d updates", s.clipped, s.updates)
        if s.cross_checks and sum(s.cross_checks) / len(s.cross_checks) > 0.5:
            bw = getattr(getattr(self.mmd, "kernel_", None), "bandwidth_", None)
            msg = (
                f"MMD guidance: for {100 * sum(s.cross_checks) / len(s.cross_checks):.0f}% of the samples the attraction "
                f"to the references (cross term) was negligible next to the repulsion between samples (self term): "
                f"the kernel{'' if bw is None else f' bandwidth {list(map(float, bw))}'} is too small for the distance "
                "between the samples and the references, so guidance mostly spreads the samples apart. Use a larger or "
                "multi-scale bandwidth (the default GaussianKernel(bandwidth='span')) or evaluate_on='x0'"
            )
            warnings.warn(msg, GuidanceWarning, stacklevel=3)
            logger.warning(msg)

    # ------------------------------------------------------------------ shared pieces
    def _check_inputs(self, x, prompts, memory):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MMDGuidance works on torch tensors of shape (B, D); got {type(x).__name__} "
                            "(convert with torch.as_tensor)")
        if x.ndim != 2:
            raise ValueError(f"x must have shape (B, D), got {tuple(x.shape)}")
        Dc = 0
        if prompts is not None:
            if not isinstance(prompts, torch.Tensor) or prompts.ndim != 2 or prompts.shape[0] != x.shape[0]:
                raise ValueError(f"prompts must be a tensor of shape ({x.shape[0]}, Dc), got {getattr(prompts, 'shape', prompts)!r}")
            Dc = int(prompts.shape[1])
        F = int(self.mmd.n_features_in_)
        if x.shape[1] + Dc != F:
            what = f"{x.shape[1]} sample + {Dc} prompt feature(s)" if Dc else f"{x.shape[1]} feature(s)"
            raise ValueError(f"the samples have {what} but the references were fitted with {F} feature(s)"
                             + (" (sample + prompt columns)" if Dc or F > x.shape[1] else ""))
        if memory is not None:
            if memory.ndim != 2 or memory.shape[1] != F:
                raise ValueError(f"memory must have shape (M, {F}), got {tuple(memory.shape)}")
            memory = None if memory.shape[0] == 0 else memory.to(dtype=x.dtype, device=x.device)
        return memory

    def _setup(self, x, step, num_steps, alpha_bar, prompts, memory, generator, t, pre_step):
        """Validated ``(ab, lam, refs, memory, diag)`` of an active step (``refs`` None = the fitted ones)."""
        ab = _check_alpha_bar(alpha_bar, hi_open=pre_step)
        memory = self._check_inputs(x, prompts, memory)
        refs = None
        if self.evaluate_on == "noised_refs" and ab < 1.0:
            refs, memory = self._noise_refs(x, memory, ab, generator)
        lam = self.scale * schedule_factor(self.schedule, step / max(num_steps - 1, 1))
        return ab, lam, refs, memory, {"step": step, "t": _scalar(t), "applied": True, "lambda": lam}

    def _noise_refs(self, x, memory, ab, generator):
        """References ``(N, F)`` (and memory ``(M, F)``) noised to ``ab`` in their sample columns (prompt columns kept)."""
        D = x.shape[1]
        Y, w = self.mmd.references(x)  # (N, F), (N,)

        def noisy(A):
            xi = torch.randn(A.shape[0], D, generator=generator, dtype=A.dtype, device=A.device)  # (., D)
            return torch.cat([noise_at(A[:, :D], xi, ab), A[:, D:]], 1)

        return (noisy(Y), w), (None if memory is None else noisy(memory))

    def _grad(self, feats, prompts, refs, memory):
        """:math:`\\nabla_{f_i}\\mathcal D` for the sample columns, ``(B, D)``.

        A full gradient of a discrepancy with a cross/self split is computed as its two terms (the same
        kernel work as one stacked pass), and the share of samples whose cross (attraction) term is below
        :data:`CROSS_NEGLIGIBLE` times their self (repulsion) term is recorded
        (:func:`~mmdguidance.bandwidth.negligible_share`); :meth:`warn_if_guarded` warns when that share is
        above one half on average over the guided steps: the kernel cannot see the references.
        """
        Z = feats if prompts is None else torch.cat([feats, prompts.to(feats)], 1)  # (B, D [+ Dc])
        D = feats.shape[1]
        if self.terms != "full" or not {"cross", "self"} <= set(self.mmd.supported_terms):
            return self.mmd.grad_tensor(Z, references=refs, memory=memory, terms=self.terms)[:, :D]
        cross = self.mmd.grad_tensor(Z, references=refs, memory=memory, terms="cross")[:, :D]  # (B, D)
        self_ = self.mmd.grad_tensor(Z, references=refs, memory=memory, terms="self")[:, :D]  # (B, D)
        self._stats.cross_checks.append(negligible_share(cross, self_, CROSS_NEGLIGIBLE))
        return cross + self_

    def _move(self, x, g, lam):
        """Guarded ``x + step_rule(x, g, lam)`` with the counters updated; returns ``(x_new, info)``."""
        self._stats.updates += x.shape[0]
        g, n_bad = sanitize_gradient(g)
        x_new, info = guard_update(x, step_rule(x, g, lam, self.step_rule), g, self.max_update_ratio)
        self._stats.nonfinite += n_bad
        self._stats.clipped += info["n_clipped"]
        self._stats.overflow += info["n_overflow"]
        self._stats.reverted += info["n_reverted"]
        return x_new, {"grad_norm": float(torch.linalg.vector_norm(g, dim=1).mean()), "step_size": info["step_size"],
                       "n_clipped": info["n_clipped"], "n_nonfinite": n_bad + info["n_reverted"]}

    def _finish(self, diag, info, feats, prompts, refs, memory):
        if self.record:  # the discrepancy value costs one more kernel pass
            with torch.no_grad():
                Z = feats if prompts is None else torch.cat([feats, prompts.to(feats)], 1)
                n_all = Z.shape[0] + (0 if memory is None else memory.shape[0])
                if getattr(self.mmd, "estimator", "biased") == "biased" or n_all > 1:
                    diag["mmd2"] = float(self.mmd.value_tensor(Z, references=refs, memory=memory))
        diag.update(info)
        self.history.append(diag)

    # ------------------------------------------------------------------ after the step: x-space
    def __call__(self, x, *, step, num_steps, alpha_bar, eps=None, prompts=None, memory=None, generator=None, t=None):
        r"""Guide ``x`` ``(B, D)`` after a sampler step (``evaluate_on`` in ``'xt'``, ``'noised_refs'``); returns the new tensor.

        Parameters
        ----------
        x : Tensor (B, D)
            Samples after the sampler step, at noise level ``alpha_bar``.
        step, num_steps : int
            Position in the trajectory (for schedule and window).
        alpha_bar : float or 0-d Tensor
            :math:`\bar\alpha` of ``x`` (1 for clean samples).
        eps : Tensor (B, D), optional
            Only for the legacy post-step ``'x0'`` approximation (features
            :math:`(x - \sqrt{1-\bar\alpha}\epsilon)/\sqrt{\bar\alpha}` with an ``eps`` from the *previous*
            point, chain rule :math:`\bar\alpha^{-1/2}`): exact only for deterministic samplers; prefer :meth:`guide_eps`.
        prompts : Tensor (B, Dc), optional
            Prompt embeddings of the samples (prompt-aware guidance).
        memory : Tensor (M, D) or (M, D + Dc), optional
            Earlier finished samples (with their prompt columns when prompt-aware).
        generator : torch.Generator, optional
            Noise for ``evaluate_on='noised_refs'``.
        t : any, optional
            Recorded in the diagnostics only.
        """
        if not self.is_active(step, num_steps):
            self.record_skip(step, t)
            return x
        if self.evaluate_on == "x0_jacobian" or (self.evaluate_on == "x0" and eps is None):
            raise ValueError(f"evaluate_on={self.evaluate_on!r} acts before the step through the model's prediction: "
                             "call guide_eps(x_t, eps, ...) (the samplers' pre_hook)")
        ab, lam, refs, memory, diag = self._setup(x, step, num_steps, alpha_bar, prompts, memory, generator, t, False)
        info = {}
        for _ in range(self.inner_steps):
            feats, chain = self._features(x, eps, ab)  # (B, D), d feats / dx (scalar)
            x, info = self._move(x, self._grad(feats, prompts, refs, memory) * chain, lam)
        self._finish(diag, info, self._features(x, eps, ab)[0], prompts, refs, memory)
        return x

    def _features(self, x, eps, ab):
        if self.evaluate_on == "x0" and ab < 1.0:
            return eps_to_x0(x, eps, ab), 1.0 / math.sqrt(ab)  # (B, D) Tweedie, d x0 / dx
        return x, 1.0

    # ------------------------------------------------------------------ before the step: through the prediction
    def guide_eps(self, x, eps, *, step, num_steps, alpha_bar, eps_fn=None, prompts=None, memory=None, generator=None,
                  t=None):
        r"""Guided prediction :math:`\hat\epsilon'` ``(B, D)`` at :math:`x_t` (``evaluate_on`` in ``'x0'``, ``'x0_jacobian'``).

        Parameters
        ----------
        x : Tensor (B, D)
            :math:`x_t`, the point the model was evaluated at.
        eps : Tensor (B, D)
            The model's prediction :math:`\hat\epsilon(x_t, t)`.
        step, num_steps : int
        alpha_bar : float or 0-d Tensor
            :math:`\bar\alpha_t \in (0, 1)`.
        eps_fn : callable, optional
            ``x_t -> eps``, differentiable with torch.autograd (required by ``'x0_jacobian'``).
        prompts, memory, generator, t
            As in :meth:`__call__`.

        Returns
        -------
        eps : Tensor (B, D)
            :math:`\hat\epsilon' = x0\_to\_eps(x_t, \hat x_0 + \Delta)`; ``eps`` itself when the step is not guided.
        """
        if not self.is_active(step, num_steps):
            self.record_skip(step, t)
            return eps
        if self.evaluate_on not in PRE_STEP:
            raise ValueError(f"guide_eps serves evaluate_on in {PRE_STEP}; evaluate_on={self.evaluate_on!r} acts after "
                             "the step: call the guidance itself on the new x")
        ab, lam, refs, memory, diag = self._setup(x, step, num_steps, alpha_bar, prompts, memory, generator, t, True)
        x0 = eps_to_x0(x, eps, ab)  # (B, D) Tweedie
        vjp = self._jacobian_vjp(x, ab, eps_fn) if self.evaluate_on == "x0_jacobian" else None
        info = {}
        for _ in range(self.inner_steps):
            g = self._grad(x0, prompts, refs, memory)  # (B, D) gradient in x0-space
            x0, info = self._move(x0, g if vjp is None else vjp(g), lam)
        self._finish(diag, info, x0, prompts, refs, memory)
        return x0_to_eps(x, x0, ab)

    @staticmethod
    def _jacobian_vjp(x, ab, eps_fn):
        r"""``g -> J^T g`` with :math:`J = \partial\hat x_0/\partial x_t` at ``x`` (one graph, reused)."""
        if eps_fn is None:
            raise ValueError("evaluate_on='x0_jacobian' needs eps_fn, the model's differentiable x_t -> eps at this step")
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            e = eps_fn(xr)
            if not isinstance(e, torch.Tensor) or not e.requires_grad:
                raise TypeError("evaluate_on='x0_jacobian' needs a model differentiable with torch.autograd: its "
                                "predict_eps returned a tensor without a gradient graph (use evaluate_on='x0')")
            x0 = eps_to_x0(xr, e.to(xr), ab)  # (B, D)

        def vjp(g):
            return torch.autograd.grad(x0, xr, grad_outputs=g.to(x0), retain_graph=True)[0].detach()  # (B, D)

        return vjp


def __getattr__(name):  # the estimators live in their own modules (they import this one)
    if name == "MMDGuidedSampler":
        from .sampler import MMDGuidedSampler

        return MMDGuidedSampler
    if name in ("GuidedEstimatorBase", "_GuidedEstimatorMixin"):
        from ._guided_estimator import GuidedEstimatorBase

        return GuidedEstimatorBase
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
