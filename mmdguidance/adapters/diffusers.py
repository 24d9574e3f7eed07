r"""MMD guidance for diffusers latent-diffusion pipelines (SD, SDXL, PixArt-Σ, SD3; not Flux's packed latents).

``DiffusersMMDGuidance(pipe).fit(reference_images=folder).sample("a photo of a dog", n=8)``

The pipeline is used as is, through public API only: guidance is applied to the latents right after
each ``scheduler.step`` (or a window of steps) from ``callback_on_step_end`` where the pipeline has it,
from the legacy ``callback(step, t, latents)`` (in place) where it does not (PixArt-α/Σ), or from a
wrapper of ``scheduler.step``. Classifier-free guidance is untouched. The update is
:class:`~mmdguidance.guidance.MMDGuidance` on the flattened latents ``(B, D)``, ``D = C·h·w``, in
float32 on the latents' device, in the scheduler's VP coordinates (see :mod:`._hooks`); every sample of
a batch is guided jointly, and a sliding-window memory bank of finished latents (and their prompt
features) carries across batches and calls.

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

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._utils import (as_tensor, check_array_2d, check_option, check_random_state_torch, logger,
                      progress)
from ..guidance import GuidanceWarning, _check_int, _GuidedEstimatorMixin
from ._encode import encode_images, load_images
from ._hooks import GuidedCall
from ._schedulers import scheduler_family

__all__ = ["DiffusersMMDGuidance", "pipeline_text_embedder", "HOOKS", "SUPPORTED_DIFFUSERS"]

HOOKS = ("auto", "callback_on_step_end", "callback", "step")
SUPPORTED_DIFFUSERS = ">=0.30,<0.43"
# per-sample tensors a user may pass through **pipeline_kwargs: sliced per batch (first dim n)
_PER_SAMPLE_KWARGS = (
    "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds",
    "prompt_attention_mask", "negative_prompt_attention_mask", "latents",
)


# =========================================================================== prompt embeddings
def pipeline_text_embedder(pipeline):
    """The default prompt embedder of a pipeline: ``f(list[str]) -> Tensor (n, Dc)`` float32.

    SDXL (``text_encoder_2``): the pooled projection of the second encoder; PixArt (T5): hidden states
    averaged over the attention mask; a single CLIP encoder (SD): ``text_embeds`` / ``pooler_output``.
    Raises ``ValueError`` if the pipeline has no tokenizer or text encoder (pass ``text_embedder=``).
    """
    device = getattr(pipeline, "_execution_device", None) or pipeline.device
    if getattr(pipeline, "text_encoder_2", None) is not None and getattr(pipeline, "tokenizer_2", None) is not None:
        def sdxl(prompts):
            with torch.no_grad():
                out = pipeline.encode_prompt(list(prompts), device=device, num_images_per_prompt=1,
                                             do_classifier_free_guidance=False)
            return out[2].float()  # pooled (n, Dp)

        return sdxl
    if getattr(pipeline, "text_encoder", None) is None or getattr(pipeline, "tokenizer", None) is None:
        raise ValueError(
            f"{type(pipeline).__name__} has no tokenizer/text encoder: pass text_embedder=callable(list[str]) -> (n, Dc), "
            "or prompt features as arrays"
        )
    if type(pipeline).__name__.startswith("PixArt"):
        def pixart(prompts):
            with torch.no_grad():
                emb, mask, _, _ = pipeline.encode_prompt(list(prompts), do_classifier_free_guidance=False, device=device,
                                                         clean_caption=False)
            m = mask.to(emb.dtype)[:, :, None]  # (n, L, 1)
            return ((emb * m).sum(1) / m.sum(1).clamp_min(1.0)).float()  # (n, Dt)

        return pixart

    def clip(prompts):
        tok = pipeline.tokenizer
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            out = pipeline.text_encoder(ids)
        emb = getattr(out, "text_embeds", None)
        if emb is None:
            emb = out.pooler_output
        return emb.float()

    return clip


def _check_prompt_list(prompts, n: int, what: str) -> list[str]:
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{what} must be a str or a list of str")
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} {what} for {n} samples; need exactly one per sample (or a single str)")
    return prompts


# =========================================================================== the adapter
class DiffusersMMDGuidance(_GuidedEstimatorMixin, BaseEstimator):
    r"""MMD guidance on the latents of a diffusers pipeline.

    Parameters
    ----------
    pipeline : diffusers pipeline
        ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``PixArtSigmaPipeline`` (or another
        pipeline with ``vae``, ``unet``/``transformer`` and ``scheduler``). Never copied.
    kernel : Kernel, default=GaussianKernel(bandwidth='median')
        Kernel on the flattened latents (fitted on the reference latents).
    prompt_kernel : Kernel, optional
        Kernel on prompt embeddings; makes the guidance prompt-aware (``fit(..., prompts=...)``).
    text_embedder : callable, optional
        ``f(list[str]) -> (n, Dc)``; default :func:`pipeline_text_embedder` of the pipeline.
    normalize_prompts : bool, default=True
        L2-normalise prompt embeddings (strings or arrays) before the prompt kernel.
    estimator, scale, step_rule, schedule, window, every, terms, evaluate_on, inner_steps, max_update_ratio
        As in :class:`~mmdguidance.guidance.MMDGuidance`; ``evaluate_on='x0'`` uses the Tweedie estimate
        from the step's model output (epsilon / v / sample prediction and flow velocity handled).
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
    mmd_ : MMD
        Fitted on the flattened reference latents (plus prompt columns when prompt-aware).
    reference_latents_ : Tensor (N, C, h, w) float32
    latent_shape_ : tuple (C, h, w)
    reference_captions_ : list of str or None
    cache_key_ : str or None
        Key of the reference encoding (None for ``reference_latents``).
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

    def _denoiser(self):
        p = self.pipeline
        if type(p).__name__.startswith("Flux"):
            raise TypeError("Flux pipelines pack their latents into patches; the adapter supports unpacked latents "
                            "(SD, SDXL, SD3, PixArt) only")
        den = getattr(p, "unet", None) or getattr(p, "transformer", None)
        if den is None or getattr(p, "scheduler", None) is None:
            raise TypeError(
                f"pipeline must be a diffusers pipeline with a unet or transformer and a scheduler, got {type(p).__name__}"
            )
        return den

    def _vae_scale_factor(self) -> int:
        p = self.pipeline
        return int(getattr(p, "vae_scale_factor", 0) or 2 ** (len(p.vae.config.block_out_channels) - 1))

    def _resolution(self) -> tuple[int, int]:
        vsf = self._vae_scale_factor()
        ss = self._denoiser().config.sample_size
        ss = ss if isinstance(ss, (tuple, list)) else (ss, ss)
        h = int(self.height) if self.height is not None else int(ss[0]) * vsf
        w = int(self.width) if self.width is not None else int(ss[1]) * vsf
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

    # ------------------------------------------------------------------ prompt features
    def _prompt_features(self, prompts, n: int, what: str) -> torch.Tensor:
        """(n, Dc) float32 on the pipeline's device from strings or an array."""
        device = self._device()
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], str)):
            texts = _check_prompt_list(prompts, n, what)
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
        reference_images : folder, path, or sequence of paths / PIL images / uint8 or [0, 1] arrays (H, W, 3)
            Encoded by the pipeline's VAE at the generation resolution and scaled by its ``scaling_factor``
            once (:func:`~mmdguidance.adapters._encode.encode_images`). In a folder, ``<stem>.txt`` files
            are the captions.
        reference_latents : array or Tensor (N, C, h, w)
            Latents already in the denoiser's space (i.e. already multiplied by ``scaling_factor``).
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
        device = self._device()
        captions = None
        if reference_images is not None:
            arrays, caps = load_images(reference_images)
            h, w = self._resolution()
            lat, key = encode_images(
                self.pipeline.vae, arrays, height=h, width=w, resize=bool(self.resize_references),
                batch_size=int(self.encode_batch_size), device=device, cache_dir=self.cache_dir,
            )
            captions = caps if all(c is not None for c in caps) else None
        else:
            lat = as_tensor(reference_latents, dtype=torch.float32)
            key = None
            if lat.ndim != 4 or tuple(lat.shape[1:]) != shape:
                raise ValueError(
                    f"reference_latents must have shape (N, {shape[0]}, {shape[1]}, {shape[2]}) for generation at "
                    f"{self._resolution()[0]}x{self._resolution()[1]}, got {tuple(lat.shape)}"
                )
            lat = lat.to(device)
        if tuple(lat.shape[1:]) != shape:
            raise ValueError(f"encoded references have latent shape {tuple(lat.shape[1:])}, expected {shape}")
        N = lat.shape[0]
        if N < 2:
            raise ValueError(f"need at least 2 references, got {N}")
        X = lat.reshape(N, -1)  # (N, D)
        D = X.shape[1]
        if self.prompt_aware:
            if prompts is None:
                prompts = captions
            if prompts is None:
                raise ValueError("prompt-aware guidance (prompt_kernel=...): fit(..., prompts=...) needs one caption per reference")
            C = self._prompt_features(prompts, N, "reference prompts")  # (N, Dc)
        else:
            if prompts is not None and not isinstance(prompts, (str, list, tuple)):
                raise ValueError("prompts were given but the guidance is not prompt-aware; set prompt_kernel=...")
            C = None
        self.mmd_ = self._fit_mmd(X, C, weights)
        self.reference_latents_ = lat
        if isinstance(prompts, (str, list, tuple)):
            captions = _check_prompt_list(prompts, N, "reference prompts")
        self.reference_captions_ = captions
        self.latent_shape_ = shape
        self.n_features_in_ = D
        self.cache_key_ = key
        self.memory_ = None
        self.latents_ = None
        self.diagnostics_ = []
        logger.info("MMD guidance fitted on %d reference latents of shape %s", N, shape)
        return self

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
        return_latents=False,
        return_diagnostics=False,
        progress_bar=None,
        **pipeline_kwargs,
    ):
        """Generate ``n`` images with MMD guidance on the latents.

        Parameters
        ----------
        prompt : str or list of n str, optional
            ``None`` only when ``prompt_embeds`` are passed in ``pipeline_kwargs``.
        n : int
        batch_size : int, optional
            Samples per pipeline call, guided jointly (default ``n``).
        num_inference_steps : int
        guidance_scale : float, optional
            Classifier-free guidance scale (pipeline default if None); CFG is left intact.
        negative_prompt : str or list, optional
        generator : int, torch.Generator or None
            Seeds the pipeline's noise (default ``random_state``); one generator runs through all batches.
        prompt_features : array (n, Dc), optional
            Prompt features for the product kernel instead of embedding ``prompt``.
        reset_memory : bool
            Start from an empty memory bank (False keeps ``memory_`` from earlier calls).
        output_type : str
            Passed to the pipeline ('pil', 'np', 'pt', 'latent').
        return_latents, return_diagnostics : bool
            Also return the final latents (n, C, h, w) and/or the per-batch diagnostics.
        progress_bar : bool, optional
            tqdm bar over batches (default: only when interactive).
        **pipeline_kwargs
            Passed to the pipeline; per-sample tensors (``prompt_embeds``, ``negative_prompt_embeds``,
            ``pooled_prompt_embeds``, attention masks, ``latents``) must have ``n`` rows and are sliced per batch.

        Returns
        -------
        images : list of PIL images, or array / Tensor with n rows (by ``output_type``)
        latents : Tensor (n, C, h, w), if ``return_latents``
        diagnostics : list of dict, if ``return_diagnostics``
        """
        check_is_fitted(self, "mmd_")
        self._validate()
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}")
        n = int(n)
        bs = n if batch_size is None else _check_int(batch_size, "batch_size", 1)
        if "num_images_per_prompt" in pipeline_kwargs:
            raise ValueError("pass n= instead of num_images_per_prompt")
        for k in ("callback_on_step_end", "callback", "height", "width", "generator"):
            if k in pipeline_kwargs:
                raise ValueError(f"{k} is set by the adapter; do not pass it in pipeline_kwargs")
        prompts = None if prompt is None else _check_prompt_list(prompt, n, "prompts")
        if prompts is None and "prompt_embeds" not in pipeline_kwargs:
            raise ValueError("pass prompt= (str or list of n str) or prompt_embeds=")
        negs = None if negative_prompt is None else _check_prompt_list(negative_prompt, n, "negative prompts")
        per_sample = {}
        for k in _PER_SAMPLE_KWARGS:
            if k in pipeline_kwargs and pipeline_kwargs[k] is not None:
                v = pipeline_kwargs.pop(k)
                if len(v) != n:
                    raise ValueError(f"{k} has {len(v)} rows for n={n} samples")
                per_sample[k] = v
        C = None
        if self.prompt_aware:
            if prompt_features is not None:
                C = self._prompt_features(prompt_features, n, "prompt features")
            elif prompts is not None:
                C = self._prompt_features(prompts, n, "prompts")
            else:
                raise ValueError("prompt-aware guidance needs prompt= strings or prompt_features=")
            if C.shape[1] != self.prompt_dim_:
                raise ValueError(f"prompt features have {C.shape[1]} dims, the references {self.prompt_dim_}")
        mode = self._hook_mode()
        sch = self.pipeline.scheduler
        if self.scale > 0 and type(sch).__name__.startswith("UniPC"):
            warnings.warn(
                "UniPCMultistepScheduler's corrector recomputes the latents from its stored model outputs and "
                "discards a post-step edit: MMD guidance has (almost) no effect; use DDIM, DPM-Solver or Euler",
                GuidanceWarning, stacklevel=2,
            )
        gen = check_random_state_torch(self.random_state if generator is None else generator, device="cpu")
        device = self._device()
        dev_gen = None
        if self.evaluate_on == "noised_refs":
            dev_gen = torch.Generator(device=device).manual_seed(int(gen.initial_seed()) + 1)
        h, w = self._resolution()
        guidance = self._make_guidance()
        memory = None if (reset_memory or self.memory_ is None) else self.memory_
        images, latents, diagnostics = [], [], []
        starts = list(range(0, n, bs))
        for b, s in enumerate(progress(starts, total=len(starts), desc="MMD-guided generation", enable=progress_bar)):
            e = min(s + bs, n)
            kw = dict(pipeline_kwargs)
            kw.update({k: v[s:e] for k, v in per_sample.items()})
            if prompts is not None:
                kw["prompt"] = prompts[s:e]
            if negs is not None:
                kw["negative_prompt"] = negs[s:e]
            elif "negative_prompt_embeds" in per_sample:
                kw["negative_prompt"] = None  # PixArt's default "" conflicts with negative embeddings
            if guidance_scale is not None:
                kw["guidance_scale"] = guidance_scale
            cb = None if C is None else C[s:e]
            call = GuidedCall(sch, guidance, mode=mode, prompts=cb, memory=memory, generator=dev_gen)
            if mode == "callback_on_step_end":
                kw["callback_on_step_end"] = call.callback_on_step_end
            elif mode == "callback":
                kw.update(callback=call.legacy_callback, callback_steps=1)
            with call:
                out = self.pipeline(num_inference_steps=num_inference_steps, height=h, width=w, generator=gen,
                                    output_type=output_type, **kw)
            if call.final is None:
                raise RuntimeError("the pipeline never reached the guidance hook (no scheduler step was taken)")
            images.append(out.images)
            lat = call.final.detach()  # (b, C, h, w)
            latents.append(lat)
            diagnostics.append({"batch": b, "mode": mode, "steps": guidance.history})
            guidance.history = []
            feats = lat.reshape(lat.shape[0], -1).float()  # (b, D)
            if cb is not None:
                feats = torch.cat([feats, cb], 1)
            memory = self._update_memory(memory, feats)
        guidance.warn_if_guarded()
        self.memory_ = memory
        self.latents_ = torch.cat(latents, 0)
        self.diagnostics_ = diagnostics
        result = _concat_images(images)
        extra = ([self.latents_] if return_latents else []) + ([diagnostics] if return_diagnostics else [])
        return (result, *extra) if extra else result

    # ------------------------------------------------------------------ convenience
    def score_latents(self, latents, prompts=None) -> float:
        """MMD² between latents ``(n, C, h, w)`` and the references (with prompts when prompt-aware)."""
        check_is_fitted(self, "mmd_")
        Z = as_tensor(latents, dtype=torch.float32).to(self.reference_latents_.device)
        Z = Z.reshape(Z.shape[0], -1)
        if Z.shape[1] != self.n_features_in_:
            raise ValueError(f"latents have {Z.shape[1]} features, the references {self.n_features_in_}")
        if self.prompt_aware:
            if prompts is None:
                raise ValueError("prompt-aware guidance: score_latents(..., prompts=...) is required")
            Z = torch.cat([Z, self._prompt_features(prompts, Z.shape[0], "prompts")], 1)
        return float(self.mmd_.score(Z))


def _concat_images(parts):
    first = parts[0]
    if isinstance(first, list):
        return [im for p in parts for im in p]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, 0)
    return np.concatenate(parts, 0)
