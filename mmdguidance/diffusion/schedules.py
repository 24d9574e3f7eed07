r"""Variance-preserving (VP) noise schedules.

Forward process :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon`, with
:math:`\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)`, :math:`t = 0..T-1`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .._utils import as_tensor

__all__ = ["VPSchedule", "noise_at"]

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _check_T(T):
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
        raise ValueError(f"num_train_timesteps must be an int >= 1, got {T!r}")
    return int(T)


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
        T = _check_T(num_train_timesteps)
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        return cls(betas=torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, *, num_train_timesteps=1000, s=0.008, max_beta=0.999):
        r"""Nichol & Dhariwal's cosine schedule :math:`\bar\alpha(t) \propto \cos^2\big(\frac{t/T + s}{1+s}\frac{\pi}{2}\big)`."""
        T = _check_T(num_train_timesteps)
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0 <= float(s) < float("inf"):
            raise ValueError(f"s must be a finite real >= 0, got {s!r}")
        if not 0 < float(max_beta) < 1:
            raise ValueError(f"max_beta must be in (0, 1), got {max_beta!r}")
        f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(T)]
        return cls(betas=torch.tensor(betas, dtype=torch.float64))

    def check_timesteps(self, t, *, allow_clean: bool = True) -> torch.Tensor:
        """``t`` (an int, a numpy integer, an integer array or tensor) as a CPU LongTensor, validated.

        Raises ``TypeError`` for non-numeric input and ``ValueError`` for non-integer values or values
        outside ``[0, T-1]`` (``-1``, clean data, is allowed when ``allow_clean``).
        """
        if isinstance(t, (str, bytes, bool)) or t is None:
            raise TypeError(f"timestep t must be an int or an integer tensor, got {type(t).__name__} {t!r}")
        try:
            tt = torch.as_tensor(np.asarray(t) if not isinstance(t, torch.Tensor) else t).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"timestep t must be an int or an integer tensor, got {type(t).__name__}") from None
        if tt.dtype == torch.bool or torch.is_complex(tt) or not (tt.is_floating_point() or tt.dtype in _INT_DTYPES):
            raise TypeError(f"timestep t must be integer-valued, got dtype {tt.dtype}")
        if tt.is_floating_point():
            if not bool(torch.isfinite(tt).all()) or not bool((tt == tt.round()).all()):
                raise ValueError(f"timesteps must be integers, got {tt.tolist() if tt.numel() < 8 else tt}")
        tt = tt.to(torch.long)
        lo = -1 if allow_clean else 0
        if tt.numel() and (int(tt.min()) < lo or int(tt.max()) > self.num_train_timesteps - 1):
            raise ValueError(
                f"timesteps must lie in [{lo}, {self.num_train_timesteps - 1}]"
                + (" (-1 = clean data)" if allow_clean else "")
                + f", got min {int(tt.min())}, max {int(tt.max())}"
            )
        return tt

    def alpha_bar(self, t) -> torch.Tensor:
        r""":math:`\bar\alpha_t` (float64) for an int or a LongTensor of timesteps in ``[-1, T-1]``; ``t = -1`` means clean (1)."""
        tt = self.check_timesteps(t)
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
        return noise_at(x0, noise, ab[:, None] if ab.ndim == 1 else ab)


def noise_at(x0, noise, alpha_bar):
    r"""The forward process at a given noise level: :math:`\sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,\xi`.

    The one place the toolkit noises clean points (:meth:`VPSchedule.add_noise`, the noised references of
    :class:`~mmdguidance.guidance.MMDGuidance`); :func:`~mmdguidance.diffusion.x0_to_eps` inverts it for :math:`\xi`.

    Parameters
    ----------
    x0 : Tensor (B, D)
        Clean points.
    noise : Tensor (B, D)
        :math:`\xi`, standard normal draws.
    alpha_bar : float, 0-d Tensor or Tensor (B, 1)
        :math:`\bar\alpha \in (0, 1]`, one level or one per row.

    Returns
    -------
    Tensor (B, D)
        In ``x0``'s dtype and device.
    """
    ab = torch.as_tensor(alpha_bar, dtype=x0.dtype, device=x0.device)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise.to(dtype=x0.dtype, device=x0.device)
