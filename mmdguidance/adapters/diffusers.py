r"""MMD guidance for diffusers pipelines: text-to-image (SD, SDXL, PixArt-α/Σ, SD3) and unconditional
(``DDPMPipeline`` / ``DDIMPipeline`` in pixel space, ``LDMPipeline`` with a VQ model).

``DiffusersMMDGuidance(pipe).fit(reference_images=folder).sample("a photo of a dog", n=8).images``

The pipeline is used as is, through public API only (:mod:`._hooks`, :mod:`._schedulers`):

* ``evaluate_on='x0'``: ``scheduler.step`` is wrapped for the call; before each step the model output
  (classifier-free guidance already combined by the pipeline) is converted to the scheduler's own Tweedie
  :math:`\hat x_0`, guided, and converted back -- exact for every scheduler family, spacing and prediction type;
* ``evaluate_on='xt'`` / ``'noised_refs'``: the latents right after each ``scheduler.step``, at the step's
  landing noise level, from ``callback_on_step_end`` where the pipeline has it (an :class:`MMDGuidanceCallback`,
  composed with a user's callbacks), from the legacy ``callback(step, t, latents)`` (in place) where it does
  not (PixArt-α/Σ), or from the ``scheduler.step`` wrapper (unconditional pipelines).

The update is :class:`~mmdguidance.guidance.MMDGuidance` on the flattened latents ``(B, D)``, ``D = C·h·w``, in
float32 on the latents' device; every sample of a batch is guided jointly, and a sliding-window memory bank of
finished latents (and their prompt features) carries across batches and calls. One guided call at a time per
pipeline: a second concurrent call on the same scheduler raises ``RuntimeError``.

Prompt-aware guidance uses the product kernel :math:`\kappa((x,c),(x',c')) = k_X(x,x')\,k_T(c,c')` with
:math:`c` an L2-normalised prompt embedding: by default from the pipeline's own text encoders (SDXL:
the pooled CLIP-G embedding; PixArt-Σ: the T5 hidden states averaged over the attention mask; SD: the
CLIP pooled output), or from any callable ``text_embedder(list[str]) -> (n, Dc)``.

Tested with diffusers 0.42.1 (declared range ``>=0.30,<0.43``).
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._guided_estimator import GuidedEstimatorBase
from .._utils import as_tensor, check_array_2d, check_option, check_random_state_torch, logger, progress
from .._utils import check_int as _check_int
from ..guidance import GuidanceWarning
from ._encode import fit_resolution, encode_images, load_images, pixels
from ._hooks import GuidedCall
from ._prompts import check_prompt_list, pipeline_text_embedder
from .callback import MMDGuidanceCallback
from ._schedulers import scheduler_family

__all__ = ["DiffusersMMDGuidance", "MMDGuidedPipelineOutput", "MMDGuidanceCallback", "pipeline_text_embedder", "HOOKS",
           "SUPPORTED_DIFFUSERS", "TEXT_PIPELINES", "UNCONDITIONAL_PIPELINES"]

HOOKS = ("auto", "callback_on_step_end", "callback", "step")
TEXT_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "PixArtAlphaPipeline", "PixArtSigmaPipeline",
                  "StableDiffusion3Pipeline")
UNCONDITIONAL_PIPELINES = ("DDPMPipeline", "DDIMPipeline", "LDMPipeline")
SUPPORTED_DIFFUSERS = ">=0.30,<0.43"
_IMG2IMG = "img2img / inpainting is not supported (the noise levels and the guidance schedule assume the full trajectory)"
_REFUSED_KWARGS = {
    "image": _IMG2IMG, "strength": _IMG2IMG, "mask_image": _IMG2IMG,
    "num_images_per_prompt": "pass n= instead of num_images_per_prompt",
    "callback": "the legacy callback is set by the adapter (hook='callback')",
    "height": "set height/width on the adapter (they fix the reference latents' shape)",
    "width": "set height/width on the adapter (they fix the reference latents' shape)",
    "return_latents": "removed: the output has .latents", "return_diagnostics": "removed: the output has .diagnostics",
}
# per-sample tensors a user may pass through **pipeline_kwargs: sliced per batch (first dim n)
_PER_SAMPLE_KWARGS = (
    "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds",
    "prompt_attention_mask", "negative_prompt_attention_mask", "latents",
)


# =========================================================================== the adapter
class DiffusersMMDGuidance(GuidedEstimatorBase, BaseEstimator):
    r"""MMD guidance on the latents of a diffusers pipeline.

    Parameters
    ----------
    pipeline : diffusers pipeline
        One of :data:`TEXT_PIPELINES` or :data:`UNCONDITIONAL_PIPELINES` (or a subclass). Never copied.
    kernel : Kernel, default=GaussianKernel(bandwidth='median')
        Kernel on the flattened latents (fitted on the reference latents).
    prompt_kernel : Kernel, optional
        Kernel on prompt embeddings; makes the guidance prompt-aware (``fit(..., prompts=...)``).
    text_embedder : callable, optional
        ``f(list[str]) -> (n, Dc)``; default :func:`pipeline_text_embedder` of the pipeline.
    normalize_prompts : bool, default=True
        L2-normalise prompt embeddings (strings or arrays) before the prompt kernel.
    discrepancy : Discrepancy, optional
        An unfitted :class:`~mmdguidance.discrepancy.Discrepancy` to guide with instead of the MMD with
        ``kernel`` (e.g. :class:`~mmdguidance.discrepancies.Chamfer`,
        :class:`~mmdguidance.discrepancies.SlicedWasserstein`); a clone is fitted on the flattened reference
        latents, exactly as in :class:`~mmdguidance.sampler.MMDGuidedSampler`. It replaces the kernel, so it
        cannot be combined with ``kernel`` or prompt-aware guidance (``prompt_kernel``).
    estimator, scale, step_rule, schedule, window, every, terms, evaluate_on, inner_steps, max_update_ratio
        As in :class:`~mmdguidance.guidance.MMDGuidance`; ``evaluate_on='x0'`` guides the scheduler's own Tweedie
        estimate before each step, through the model output (epsilon / v / sample prediction, flow velocity).
    memory_size : int, default=0
        Sliding-window memory bank of the last ``memory_size`` finished latents, across batches and
        ``sample`` calls (``reset_memory=False``); :meth:`clear_memory` empties it.
    hook : {'auto', 'callback_on_step_end', 'callback', 'step'}
        Where the update is applied: ``'auto'`` picks ``callback_on_step_end`` if the pipeline accepts it,
        else the legacy ``callback`` (PixArt-α/Σ), else a ``scheduler.step`` wrapper.
    height, width : int, optional
        Generation resolution in pixels (default: the pipeline's default, ``sample_size * vae_scale_factor``).
    resize_references : bool, default=False
        Reference images of another resolution raise ``ValueError``; with True they are resized
        (bicubic, no crop) to ``(height, width)`` before encoding.
    encode_batch_size : int, default=8
    cache_dir : path, optional
        Cache of encoded reference latents, keyed by pixels, resolution, VAE weights/config and settings.
    diagnostics : bool, default=True
        Record the MMD² estimate at each guided step (one extra kernel pass).
    random_state : int, Generator or None
        Default seed of :meth:`sample`.

    Attributes
    ----------
    mmd_ : Discrepancy
        Fitted on the flattened reference latents (plus prompt columns when prompt-aware): an
        :class:`~mmdguidance.mmd.MMD`, or a clone of ``discrepancy``.
    reference_latents_ : Tensor (N, C, h, w) float32
    latent_shape_ : tuple (C, h, w)
    reference_captions_ : list of str or None
    cache_key_ : str or None
        Key of the reference encoding (None for ``reference_latents`` and pixel-space pipelines).
    autoencoder_id_ : int
        ``id`` of the autoencoder at fit (replacing ``pipeline.vae`` after fitting from images needs a refit).
    prompt_dim_ : int
    memory_ : Tensor (M, D [+ Dc]) or None
    latents_ : Tensor (n, C, h, w)
        Final (guided) latents of the last :meth:`sample` call.
    diagnostics_ : list of dict
        Per batch: ``{'batch', 'steps': MMDGuidance.history}``.
    """

    def __init__(
        self,
        pipeline=None,
        *,
        kernel=None,
        prompt_kernel=None,
        text_embedder=None,
        normalize_prompts=True,
        estimator="biased",
        discrepancy=None,
        scale=0.2,
        step_rule="batch_normalized",
        schedule="decreasing",
        window=(0.0, 0.8),
        every=1,
        terms="full",
        evaluate_on="xt",
        inner_steps=1,
        max_update_ratio=1.0,
        memory_size=0,
        hook="auto",
        height=None,
        width=None,
        resize_references=False,
        encode_batch_size=8,
        cache_dir=None,
        diagnostics=True,
        random_state=None,
    ):
        self.pipeline = pipeline
        self.kernel = kernel
        self.prompt_kernel = prompt_kernel
        self.text_embedder = text_embedder
        self.normalize_prompts = normalize_prompts
        self.estimator = estimator
        self.discrepancy = discrepancy
        self.scale = scale
        self.step_rule = step_rule
        self.schedule = schedule
        self.window = window
        self.every = every
        self.terms = terms
        self.evaluate_on = evaluate_on
        self.inner_steps = inner_steps
        self.max_update_ratio = max_update_ratio
        self.memory_size = memory_size
        self.hook = hook
        self.height = height
        self.width = width
        self.resize_references = resize_references
        self.encode_batch_size = encode_batch_size
        self.cache_dir = cache_dir
        self.diagnostics = diagnostics
        self.random_state = random_state

    # ------------------------------------------------------------------ sklearn plumbing
    _heavy_param = "pipeline"

    def _device(self):
        """Where the pipeline runs its denoiser (differs from ``pipeline.device`` under CPU offload)."""
        return getattr(self.pipeline, "_execution_device", None) or self.pipeline.device

    def pipeline_family(self) -> str:
        """'text' (text-to-image) or 'uncond'; ``TypeError`` naming the supported pipelines otherwise."""
        p = self.pipeline
        names = {c.__name__ for c in type(p).__mro__}
        if names & set(TEXT_PIPELINES):
            return "text"
        if names & set(UNCONDITIONAL_PIPELINES):
            return "uncond"
        raise TypeError(
            f"{type(p).__name__} is not supported: the adapter runs the text-to-image pipelines "
            f"{', '.join(TEXT_PIPELINES)} and the unconditional {', '.join(UNCONDITIONAL_PIPELINES)} "
            "(not img2img / inpainting / ControlNet variants, nor Flux's packed latents)"
        )

    def _denoiser(self):
        self.pipeline_family()
        p = self.pipeline
        den = getattr(p, "unet", None) or getattr(p, "transformer", None)
        if den is None or getattr(p, "scheduler", None) is None:
            raise TypeError(f"{type(p).__name__} has no unet/transformer or no scheduler")
        return den

    def _autoencoder(self):
        """The pipeline's VAE (``vae``), VQ model (``vqvae``, LDM) or None (pixel space)."""
        return getattr(self.pipeline, "vae", None) or getattr(self.pipeline, "vqvae", None)

    def _vae_scale_factor(self) -> int:
        ae = self._autoencoder()
        if ae is None:
            return 1
        return int(getattr(self.pipeline, "vae_scale_factor", 0) or 2 ** (len(ae.config.block_out_channels) - 1))

    def _resolution(self) -> tuple[int, int]:
        vsf = self._vae_scale_factor()
        ss = self._denoiser().config.sample_size
        ss = ss if isinstance(ss, (tuple, list)) else (ss, ss)
        native = (int(ss[0]) * vsf, int(ss[1]) * vsf)
        h = int(self.height) if self.height is not None else native[0]
        w = int(self.width) if self.width is not None else native[1]
        if self.pipeline_family() == "uncond" and (h, w) != native:
            raise ValueError(f"{type(self.pipeline).__name__} generates at its denoiser's sample size "
                             f"{native[0]}x{native[1]}; height/width cannot be changed")
        if h % vsf or w % vsf:
            raise ValueError(f"height={h} and width={w} must be multiples of the VAE scale factor {vsf}")
        return h, w

    def _latent_shape(self) -> tuple[int, int, int]:
        vsf = self._vae_scale_factor()
        h, w = self._resolution()
        return int(self._denoiser().config.in_channels), h // vsf, w // vsf

    def _hook_mode(self) -> str:
        mode = check_option(self.hook, HOOKS, name="hook")
        params = inspect.signature(self.pipeline.__call__).parameters
        if mode == "auto":
            if "callback_on_step_end" in params:
                return "callback_on_step_end"
            return "callback" if "callback" in params else "step"
        if mode != "step" and mode not in params:
            raise ValueError(f"{type(self.pipeline).__name__}.__call__ has no {mode!r} argument; use hook='auto' or 'step'")
        return mode

    def _validate(self):
        self._denoiser()
        scheduler_family(self.pipeline.scheduler)
        self._validate_guidance_params()
        check_option(self.hook, HOOKS, name="hook")
        _check_int(self.memory_size, "memory_size", 0)
        _check_int(self.encode_batch_size, "encode_batch_size", 1)
        if self.text_embedder is not None and not callable(self.text_embedder):
            raise TypeError("text_embedder must be a callable list[str] -> (n, Dc)")
        if self.evaluate_on == "x0_jacobian":
            raise ValueError("evaluate_on='x0_jacobian' is not supported by the diffusers adapter (it needs a "
                             "differentiable model call per step); use evaluate_on='x0' (exact Tweedie x0) or 'xt'")
        if self.prompt_aware and self.pipeline_family() == "uncond":
            raise ValueError(f"{type(self.pipeline).__name__} is unconditional: prompt-aware guidance needs prompts")

    def _check_fitted_state(self):
        """``ValueError`` when the resolution or the autoencoder changed since ``fit``."""
        shape = self._latent_shape()
        if shape != self.latent_shape_:
            raise ValueError(f"the latent shape is now {shape} (height/width or the pipeline changed) but the "
                             f"references were fitted at {self.latent_shape_}: refit")
        if self.cache_key_ is not None and id(self._autoencoder()) != self.autoencoder_id_:
            raise ValueError("the pipeline's autoencoder was replaced after fit: the reference latents are stale; refit")

    # ------------------------------------------------------------------ prompt features
    def prompt_features_tensor(self, prompts, n: int, what: str) -> torch.Tensor:
        """(n, Dc) float32 on the pipeline's device from strings or an array."""
        device = self._device()
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], str)):
            texts = check_prompt_list(prompts, n, what)
            embed = self.text_embedder or pipeline_text_embedder(self.pipeline)
            C = as_tensor(embed(texts), dtype=torch.float32)
            C = check_array_2d(C, name=f"{what} embeddings")
        else:
            C = check_array_2d(prompts, name=what, dtype=torch.float32)
            if C.shape[0] != n:
                raise ValueError(f"got {C.shape[0]} {what} for {n} samples; need exactly one per sample")
        C = C.to(device=device, dtype=torch.float32)
        if self.normalize_prompts:
            C = C / torch.linalg.vector_norm(C, dim=1, keepdim=True).clamp_min(1e-12)
        return C  # (n, Dc)

    # ------------------------------------------------------------------ fit
    def fit(self, reference_images=None, *, reference_latents=None, prompts=None, weights=None):
        """Encode (or take) the reference latents and fit the MMD estimator on them.

        Parameters
        ----------
        reference_images : folder, path, or sequence of paths / PIL images / arrays (H, W[, 3|4])
            Encoded by the pipeline's autoencoder at the generation resolution, mapped by the exact inverse of the
            pipeline's decoding (:mod:`~mmdguidance.adapters._encode`: ``scaling_factor``, ``shift_factor``,
            ``latents_mean`` / ``latents_std``); pixel-space pipelines use the images in [-1, 1]. 16-bit images
            are scaled to 8 bits, alpha is composited on white. In a folder, ``<stem>.txt`` files are the captions.
        reference_latents : array or Tensor (N, C, h, w)
            Latents already in the denoiser's space.
        prompts : str, list of N str, or array (N, Dc), optional
            Captions (or caption embeddings) of the references; required when prompt-aware, unless the
            folder carries captions.
        weights : array (N,), optional
            Reference weights.

        Returns
        -------
        self
        """
        self._validate()
        if (reference_images is None) == (reference_latents is None):
            raise ValueError("pass exactly one of reference_images or reference_latents")
        shape = self._latent_shape()
        if reference_images is not None:
            lat, key, captions, names = self._encode_references(reference_images)
        else:
            lat, key, captions, names = as_tensor(reference_latents, dtype=torch.float32), None, None, None
            if lat.ndim != 4 or tuple(lat.shape[1:]) != shape:
                h, w = self._resolution()
                raise ValueError(f"reference_latents must have shape (N, {shape[0]}, {shape[1]}, {shape[2]}) for "
                                 f"generation at {h}x{w}, got {tuple(lat.shape)}")
            lat = lat.to(self._device())
        if tuple(lat.shape[1:]) != shape:
            raise ValueError(f"encoded references have latent shape {tuple(lat.shape[1:])}, expected {shape}")
        N = lat.shape[0]
        if N < 2:
            raise ValueError(f"need at least 2 references, got {N}")
        X = lat.reshape(N, -1)  # (N, D)
        C = None
        if self.prompt_aware:
            prompts = self._reference_prompts(prompts, captions, names)
            C = self.prompt_features_tensor(prompts, N, "reference prompts")  # (N, Dc)
        elif prompts is not None and not isinstance(prompts, (str, list, tuple)):
            raise ValueError("prompts were given but the guidance is not prompt-aware; set prompt_kernel=...")
        self.mmd_ = self._fit_prompt_aware_mmd(X, C, weights)
        self.reference_latents_ = lat
        if isinstance(prompts, (str, list, tuple)):
            captions = check_prompt_list(prompts, N, "reference prompts")
        self.reference_captions_ = captions if captions is None or all(c is not None for c in captions) else None
        self.latent_shape_ = shape
        self.n_features_in_ = X.shape[1]
        self.cache_key_ = key
        self.autoencoder_id_ = id(self._autoencoder())
        self.memory_ = None
        self.latents_ = None
        self.diagnostics_ = []
        logger.info("MMD guidance fitted on %d reference latents of shape %s", N, shape)
        return self

    def _encode_references(self, reference_images):
        """(latents (N, C, h, w) float32, cache key or None, captions, names) of reference images."""
        arrays, caps, names = load_images(reference_images)
        h, w = self._resolution()
        ae = self._autoencoder()
        if ae is None:  # pixel space: the images themselves, in the pipeline's [-1, 1] range
            arrays = fit_resolution(arrays, h, w, bool(self.resize_references))
            return pixels(np.stack(arrays)).to(self._device()), None, caps, names
        lat, key = encode_images(ae, arrays, height=h, width=w, resize=bool(self.resize_references),
                                 batch_size=int(self.encode_batch_size), device=self._device(), cache_dir=self.cache_dir)
        return lat, key, caps, names

    @staticmethod
    def _reference_prompts(prompts, captions, names):
        if prompts is not None:
            return prompts
        if captions is None:
            raise ValueError("prompt-aware guidance (prompt_kernel=...): fit(..., prompts=...) needs one caption per "
                             "reference (or <stem>.txt caption files beside the images)")
        missing = [n for n, c in zip(names, captions) if c is None]
        if missing:
            raise ValueError(f"prompt-aware guidance: {len(missing)} reference image(s) have no <stem>.txt caption, "
                             f"e.g. {missing[0]!r}")
        return captions

    def _fit_prompt_aware_mmd(self, X, C, weights):
        """``_fit_mmd`` with a clear error when all reference captions coincide (median bandwidth 0)."""
        try:
            return self._fit_mmd(X, C, weights)
        except ValueError as exc:
            if C is None or not bool((C == C[:1]).all()):
                raise
            raise ValueError(
                f"all {C.shape[0]} reference captions are identical, so the prompt kernel's median bandwidth is 0 "
                "and it cannot tell prompts apart: drop prompt_kernel (plain guidance toward the references), give "
                "distinct captions, or give the prompt kernel a fixed bandwidth"
            ) from exc

    # ------------------------------------------------------------------ memory
    def clear_memory(self):
        """Empty the memory bank of earlier samples."""
        self.memory_ = None
        return self

    # ------------------------------------------------------------------ sample
    def sample(
        self,
        prompt=None,
        n=1,
        *,
        batch_size=None,
        num_inference_steps=50,
        guidance_scale=None,
        negative_prompt=None,
        generator=None,
        prompt_features=None,
        reset_memory=True,
        output_type="pil",
        return_dict=True,
        progress_bar=None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs=None,
        **pipeline_kwargs,
    ):
        """Generate ``n`` images with MMD guidance on the latents.

        Parameters
        ----------
        prompt : str or list of n str, optional
            ``None`` for unconditional pipelines, or when ``prompt_embeds`` are passed in ``pipeline_kwargs``.
        n, batch_size : int
            Number of images; samples per pipeline call, guided jointly (default ``n``).
        num_inference_steps : int >= 1
        guidance_scale : float, optional
            CFG scale (pipeline default if None); the guidance sees the combined CFG prediction.
        negative_prompt : str or list, optional
        generator : int, torch.Generator, list of n torch.Generator, or None
            The pipeline's noise (default ``random_state``); one generator for all batches, or one per image.
        prompt_features : array (n, Dc), optional
            Prompt features for the product kernel instead of embedding ``prompt``.
        reset_memory : bool
            Start from an empty memory bank (False keeps ``memory_``).
        output_type : str
            Passed to the pipeline ('pil', 'np', 'pt', 'latent'; unconditional pipelines: 'pil', 'np', 'latent').
        return_dict : bool
            Return a :class:`MMDGuidedPipelineOutput` (default) or the tuple ``(images, latents, diagnostics)``.
        progress_bar : bool, optional
            tqdm bar over batches (default: only when interactive).
        callback_on_step_end, callback_on_step_end_tensor_inputs : optional
            A user's callback (function, PipelineCallback or MultiPipelineCallbacks), run after the guidance.
        **pipeline_kwargs
            Passed to the pipeline; per-sample tensors (``prompt_embeds``, negative / pooled embeddings, attention
            masks, ``latents``) must have ``n`` rows and are sliced per batch; ``image`` / ``strength`` are refused.

        Returns
        -------
        MMDGuidedPipelineOutput or tuple
            ``images`` (n, by ``output_type``), ``latents`` (n, C, h, w), ``diagnostics`` (per batch).
        """
        n, bs = self._check_counts(n, batch_size, num_inference_steps, pipeline_kwargs)
        prompts, negs, per_sample = self._split_prompt_args(prompt, negative_prompt, guidance_scale, n, pipeline_kwargs)
        C = self._sample_prompt_features(prompt_features, prompts, n)
        mode = self._hook_mode()
        user_cb = _UserCallback(callback_on_step_end, callback_on_step_end_tensor_inputs, mode)
        gens, dev_gen = self._generators(generator, n)
        memory = None if (reset_memory or self.memory_ is None) else self.memory_

        def run_batch(rows, guidance, memory):  # one pipeline call on samples rows.start:rows.stop
            kw = self._batch_kwargs(pipeline_kwargs, per_sample, prompts, negs, guidance_scale, rows.start, rows.stop)
            Cb = None if C is None else C[rows]
            call = GuidedCall(self.pipeline.scheduler, guidance, mode=mode, prompts=Cb, memory=memory, generator=dev_gen)
            img, lat = self._run_batch(call, kw, num_inference_steps, gens(rows.start, rows.stop), output_type, user_cb)
            return (img, lat), _features(lat, Cb), {"mode": mode}

        outs = self._run_batches(n, bs, run_batch, memory=memory, desc="MMD-guided generation", progress_bar=progress_bar)
        images, latents = [o[0] for o in outs], [o[1] for o in outs]
        self.latents_, diagnostics = torch.cat(latents, 0), self.diagnostics_
        self._warn_if_vanished(diagnostics)
        out = MMDGuidedPipelineOutput(images=_concat_images(images), latents=self.latents_, diagnostics=diagnostics)
        return out if return_dict else out.to_tuple()

    # ------------------------------------------------------------------ sample helpers
    def _check_counts(self, n, batch_size, num_inference_steps, pipeline_kwargs):
        """Fitted-state and argument checks (before any work); returns ``(n, batch_size)``."""
        check_is_fitted(self, "mmd_")
        self._validate()
        self._check_fitted_state()
        self._warn_unipc()
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}")
        bs = int(n) if batch_size is None else _check_int(batch_size, "batch_size", 1)
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral) \
                or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        for k, why in _REFUSED_KWARGS.items():
            if k in pipeline_kwargs:
                raise ValueError(f"{k}= is not supported: {why}")
        return int(n), bs

    def _split_prompt_args(self, prompt, negative_prompt, guidance_scale, n, pipeline_kwargs):
        """(prompts or None, negative prompts or None, per-sample tensors); pops the latter from ``pipeline_kwargs``."""
        if self.pipeline_family() == "uncond":
            given = [k for k, v in (("prompt", prompt), ("negative_prompt", negative_prompt),
                                    ("guidance_scale", guidance_scale)) if v is not None]
            if given:
                raise ValueError(f"{type(self.pipeline).__name__} is unconditional: {', '.join(given)} not accepted")
        prompts = None if prompt is None else check_prompt_list(prompt, n, "prompts")
        if self.pipeline_family() == "text" and prompts is None and "prompt_embeds" not in pipeline_kwargs:
            raise ValueError("pass prompt= (str or list of n str) or prompt_embeds=")
        negs = None if negative_prompt is None else check_prompt_list(negative_prompt, n, "negative prompts")
        per_sample = {}
        for k in _PER_SAMPLE_KWARGS:
            if k in pipeline_kwargs and pipeline_kwargs[k] is not None:
                v = pipeline_kwargs.pop(k)
                if len(v) != n:
                    raise ValueError(f"{k} has {len(v)} rows for n={n} samples")
                per_sample[k] = v
        return prompts, negs, per_sample

    def _sample_prompt_features(self, prompt_features, prompts, n):
        if not self.prompt_aware:
            return None
        if prompt_features is not None:
            C = self.prompt_features_tensor(prompt_features, n, "prompt features")
        elif prompts is not None:
            C = self.prompt_features_tensor(prompts, n, "prompts")
        else:
            raise ValueError("prompt-aware guidance needs prompt= strings or prompt_features=")
        if C.shape[1] != self.prompt_dim_:
            raise ValueError(f"prompt features have {C.shape[1]} dims, the references {self.prompt_dim_}")
        return C

    def _warn_unipc(self):
        if self.scale > 0 and self.evaluate_on != "x0" and type(self.pipeline.scheduler).__name__.startswith("UniPC"):
            warnings.warn(
                "UniPCMultistepScheduler's corrector recomputes the latents from its stored model outputs and "
                "discards a post-step edit: MMD guidance in 'xt' mode has (almost) no effect; use evaluate_on='x0' "
                "(guides the model prediction before the step) or DDIM, DPM-Solver or Euler",
                GuidanceWarning, stacklevel=4,
            )

    def _generators(self, generator, n):
        """(gens(s, e) -> the generator(s) of images s..e, device generator for 'noised_refs' or None)."""
        if isinstance(generator, (list, tuple)):
            if len(generator) != n or not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError(f"a list of generators must hold exactly n={n} torch.Generator (one per image), "
                                 f"got {len(generator)} item(s)")
            gens, seed = (lambda s, e: list(generator[s:e])), int(generator[0].initial_seed())
        else:
            g = check_random_state_torch(self.random_state if generator is None else generator, device="cpu")
            gens, seed = (lambda s, e: g), int(g.initial_seed())
        dev_gen = None
        if self.evaluate_on == "noised_refs":
            dev_gen = torch.Generator(device=self._device()).manual_seed(seed + 1)
        return gens, dev_gen

    def _batch_kwargs(self, pipeline_kwargs, per_sample, prompts, negs, guidance_scale, s, e):
        kw = dict(pipeline_kwargs)
        kw.update({k: v[s:e] for k, v in per_sample.items()})
        if self.pipeline_family() == "uncond":
            kw["batch_size"] = e - s
            return kw
        h, w = self._resolution()
        kw.update(height=h, width=w)
        if prompts is not None:
            kw["prompt"] = prompts[s:e]
        if negs is not None:
            kw["negative_prompt"] = negs[s:e]
        elif "negative_prompt_embeds" in per_sample:
            kw["negative_prompt"] = None  # PixArt's default "" conflicts with negative embeddings
        if guidance_scale is not None:
            kw["guidance_scale"] = guidance_scale
        return kw

    def _run_batch(self, call, kw, num_inference_steps, gen, output_type, user_cb):
        """Run the pipeline once under ``call``; returns (images, final latents (b, C, h, w))."""
        uncond_latent = self.pipeline_family() == "uncond" and output_type == "latent"
        kw.update(user_cb.pipeline_kwargs(call, self))
        if call.mode == "callback":
            kw.update(callback=call.legacy_callback, callback_steps=1)
        with call:
            out = self.pipeline(num_inference_steps=num_inference_steps, generator=gen,
                                output_type="np" if uncond_latent else output_type, **kw)
        if call.final is None:
            raise RuntimeError("the pipeline never reached the guidance hook (no scheduler step was taken)")
        lat = call.final.detach()  # (b, C, h, w)
        images = out[0] if isinstance(out, tuple) else out.images
        return (lat if uncond_latent else images), lat

    def _warn_if_vanished(self, diagnostics):
        """One :class:`GuidanceWarning` when the guidance gradient was exactly 0 at some guided step, or when the
        kernel between the final latents and every reference underflows to 0 (the cross term did nothing)."""
        steps = [st for d in diagnostics for st in d["steps"] if st.get("applied")]
        if not steps:
            return
        dead = [st for st in steps if not st.get("grad_norm", 1.0) > 0.0]
        kern = getattr(self.mmd_, "kernel_", None)  # None: a kernel-free discrepancy (Chamfer, sliced W2)
        kern = getattr(kern, "first_", kern)
        Z = self.latents_.reshape(self.latents_.shape[0], -1).float()  # (n, D)
        Y = self.reference_latents_.reshape(self.reference_latents_.shape[0], -1).to(Z)  # (N, D)
        with torch.no_grad():
            cross_dead = kern is not None and not bool((kern.gram(Z, Y) > 0).any())  # (n, N) all underflowed
        if not dead and not cross_dead:
            return
        bw = getattr(kern, "bandwidth_", None)
        where = f"at {len(dead)} of {len(steps)} guided steps" if dead else "for the generated-reference (cross) term"
        msg = (f"the MMD guidance gradient vanished (exactly 0) {where}: the kernel bandwidth "
               f"{'' if bw is None else np.array2string(np.asarray(bw), precision=4)} is tiny against the typical "
               f"distance {float(torch.cdist(Z, Y).median()):.4g} between generated and reference latents, so the kernel "
               "underflows. Are the references on the denoiser's latent scale (same VAE, scaling)? Otherwise use a "
               "larger fixed bandwidth")
        warnings.warn(msg, GuidanceWarning, stacklevel=3)
        logger.warning(msg)

    # ------------------------------------------------------------------ convenience
    def score_latents(self, latents, prompts=None) -> float:
        """The fitted discrepancy (MMD² by default) between latents ``(n, C, h, w)`` and the references (with
        prompts when prompt-aware)."""
        check_is_fitted(self, "mmd_")
        Z = as_tensor(latents, dtype=torch.float32).to(self.reference_latents_.device)
        Z = Z.reshape(Z.shape[0], -1)
        if Z.shape[1] != self.n_features_in_:
            raise ValueError(f"latents have {Z.shape[1]} features, the references {self.n_features_in_}")
        if self.prompt_aware:
            if prompts is None:
                raise ValueError("prompt-aware guidance: score_latents(..., prompts=...) is required")
            Z = torch.cat([Z, self.prompt_features_tensor(prompts, Z.shape[0], "prompts")], 1)
        return float(self.mmd_.score(Z))


