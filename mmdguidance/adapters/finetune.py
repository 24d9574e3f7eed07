r"""Fine-tuning baseline for diffusers pipelines: full fine-tuning of a copy of the UNet on reference latents.

The copy is trained with the pipeline's own denoising objective on the references
:math:`z_j` (clean latents: VAE posterior means times ``scaling_factor``) and their captions :math:`c_j`,

.. math:: E_{j,t,\epsilon}\,\|\mathrm{target} - f_\theta(\sqrt{\bar\alpha_t} z_j + \sqrt{1-\bar\alpha_t}\,\epsilon,\ t,\ E(c_j))\|^2,

with ``target`` :math:`\epsilon` (``prediction_type='epsilon'``) or :math:`v = \sqrt{\bar\alpha_t}\epsilon -
\sqrt{1-\bar\alpha_t} z_j` (``'v_prediction'``), :math:`t` uniform over the scheduler's training timesteps, the
frozen text encoder :math:`E`, and each caption replaced by the empty prompt with probability ``p_uncond`` (so the
unconditional branch of classifier-free guidance adapts too). AdamW at a constant learning rate, so checkpoints of one
run at increasing step counts are the step grid of one learning rate. The pipeline itself is not modified.
LoRA would need ``peft`` (not a dependency); this is full fine-tuning.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from .._utils import check_int, check_positive, check_random_state_torch, progress

__all__ = ["finetune_unet", "with_unet"]


@torch.no_grad()
def _embed(pipeline, captions: list) -> torch.Tensor:
    """Text-encoder hidden states ``(n, L, E)`` of ``captions`` as the pipeline tokenises them."""
    tok = pipeline.tokenizer
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids  # (n, L)
    return pipeline.text_encoder(ids.to(pipeline.text_encoder.device))[0].float()


def finetune_unet(pipeline, latents, captions, *, steps, lr: float, batch_size: int = 16, p_uncond: float = 0.1,
                  weight_decay: float = 0.0, random_state=None):
    r"""Fine-tuned copies of ``pipeline.unet`` (module docstring).

    Parameters
    ----------
    pipeline : diffusers text-to-image pipeline (``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``)
    latents : Tensor (N, C, h, w)
        Clean reference latents as the UNet denoises them.
    captions : str or list of N str
        One caption per reference (a single string is used for all).
    steps : int or increasing list of int
        Optimiser steps; with a list, one copy is returned per entry (checkpoints of the same run).
    lr : float > 0
    batch_size : int, default=16
    p_uncond : float in [0, 1), default=0.1
    weight_decay : float >= 0, default=0
    random_state : int, Generator or None

    Returns
    -------
    UNet copy in eval mode (or a list of them, one per entry of ``steps``), with ``loss_history_`` (per step) and
    ``seconds_`` (wall time of the training up to that checkpoint, snapshots excluded).
    """
    z0 = torch.as_tensor(latents, dtype=torch.float32)  # (N, C, h, w)
    if z0.ndim != 4 or len(z0) < 1 or not torch.isfinite(z0).all():
        raise ValueError(f"latents must be a finite (N, C, h, w) tensor, got shape {tuple(z0.shape)}")
    caps = [captions] * len(z0) if isinstance(captions, str) else list(captions)
    if len(caps) != len(z0) or not all(isinstance(c, str) for c in caps):
        raise ValueError(f"captions must be a string or {len(z0)} strings, got {len(caps)} entries")
    checkpoints = [check_int(s, "steps", 1) for s in np.atleast_1d(steps)]
    if checkpoints != sorted(set(checkpoints)):
        raise ValueError(f"steps must be increasing, got {steps!r}")
    pt = getattr(pipeline.scheduler.config, "prediction_type", "epsilon")
    if pt not in ("epsilon", "v_prediction"):
        raise ValueError(f"finetune_unet supports epsilon and v_prediction UNets, not prediction_type={pt!r}")
    if not 0.0 <= float(p_uncond) < 1.0:
        raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond!r}")
    bs = check_int(batch_size, "batch_size", 1)
    g = check_random_state_torch(random_state)
    dev = pipeline.unet.device
    emb, empty = _embed(pipeline, caps), _embed(pipeline, [""])  # (N, L, E), (1, L, E)
    ab_all = pipeline.scheduler.alphas_cumprod.float()  # (T,)
    unet = copy.deepcopy(pipeline.unet).float().train()
    opt = torch.optim.AdamW(unet.parameters(), lr=check_positive(lr, name="lr"),
                            weight_decay=check_positive(weight_decay, name="weight_decay", allow_zero=True))
    out, losses, seconds, t0 = [], [], 0.0, time.perf_counter()
    for step in progress(range(checkpoints[-1]), total=checkpoints[-1], desc="fine-tune UNet"):
        idx = torch.randint(0, len(z0), (bs,), generator=g)
        t = torch.randint(0, len(ab_all), (bs,), generator=g)
        eps = torch.randn(z0[idx].shape, generator=g)  # (b, C, h, w)
        a, s = ab_all[t].sqrt()[:, None, None, None], (1 - ab_all[t]).sqrt()[:, None, None, None]
        drop = (torch.rand(bs, generator=g) < p_uncond)[:, None, None]
        cond = torch.where(drop, empty, emb[idx])  # (b, L, E)
        pred = unet((a * z0[idx] + s * eps).to(dev), t.to(dev), cond.to(dev)).sample.float()
        target = eps if pt == "epsilon" else a * eps - s * z0[idx]
        loss = (pred - target.to(dev)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step + 1 in checkpoints:
            seconds += time.perf_counter() - t0
            snap = copy.deepcopy(unet).eval()
            if pipeline.unet.dtype != torch.float32:
                snap = snap.to(pipeline.unet.dtype)
            snap.loss_history_, snap.seconds_ = list(losses), seconds
            out.append(snap)
            t0 = time.perf_counter()
    return out if np.ndim(steps) else out[0]


def with_unet(pipeline, unet):
    """A new pipeline of the same class sharing every component of ``pipeline`` except the UNet."""
    new = type(pipeline)(**{**pipeline.components, "unet": unet})
    new.set_progress_bar_config(disable=True)
    return new
