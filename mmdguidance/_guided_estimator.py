"""What every guided estimator shares (:class:`~mmdguidance.sampler.MMDGuidedSampler`, the diffusers adapter).

The guidance parameters (validated by the one spec, :mod:`mmdguidance.guidance_params`), fitting the
discrepancy on (reference, prompt) features, the memory bank, and the one batch loop
(:meth:`GuidedEstimatorBase._run_batches`: progress bar, memory bank, per-batch diagnostics, one guard warning).

Seeds: estimators take ``random_state`` (constructor default, overridable per ``sample`` call); per-call
torch functions (:func:`mmdguidance.diffusion.sample`, the guidance hooks) take a ``torch.Generator``
``generator``, which the estimators derive once from ``random_state``.
"""

from __future__ import annotations

import copy

import torch
from sklearn.base import BaseEstimator, clone

from ._utils import progress
from .discrepancy import Discrepancy
from .guidance import MMDGuidance
from .guidance_params import PARAMS, STEP_PARAMS, validate_guidance_params
from .kernels import GaussianKernel, ProductKernel
from .mmd import MMD

__all__ = ["GuidedEstimatorBase"]


class GuidedEstimatorBase:
    """Mixin of the guided estimators (see the module docstring).

    Subclasses name their heavy first constructor argument in ``_heavy_param`` (a model or a
    pipeline: never deep-copied on ``clone``) and store the parameters of
    :data:`~mmdguidance.guidance_params.PARAMS` under those names (optionally ``discrepancy``).
    """

    #: bandwidth rule of the default Gaussian kernel (``kernel=None``)
    _default_bandwidth = "median"

    _heavy_param = "model"

    def __sklearn_clone__(self):
        """Clone the parameters without copying the model/pipeline (it may hold large weights)."""
        params = self.get_params(deep=False)
        heavy = params.pop(self._heavy_param)
        params = {k: (clone(v) if isinstance(v, BaseEstimator) else copy.deepcopy(v)) for k, v in params.items()}
        return type(self)(heavy, **params)

    @property
    def prompt_aware(self) -> bool:
        return self.prompt_kernel is not None or isinstance(self.kernel, ProductKernel)

    def _validate_guidance_params(self):
        """Check the shared guidance parameters (clear errors before any work is done)."""
        validate_guidance_params({p.name: getattr(self, p.name) for p in PARAMS})
        disc = getattr(self, "discrepancy", None)
        if disc is not None and not isinstance(disc, Discrepancy):
            raise TypeError(f"discrepancy must be a mmdguidance Discrepancy (MMD, RFFMMD, NystromMMD, Chamfer, "
                            f"SlicedWasserstein, KernelEntropyDiversity) or None, got {type(disc).__name__}")
        if disc is not None and (self.kernel is not None or self.prompt_aware):
            raise ValueError(f"discrepancy={type(disc).__name__}(...) replaces the built-in MMD and its kernel: drop "
                             "kernel=/prompt_kernel= (prompt-aware guidance needs the built-in MMD's product kernel), "
                             "or set the kernel on the discrepancy itself, e.g. MMD(kernel=...)")

    def _fit_mmd(self, X: torch.Tensor, C: torch.Tensor | None, weights=None) -> Discrepancy:
        r"""Fit the discrepancy on references ``X`` (N, D), joined with prompt features ``C`` (N, Dc) if given.

        ``discrepancy`` (a clone of it) when set, else :class:`~mmdguidance.mmd.MMD` with the kernel; with
        prompts the kernel is ``kernel`` if it already is a :class:`ProductKernel`, else
        ``ProductKernel(first=kernel, second=prompt_kernel, split=D)``; ``kernel=None`` means
        ``GaussianKernel(bandwidth=self._default_bandwidth)``. Sets ``prompt_dim_``.
        """
        kernel, feats = (GaussianKernel(bandwidth=self._default_bandwidth) if self.kernel is None else self.kernel), X
        if C is not None:
            if not isinstance(kernel, ProductKernel):
                kernel = ProductKernel(first=kernel, second=self.prompt_kernel,
                                       split=X.shape[1])
            feats = torch.cat([X, C], 1)  # (N, D + Dc)
        self.prompt_dim_ = 0 if C is None else int(C.shape[1])
        disc = getattr(self, "discrepancy", None)
        est = MMD(kernel=kernel, estimator=self.estimator) if disc is None else clone(disc)
        return est.fit(feats, weights=weights)

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

    def make_guidance(self) -> MMDGuidance:
        """A fresh :class:`MMDGuidance` (its own history and guard counters) on the fitted ``mmd_``."""
        return MMDGuidance(mmd=self.mmd_, record=bool(self.diagnostics), **{k: getattr(self, k) for k in STEP_PARAMS})

    def _run_batches(self, n, batch_size, run_batch, *, memory=None, sequential=False, desc="MMD-guided sampling",
                     progress_bar=None):
        """The one batch loop: ``run_batch(rows, guidance, memory) -> (out (b, ...), feats (b, F), record dict)``.

        ``rows`` is a ``slice`` of the ``n`` samples; ``feats`` (detached) join the memory bank. Sets
        ``memory_`` and ``diagnostics_`` (one ``{'batch', **record, 'steps': history}`` per batch), emits one
        guard warning, and returns the list of outputs.
        """
        guidance = self.make_guidance()
        outs, diagnostics = [], []
        starts = list(range(0, n, batch_size))
        for b_idx, s in enumerate(progress(starts, total=len(starts), desc=desc, enable=progress_bar)):
            out, feats, record = run_batch(slice(s, min(s + batch_size, n)), guidance, memory)
            outs.append(out)
            diagnostics.append({"batch": b_idx, **record, "steps": guidance.take_history()})
            memory = self._update_memory(memory, feats.detach(), sequential)
        guidance.warn_if_guarded()
        self.memory_ = memory
        self.diagnostics_ = diagnostics
        return outs


#: the former name (kept for the adapters and external code)
_GuidedEstimatorMixin = GuidedEstimatorBase
