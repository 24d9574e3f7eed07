r"""Pairwise squared Euclidean distances: the one routine behind kernels, bandwidths and metrics.

Every squared distance :math:`\|x_i - y_j\|^2` in the package (Gaussian / IMQ Gram matrices
and gradients, the median heuristic, the exact MMD² to a mixture, the W₂ cost matrix, the
PRDC radii and ball tests) comes from :func:`centred_sq_dists`, which guarantees

* **float64 work precision** -- inputs of lower precision (float16, bfloat16, float32) are
  promoted for the computation, so their results agree with a float64 evaluation of the same
  (rounded) inputs up to the final rounding to the input dtype;
* **centring per pair of sets** -- both sets are shifted by
  :math:`c = \tfrac12(\bar x + \bar y)` (the means of the two blocks at hand) when the centre
  is farther from the origin than the data's spread around it
  (:math:`\|c\|^2 > \tfrac12(\overline{\|x - c\|^2} + \overline{\|y - c\|^2})`), which keeps the
  expansion :math:`\|a\|^2 + \|b\|^2 - 2a^\top b` accurate for data far from the origin; otherwise
  (data around the origin, or an outlier dragging the mean) the data are used as they are, since
  shifting would round every row to the precision of :math:`\|c\|`;
* **exact small distances** -- an entry whose expansion is below
  :math:`\tau(\|a\|^2 + \|b\|^2)` with :math:`\tau = 2^{-26}` (where the expansion's round-off
  :math:`\approx \epsilon_{64}(\|a\|^2+\|b\|^2)` would exceed :math:`\sqrt{\epsilon_{64}}` of the
  value) is recomputed from the differences :math:`\sum_k (a_k - b_k)^2`. Identical rows (a
  point and itself, duplicates) therefore get exactly 0, and every other entry has a relative
  error of about :math:`\sqrt{d}\,\epsilon_{64}/\tau \approx 3\cdot10^{-8}\sqrt d` at worst;
* non-negativity (round-off negatives are clamped to 0).

The computation is differentiable by autograd (the centre is detached: distances are
translation invariant). Memory: the expansion is one ``(n, m)`` float64 block; callers chunk
the rows of ``X`` (see :data:`BLOCK_ELEMENTS`).
"""

from __future__ import annotations

import torch

__all__ = ["BLOCK_ELEMENTS", "MAX_DENSE_ELEMENTS", "centred_sq_dists", "check_dense_size", "sq_dists", "work_dtype"]

#: Target number of elements of one ``(rows, m)`` block in every chunked pairwise loop.
BLOCK_ELEMENTS = 2**22

#: Relative threshold below which the expansion is replaced by the exact differences.
_EXACT_RTOL = 2.0**-26


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype distances are computed in: float64 for every real floating input."""
    if dtype.is_complex:
        raise TypeError(f"complex tensors are not supported (dtype {dtype}); pass real data")
    return torch.float64


def _exact_fixup(d2: torch.Tensor, Xc: torch.Tensor, Yc: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor):
    """Recompute the entries of ``d2`` ``(n, m)`` the expansion cannot resolve, from exact differences."""
    with torch.no_grad():
        bad = d2 <= _EXACT_RTOL * (xn[:, None] + yn[None, :])  # (n, m) bool
        ii, jj = torch.nonzero(bad, as_tuple=True)  # (p,), (p,)
    if ii.numel() == 0:
        return d2
    step = max(1, BLOCK_ELEMENTS // max(Xc.shape[1], 1))
    vals = [
        (Xc[ii[s : s + step]] - Yc[jj[s : s + step]]).square().sum(1)  # (q, d) -> (q,)
        for s in range(0, ii.numel(), step)
    ]
    return d2.index_put((ii, jj), torch.cat(vals))


def centred_sq_dists(X: torch.Tensor, Y: torch.Tensor):
    r"""Centred copies of ``X`` ``(n, d)``, ``Y`` ``(m, d)`` and their squared distances ``(n, m)``.

    Returns
    -------
    Xc : tensor of shape (n, d), float64
        :math:`x_i - c`, with :math:`c = \tfrac12(\bar x + \bar y)` or 0 (detached; see the
        module docstring).
    Yc : tensor of shape (m, d), float64
        :math:`y_j - c`.
    d2 : tensor of shape (n, m), float64
        :math:`\|x_i - y_j\|^2 \ge 0`, exactly 0 for identical rows (see the module docstring).

    Gradient formulas should use ``Xc``, ``Yc`` (same centre) so that
    :math:`\sum_j G_{ij}(y_j - x_i) = (G Y_c)_i - (\sum_j G_{ij}) x_{c,i}` stays accurate.
    """
    wd = work_dtype(X.dtype)
    X64, Y64 = X.to(wd), Y.to(wd)  # (n, d), (m, d)
    Xc, Yc = X64, Y64
    if X.shape[0] and Y.shape[0]:
        with torch.no_grad():
            c = 0.5 * (X64.mean(0, keepdim=True) + Y64.mean(0, keepdim=True))  # (1, d)
            spread = 0.5 * ((X64 - c).square().sum(1).mean() + (Y64 - c).square().sum(1).mean())
            use = bool(c.square().sum() > spread)  # far from the origin relative to the spread
        if use:
            Xc, Yc = X64 - c, Y64 - c
    xn = Xc.square().sum(1)  # (n,)
    yn = Yc.square().sum(1)  # (m,)
    d2 = torch.addmm(yn[None, :], Xc, Yc.T, beta=1.0, alpha=-2.0) + xn[:, None]  # (n, m)
    d2 = d2.clamp_min(0.0)  # out of place: the Gram must stay differentiable
    return Xc, Yc, _exact_fixup(d2, Xc, Yc, xn.detach(), yn.detach())


def sq_dists(X: torch.Tensor, Y: torch.Tensor | None = None, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""Squared Euclidean distances :math:`\|x_i - y_j\|^2`, shape ``(n, m)``.

    Parameters
    ----------
    X : tensor of shape (n, d)
    Y : tensor of shape (m, d), default ``X``
    dtype : torch.dtype, optional
        Dtype of the result; default ``X.dtype``. The computation is float64 whatever the
        result dtype (see the module docstring for the guarantees).

    Returns
    -------
    tensor of shape (n, m)
    """
    _, _, d2 = centred_sq_dists(X, X if Y is None else Y)
    return d2.to(X.dtype if dtype is None else dtype)


#: Largest dense pairwise matrix (elements) the metrics and the permutation test build at once
#: (``2**27`` float64 elements = 1 GiB). Above it they raise a ``ValueError`` naming the limit
#: and an alternative, instead of running out of memory. Module-level so it can be raised.
MAX_DENSE_ELEMENTS = 2**27


def check_dense_size(n: int, m: int, *, func: str, alternative: str) -> None:
    """Raise ``ValueError`` if an ``(n, m)`` dense matrix exceeds :data:`MAX_DENSE_ELEMENTS`.

    The message states the size, the limit (and how to raise it) and ``alternative``.
    """
    if n * m > MAX_DENSE_ELEMENTS:
        raise ValueError(
            f"{func}: needs a dense {n} x {m} matrix ({n * m:,} elements, {8 * n * m / 2**30:.1f} GiB in float64), "
            f"above the limit of {MAX_DENSE_ELEMENTS:,} elements (mmdguidance.distances.MAX_DENSE_ELEMENTS); "
            f"{alternative}"
        )
