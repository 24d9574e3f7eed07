r"""Maximum Mean Discrepancy estimators, their closed-form gradients and a permutation test.

Notation: references :math:`y_1..y_N` with weights :math:`w_j` (default :math:`1/N`),
generated samples :math:`x_1..x_B`, optionally a *memory bank* :math:`m_1..m_M` of
earlier (fixed) generated samples, so the generated set is
:math:`Z = X \cup M` of size :math:`n = B + M`.

Biased (V-statistic, the paper's form):

.. math::
    \mathrm{MMD}^2_b = \frac{1}{n^2}\sum_{a,b} k(z_a, z_b)
        + \sum_{j,j'} w_j w_{j'} k(y_j, y_{j'})
        - \frac{2}{n}\sum_a \sum_j w_j k(z_a, y_j)

Unbiased (U-statistic): the diagonal self terms are dropped,
:math:`\frac{1}{n(n-1)}\sum_{a \ne b}` and
:math:`\frac{1}{1-\sum_j w_j^2}\sum_{j \ne j'} w_j w_{j'} k(y_j,y_{j'})` (which is
:math:`\frac{1}{N(N-1)}\sum_{j\ne j'}` for uniform weights).

Gradient for one current sample :math:`x_i` (symmetric :math:`k`):

.. math::
    \nabla_{x_i}\mathrm{MMD}^2_b = \underbrace{\frac{2}{n^2}\sum_{b} \nabla_1 k(x_i, z_b)}_{\text{self: repulsion}}
        \;\underbrace{-\;\frac{2}{n}\sum_j w_j \nabla_1 k(x_i, y_j)}_{\text{cross: attraction}}

(the unbiased self term uses :math:`\frac{2}{n(n-1)}\sum_{b \ne i}`). All sums are
matrix products through :meth:`Kernel._grad`; nothing of size ``B x N x D`` is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from ._utils import (
    as_tensor,
    check_array_2d,
    check_option,
    check_random_state_torch,
    from_tensor,
    logger,
    match_tensor,
)
from .discrepancy import TERMS, Discrepancy
from .distances import check_dense_size
from .kernels import GaussianKernel, Kernel

__all__ = ["MMD", "PermutationTestResult", "mmd2", "mmd2_gradient"]

ESTIMATORS = ("biased", "unbiased")


# --------------------------------------------------------------------------- tensor core
def _self_sum(kernel: Kernel, Z: torch.Tensor, estimator: str) -> torch.Tensor:
    """:math:`\\sum_{a,b} k(z_a,z_b)` (biased) or :math:`\\sum_{a\\ne b}` (unbiased)."""
    ones = torch.ones(Z.shape[0], dtype=Z.dtype, device=Z.device)
    s = kernel.matvec_tensor(Z, Z, ones).sum()
    if estimator == "unbiased":
        s = s - kernel.diag_tensor(Z).sum()
    return s


def ref_term_tensor(kernel: Kernel, Y: torch.Tensor, w: torch.Tensor, estimator: str) -> torch.Tensor:
    """Reference-reference term of MMD² (constant in X)."""
    s = w @ kernel.matvec_tensor(Y, Y, w)
    if estimator == "unbiased":
        s = (s - (w * w * kernel.diag_tensor(Y)).sum()) / (1.0 - (w * w).sum())
    return s


def _mmd2(kernel, Z, Y, w, estimator, ref_term=None) -> torch.Tensor:
    n = Z.shape[0]
    if estimator == "unbiased" and n < 2:
        raise ValueError("the unbiased estimator needs at least 2 generated samples")
    self_norm = n * n if estimator == "biased" else n * (n - 1)
    cross = kernel.matvec_tensor(Z, Y, w).sum() / n
    if ref_term is None:
        ref_term = ref_term_tensor(kernel, Y, w, estimator)
    return _self_sum(kernel, Z, estimator) / self_norm + ref_term - 2.0 * cross


def mmd2_grad_tensor(kernel, X, Y, w, memory, terms, estimator) -> torch.Tensor:
    """Gradient of MMD²(X ∪ memory, Y) with respect to each row of X, shape (B, D).

    The full gradient is one weighted kernel-gradient pass over the stacked set ``[X; M; Y]``
    with weights ``2/norm`` (generated) and ``-2 w_j / n`` (references).
    """
    B = X.shape[0]
    n = B + (0 if memory is None else memory.shape[0])
    norm = n * n if estimator == "biased" else n * (n - 1)
    use_self = terms in ("full", "self") and n > 1
    use_cross = terms in ("full", "cross")
    parts, weights = [], []
    if use_self:
        parts += [X] if memory is None else [X, memory]
        weights.append(torch.full((n,), 2.0 / norm, dtype=X.dtype, device=X.device))
    if use_cross:
        parts.append(Y)
        weights.append((-2.0 / n) * w)
    if not parts:
        return torch.zeros_like(X)
    Z = parts[0] if len(parts) == 1 else torch.cat(parts, 0)  # (n [+ N], D)
    g = kernel.grad_tensor(X, Z, weights[0] if len(weights) == 1 else torch.cat(weights))
    if use_self and estimator == "unbiased":
        g = g - (2.0 / norm) * kernel.diag_grad_tensor(X)
    return g


def _prepare(kernel, X, Y, weights, memory):
    """Validate arrays for the functional API; returns tensors of X's dtype/device."""
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a Kernel, got {type(kernel).__name__}")
    check_is_fitted(kernel)
    Xt = check_array_2d(X, name="X", n_features=kernel.n_features_in_)
    Yt = match_tensor(check_array_2d(Y, name="Y", min_samples=1, n_features=kernel.n_features_in_), Xt, what="Y")
    N = Yt.shape[0]
    if weights is None:
        w = torch.full((N,), 1.0 / N, dtype=Xt.dtype, device=Xt.device)
    else:
        w = check_ref_weights(weights, N).to(dtype=Xt.dtype, device=Xt.device)
    M = None
    if memory is not None:
        M = match_tensor(check_array_2d(memory, name="memory", min_samples=0, n_features=Xt.shape[1]), Xt, what="memory")
        if M.shape[0] == 0:
            M = None
    return Xt, Yt, w, M


