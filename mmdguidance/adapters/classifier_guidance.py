r"""Latent classifier guidance for diffusers pipelines: a baseline for :class:`~.diffusers.DiffusersMMDGuidance`.

A small noise-conditional classifier :math:`p_\phi(y_h \mid x, \bar\alpha)` with one softmax head per attribute
:math:`h` is trained on clean latents :math:`z_0` of labelled images (the pipeline's VAE, scaled), noised in VP
coordinates :math:`x = \sqrt{\bar\alpha} z_0 + \sqrt{1-\bar\alpha}\,\epsilon` at uniform random training timesteps of
the pipeline's scheduler (its ``alphas_cumprod``); the noise level enters as the log-SNR
:math:`\lambda = \log(\bar\alpha / (1-\bar\alpha))`, so the same classifier serves every scheduler family.

Guidance toward target attribute frequencies :math:`w_{hk}` (per sample or shared) uses the density ratio of the
tilted distribution :math:`q(x) \propto p(x)\prod_h \sum_k w_{hk}\, p(y_h = k\mid x) / \pi_{hk}` (:math:`\pi`: the
classifier's training frequencies), whose log is

.. math:: \ell(x) = \sum_h \log \sum_k \frac{w_{hk}}{\pi_{hk}}\, p_\phi(y_h = k \mid x, \bar\alpha)

(a one-hot target gives :math:`\log p_\phi(y_h = k\mid x)` + const). Before each scheduler step the model output is
shifted as in Dhariwal & Nichol (2021), :math:`\hat\epsilon \leftarrow \hat\epsilon - s\sqrt{1-\bar\alpha}\,\nabla_x\ell`,
written on the Tweedie estimate so that it applies to every prediction type and scheduler the adapter supports:

.. math:: \hat x_0 \leftarrow \hat x_0 + s\,\frac{1-\bar\alpha}{\sqrt{\bar\alpha}}\,\nabla_x \ell(x),

with :math:`x` the step's input sample in VP coordinates and :math:`\bar\alpha` its noise level
(:func:`~._schedulers.input_level`). The hook is ``with guidance.attached(pipe): pipe(...)`` (a ``scheduler.step``
wrapper, like the adapter's ``evaluate_on='x0'``).
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .._utils import check_int, check_positive, check_random_state_torch
from ..baselines._guided import optimize
from ._schedulers import from_x0, input_level, step_index, to_x0, x0_coefficients

__all__ = ["LatentAttributeClassifier", "fit_latent_classifier", "LatentClassifierGuidance"]


def log_snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(\bar\alpha / (1-\bar\alpha))` clamped to [-15, 15]; ``alpha_bar`` (B,) -> (B,)."""
    ab = alpha_bar.clamp(1e-7, 1 - 1e-7)
    return (ab.log() - (-ab).log1p()).clamp(-15.0, 15.0)


