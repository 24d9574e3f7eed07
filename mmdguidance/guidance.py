r"""MMD guidance: the per-step update and the sklearn-style guided sampler.

At a reverse-diffusion step producing :math:`x` at noise level :math:`\bar\alpha`, the
guidance moves every sample of the batch down the gradient of

.. math:: \mathrm{MMD}^2\big(\{f(x_i)\} \cup M,\; \{y_j\}\big)

where :math:`M` is an optional memory bank of earlier finished samples and
:math:`f` the *evaluation point* (``evaluate_on``):

* ``'xt'``          : :math:`f(x) = x`, the noisy sample against clean references (the paper);
* ``'x0'``          : the Tweedie estimate :math:`\hat x_0 = (x - \sqrt{1-\bar\alpha}\,\hat\epsilon)/\sqrt{\bar\alpha}`
  with :math:`\hat\epsilon` the model output of the step, differentiated with
  :math:`\partial \hat x_0/\partial x \approx \bar\alpha^{-1/2} I` (the network Jacobian is ignored);
* ``'noised_refs'`` : :math:`f(x) = x` against references (and memory) noised to the same level,
  :math:`\sqrt{\bar\alpha}\,y + \sqrt{1-\bar\alpha}\,\xi` with fresh :math:`\xi` each step.

Step rules (``step_rule``), with :math:`g_i` the gradient for sample :math:`i` and
:math:`\lambda_t` = ``scale`` times the ``schedule`` factor:

* ``'raw'``        : :math:`x_i \leftarrow x_i - \lambda_t g_i` (paper, Eq. 5 form);
* ``'normalized'`` : :math:`x_i \leftarrow x_i - \lambda_t \|x_i\| g_i / (\|g_i\| + 10^{-5})` (the authors' code);
* ``'batch_normalized'`` : :math:`x_i \leftarrow x_i - \lambda_t\, \overline{\|x\|}\, g_i / (\overline{\|g\|} + 10^{-5})`
  with batch means :math:`\overline{\|x\|}, \overline{\|g\|}`: scale-free like the authors' rule, but
  one factor for the whole batch keeps the *relative* gradient sizes, so samples at a stationary point
  stay put and far outliers (tiny, noisy gradients) are not thrown further out.

Guards: non-finite gradient rows are zeroed, every update is clipped to
``max_update_ratio * max(||x_i||, sqrt(D))``, and a row that still turns non-finite is
reverted; each event is counted in the diagnostics and reported with one warning.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._utils import (
    check_array_2d,
    check_option,
    check_positive,
    check_random_state_torch,
    from_tensor,
    logger,
    progress,
)
from .kernels import GaussianKernel, Kernel, ProductKernel
from .mmd import ESTIMATORS, MMD, TERMS, _mmd2, _mmd2_grad

__all__ = ["MMDGuidance", "MMDGuidedSampler", "GuidanceWarning", "EVALUATE_ON", "STEP_RULES", "SCHEDULES"]

EVALUATE_ON = ("xt", "x0", "noised_refs")
STEP_RULES = ("normalized", "batch_normalized", "raw")
SCHEDULES = ("constant", "increasing", "decreasing")
POPULATIONS = ("batch", "sequential")
SAMPLERS = ("ddpm", "ddim", "euler", "heun")


class GuidanceWarning(RuntimeWarning):
    """Emitted when the numerical guards of the guidance had to act (non-finite or clipped updates)."""


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


@dataclass
class _Stats:
    updates: int = 0
    clipped: int = 0
    nonfinite: int = 0
    reverted: int = 0


class MMDGuidance:
    r"""The per-step MMD guidance update, independent of any sampler loop.

    Used by :class:`MMDGuidedSampler` through the samplers' step hook and by the
    diffusers adapter through pipeline callbacks. Works on flattened samples
    ``(B, D)``; with prompt-aware guidance, prompt embeddings ``(B, Dc)`` are
    appended as extra kernel inputs (they receive no update).

    Parameters
    ----------
    mmd : MMD
        A *fitted* estimator on the references (``(N, D)`` or ``(N, D + Dc)`` with prompts).
    scale : float >= 0
        :math:`\lambda` (``'raw'``) or :math:`\alpha` (``'normalized'``).
    step_rule : {'normalized', 'raw'}
    schedule : {'constant', 'increasing', 'decreasing'} or callable
        See :func:`schedule_factor`.
    window : (float, float)
        Guide only at trajectory progress :math:`p = \text{step}/(\text{num\_steps}-1)` within ``[start, stop]``.
    every : int
        Guide every ``every``-th step (counting from the first step of the window).
    terms : {'full', 'cross', 'self'}
    evaluate_on : {'xt', 'x0', 'noised_refs'}
    inner_steps : int
        Gradient steps per sampler step (the gradient is recomputed after each).
    max_update_ratio : float
        Per-sample update norm cap relative to ``max(||x_i||, sqrt(D))``.
    record : bool
        Also record the MMD² estimate after each update in ``history`` (one extra kernel pass);
        gradient norm, step size, λ and guard counters are always recorded.

    Attributes
    ----------
    history : list of dict
        One entry per guided (or skipped) step.
    """

    def __init__(
        self,
        *,
        mmd: MMD,
        scale: float = 0.2,
        step_rule: str = "batch_normalized",
        schedule="decreasing",
        window=(0.0, 0.8),
        every: int = 1,
        terms: str = "full",
        evaluate_on: str = "xt",
        inner_steps: int = 1,
        max_update_ratio: float = 1.0,
        record: bool = True,
    ):
        check_is_fitted(mmd, "reference_")
        self.mmd = mmd
        self.scale = check_positive(scale, name="scale", allow_zero=True)
        self.step_rule = check_option(step_rule, STEP_RULES, name="step_rule")
        if not callable(schedule):
            check_option(schedule, SCHEDULES, name="schedule")
        self.schedule = schedule
        self.window = _check_window(window)
        self.every = _check_int(every, "every", 1)
        self.terms = check_option(terms, TERMS, name="terms")
        self.evaluate_on = check_option(evaluate_on, EVALUATE_ON, name="evaluate_on")
        self.inner_steps = _check_int(inner_steps, "inner_steps", 1)
        self.max_update_ratio = check_positive(max_update_ratio, name="max_update_ratio")
        self.record = bool(record)
        self.history: list[dict] = []
        self._stats = _Stats()

    # ------------------------------------------------------------------ helpers
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

    def reset_stats(self):
        """Clear the guard counters and the history (done by the sampler at each ``sample`` call)."""
        self.history = []
        self._stats = _Stats()

    def warn_if_guarded(self, clip_fraction: float = 0.01):
        """Emit one :class:`GuidanceWarning` summarising guard events since :meth:`reset_stats`.

        Warns on any non-finite event, or when more than ``clip_fraction`` of all per-sample
        updates were clipped (occasional clipping of a few outliers is only logged).
        """
        s = self._stats
        if s.nonfinite or s.reverted or s.clipped > clip_fraction * max(s.updates, 1):
            msg = (
                f"MMD guidance guards acted: {s.clipped} update(s) clipped to max_update_ratio={self.max_update_ratio}, "
                f"{s.nonfinite} non-finite gradient row(s) zeroed, {s.reverted} non-finite update(s) reverted; "
                "consider a smaller scale"
            )
            warnings.warn(msg, GuidanceWarning, stacklevel=3)
            logger.warning(msg)
        elif s.clipped:
            logger.info("MMD guidance clipped %d of %d updates", s.clipped, s.updates)

    # ------------------------------------------------------------------ the update
    def __call__(
        self,
        x: torch.Tensor,
        *,
        step: int,
        num_steps: int,
        alpha_bar,
        eps: torch.Tensor | None = None,
        prompts: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        t=None,
    ) -> torch.Tensor:
        r"""Apply the guidance to ``x`` (shape ``(B, D)``) at one sampler step and return the new tensor.

        Parameters
        ----------
        x : Tensor (B, D)
            Samples after the sampler step, at noise level ``alpha_bar``.
        step, num_steps : int
            Position in the trajectory (for schedule and window).
        alpha_bar : float or 0-d Tensor
            :math:`\bar\alpha` of ``x`` (1 for clean samples).
        eps : Tensor (B, D), optional
            Model :math:`\epsilon` prediction used for ``evaluate_on='x0'`` (required there).
        prompts : Tensor (B, Dc), optional
            Prompt embeddings of the samples (prompt-aware guidance).
        memory : Tensor (M, D) or (M, D + Dc), optional
            Earlier finished samples (with their prompt columns when prompt-aware), in the kernel's feature space.
        generator : torch.Generator, optional
            Noise for ``evaluate_on='noised_refs'``.
        t : any, optional
            Recorded in the diagnostics only.
        """
        active = self.is_active(step, num_steps)
        if not active:
            self.history.append({"step": step, "t": _scalar(t), "applied": False})
            return x
        ab = float(alpha_bar)
        if not 0.0 < ab <= 1.0:
            raise ValueError(f"alpha_bar must be in (0, 1], got {ab}")
        D = x.shape[1]
        Y, w = self.mmd._refs_like(x)
        kernel = self.mmd.kernel_
        if self.evaluate_on == "x0" and eps is None:
            raise ValueError("evaluate_on='x0' needs the model's eps prediction (pass eps=...)")
        if self.evaluate_on == "noised_refs" and ab < 1.0:
            Y, memory = self._noise_refs(Y, memory, D, ab, generator)
        p = step / max(num_steps - 1, 1)
        lam = self.scale * schedule_factor(self.schedule, p)
        diag = {"step": step, "t": _scalar(t), "applied": True, "lambda": lam}
        for _ in range(self.inner_steps):
            feats, chain = self._features(x, eps, ab)  # (B, D), d feats / dx (scalar)
            Z = feats if prompts is None else torch.cat([feats, prompts.to(feats)], 1)  # (B, D [+ Dc])
            g = _mmd2_grad(kernel, Z, Y, w, memory, self.terms, self.mmd.estimator)[:, :D] * chain  # (B, D)
            x, info = self._apply(x, g, lam)
        if self.record:  # the MMD² estimate costs one more kernel pass
            with torch.no_grad():
                feats, _ = self._features(x, eps, ab)
                Z = feats if prompts is None else torch.cat([feats, prompts.to(feats)], 1)
                Zall = Z if memory is None else torch.cat([Z, memory], 0)
                if self.mmd.estimator == "biased" or Zall.shape[0] > 1:
                    diag["mmd2"] = float(_mmd2(kernel, Zall, Y, w, self.mmd.estimator))
        diag.update(info)
        self.history.append(diag)
        return x

    def _features(self, x, eps, ab):
        if self.evaluate_on == "x0" and ab < 1.0:
            return (x - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab), 1.0 / math.sqrt(ab)
        return x, 1.0

    def _noise_refs(self, Y, memory, D, ab, generator):
        sa, sn = math.sqrt(ab), math.sqrt(1.0 - ab)

        def noisy(A):
            xi = torch.randn(A.shape[0], D, generator=generator, dtype=A.dtype, device=A.device)
            return torch.cat([sa * A[:, :D] + sn * xi, A[:, D:]], 1)

        return noisy(Y), (None if memory is None else noisy(memory))

    def _apply(self, x, g, lam):
        B, D = x.shape
        self._stats.updates += B
        # all guards work on per-row norms: a row with NaN/inf has a non-finite norm
        gn = torch.linalg.vector_norm(g, dim=1, keepdim=True)  # (B, 1)
        bad = ~torch.isfinite(gn)  # (B, 1)
        n_bad = int(bad.sum())
        if n_bad:
            g = torch.where(bad, torch.zeros_like(g), g)
            gn = torch.where(bad, torch.zeros_like(gn), gn)
            self._stats.nonfinite += n_bad
        xn = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (B, 1)
        if self.step_rule == "normalized":
            delta = (-lam) * (xn / (gn + 1e-5)) * g
        elif self.step_rule == "batch_normalized":
            delta = (-lam * float(xn.mean()) / (float(gn.mean()) + 1e-5)) * g
        else:
            delta = -lam * g
        cap = self.max_update_ratio * torch.clamp(xn, min=math.sqrt(D))  # (B, 1)
        dn = torch.linalg.vector_norm(delta, dim=1, keepdim=True)
        over = (dn > cap) | ~torch.isfinite(dn)
        n_over = int(over.sum())
        if n_over:
            factor = torch.where(torch.isfinite(dn), cap / dn.clamp_min(1e-30), torch.zeros_like(dn))
            delta = torch.where(over, delta * factor, delta)
            dn = torch.where(over, torch.where(torch.isfinite(dn), cap, torch.zeros_like(dn)), dn)
            self._stats.clipped += n_over
        x_new = x + delta
        rev = ~torch.isfinite(torch.linalg.vector_norm(x_new, dim=1, keepdim=True))  # (B, 1)
        n_rev = int(rev.sum())
        if n_rev:
            x_new = torch.where(rev, x, x_new)
            self._stats.reverted += n_rev
        info = {
            "grad_norm": float(gn.mean()),
            "step_size": float(dn.mean()),
            "n_clipped": n_over,
            "n_nonfinite": n_bad + n_rev,
        }
        return x_new, info


def _scalar(t):
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return t.item() if t.numel() == 1 else t.tolist()
    return t


def _check_window(window):
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be a pair (start, stop) of fractions in [0, 1], got {window!r}") from None
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"window must satisfy 0 <= start <= stop <= 1, got {window!r}")
    return (lo, hi)


def _check_int(v, name, lo):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


# =========================================================================== sampler
class _GuidedEstimatorMixin:
    """What :class:`MMDGuidedSampler` and the diffusers adapter share: the guidance parameters.

    Subclasses name their heavy first constructor argument in ``_heavy_param`` (a model or a
    pipeline: never deep-copied on ``clone``) and store the :class:`MMDGuidance` parameters
    (``kernel, prompt_kernel, estimator, scale, step_rule, schedule, window, every, terms,
    evaluate_on, inner_steps, max_update_ratio, diagnostics``) under those names.
    """

    _heavy_param = "model"

    def __sklearn_clone__(self):
        """Clone the parameters without copying the model/pipeline (it may hold large weights)."""
        from sklearn.base import clone

        params = self.get_params(deep=False)
        heavy = params.pop(self._heavy_param)
        params = {k: (clone(v) if isinstance(v, BaseEstimator) else copy.deepcopy(v)) for k, v in params.items()}
        return type(self)(heavy, **params)

    @property
    def prompt_aware(self) -> bool:
        return self.prompt_kernel is not None or isinstance(self.kernel, ProductKernel)

    def _validate_guidance_params(self):
        """Check the shared guidance parameters (clear errors before any work is done)."""
        check_option(self.estimator, ESTIMATORS, name="estimator")
        check_option(self.step_rule, STEP_RULES, name="step_rule")
        check_option(self.terms, TERMS, name="terms")
        check_option(self.evaluate_on, EVALUATE_ON, name="evaluate_on")
        if not callable(self.schedule):
            check_option(self.schedule, SCHEDULES, name="schedule")
        check_positive(self.scale, name="scale", allow_zero=True)
        _check_window(self.window)
        _check_int(self.every, "every", 1)
        _check_int(self.inner_steps, "inner_steps", 1)
        check_positive(self.max_update_ratio, name="max_update_ratio")
        for k, nm in ((self.kernel, "kernel"), (self.prompt_kernel, "prompt_kernel")):
            if k is not None and not isinstance(k, Kernel):
                raise TypeError(f"{nm} must be a mmdguidance Kernel, got {type(k).__name__}")

    def _fit_mmd(self, X: torch.Tensor, C: torch.Tensor | None, weights=None) -> MMD:
        r"""Fit the MMD estimator on references ``X`` (N, D), joined with prompt features ``C`` (N, Dc) if given.

        With prompts the kernel is ``kernel`` if it already is a :class:`ProductKernel`, else
        ``ProductKernel(first=kernel or GaussianKernel(), second=prompt_kernel, split=D)``.
        Sets ``prompt_dim_``.
        """
        kernel, feats = self.kernel, X
        if C is not None:
            if not isinstance(kernel, ProductKernel):
                kernel = ProductKernel(first=GaussianKernel() if kernel is None else kernel, second=self.prompt_kernel,
                                       split=X.shape[1])
            feats = torch.cat([X, C], 1)  # (N, D + Dc)
        self.prompt_dim_ = 0 if C is None else int(C.shape[1])
        return MMD(kernel=kernel, estimator=self.estimator).fit(feats, weights=weights)

    def _memory_size(self) -> int:
        return int(self.memory_size)

    def _update_memory(self, memory, feats, sequential: bool = False):
        """Memory bank after adding ``feats`` (b, F): a sliding window of the last ``_memory_size()`` rows,
        or with ``sequential`` the authors' rule (grow to the size, then reset to the newest row); None if size 0."""
        size = self._memory_size()
        if size == 0:
            return None
        memory = feats if memory is None else torch.cat([memory, feats], 0)  # (M + b, F)
        if sequential:
            if memory.shape[0] >= size:  # the authors' reset: keep only the newest sample
                memory = memory[-1:]
            return memory
        return memory[-size:]  # sliding window

    def _make_guidance(self) -> MMDGuidance:
        """A fresh :class:`MMDGuidance` (its own history and guard counters) on the fitted ``mmd_``."""
        return MMDGuidance(
            mmd=self.mmd_,
            scale=self.scale,
            step_rule=self.step_rule,
            schedule=self.schedule,
            window=self.window,
            every=self.every,
            terms=self.terms,
            evaluate_on=self.evaluate_on,
            inner_steps=self.inner_steps,
            max_update_ratio=self.max_update_ratio,
            record=bool(self.diagnostics),
        )


