r"""Denoisers: the protocol, an analytic Gaussian-mixture denoiser and a small trainable MLP.

A *Denoiser* predicts the noise :math:`\hat\epsilon(x_t, t)` of
:math:`x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon` on flattened samples ``(B, D)``.
Related quantities:

.. math:: \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}}, \qquad
          \nabla_x \log p_t(x) = -\frac{\hat\epsilon}{\sqrt{1-\bar\alpha_t}}
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import OrderedDict
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from .._utils import as_tensor, check_array_2d, check_int, check_positive, check_random_state_torch, logger, progress
from .schedules import VPSchedule

__all__ = [
    "Denoiser",
    "GMMDenoiser",
    "ConditionalGMMDenoiser",
    "MLPDenoiser",
    "eps_to_x0",
    "x0_to_eps",
    "eps_to_score",
]


@runtime_checkable
class Denoiser(Protocol):
    """What the samplers and the guided sampler need from a model."""

    schedule: VPSchedule
    dim: int

    def predict_eps(self, x: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover
        ...


def eps_to_x0(x, eps, alpha_bar):
    r""":math:`\hat x_0 = (x - \sqrt{1-\bar\alpha}\,\epsilon)/\sqrt{\bar\alpha}`."""
    ab = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device)
    return (x - (1 - ab).sqrt() * eps) / ab.sqrt()


def x0_to_eps(x, x0, alpha_bar):
    r""":math:`\epsilon = (x - \sqrt{\bar\alpha}\,x_0)/\sqrt{1-\bar\alpha}`."""
    ab = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device)
    return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


def eps_to_score(eps, alpha_bar):
    r""":math:`\nabla \log p_t = -\epsilon/\sqrt{1-\bar\alpha}`."""
    ab = torch.as_tensor(alpha_bar, dtype=eps.dtype, device=eps.device)
    return -eps / (1 - ab).sqrt()


def per_row_t(t, B, device, schedule=None):
    """Timesteps ``t`` (a scalar or ``B`` values) as a LongTensor ``(B,)``; validated against ``schedule`` if given."""
    tt = torch.as_tensor(t, dtype=torch.long) if schedule is None else schedule.check_timesteps(t, allow_clean=False)
    tt = tt.to(device)
    if tt.ndim == 0 or tt.numel() == 1:
        return tt.reshape(()).expand(B)
    if tt.ndim != 1 or tt.shape[0] != B:
        raise ValueError(f"t must be a scalar or have one timestep per row: got shape {tuple(tt.shape)} for {B} rows")
    return tt


def _check_schedule(schedule):
    if schedule is None:
        return VPSchedule.linear()
    if not isinstance(schedule, VPSchedule):
        raise TypeError(f"schedule must be a VPSchedule (e.g. VPSchedule.linear()), got {type(schedule).__name__} {schedule!r}")
    return schedule


# --------------------------------------------------------------------------- analytic
class GMMDenoiser:
    r"""Exact denoiser of a Gaussian mixture data distribution.

    The noised marginal at level :math:`\bar\alpha_t` is the mixture ``mixture.noised(alpha_bar)``,
    so :math:`\hat\epsilon(x,t) = -\sqrt{1-\bar\alpha_t}\,\nabla\log p_t(x)` is exact, and
    :meth:`predict_x0` is the exact posterior mean :math:`E[x_0 \mid x_t]`.

    Parameters
    ----------
    mixture : GaussianMixture
    schedule : VPSchedule, default ``VPSchedule.linear()``
    """

    def __init__(self, *, mixture, schedule=None):
        from ..gmm import GaussianMixture

        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        self.mixture = mixture
        self.schedule = _check_schedule(schedule)
        self.dim = int(mixture.dim)
        self._cache: OrderedDict[int, object] = OrderedDict()

    def __repr__(self):
        return f"GMMDenoiser(K={self.mixture.n_components}, d={self.dim})"

    #: noised mixtures kept (least recently used evicted): bounds memory at large ``D``
    cache_size = 64

    def noised_mixture(self, t: int):
        r"""The mixture noised to timestep ``t``, :math:`\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon`
        (a :class:`~mmdguidance.gmm.GaussianMixture`; LRU-cached, at most :attr:`cache_size`)."""
        if t in self._cache:
            self._cache.move_to_end(t)
        else:
            self._cache[t] = self.mixture.noised(float(self.schedule.alpha_bars[t]))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return self._cache[t]

    def predict_eps(self, x, t, cond=None):
        """Exact :math:`\\hat\\epsilon(x_t, t)`, shape ``(B, D)`` (``cond`` is ignored).

        ``t``: one timestep or one per row, integers in ``[0, T-1]`` (else ``ValueError``).
        """
        x = as_tensor(x)
        tt = per_row_t(t, x.shape[0], "cpu", self.schedule)
        out = torch.empty_like(x)
        for tv in torch.unique(tt).tolist():
            rows = (tt == tv).nonzero().reshape(-1).to(x.device)
            ab = float(self.schedule.alpha_bars[tv])
            xs = x if rows.numel() == x.shape[0] else x[rows]
            eps = -math.sqrt(1 - ab) * self.noised_mixture(int(tv)).score(xs)
            if rows.numel() == x.shape[0]:
                out = eps
            else:
                out[rows] = eps
        return out

    def predict_x0(self, x, t, cond=None):
        """Exact posterior mean :math:`E[x_0 \\mid x_t]` (a scalar ``t``)."""
        tt = self.schedule.check_timesteps(t, allow_clean=False)
        if tt.numel() != 1:
            raise ValueError("predict_x0 takes one timestep for the whole batch")
        return self.mixture.posterior_mean_x0(as_tensor(x), float(self.schedule.alpha_bars[int(tt.reshape(()))]))


class ConditionalGMMDenoiser:
    r"""Exact denoiser of a *conditional* mixture family for prompt-aware toys.

    Each prompt embedding ``cond[i]`` selects the mixture of its nearest anchor
    (Euclidean); the row's :math:`\hat\epsilon` is then exact for that mixture.

    Parameters
    ----------
    mixtures : list of GaussianMixture (same dim)
    anchors : array of shape (len(mixtures), Dc)
        Prompt embedding that identifies each mixture.
    schedule : VPSchedule, optional
    """

    def __init__(self, *, mixtures, anchors, schedule=None):
        if len(mixtures) == 0:
            raise ValueError("mixtures is empty")
        self.schedule = _check_schedule(schedule)
        self.members = [GMMDenoiser(mixture=m, schedule=self.schedule) for m in mixtures]
        dims = {m.dim for m in self.members}
        if len(dims) != 1:
            raise ValueError(f"all mixtures must have the same dimension, got {sorted(dims)}")
        self.dim = dims.pop()
        self.anchors = check_array_2d(anchors, name="anchors", min_samples=len(mixtures))
        if self.anchors.shape[0] != len(mixtures):
            raise ValueError(f"need one anchor per mixture: {self.anchors.shape[0]} anchors, {len(mixtures)} mixtures")

    def assign(self, cond) -> torch.Tensor:
        """Index of the mixture selected by each prompt embedding, shape ``(B,)``."""
        c = as_tensor(cond).to(self.anchors)
        if c.ndim != 2 or c.shape[1] != self.anchors.shape[1]:
            raise ValueError(f"cond must have shape (B, {self.anchors.shape[1]}), got {tuple(c.shape)}")
        return torch.cdist(c, self.anchors).argmin(1)

    def predict_eps(self, x, t, cond=None):
        if cond is None:
            raise ValueError("ConditionalGMMDenoiser needs cond (one prompt embedding per row)")
        x = as_tensor(x)
        idx = self.assign(cond).to(x.device)
        out = torch.empty_like(x)
        tt = per_row_t(t, x.shape[0], "cpu")
        for k in torch.unique(idx).tolist():
            rows = (idx == k).nonzero().reshape(-1)
            out[rows] = self.members[k].predict_eps(x[rows], tt[rows.cpu()], None)
        return out


# --------------------------------------------------------------------------- trainable
def sinusoidal_embedding(t: torch.Tensor, dim: int, T: int) -> torch.Tensor:
    """Transformer-style embedding of ``t / T`` (shape ``(B,)`` -> ``(B, dim)``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half - 1, 1))
    a = (t.float() / T * 1000.0)[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([a.sin(), a.cos()], 1)
    return emb if dim % 2 == 0 else torch.cat([emb, torch.zeros_like(emb[:, :1])], 1)


class _Block(nn.Module):
    def __init__(self, hidden, temb):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.temb = nn.Linear(temb, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h, te):
        z = self.fc1(nn.functional.silu(self.norm(h))) + self.temb(te)
        return h + self.fc2(nn.functional.silu(z))


def _warn_if_diverged(losses, lr):
    """Warn once (RuntimeWarning) if the training loss became non-finite."""
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        msg = (f"MLPDenoiser.fit diverged: the training loss is non-finite from epoch {bad[0]} on "
               f"({len(bad)} of {len(losses)} epochs); lower the learning rate (lr={lr})")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        logger.warning(msg)


class MLPDenoiser(nn.Module):
    r"""A small residual-MLP :math:`\epsilon`-prediction network for ``D``-dimensional data.

    Trained with the DDPM objective :math:`E_{t,x_0,\epsilon}\|\epsilon - \hat\epsilon(x_t, t)\|^2`,
    :math:`t` uniform. Optional conditioning input ``cond`` of size ``cond_dim``.

    Parameters
    ----------
    dim : int
    hidden : int
    depth : int
        Residual blocks.
    time_embed_dim : int
    cond_dim : int
    schedule : VPSchedule, default linear
    random_state : int, optional
        Seed of the weight initialisation.

    Attributes
    ----------
    loss_history_ : list of float
        Mean training loss per epoch (after :meth:`fit`).
    """

    def __init__(self, *, dim, hidden=128, depth=3, time_embed_dim=32, cond_dim=0, schedule=None, random_state=0):
        super().__init__()
        self.dim = check_int(dim, "dim", 1)
        hidden, depth = check_int(hidden, "hidden", 1), check_int(depth, "depth", 1)
        self.cond_dim = check_int(cond_dim, "cond_dim", 0)
        self.time_embed_dim = check_int(time_embed_dim, "time_embed_dim", 1)
        self.schedule = _check_schedule(schedule)
        with torch.random.fork_rng(devices=[]):
            if random_state is not None:
                torch.manual_seed(int(random_state))
            self.inp = nn.Linear(self.dim + self.cond_dim, hidden)
            self.tproj = nn.Sequential(nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            self.blocks = nn.ModuleList([_Block(hidden, hidden) for _ in range(int(depth))])
            self.out_norm = nn.LayerNorm(hidden)
            self.out = nn.Linear(hidden, self.dim)
        self.loss_history_: list[float] = []

    def forward(self, x, t, cond=None):
        B = x.shape[0]
        tt = per_row_t(t, B, x.device)
        te = self.tproj(sinusoidal_embedding(tt, self.time_embed_dim, self.schedule.num_train_timesteps).to(x.dtype))
        inp = x
        if self.cond_dim:
            if cond is None:
                raise ValueError(f"this MLPDenoiser is conditional (cond_dim={self.cond_dim}): pass cond")
            inp = torch.cat([x, cond.to(x)], 1)
        h = self.inp(inp) + te
        for blk in self.blocks:
            h = blk(h, te)
        return self.out(nn.functional.silu(self.out_norm(h)))

    def predict_eps(self, x, t, cond=None):
        """:math:`\\hat\\epsilon(x_t, t)`, shape ``(B, D)``; ``x`` (tensor, numpy or list) is cast to the
        network's dtype/device, ``t`` (one or ``B`` integers in ``[0, T-1]``) is validated."""
        p = next(self.parameters())
        x = as_tensor(x).to(dtype=p.dtype, device=p.device)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if cond is not None:
            cond = as_tensor(cond).to(dtype=p.dtype, device=p.device)
            if cond.ndim != 2 or cond.shape[1] != self.cond_dim or cond.shape[0] != x.shape[0]:
                raise ValueError(f"cond must have shape ({x.shape[0]}, {self.cond_dim}), got {tuple(cond.shape)}")
        return self.forward(x, per_row_t(t, x.shape[0], p.device, self.schedule), cond)

    def fit(self, X, *, cond=None, epochs=200, batch_size=256, lr=2e-3, weight_decay=0.0, random_state=None, progress_bar=None):
        """Train on samples ``X`` of shape ``(n, dim)`` (and ``cond`` of shape ``(n, cond_dim)``).

        Seeded by ``random_state`` (shuffling, timesteps and noise); AdamW with a cosine
        learning-rate decay; warns (``RuntimeWarning``) if the loss diverges to NaN/inf. Returns ``self`` in eval mode.
        """
        epochs, batch_size = check_int(epochs, "epochs", 1), check_int(batch_size, "batch_size", 1)
        lr = check_positive(lr, name="lr")
        p = next(self.parameters())
        Xt = check_array_2d(X, name="X", min_samples=2, n_features=self.dim).to(dtype=p.dtype, device=p.device)
        Ct = None
        if self.cond_dim:
            if cond is None:
                raise ValueError("this MLPDenoiser is conditional: fit(X, cond=...) is required")
            Ct = check_array_2d(cond, name="cond", n_features=self.cond_dim).to(dtype=p.dtype, device=p.device)
            if Ct.shape[0] != Xt.shape[0]:
                raise ValueError("cond must have one row per sample")
        g = check_random_state_torch(random_state)
        n = Xt.shape[0]
        steps_per_epoch = max(1, math.ceil(n / batch_size))
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        T = self.schedule.num_train_timesteps
        self.train()
        for _ in progress(range(epochs), total=epochs, desc="training denoiser", enable=progress_bar):
            perm = torch.randperm(n, generator=g).to(p.device)
            tot = 0.0
            for s in range(0, n, batch_size):
                idx = perm[s : s + batch_size]
                x0 = Xt[idx]
                t = torch.randint(0, T, (len(idx),), generator=g).to(p.device)
                eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(p.device)
                xt = self.schedule.add_noise(x0, t, eps)  # (b, D)
                loss = ((self.forward(xt, t, None if Ct is None else Ct[idx]) - eps) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                tot += loss.item() * len(idx)
            self.loss_history_.append(tot / n)
        _warn_if_diverged(self.loss_history_, lr)
        logger.info("MLPDenoiser trained: final loss %.4f", self.loss_history_[-1])
        self.eval()
        return self

    def copy(self):
        """A deep copy (for fine-tuning without touching the original)."""
        return copy.deepcopy(self)