def check_ref_weights(weights, N: int) -> torch.Tensor:
    """Validate reference weights ``(N,)`` and normalise them to sum 1 (float64 tensor).

    Non-negative, finite, not all zero. Normalisation divides by the largest weight first and
    then by the sum, so huge weights (e.g. ``1e308``, whose sum overflows) are safe.
    """
    if isinstance(weights, torch.Tensor) and weights.is_complex() or np.iscomplexobj(weights):
        raise TypeError("weights must be real, got complex values")
    w = weights.detach() if isinstance(weights, torch.Tensor) else weights
    w = as_tensor(w.to(torch.float64) if isinstance(w, torch.Tensor) else w, dtype=torch.float64)
    if w.shape != (N,):
        raise ValueError(f"weights must have shape ({N},) (one per reference), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weights contain NaN or inf")
    if bool((w < 0).any()):
        raise ValueError("weights must be non-negative")
    top = float(w.max())
    if top <= 0:
        raise ValueError("weights sum to 0 (all weights are zero)")
    w = w / top  # in [0, 1]: the sum cannot overflow
    s = float(w.sum())
    if abs(s * top - 1.0) > 1e-6:
        logger.info("reference weights summed to %.6g; normalising to 1", s * top)
    return w / s


def _check_unbiased_weights(w: torch.Tensor) -> None:
    r"""The unbiased reference term divides by :math:`1 - \sum_j w_j^2`: it needs weight on >= 2 references."""
    if float(1.0 - (w.to(torch.float64) ** 2).sum()) <= 1e-12:
        raise ValueError(
            "the unbiased estimator needs weight spread over at least 2 references "
            f"(got {w.numel()} reference(s), effective count {float(1.0 / (w.to(torch.float64) ** 2).sum()):.3g})"
        )


def mmd2(kernel: Kernel, X, Y, *, weights=None, memory=None, estimator: str = "biased"):
    """MMD² between the rows of ``X`` (plus ``memory``) and weighted references ``Y``.

    ``kernel`` must be fitted. Returns a float for numpy input, a 0-d tensor for torch input.
    """
    check_option(estimator, ESTIMATORS, name="estimator")
    Xt, Yt, w, M = _prepare(kernel, X, Y, weights, memory)
    if estimator == "unbiased":
        _check_unbiased_weights(w)
    Z = Xt if M is None else torch.cat([Xt, M], 0)
    val = _mmd2(kernel, Z, Yt, w, estimator)
    return val if isinstance(X, torch.Tensor) else float(val)