class MMDGuidedSampler(_GuidedEstimatorMixin, BaseEstimator):
    r"""A diffusion model steered toward a reference set by MMD guidance.

    ``MMDGuidedSampler(model).fit(refs).sample(n)``

    Parameters
    ----------
    model : Denoiser
        Any object with ``schedule``, ``dim`` and ``predict_eps(x, t, cond=None)``
        (e.g. :class:`~mmdguidance.diffusion.GMMDenoiser`, :class:`~mmdguidance.diffusion.MLPDenoiser`).
        Never copied by :func:`sklearn.base.clone`.
    kernel : Kernel, default=GaussianKernel(bandwidth='median')
        Kernel on the samples (fitted on the references).
    prompt_kernel : Kernel, optional
        Kernel on prompt embeddings. When given, guidance is prompt-aware:
        ``ProductKernel(first=kernel, second=prompt_kernel)`` on (sample, prompt) pairs,
        and ``fit``/``sample`` need ``prompts``.
    estimator : {'biased', 'unbiased'}
    scale, step_rule, schedule, window, every, terms, evaluate_on, inner_steps, max_update_ratio
        See :class:`MMDGuidance`.
    population : {'batch', 'sequential'}
        ``'batch'``: all samples of a batch are guided jointly; a sliding-window
        memory bank of the last ``memory_size`` finished samples (earlier batches)
        joins the generated set. ``'sequential'``: the authors' algorithm, batch
        size 1, memory of finished samples that grows to ``memory_size`` and then
        resets to the newest one, first sample unguided.
    memory_size : int or None
        Memory bank size; ``None`` means 0 (no memory) for ``'batch'`` and 100 (the authors'
        value) for ``'sequential'``.
    sampler : {'ddpm', 'ddim', 'euler', 'heun'}, default='ddpm'
        Ancestral sampling is the default: with deterministic samplers (DDIM eta=0, ODE) the
        joint guidance compresses each mode onto a curve (within-mode variance lost, see
        docs/benchmark.md); the noise injected by ancestral steps restores it.
    num_steps : int
    eta : float
        DDIM stochasticity.
    diagnostics : bool, default=True
        Record per-step diagnostics; the MMD² estimate costs one extra kernel pass per step
        (switch off for timing-critical runs; gradient norm and step size are still recorded).
    random_state : int, Generator or None
        Default seed for :meth:`sample`.

    Attributes
    ----------
    mmd_ : MMD
        Fitted estimator on the references (with prompt columns if prompt-aware).
    n_features_in_ : int
    memory_ : Tensor or None
        The memory bank after the last ``sample`` call.
    diagnostics_ : list of dict
        Per-step diagnostics of the last ``sample`` call (one list entry per batch step).
    """

    def __init__(
        self,
        model=None,
        *,
        kernel=None,
        prompt_kernel=None,
        estimator="biased",
        scale=0.2,
        step_rule="batch_normalized",
        schedule="decreasing",
        window=(0.0, 0.8),
        every=1,
        terms="full",
        evaluate_on="xt",
        inner_steps=1,
        max_update_ratio=1.0,
        population="batch",
        memory_size=None,
        sampler="ddpm",
        num_steps=50,
        eta=0.0,
        diagnostics=True,
        random_state=None,
    ):
        self.model = model
        self.kernel = kernel
        self.prompt_kernel = prompt_kernel
        self.estimator = estimator
        self.scale = scale
        self.step_rule = step_rule
        self.schedule = schedule
        self.window = window
        self.every = every
        self.terms = terms
        self.evaluate_on = evaluate_on
        self.inner_steps = inner_steps
        self.max_update_ratio = max_update_ratio
        self.population = population
        self.memory_size = memory_size
        self.sampler = sampler
        self.num_steps = num_steps
        self.eta = eta
        self.diagnostics = diagnostics
        self.random_state = random_state

    # ------------------------------------------------------------------ sklearn plumbing
    def _model_dtype_device(self, fallback: torch.Tensor):
        m = self.model
        if isinstance(m, torch.nn.Module):
            try:
                p = next(m.parameters())
                return p.dtype, p.device
            except StopIteration:
                pass
        dtype = getattr(m, "dtype", None)
        device = getattr(m, "device", None)
        return (dtype or fallback.dtype), (device or fallback.device)

    def _validate(self):
        m = self.model
        if m is None or not callable(getattr(m, "predict_eps", None)) or not hasattr(m, "schedule"):
            raise TypeError("model must be a Denoiser with predict_eps(x, t, cond=None), schedule and dim")
        self._validate_guidance_params()
        check_option(self.population, POPULATIONS, name="population")
        check_option(self.sampler, SAMPLERS, name="sampler")
        _check_int(self.num_steps, "num_steps", 1)
        if self.memory_size is not None:
            _check_int(self.memory_size, "memory_size", 0)
        if self.population == "sequential" and self._memory_size() < 1:
            raise ValueError("population='sequential' needs memory_size >= 1 (the authors use 100)")
        check_positive(self.eta, name="eta", allow_zero=True)

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, *, weights=None, prompts=None):
        """Fit the MMD estimator on the references.

        Parameters
        ----------
        X : array of shape (N, D)
            Reference samples (``D`` must equal ``model.dim``), ``N >= 2``.
        y : ignored
        weights : array of shape (N,), optional
        prompts : array of shape (N, Dc), optional
            Prompt embedding of every reference (required when prompt-aware).

        Returns
        -------
        self
        """
        self._validate()
        refs = check_array_2d(X, name="references", min_samples=2)
        D = int(refs.shape[1])
        model_dim = getattr(self.model, "dim", None)
        if model_dim is not None and int(model_dim) != D:
            raise ValueError(f"references have {D} features but the model generates {model_dim}")
        if self.prompt_aware:
            if prompts is None:
                raise ValueError("this sampler is prompt-aware (prompt_kernel/ProductKernel): fit(..., prompts=...) is required")
            C = check_array_2d(prompts, name="prompts", min_samples=refs.shape[0])
            if C.shape[0] != refs.shape[0]:
                raise ValueError(f"got {C.shape[0]} prompts for {refs.shape[0]} references; need one per reference")
            C = C.to(dtype=refs.dtype, device=refs.device)
        else:
            if prompts is not None:
                raise ValueError("prompts were given but the sampler is not prompt-aware; set prompt_kernel=...")
            C = None
        self.mmd_ = self._fit_mmd(refs, C, weights)
        self.n_features_in_ = D
        self.reference_ = refs
        self._return_numpy = not isinstance(X, torch.Tensor)
        self.memory_ = None
        self.diagnostics_ = []
        return self

    # ------------------------------------------------------------------ sample
    def sample(
        self,
        n,
        *,
        prompts=None,
        batch_size=None,
        random_state=None,
        return_diagnostics=False,
        x_T=None,
        reset_memory=True,
        progress_bar=None,
    ):
        """Generate ``n`` guided samples.

        Parameters
        ----------
        n : int >= 1
        prompts : array of shape (n, Dc), optional
            One prompt embedding per sample (required when prompt-aware); also passed
            to the model as ``cond``.
        batch_size : int, optional
            Samples guided jointly (default: all ``n``). Ignored by ``population='sequential'`` (1).
        random_state : int, Generator or None
            Seed for the initial noise and the sampler's noise (default: ``self.random_state``).
        return_diagnostics : bool
            Also return the per-step diagnostics.
        x_T : array of shape (n, D), optional
            Initial noise (drawn from ``random_state`` if omitted).
        reset_memory : bool
            Start from an empty memory bank (``False`` keeps ``memory_`` from the last call).
        progress_bar : bool, optional
            Show a tqdm bar over batches (default: only when interactive).

        Returns
        -------
        samples : array of shape (n, D)
            numpy if the references were numpy, else torch.
        diagnostics : list of dict, only if ``return_diagnostics``
        """
        from .diffusion.samplers import sample as run_sampler

        check_is_fitted(self, "mmd_")
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}")
        n = int(n)
        self._validate()
        dtype, device = self._model_dtype_device(self.reference_)
        D = self.n_features_in_
        gen = check_random_state_torch(self.random_state if random_state is None else random_state, device="cpu")
        C = None
        if self.prompt_aware:
            if prompts is None:
                raise ValueError("this sampler is prompt-aware: sample(n, prompts=...) needs one prompt embedding per sample")
            C = check_array_2d(prompts, name="prompts", n_features=self.prompt_dim_).to(dtype=dtype, device=device)
            if C.shape[0] != n:
                raise ValueError(f"got {C.shape[0]} prompts for n={n} samples; need exactly one per sample")
        elif prompts is not None:
            C = check_array_2d(prompts, name="prompts").to(dtype=dtype, device=device)  # model conditioning only
            if C.shape[0] != n:
                raise ValueError(f"got {C.shape[0]} prompts for n={n} samples; need exactly one per sample")
        if x_T is not None:
            xT = check_array_2d(x_T, name="x_T", n_features=D).to(dtype=dtype, device=device)
            if xT.shape[0] != n:
                raise ValueError(f"x_T has {xT.shape[0]} rows for n={n}")
        else:
            xT = torch.randn(n, D, generator=gen, dtype=dtype).to(device)

        guidance = self._make_guidance()
        sequential = self.population == "sequential"
        bs = 1 if sequential else (n if batch_size is None else _check_int(batch_size, "batch_size", 1))
        memory = None if (reset_memory or self.memory_ is None) else self.memory_.to(dtype=dtype, device=device)
        out = torch.empty(n, D, dtype=dtype, device=device)
        diagnostics = []
        starts = list(range(0, n, bs))
        for b_idx, s in enumerate(progress(starts, total=len(starts), desc="MMD-guided sampling", enable=progress_bar)):
            xb = xT[s : s + bs]
            cb = None if C is None else C[s : s + bs]
            guide_this = not (sequential and memory is None)  # the authors' first sample is unguided
            hook = None
            if guide_this and self.scale > 0:
                hook = self._make_hook(guidance, cb if self.prompt_aware else None, memory)
            res = run_sampler(
                self.model, xb, sampler=self.sampler, num_steps=self.num_steps, eta=self.eta,
                cond=cb, generator=gen, hook=hook, progress=False,
            )
            out[s : s + bs] = res
            diagnostics.append({"batch": b_idx, "guided": hook is not None, "steps": guidance.history})
            guidance.history = []
            feats = res if not self.prompt_aware else torch.cat([res, cb], 1)
            memory = self._update_memory(memory, feats.detach(), sequential)
        guidance.warn_if_guarded()
        self.memory_ = memory
        self.diagnostics_ = diagnostics
        result = from_tensor(out, np.empty(0) if self._return_numpy else out)
        return (result, diagnostics) if return_diagnostics else result

    def _make_hook(self, guidance: MMDGuidance, prompts, memory):
        def hook(info):
            return guidance(
                info.x, step=info.step, num_steps=info.num_steps, alpha_bar=info.alpha_bar_next,
                eps=info.eps, prompts=prompts, memory=memory, generator=info.generator, t=info.t_next,
            )

        return hook

    def _memory_size(self) -> int:
        if self.memory_size is None:
            return 100 if self.population == "sequential" else 0
        return int(self.memory_size)

    # ------------------------------------------------------------------ convenience
    def score(self, X, y=None, prompts=None):
        """MMD² between samples ``X`` (``(n, D)``) and the references (lower is better)."""
        check_is_fitted(self, "mmd_")
        Xt = check_array_2d(X, name="X", n_features=self.n_features_in_)
        if self.prompt_aware:
            if prompts is None:
                raise ValueError("prompt-aware sampler: score(X, prompts=...) is required")
            Xt = torch.cat([Xt, check_array_2d(prompts, name="prompts").to(Xt)], 1)
        return float(self.mmd_.score(Xt))

