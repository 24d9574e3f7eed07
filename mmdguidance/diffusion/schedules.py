r"""Variance-preserving (VP) noise schedules.

Forward process :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon`, with
:math:`\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)`, :math:`t = 0..T-1`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._utils import as_tensor

__all__ = ["VPSchedule"]


class VPSchedule:
    r"""A discrete VP schedule defined by its betas.

    Parameters
    ----------
    betas : array of shape (T,)
        Values in (0, 1).

    Attributes
    ----------
    betas, alphas, alpha_bars : float64 tensors of shape (T,)
    num_train_timesteps : int
    """

    def __init__(self, *, betas):
        b = as_tensor(betas, dtype=torch.float64).detach().cpu().reshape(-1)
        if b.numel() < 1:
            raise ValueError("betas is empty")
        if not bool(torch.isfinite(b).all()) or bool((b <= 0).any()) or bool((b >= 1).any()):
            raise ValueError("betas must be finite and in (0, 1)")
        self.betas = b
        self.alphas = 1.0 - b
        self.alpha_bars = torch.cumprod(self.alphas, 0)
        self.num_train_timesteps = int(b.numel())

    def __repr__(self):
        return f"VPSchedule(T={self.num_train_timesteps}, alpha_bar[0]={float(self.alpha_bars[0]):.5f}, alpha_bar[-1]={float(self.alpha_bars[-1]):.2e})"

    @classmethod
    def linear(cls, *, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
        """DDPM's linear betas (Ho et al. 2020)."""
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        return cls(betas=torch.linspace(beta_start, beta_end, int(num_train_timesteps), dtype=torch.float64))

    @classmethod
    def cosine(cls, *, num_train_timesteps=1000, s=0.008, max_beta=0.999):
        r"""Nichol & Dhariwal's cosine schedule :math:`\bar\alpha(t) \propto \cos^2\big(\frac{t/T + s}{1+s}\frac{\pi}{2}\big)`."""
        T = int(num_train_timesteps)
        f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(T)]
        return cls(betas=torch.tensor(betas, dtype=torch.float64))

    def alpha_bar(self, t) -> torch.Tensor:
        r""":math:`\bar\alpha_t` for an int or a LongTensor of timesteps; ``t = -1`` means clean (1)."""
        tt = torch.as_tensor(t, dtype=torch.long)
        out = self.alpha_bars[tt.clamp_min(0)]
        return torch.where(tt < 0, torch.ones_like(out), out)

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """Decreasing integer timesteps from ``T-1`` to ``0``, evenly spaced (``np.linspace`` rounded; both ends included).

        With ``num_steps == T`` every timestep is visited (full ancestral DDPM).
        """
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"num_steps must be an int in [1, {self.num_train_timesteps}], got {num_steps!r}")
        ts = np.linspace(self.num_train_timesteps - 1, 0, int(num_steps)).round().astype(np.int64)
        return torch.as_tensor(ts)

    def add_noise(self, x0, t, noise):
        r""":math:`\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon` with ``t`` an int or a per-row LongTensor."""
        ab = self.alpha_bar(t).to(dtype=x0.dtype, device=x0.device)
        if ab.ndim == 1:
            ab = ab[:, None]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise
