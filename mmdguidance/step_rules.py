r"""Guidance step rules (pure functions) and the numerical guards applied around them.

With :math:`g_i` the discrepancy gradient of sample :math:`i`, :math:`x_i` the point it moves and
:math:`\lambda` the step's scale, :func:`step_rule` returns the displacement :math:`\Delta_i`:

* ``'raw'``              : :math:`\Delta_i = -\lambda g_i` (paper, Eq. 5 form);
* ``'normalized'``       : :math:`\Delta_i = -\lambda \|x_i\|\, g_i / (\|g_i\| + 10^{-5})` (the authors' code);
* ``'batch_normalized'`` : :math:`\Delta_i = -\lambda\, \overline{\|x\|}\, g_i / (\overline{\|g\|} + 10^{-5})`
  with batch means :math:`\overline{\|x\|}, \overline{\|g\|}`: scale-free like the authors' rule, but one
  factor for the whole batch keeps the *relative* gradient sizes (samples at a stationary point stay put,
  far outliers with tiny, noisy gradients are not thrown further out).

Every rule is :math:`\Delta_i = -c_i g_i` with :math:`c_i \ge 0`, so a direction is always :math:`-g_i`.

Guards (:func:`sanitize_gradient`, :func:`guard_update`): non-finite gradient rows are zeroed; every
update is clipped to ``max_update_ratio * max(||x_i||, sqrt(D))``; an update that overflowed (a huge
``'raw'`` scale) is replaced by the capped step along :math:`-g_i`; a row whose result is still
non-finite is reverted. The counts are returned for the diagnostics.
"""

from __future__ import annotations

import math

import torch

__all__ = ["STEP_RULES", "step_rule", "sanitize_gradient", "guard_update"]

STEP_RULES = ("normalized", "batch_normalized", "raw")


def step_rule(x: torch.Tensor, g: torch.Tensor, lam: float, rule: str) -> torch.Tensor:
    """The displacement :math:`\\Delta` ``(B, D)`` of ``rule`` for points ``x`` ``(B, D)`` and gradients ``g`` ``(B, D)``.

    No guards (see :func:`guard_update`); ``g`` is assumed finite.
    """
    if rule == "raw":
        return -lam * g
    xn = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (B, 1)
    gn = torch.linalg.vector_norm(g, dim=1, keepdim=True)  # (B, 1)
    if rule == "normalized":
        return (-lam) * (xn / (gn + 1e-5)) * g
    if rule == "batch_normalized":
        return (-lam * float(xn.mean()) / (float(gn.mean()) + 1e-5)) * g
    raise ValueError(f"unknown step_rule={rule!r}; expected one of {', '.join(map(repr, STEP_RULES))}")


def sanitize_gradient(g: torch.Tensor):
    """Zero the non-finite rows of ``g`` ``(B, D)``; returns ``(g, n_bad)``."""
    bad = ~torch.isfinite(torch.linalg.vector_norm(g, dim=1, keepdim=True))  # (B, 1)
    n_bad = int(bad.sum())
    if n_bad:
        g = torch.where(bad, torch.zeros_like(g), g)
    return g, n_bad


def guard_update(x: torch.Tensor, delta: torch.Tensor, g: torch.Tensor, max_update_ratio: float):
    """``x + delta`` with the guards of the module docstring; returns ``(x_new, info)``.

    ``info`` holds ``step_size`` (mean ‖Δ‖ after guards), ``n_clipped`` (including overflowed rows),
    ``n_overflow`` (rows whose Δ was not finite) and ``n_reverted``.
    """
    D = x.shape[1]
    xn = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (B, 1)
    cap = max_update_ratio * torch.clamp(xn, min=math.sqrt(D))  # (B, 1)
    dn = torch.linalg.vector_norm(delta, dim=1, keepdim=True)  # (B, 1)
    overflow = ~torch.isfinite(dn)  # (B, 1)
    n_overflow = int(overflow.sum())
    if n_overflow:  # the rule's direction is -g: take the capped step along it
        u = g / g.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)  # (B, D), max |u| = 1: no under/overflow
        u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True).clamp_min(1.0)
        delta = torch.where(overflow, -cap * u, delta)
        dn = torch.linalg.vector_norm(delta, dim=1, keepdim=True)
    over = (dn > cap) & ~overflow
    n_over = int(over.sum())
    if n_over:
        delta = torch.where(over, delta * (cap / dn.clamp_min(1e-30)), delta)
        dn = torch.where(over, cap, dn)
    x_new = x + delta
    rev = ~torch.isfinite(torch.linalg.vector_norm(x_new, dim=1, keepdim=True))  # (B, 1)
    n_rev = int(rev.sum())
    if n_rev:
        x_new = torch.where(rev, x, x_new)
    info = {"step_size": float(dn.mean()), "n_clipped": n_over + n_overflow,
            "n_overflow": n_overflow, "n_reverted": n_rev}
    return x_new, info
