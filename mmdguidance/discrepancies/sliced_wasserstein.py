r"""Sliced 2-Wasserstein discrepancy between the generated set and weighted references
(sliced-Wasserstein guidance, arXiv 2503.19034), with a closed-form gradient.

Generated set :math:`Z = X \cup M` (:math:`n` rows, mass :math:`1/n` each), references :math:`y_j`
``(N, F)`` with weights :math:`w_j`, unit directions :math:`\theta_1..\theta_L` (columns of ``(F, L)``):

.. math::
    \mathrm{SW}_2^2 = \frac1L\sum_l W_2^2\big(\theta_l^\top\#\mu_Z,\ \theta_l^\top\#\nu\big),\qquad
    W_2^2(\mu,\nu) = \int_0^1 \big(F_\mu^{-1}(u) - G_\nu^{-1}(u)\big)^2\,du .

In one dimension, with projections :math:`p = Z\theta` sorted as :math:`p_{(0)} \le .. \le p_{(n-1)}` and
the reference quantile function :math:`G^{-1}` (a step function through the sorted :math:`q = Y\theta`
and cumulative weights :math:`c_k`), let :math:`H(u) = \int_0^u G^{-1}` (piecewise linear, exact from
cumulative sums) and :math:`I_r = H(\tfrac{r+1}{n}) - H(\tfrac rn)`. Then

.. math::
    W_2^2 = \frac1n\sum_r p_{(r)}^2 + \sum_j w_j q_j^2 - 2\sum_r p_{(r)} I_r,\qquad
    \frac{\partial W_2^2}{\partial p_{(r)}} = \frac{2}{n}\,p_{(r)} - 2 I_r ,

so :math:`\nabla_{x_i}\mathrm{SW}_2^2 = \frac1L\sum_l \theta_l\, \partial W_2^2/\partial p^{(l)}_i`. This handles
:math:`B \ne N`, memory and non-uniform reference weights (quantile matching, no coupling matrix);
the gradient is exact wherever the sort order is strict (almost everywhere). Cost
:math:`O(L(nF + n\log n + N\log N))`.

Directions: drawn i.i.d. uniform on the sphere. ``resample=True`` (default) draws a fresh set at every
``value_tensor``/``grad_tensor`` call from a generator seeded in ``fit`` by ``random_state``, so over a
trajectory guidance sees many more than ``n_projections`` directions and a run is reproducible;
``resample=False`` uses the fixed ``projections_`` drawn in ``fit`` (a deterministic objective, what the
tests compare with POT). The paper leaves the direction schedule open for this use; fresh directions per
step is the choice made here. Every resampling call draws from the one generator, value calls included:
with ``resample=True`` a sampler recording the value (``diagnostics=True``) sees other directions than one
that does not.
"""

from __future__ import annotations

import numbers

import torch

from .._utils import check_random_state_torch
from ._base import ReferenceDiscrepancy, stack_memory

__all__ = ["SlicedWasserstein"]