@dataclass
class MMDGuidedPipelineOutput(BaseOutput):
    """Output of :meth:`DiffusersMMDGuidance.sample`, in the style of diffusers' pipeline outputs.

    Attributes
    ----------
    images : list of PIL images, ndarray or Tensor with n rows (by ``output_type``)
    latents : Tensor (n, C, h, w)
        The final (guided) latents, in the denoiser's space (pixels in [-1, 1] for pixel-space pipelines).
    diagnostics : list of dict
        Per batch: ``{'batch', 'mode', 'steps'}`` with the per-step guidance history.
    """

    images: Any
    latents: torch.Tensor
    diagnostics: list


class _UserCallback:
    """A user's ``callback_on_step_end`` composed after the guidance's own :class:`MMDGuidanceCallback`."""

    def __init__(self, callback, tensor_inputs, mode):
        if callback is not None and not callable(callback):
            raise TypeError(f"callback_on_step_end must be callable or a PipelineCallback, got {type(callback).__name__}")
        self.callback = callback
        self.inputs = list(tensor_inputs) if tensor_inputs is not None else ["latents"]
        self.mode = mode

    def pipeline_kwargs(self, call, adapter) -> dict:
        cb = self.callback
        accepts = "callback_on_step_end" in inspect.signature(adapter.pipeline.__call__).parameters
        if cb is not None and not accepts:
            raise ValueError(f"{type(adapter.pipeline).__name__} has no callback_on_step_end; a user callback cannot run")
        if call.mode != "callback_on_step_end":
            return {} if cb is None else {"callback_on_step_end": cb, "callback_on_step_end_tensor_inputs": self.inputs}
        ours = MMDGuidanceCallback(adapter, call=call)
        if cb is None:
            return {"callback_on_step_end": ours, "callback_on_step_end_tensor_inputs": ours.tensor_inputs}
        if isinstance(cb, (PipelineCallback, MultiPipelineCallbacks)):
            rest = cb.callbacks if isinstance(cb, MultiPipelineCallbacks) else [cb]
            both = MultiPipelineCallbacks([ours, *rest])
            return {"callback_on_step_end": both, "callback_on_step_end_tensor_inputs": both.tensor_inputs}

        def chained(pipe, i, t, callback_kwargs):
            callback_kwargs = ours(pipe, i, t, callback_kwargs)
            callback_kwargs.update(cb(pipe, i, t, callback_kwargs) or {})
            return callback_kwargs

        inputs = list(dict.fromkeys(["latents", *self.inputs]))
        return {"callback_on_step_end": chained, "callback_on_step_end_tensor_inputs": inputs}


def _features(lat: torch.Tensor, C: torch.Tensor | None) -> torch.Tensor:
    """Memory-bank rows (b, D [+ Dc]) of finished latents (b, C, h, w) and their prompt features."""
    feats = lat.reshape(lat.shape[0], -1).float()  # (b, D)
    return feats if C is None else torch.cat([feats, C], 1)


def _concat_images(parts):
    first = parts[0]
    if isinstance(first, list):
        return [im for p in parts for im in p]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, 0)
    return np.concatenate(parts, 0)
