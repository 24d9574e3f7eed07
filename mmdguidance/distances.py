r"""Pairwise squared Euclidean distances: the one routine behind kernels, bandwidths and metrics.

Every squared distance :math:`\|x_i - y_j\|^2` in the package (Gaussian / IMQ Gram matrices
and gradients, the median heuristic, the exact MMD² to a mixture, the W₂ cost matrix, the
PRDC radii and ball tests) comes from :func:`centred_sq_dists`, which guarantees

* **float64 work precision where cheap** -- up to :data:`FLOAT64_MAX_WORK` multiply-adds
  (``n * m * d``) inputs of lower precision (float16, bfloat16, float32) are promoted to float64,
  so their results agree with a float64 evaluation of the same (rounded) inputs up to the final
  rounding to the input dtype; larger low-precision problems run in float32 (float16 / bfloat16
  promoted), with the same centring and exact small distances below, i.e. a relative error of
  about :math:`\sqrt d\,\epsilon_{32}/2^{-6} \approx 8\cdot10^{-6}\sqrt d` at worst per entry;
* **centring per pair of sets** -- both sets are shifted by
  :math:`c = \tfrac12(\bar x + \bar y)` (the means of the two blocks at hand) when the centre
  is farther from the origin than the data's spread around it
  (:math:`\|c\|^2 > \tfrac12(\overline{\|x - c\|^2} + \overline{\|y - c\|^2})`), which keeps the
  expansion :math:`\|a\|^2 + \|b\|^2 - 2a^\top b` accurate for data far from the origin; otherwise
  (data around the origin, or an outlier dragging the mean) the data are used as they are, since
  shifting would round every row to the precision of :math:`\|c\|`;
* **exact small distances** -- an entry whose expansion is below
  :math:`\tau(\|a\|^2 + \|b\|^2)` (:math:`\tau = 2^{-26}` in float64, :math:`2^{-6}` in float32;
  there the expansion's round-off :math:`\approx \epsilon(\|a\|^2+\|b\|^2)` would be a large part
  of the value) is recomputed in float64 from the differences of the original rows,
  :math:`\sum_k (a_k - b_k)^2`. Identical rows (a point and itself, duplicates) therefore get
  exactly 0, and every other entry has a relative error of about
  :math:`\sqrt{d}\,\epsilon_{64}/\tau \approx 3\cdot10^{-8}\sqrt d` at worst in float64;
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

#: Problems of at most this many multiply-adds (``n * m * d``) are computed in float64 whatever the
#: input dtype; larger float32 / float16 / bfloat16 problems are computed in float32 (the cost of
#: float64 matrix products there is 2-4x on CPUs and more on most GPUs).
FLOAT64_MAX_WORK = 2**27

#: Relative threshold (per work dtype) below which the expansion is replaced by exact differences.
_EXACT_RTOL = {torch.float64: 2.0**-26, torch.float32: 2.0**-6}


def work_dtype(dtype: torch.dtype, work: int = 0) -> torch.dtype:
    """The dtype distances are computed in: float64 for float64 input or up to
    :data:`FLOAT64_MAX_WORK` multiply-adds, float32 otherwise."""
    if dtype.is_complex:
        raise TypeError(f"complex tensors are not supported (dtype {dtype}); pass real data")
    return torch.float64 if dtype == torch.float64 or work <= FLOAT64_MAX_WORK else torch.float32


def _sq_norms(A: torch.Tensor) -> torch.Tensor:
    """Row-wise squared norms ``(n,)`` of ``A`` ``(n, d)`` (no ``(n, d)`` temporary)."""
    return torch.linalg.vector_norm(A, dim=1).square()


def _exact_fixup(d2: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor):
    """Recompute the entries of ``d2`` ``(n, m)`` the expansion cannot resolve, from float64 differences
    of the original (uncentred) rows of ``X`` ``(n, d)`` and ``Y`` ``(m, d)``."""
    with torch.no_grad():
        bad = d2 <= _EXACT_RTOL[d2.dtype] * (xn[:, None] + yn[None, :])  # (n, m) bool
        ii, jj = torch.nonzero(bad, as_tuple=True)  # (p,), (p,)
    if ii.numel() == 0:
        return d2
    step = max(1, BLOCK_ELEMENTS // max(X.shape[1], 1))
    f64 = torch.float64
    vals = [
        (X[ii[s : s + step]].to(f64) - Y[jj[s : s + step]].to(f64)).square().sum(1)  # (q, d) -> (q,)
        for s in range(0, ii.numel(), step)
    ]
    return d2.index_put((ii, jj), torch.cat(vals).to(d2.dtype))


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
    wd = work_dtype(X.dtype, X.shape[0] * Y.shape[0] * X.shape[1])
    Xc, Yc = X.to(wd), Y.to(wd)  # (n, d), (m, d); no copy for float64 input
    xn, yn = _sq_norms(Xc), _sq_norms(Yc)  # (n,), (m,)
    if X.shape[0] and Y.shape[0]:
        with torch.no_grad():
            mx, my = Xc.mean(0, keepdim=True), Yc.mean(0, keepdim=True)  # (1, d)
            c = 0.5 * (mx + my)
            cc = float(c.square().sum())
            # mean ||z - c||^2 = mean ||z||^2 - 2 c.mean(z) + ||c||^2, per set, averaged
            spread = 0.5 * float(xn.mean() + yn.mean() - 2.0 * (c * (mx + my)).sum()) + cc
        if cc > spread:  # far from the origin relative to the spread: centre
            Xc, Yc = Xc - c, Yc - c
            xn, yn = _sq_norms(Xc), _sq_norms(Yc)
    d2 = torch.addmm(yn[None, :], Xc, Yc.T, beta=1.0, alpha=-2.0) + xn[:, None]  # (n, m)
    d2 = d2.clamp_min(0.0)  # out of place: the Gram must stay differentiable
    return Xc, Yc, _exact_fixup(d2, X, Y, xn.detach(), yn.detach())


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