def _random_directions(F: int, L: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``(F, L)`` unit columns, uniform on the sphere (normalised Gaussians)."""
    P = torch.randn(F, L, generator=generator, dtype=torch.float64)
    P = P / torch.linalg.vector_norm(P, dim=0, keepdim=True)
    return P.to(dtype=like.dtype, device=like.device)


def _quantile_integrals(q: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    r""":math:`I_r = \int_{r/n}^{(r+1)/n} G^{-1}(u)\,du` per projection; ``q`` ``(L, N)``, ``w`` ``(N,)`` -> ``(L, n)``."""
    qs, order = q.sort(dim=1)  # (L, N)
    ws = w[order]  # (L, N)
    c = ws.cumsum(1)  # (L, N) cumulative weights, c[:, -1] = 1
    S = (ws * qs).cumsum(1)  # (L, N) partial integrals H(c_k)
    zero = torch.zeros_like(c[:, :1])
    c_prev, S_prev = torch.cat([zero, c[:, :-1]], 1), torch.cat([zero, S[:, :-1]], 1)  # (L, N)
    u = torch.arange(n + 1, dtype=q.dtype, device=q.device) / n  # (n + 1,)
    k = torch.searchsorted(c.contiguous(), u.expand(q.shape[0], -1).contiguous(), side="left")  # (L, n + 1)
    k = k.clamp_(max=q.shape[1] - 1)
    H = S_prev.gather(1, k) + (u[None, :] - c_prev.gather(1, k)) * qs.gather(1, k)  # (L, n + 1)
    return H[:, 1:] - H[:, :-1]  # (L, n)


class SlicedWasserstein(ReferenceDiscrepancy):
    r"""Sliced :math:`W_2^2` to weighted references with a closed-form gradient (see the module docstring).

    Parameters
    ----------
    n_projections : int >= 1, default=64
        Directions :math:`L` per evaluation.
    resample : bool, default=True
        Fresh directions at every call (seeded by ``random_state`` at ``fit``) or the fixed ``projections_``.
    random_state : int, Generator or None
        Seed of the directions.

    Attributes
    ----------
    reference_ : Tensor (N, F)
    weights_ : Tensor (N,)
    projections_ : Tensor (F, L)
        The directions drawn in ``fit`` (used when ``resample=False``).
    n_features_in_ : int
    """

    def __init__(self, *, n_projections=64, resample=True, random_state=None):
        self.n_projections = n_projections
        self.resample = resample
        self.random_state = random_state

    def fit(self, X, y=None, *, weights=None):
        """Store the references ``X`` ``(N, F)`` and weights, draw ``projections_``; returns self."""
        L = self.n_projections
        if isinstance(L, bool) or not isinstance(L, numbers.Integral) or L < 1:
            raise ValueError(f"n_projections must be a positive int, got {L!r}")
        if not isinstance(self.resample, bool):
            raise TypeError(f"resample must be a bool, got {type(self.resample).__name__}")
        Y = self._fit_references(X, weights, min_samples=1)
        self._generator = check_random_state_torch(self.random_state)
        self.projections_ = _random_directions(Y.shape[1], int(L), self._generator, Y)
        return self

    def _directions(self, like):
        if self.resample:
            return _random_directions(like.shape[1], int(self.n_projections), self._generator, like)
        return self.projections_.to(dtype=like.dtype, device=like.device)

    def _project(self, Z, references, memory):
        Y, w = self.references(Z) if references is None else references
        Zall = stack_memory(Z, memory)  # (n, F)
        P = self._directions(Z)  # (F, L)
        p, q = (Zall @ P).T, (Y @ P).T  # (L, n), (L, N)
        return P, p, q, w

    def value_tensor(self, Z, *, references=None, memory=None):
        r""":math:`\mathrm{SW}_2^2(Z \cup M, \nu)` as a 0-d tensor; no validation."""
        _, p, q, w = self._project(Z, references, memory)
        n = p.shape[1]
        ps = p.sort(dim=1).values  # (L, n)
        I = _quantile_integrals(q, w, n)  # (L, n)
        w2 = (ps * ps).mean(1) + (q * q * w[None, :]).sum(1) - 2.0 * (ps * I).sum(1)  # (L,)
        return w2.clamp_min(0.0).mean()

    def grad_tensor(self, Z, *, references=None, memory=None, terms="full"):
        r""":math:`\nabla_{z_i}\mathrm{SW}_2^2` for every batch row, ``(B, F)``; no validation."""
        P, p, q, w = self._project(Z, references, memory)
        L, n = p.shape
        ps, order = p.sort(dim=1)  # (L, n)
        I = _quantile_integrals(q, w, n)  # (L, n)
        dps = (2.0 / n) * ps - 2.0 * I  # (L, n), derivative at sorted positions
        dp = torch.empty_like(dps).scatter_(1, order, dps)  # (L, n), back to the original rows
        return (dp[:, : Z.shape[0]].T @ P.T) / L  # (B, F)
