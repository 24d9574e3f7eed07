r"""MMD guidance as a diffusers ``PipelineCallback``, composable with a user's own callbacks.

::

    cb = MMDGuidanceCallback(DiffusersMMDGuidance(pipe, evaluate_on="xt").fit(reference_images=folder))
    pipe(prompt, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=cb.tensor_inputs)
    pipe(prompt, callback_on_step_end=MultiPipelineCallbacks([cb, my_preview_callback]))

The callback updates ``callback_kwargs['latents']`` after each ``scheduler.step`` and returns the whole
``callback_kwargs`` (so :class:`~diffusers.callbacks.MultiPipelineCallbacks` passes the guided latents on to the
next callback: put the guidance first for previews of the guided latents). With ``evaluate_on='x0'`` the guidance
acts *before* the step, through the model prediction, which a callback cannot reach: wrap the call in
``with cb.attached(pipe): ...`` (the scheduler's ``step`` is wrapped for the duration; the callback then only
records). Each pipeline call starts a fresh guidance state at step 0; :attr:`diagnostics` and :attr:`latents`
describe the last call. Not thread-safe: one call at a time per callback and per pipeline.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers.callbacks import PipelineCallback
from sklearn.utils.validation import check_is_fitted

from ._hooks import GuidedCall

__all__ = ["MMDGuidanceCallback"]


class MMDGuidanceCallback(PipelineCallback):
    r"""MMD guidance of a fitted :class:`~mmdguidance.adapters.diffusers.DiffusersMMDGuidance`, as a pipeline callback.

    Parameters
    ----------
    adapter : DiffusersMMDGuidance
        Fitted; its pipeline's scheduler is the one that gets stepped.
    prompt_features : Tensor (B, Dc), str or list of str, optional
        Prompt features of the batch (prompt-aware guidance; strings are embedded by the adapter).
    call : GuidedCall, optional
        Use this running call instead of creating one per pipeline call (how the adapter composes it).

    Attributes
    ----------
    tensor_inputs : list of str
        ``['latents']``.
    diagnostics : list of dict
        Per-step guidance history of the last pipeline call.
    latents : Tensor (B, C, h, w) or None
        The guided latents after the last step of the last call.
    """

    tensor_inputs = ["latents"]

    def __init__(self, adapter, *, prompt_features=None, call=None):
        super().__init__()
        self.adapter = adapter
        self.prompt_features = prompt_features
        self._fixed_call = call
        self._call = call
        self.latents = None

    @property
    def diagnostics(self) -> list:
        return [] if self._call is None else self._call.guidance.history

    def _new_call(self, batch: int) -> GuidedCall:
        a = self.adapter
        check_is_fitted(a, "mmd_")
        C = None
        if a.prompt_aware:
            if self.prompt_features is None:
                raise ValueError("prompt-aware guidance: MMDGuidanceCallback(adapter, prompt_features=...) is required")
            C = a.prompt_features_tensor(self.prompt_features, batch, "prompt features")
        return GuidedCall(a.pipeline.scheduler, a.make_guidance(), mode="callback_on_step_end", prompts=C,
                          memory=a.memory_ if a.memory_size else None)

    @contextlib.contextmanager
    def attached(self, pipeline=None, batch: int | None = None):
        """Wrap ``pipeline.scheduler.step`` for one call (needed for ``evaluate_on='x0'``; harmless for 'xt')."""
        if pipeline is not None and pipeline is not self.adapter.pipeline:
            raise ValueError("attached(pipe): pipe must be the adapter's own pipeline")
        call = self._new_call(batch or 1)
        self._fixed_call = self._call = call
        try:
            with call:
                yield self
        finally:
            self._fixed_call = None
            self.latents = call.final

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        """Guide ``callback_kwargs['latents']`` in place of the dict and return the dict."""
        lat = callback_kwargs["latents"]  # (B, C, h, w)
        if self._fixed_call is None and (self._call is None or step_index == 0):
            self._call = self._new_call(lat.shape[0])
        with torch.no_grad():
            callback_kwargs["latents"] = self._call.post_step(step_index, timestep, lat)
        self.latents = callback_kwargs["latents"]
        return callback_kwargs