def mmd2_gradient(kernel: Kernel, X, Y, *, weights=None, memory=None, terms: str = "full", estimator: str = "biased"):
    """Closed-form :math:`\\nabla_{x_i}` MMD² for every row of ``X``, shape ``(B, D)``; see the module docstring."""
    check_option(estimator, ESTIMATORS, name="estimator")
    check_option(terms, TERMS, name="terms")
    Xt, Yt, w, M = _prepare(kernel, X, Y, weights, memory)
    if estimator == "unbiased" and Xt.shape[0] + (0 if M is None else M.shape[0]) < 2:
        raise ValueError("the unbiased estimator needs at least 2 generated samples (batch + memory)")
    return from_tensor(mmd2_grad_tensor(kernel, Xt, Yt, w, M, terms, estimator), X)


# --------------------------------------------------------------------------- estimator
@dataclass
class PermutationTestResult:
    """Result of :meth:`MMD.permutation_test`.

    Attributes
    ----------
    statistic : float
        MMD² of the observed split.
    p_value : float
        :math:`(1 + \\#\\{\\text{null} \\ge \\text{statistic}\\}) / (1 + P)`.
    null_distribution : ndarray of shape (P,)
    """

    statistic: float
    p_value: float
    null_distribution: np.ndarray


class MMD(Discrepancy):
    r"""MMD² to a fixed, weighted reference set, with closed-form gradients.

    Parameters
    ----------
    kernel : Kernel, default=GaussianKernel(bandwidth='median')
        Cloned and fitted on the references in :meth:`fit`.
    estimator : {'biased', 'unbiased'}, default='biased'
        V-statistic (the paper's, always >= 0) or U-statistic (unbiased, can be < 0).

    Attributes
    ----------
    kernel_ : Kernel
        The fitted kernel.
    reference_ : torch.Tensor of shape (N, D)
    weights_ : torch.Tensor of shape (N,)
        Normalised reference weights.
    ref_term_ : float
        The reference-reference term (cached; constant in X).
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from mmdguidance import MMD
    >>> rng = np.random.default_rng(0)
    >>> est = MMD().fit(rng.normal(size=(50, 2)))
    >>> g = est.gradient(rng.normal(size=(8, 2)) + 3.0)   # (8, 2); step x -= lr * g
    """

    supported_terms = TERMS

    def __init__(self, *, kernel=None, estimator="biased"):
        self.kernel = kernel
        self.estimator = estimator

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, *, weights=None):
        """Cache the references ``X`` of shape ``(N, D)`` (``N >= 2``) and their statistics.

        Parameters
        ----------
        X : array of shape (N, D)
            Reference samples.
        y : ignored
        weights : array of shape (N,), optional
            Non-negative reference weights (normalised to sum 1); default uniform.

        Returns
        -------
        self
        """
        check_option(self.estimator, ESTIMATORS, name="estimator")
        kernel = GaussianKernel() if self.kernel is None else self.kernel
        if not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a mmdguidance Kernel, got {type(kernel).__name__}")
        Y = check_array_2d(X, name="references", min_samples=2)
        if isinstance(X, torch.Tensor):
            Y = Y.detach()
        N = Y.shape[0]
        w = (
            torch.full((N,), 1.0 / N, dtype=Y.dtype, device=Y.device)
            if weights is None
            else check_ref_weights(weights, N).to(dtype=Y.dtype, device=Y.device)
        )
        if self.estimator == "unbiased":
            _check_unbiased_weights(w)
        self.kernel_ = clone(kernel).fit(Y)
        self.reference_ = Y
        self.weights_ = w
        self.ref_term_ = float(ref_term_tensor(self.kernel_, Y, w, self.estimator))
        self.n_features_in_ = int(Y.shape[1])
        self.__dict__.pop("_refs_cache", None)
        return self

    # ------------------------------------------------------------------ helpers
    def _refs_like(self, Xt: torch.Tensor):
        """References and weights in ``Xt``'s dtype (cached per dtype); device must match."""
        return self.references(Xt)

    # ------------------------------------------------------------------ fast paths (Discrepancy)
    def value_tensor(self, Z, *, references=None, memory=None):
        """Biased/unbiased MMD² of ``Z`` ``(B, D)`` (plus ``memory``) as a 0-d tensor; no validation."""
        Zall = Z if memory is None else torch.cat([Z, memory], 0)  # (B + M, D)
        if references is None:
            Y, w = self.references(Z)
            ref = torch.as_tensor(self.ref_term_, dtype=Z.dtype, device=Z.device)
        else:
            (Y, w), ref = references, None
        return _mmd2(self.kernel_, Zall, Y, w, self.estimator, ref_term=ref)

    def grad_tensor(self, Z, *, references=None, memory=None, terms="full"):
        """Closed-form gradient of MMD² for every row of ``Z`` ``(B, D)``; no validation."""
        Y, w = self.references(Z) if references is None else references
        return mmd2_grad_tensor(self.kernel_, Z, Y, w, memory, terms, self.estimator)

    def _check_X(self, X, name="X", min_samples=1):
        check_is_fitted(self, "reference_")
        if not isinstance(X, torch.Tensor) and self.reference_.device.type != "cpu":
            X = torch.as_tensor(np.asarray(X, dtype=np.float64), device=self.reference_.device)
        return check_array_2d(X, name=name, min_samples=min_samples, n_features=self.n_features_in_, owner=type(self).__name__)

    def _check_memory(self, memory, Xt):
        if memory is None:
            return None
        M = self._check_X(memory, name="memory", min_samples=0)
        M = match_tensor(M, Xt, what="memory")
        return None if M.shape[0] == 0 else M

    # ------------------------------------------------------------------ public API
    def score(self, X, y=None, memory=None):
        """MMD² between the samples ``X`` (plus ``memory``) and the references.

        Parameters
        ----------
        X : array of shape (B, D)
        memory : array of shape (M, D), optional
            Earlier generated samples counted in the generated set.

        Returns
        -------
        float (numpy input) or 0-d tensor (torch input)
        """
        Xt = self._check_X(X)
        Y, w = self._refs_like(Xt)
        M = self._check_memory(memory, Xt)
        Z = Xt if M is None else torch.cat([Xt, M], 0)
        val = _mmd2(self.kernel_, Z, Y, w, self.estimator, ref_term=torch.as_tensor(self.ref_term_, dtype=Xt.dtype, device=Xt.device))
        return val if isinstance(X, torch.Tensor) else float(val)

    def gradient(self, X, terms="full", memory=None):
        r"""Closed-form :math:`\nabla_{x_i}\mathrm{MMD}^2` for every row of ``X``.

        Parameters
        ----------
        X : array of shape (B, D)
        terms : {'full', 'cross', 'self'}
            ``'cross'`` is the attraction term :math:`-\frac{2}{n}\sum_j w_j\nabla_1 k(x_i,y_j)`,
            ``'self'`` the repulsion term, ``'full'`` their sum.
        memory : array of shape (M, D), optional
            Fixed earlier samples in the generated set (they get no gradient).

        Returns
        -------
        array of shape (B, D), the type of ``X``
        """
        check_option(terms, TERMS, name="terms")
        Xt = self._check_X(X)
        Y, w = self._refs_like(Xt)
        M = self._check_memory(memory, Xt)
        if self.estimator == "unbiased" and terms != "cross" and Xt.shape[0] + (0 if M is None else M.shape[0]) < 2:
            raise ValueError("the unbiased self term needs at least 2 generated samples (batch + memory)")
        return from_tensor(mmd2_grad_tensor(self.kernel_, Xt, Y, w, M, terms, self.estimator), X)

    def witness(self, X, Z=None):
        r"""Witness function of the generated sample ``X`` against the references, at points ``Z``.

        .. math:: f(z) = \frac{1}{B}\sum_i k(z, x_i) - \sum_j w_j k(z, y_j)

        Positive where the generated sample has excess mass, negative where it lacks mass.

        Parameters
        ----------
        X : array of shape (B, D)
        Z : array of shape (P, D), default ``X``

        Returns
        -------
        array of shape (P,)
        """
        Xt = self._check_X(X)
        Zt = Xt if Z is None else match_tensor(self._check_X(Z, name="Z"), Xt, what="Z")
        Y, w = self._refs_like(Xt)
        u = torch.full((Xt.shape[0],), 1.0 / Xt.shape[0], dtype=Xt.dtype, device=Xt.device)
        f = self.kernel_.matvec_tensor(Zt, Xt, u) - self.kernel_.matvec_tensor(Zt, Y, w)
        return from_tensor(f, X)

    def permutation_test(self, X, n_permutations=1000, random_state=None, batch_size=256):
        """Two-sample permutation test of H0: ``X`` and the references have the same law.

        The pooled Gram matrix is computed once; the statistics for all
        permutations are quadratic forms :math:`v_p^\\top K v_p` evaluated in batches
        (no Python loop per permutation). Uses uniform reference weights (the
        permutation null needs exchangeable samples).

        Parameters
        ----------
        X : array of shape (B, D), B >= 2
        n_permutations : int >= 1
        random_state : int, torch.Generator or None
        batch_size : int >= 1
            Permutations per batch (memory ``batch_size * (B + N)``).

        Returns
        -------
        PermutationTestResult

        Raises
        ------
        ValueError
            Bad ``n_permutations`` / ``batch_size``, or a pooled Gram matrix of more than
            :data:`mmdguidance.distances.MAX_DENSE_ELEMENTS` entries (subsample first).

        Notes
        -----
        ``X`` may require grad: the test is not differentiable and works on a detached copy.
        """
        for nm, v in (("n_permutations", n_permutations), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{nm} must be a positive int, got {v!r}")
        Xt = self._check_X(X, min_samples=2).detach()
        check_dense_size(
            Xt.shape[0] + self.reference_.shape[0], Xt.shape[0] + self.reference_.shape[0], func="permutation_test",
            alternative="subsample the samples and/or the references (e.g. 2,000 of each) and test again",
        )
        Y, w = self._refs_like(Xt)
        if not torch.allclose(w, torch.full_like(w, 1.0 / w.numel())):
            logger.warning("permutation_test ignores the non-uniform reference weights (exchangeability)")
        B, N = Xt.shape[0], Y.shape[0]
        P = torch.cat([Xt, Y], 0)
        K = self.kernel_.gram_tensor(P, P)  # (B+N, B+N)
        dK = torch.diagonal(K)
        gen = check_random_state_torch(random_state, device=Xt.device)

        def stats(A: torch.Tensor) -> torch.Tensor:  # A: (p, B+N) float 0/1 membership of the "X" group
            Bm = 1.0 - A
            KA = A @ K
            sxx = (KA * A).sum(1)
            sxy = (KA * Bm).sum(1)
            syy = ((Bm @ K) * Bm).sum(1)
            if self.estimator == "biased":
                return sxx / B**2 + syy / N**2 - 2 * sxy / (B * N)
            sxx = sxx - (A * dK).sum(1)
            syy = syy - (Bm * dK).sum(1)
            return sxx / (B * (B - 1)) + syy / (N * (N - 1)) - 2 * sxy / (B * N)

        a0 = torch.zeros(1, B + N, dtype=K.dtype, device=K.device)
        a0[0, :B] = 1
        observed = float(stats(a0)[0])
        null = []
        done = 0
        while done < n_permutations:
            p = min(batch_size, n_permutations - done)
            keys = torch.rand(p, B + N, generator=gen, device=K.device)
            idx = keys.argsort(1)[:, :B]  # random B-subsets
            A = torch.zeros(p, B + N, dtype=K.dtype, device=K.device)
            A.scatter_(1, idx, 1.0)
            null.append(stats(A))
            done += p
        null_t = torch.cat(null).cpu().numpy()
        p_value = (1.0 + np.sum(null_t >= observed - 1e-12 * abs(observed))) / (1.0 + n_permutations)
        return PermutationTestResult(statistic=observed, p_value=float(p_value), null_distribution=null_t)