class LatentAttributeClassifier(nn.Module):
    r"""Noise-conditional multi-head classifier on latents: ``(x (B, C, h, w), alpha_bar (B,)) -> {head: (B, K_h)}``.

    Three 3x3 convolutions (the second with stride 2) on ``[x, lambda/10]`` (the log-SNR as a constant extra channel),
    global average pooling, an MLP on ``[pooled, lambda/10]`` and one linear head per attribute.

    Parameters
    ----------
    in_channels : int
    heads : dict name -> number of classes
    width : int, default=32
    seed : int, default=0
        Initial weights.
    """

    def __init__(self, *, in_channels: int, heads: dict, width: int = 32, seed: int = 0):
        super().__init__()
        if not heads:
            raise ValueError("heads must name at least one attribute")
        torch.manual_seed(int(seed))
        w = check_int(width, "width", 1)
        self.heads = {str(k): check_int(v, f"heads[{k!r}]", 2) for k, v in heads.items()}
        self.conv = nn.Sequential(
            nn.Conv2d(check_int(in_channels, "in_channels", 1) + 1, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.mlp = nn.Sequential(nn.Linear(2 * w + 1, 2 * w), nn.SiLU())
        self.out = nn.ModuleDict({k: nn.Linear(2 * w, v) for k, v in self.heads.items()})

    def forward(self, x: torch.Tensor, alpha_bar: torch.Tensor) -> dict:
        lam = log_snr(alpha_bar.to(x)).reshape(-1, 1) / 10.0  # (B, 1)
        c = lam[:, :, None, None].expand(-1, 1, *x.shape[2:])  # (B, 1, h, w)
        h = self.mlp(torch.cat([self.conv(torch.cat([x, c], 1)), lam], 1))  # (B, 2w)
        return {k: head(h) for k, head in self.out.items()}  # {head: (B, K)}


def fit_latent_classifier(latents, labels: dict, *, alphas_cumprod, steps: int = 1500, batch_size: int = 128,
                          lr: float = 2e-3, width: int = 32, random_state=None) -> LatentAttributeClassifier:
    r"""Train a :class:`LatentAttributeClassifier` on noised clean latents.

    Parameters
    ----------
    latents : Tensor (N, C, h, w)
        Clean latents as the pipeline denoises them (VAE posterior means times ``scaling_factor``).
    labels : dict name -> int array (N,)
        Class codes ``0..K-1`` per attribute (``K`` = max code + 1).
    alphas_cumprod : Tensor (T,)
        The scheduler's training noise levels; each example is noised at a uniform random ``t``.
    steps, batch_size, lr, width : training (AdamW, cosine decay, summed cross-entropies of the heads)
    random_state : int, Generator or None

    Returns
    -------
    LatentAttributeClassifier in eval mode, with ``loss_history_`` and ``priors_`` (dict name -> (K,) training
    frequencies).
    """
    z0 = torch.as_tensor(latents, dtype=torch.float32)  # (N, C, h, w)
    if z0.ndim != 4 or len(z0) < 2 or not torch.isfinite(z0).all():
        raise ValueError(f"latents must be a finite (N >= 2, C, h, w) tensor, got shape {tuple(z0.shape)}")
    y = {k: torch.as_tensor(np.asarray(v), dtype=torch.long) for k, v in labels.items()}
    for k, v in y.items():
        if v.shape != (len(z0),) or v.min() < 0:
            raise ValueError(f"labels[{k!r}] must be {len(z0)} non-negative class codes, got shape {tuple(v.shape)}")
    ab_all = torch.as_tensor(alphas_cumprod, dtype=torch.float32)  # (T,)
    g = check_random_state_torch(random_state)
    net = LatentAttributeClassifier(in_channels=z0.shape[1], heads={k: int(v.max()) + 1 for k, v in y.items()},
                                    width=width, seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    bs = check_int(batch_size, "batch_size", 1)

    def loss_fn(_step):
        idx = torch.randint(0, len(z0), (bs,), generator=g)
        ab = ab_all[torch.randint(0, len(ab_all), (bs,), generator=g)]  # (b,)
        eps = torch.randn(z0[idx].shape, generator=g)
        x = ab.sqrt()[:, None, None, None] * z0[idx] + (1 - ab).sqrt()[:, None, None, None] * eps  # (b, C, h, w)
        logits = net(x, ab)
        return sum(nn.functional.cross_entropy(logits[k], y[k][idx]) for k in y)

    net.loss_history_ = optimize(net, loss_fn, steps=check_int(steps, "steps", 1), lr=check_positive(lr, name="lr"))
    net.priors_ = {k: np.bincount(v.numpy(), minlength=net.heads[k]) / len(v) for k, v in y.items()}
    return net


class LatentClassifierGuidance:
    r"""Classifier guidance of a diffusers pipeline toward target attribute frequencies (module docstring).

    Parameters
    ----------
    classifier : LatentAttributeClassifier
        Fitted (its ``priors_`` are the :math:`\pi` of the density ratio; uniform if absent).
    targets : dict name -> array (K,) or (B, K)
        Target frequencies per attribute head (rows sum to 1), shared or one row per sample of the batch.
    scale : float >= 0, default=1.0
    window : (float, float), default=(0.0, 1.0)
        Fraction of the sampling steps during which the guidance acts.

    Attributes
    ----------
    steps_ : int
        Guided steps of the last attached call.
    """

    def __init__(self, *, classifier, targets: dict, scale: float = 1.0, window=(0.0, 1.0)):
        if not isinstance(classifier, LatentAttributeClassifier):
            raise TypeError(f"classifier must be a LatentAttributeClassifier, got {type(classifier).__name__}")
        self.classifier = classifier
        self.scale = check_positive(scale, name="scale", allow_zero=True)
        if len(window) != 2 or not 0.0 <= window[0] < window[1] <= 1.0:
            raise ValueError(f"window must be (start, stop) with 0 <= start < stop <= 1, got {window!r}")
        self.window = tuple(float(w) for w in window)
        self.targets = {}
        for k, w in targets.items():
            if k not in classifier.heads:
                raise ValueError(f"unknown attribute {k!r}; the classifier has heads {sorted(classifier.heads)}")
            w = np.asarray(w, dtype=float)
            if w.shape[-1] != classifier.heads[k] or w.ndim not in (1, 2) or (w < 0).any() \
                    or not np.allclose(w.sum(-1), 1.0):
                raise ValueError(f"targets[{k!r}] must be frequencies of shape ({classifier.heads[k]},) or "
                                 f"(B, {classifier.heads[k]}) summing to 1, got {w.shape}")
            prior = getattr(classifier, "priors_", {}).get(k, np.full(w.shape[-1], 1.0 / w.shape[-1]))
            self.targets[k] = torch.as_tensor(w / np.maximum(prior, 1e-12), dtype=torch.float32)  # w / pi
        if not self.targets:
            raise ValueError("targets must name at least one attribute")
        self.steps_ = 0

    def log_density(self, x: torch.Tensor, alpha_bar) -> torch.Tensor:
        r""":math:`\ell(x)` (B,) for VP latents ``x`` (B, C, h, w) at noise level ``alpha_bar`` (float or (B,))."""
        ab = torch.as_tensor(alpha_bar, dtype=torch.float32).expand(x.shape[0])  # (B,)
        logits = self.classifier(x.float(), ab)
        out = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        for k, ratio in self.targets.items():
            r = ratio.to(x.device).expand(x.shape[0], -1)  # (B, K)
            out = out + torch.logsumexp(logits[k].log_softmax(-1) + r.clamp_min(1e-30).log(), -1)  # (B,)
        return out

    def gradient(self, x: torch.Tensor, alpha_bar) -> torch.Tensor:
        r""":math:`\nabla_x \ell(x)`, same shape as ``x`` (float32; autograd through the classifier)."""
        with torch.enable_grad():
            xg = x.detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_density(xg, alpha_bar).sum(), xg)
        return grad

    def guide_model_output(self, scheduler, model_output, timestep, sample, idx: int):
        """The step's model output with its Tweedie x0 shifted by ``s (1 - ab) / sqrt(ab) grad`` (module docstring)."""
        A, S = input_level(scheduler, timestep, idx)
        r = math.hypot(A, S)
        ab = (A / r) ** 2
        if self.scale == 0.0 or ab <= 0.0:
            return model_output
        grad = self.gradient(sample.float() / r, ab)  # (B, C, h, w), VP coordinates
        coef = x0_coefficients(scheduler, timestep, idx)
        x0 = to_x0(model_output, sample, coef) + self.scale * (1 - ab) / math.sqrt(ab) * grad
        return from_x0(x0, model_output, sample, coef)

    @contextmanager
    def attached(self, pipeline):
        """Wrap ``pipeline.scheduler.step`` for the calls inside the ``with`` block (restored on exit)."""
        sch = pipeline.scheduler
        had, orig_attr, orig = "step" in vars(sch), vars(sch).get("step"), sch.step
        state = {"count": 0}
        self.steps_ = 0

        def step(model_output, timestep, sample, *args, **kwargs):
            n = len(sch.timesteps)
            frac = (state["count"] % n) / n  # several pipeline calls inside one block
            if self.window[0] <= frac < self.window[1]:
                model_output = self.guide_model_output(sch, model_output, timestep, sample,
                                                       step_index(sch, timestep, state["count"]))
                self.steps_ += 1
            state["count"] += 1
            return orig(model_output, timestep, sample, *args, **kwargs)

        sch.step = functools.wraps(orig)(step)  # the original signature: pipelines then pass `generator` / `eta`
        try:
            yield self
        finally:
            if had:
                sch.step = orig_attr
            else:
                del sch.step
