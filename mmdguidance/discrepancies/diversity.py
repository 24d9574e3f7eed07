r"""Kernel-entropy diversity guidance: RKE repulsion inside the generated set, optionally with MMD's
attraction to the exemplars (the RKE criterion of SPARKE, arXiv 2506.10173; particle guidance,
arXiv 2310.13102, is the same idea with the plain kernel sum).

Generated set :math:`Z = X \cup M` (:math:`n` rows), references :math:`y_j` with weights :math:`w_j`,
a kernel :math:`k` (Gaussian, median bandwidth of the references by default):

.. math::
    \mathcal D(Z) = a\,\underbrace{\Big(\sum_{j,j'} w_j w_{j'} k(y_j, y_{j'})
                     - \frac2n\sum_{a,j} w_j k(z_a, y_j)\Big)}_{\text{attraction ('cross'): MMD's cross term}}
        \;+\; \lambda\,\underbrace{\log\Big(\frac1{n^2}\sum_{a,b} k(z_a, z_b)^2\Big)}_{-\log\mathrm{RKE}(Z)\ \text{('self')}}

:math:`\mathrm{RKE}(Z) = (\frac1{n^2}\sum_{a,b}k^2)^{-1}` is the order-2 Rényi kernel entropy mode count
(:func:`mmdguidance.metrics.rke`, exact for kernels with :math:`k(z,z)=1`), so descending :math:`\mathcal D`
raises the diversity of the generated set. Gradient for a batch row (symmetric :math:`k`):

.. math::
    \nabla_{x_i}\mathcal D = -\frac{2a}{n}\sum_j w_j\nabla_1 k(x_i, y_j)
        + \lambda\,\frac{\frac{4}{n^2}\sum_b k(x_i, z_b)\,\nabla_1 k(x_i, z_b)}{\frac1{n^2}\sum_{a,b}k(z_a,z_b)^2},

both through :meth:`Kernel._grad` (the second with the per-pair weights :math:`k(x_i,z_b)`, an
``(B, n)`` Gram matrix). With :math:`a = 0` it is pure diversity guidance (reference-free
repulsion); the entropy is of order 2 because its gradient is closed form (Vendi, order 1, needs an
eigendecomposition). SPARKE conditions the entropy on prompts; here the unconditional entropy is used.
"""

from __future__ import annotations

import torch
from sklearn.base import clone

from .._utils import check_positive
from ..kernels import GaussianKernel, Kernel
from ..mmd import mmd2_grad_tensor, ref_term_tensor
from ._base import ReferenceDiscrepancy, stack_memory

__all__ = ["KernelEntropyDiversity"]


class KernelEntropyDiversity(ReferenceDiscrepancy):
    r"""Negative log-RKE of the generated set plus an optional MMD attraction (see the module docstring).

    Parameters
    ----------
    kernel : Kernel, default=GaussianKernel(bandwidth='median')
        Cloned and fitted on the references.
    diversity : float >= 0, default=1.0
        :math:`\lambda`, weight of :math:`-\log\mathrm{RKE}`.
    attraction : float >= 0, default=1.0
        :math:`a`, weight of MMD's cross term (0: reference-free diversity guidance).

    Attributes
    ----------
    kernel_ : Kernel
    reference_ : Tensor (N, F)
    weights_ : Tensor (N,)
    n_features_in_ : int
    """

    supported_terms = ("full", "cross", "self")

    def __init__(self, *, kernel=None, diversity=1.0, attraction=1.0):
        self.kernel = kernel
        self.diversity = diversity
        self.attraction = attraction

    def fit(self, X, y=None, *, weights=None):
        """Store the references ``X`` ``(N, F)`` and weights, fit the kernel on them; returns self."""
        check_positive(self.diversity, name="diversity", allow_zero=True)
        check_positive(self.attraction, name="attraction", allow_zero=True)
        kernel = GaussianKernel() if self.kernel is None else self.kernel
        if not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a mmdguidance Kernel, got {type(kernel).__name__}")
        Y = self._fit_references(X, weights, min_samples=2)
        self.kernel_ = clone(kernel).fit(Y)
        self.ref_term_ = float(ref_term_tensor(self.kernel_, Y, self.weights_, "biased"))
        return self

    def value_tensor(self, Z, *, references=None, memory=None):
        r""":math:`\mathcal D(Z \cup M)` as a 0-d tensor; no validation."""
        Zall = stack_memory(Z, memory)  # (n, F)
        n = Zall.shape[0]
        val = Z.new_zeros(())
        if self.attraction:
            if references is None:
                (Y, w), ref = self.references(Z), self.ref_term_
            else:
                (Y, w), ref = references, ref_term_tensor(self.kernel_, references[0], references[1], "biased")
            val = val + float(self.attraction) * (ref - 2.0 * self.kernel_.matvec_tensor(Zall, Y, w).sum() / n)
        if self.diversity:
            K = self.kernel_.gram_tensor(Zall, Zall)  # (n, n)
            val = val + float(self.diversity) * torch.log((K * K).sum() / n**2)
        return val

    def grad_tensor(self, Z, *, references=None, memory=None, terms="full"):
        r""":math:`\nabla_{z_i}\mathcal D` for every batch row, ``(B, F)``; no validation."""
        g = torch.zeros_like(Z)
        if terms in ("full", "cross") and self.attraction:
            Y, w = self.references(Z) if references is None else references
            g = g + float(self.attraction) * mmd2_grad_tensor(self.kernel_, Z, Y, w, memory, "cross", "biased")
        if terms in ("full", "self") and self.diversity:
            Zall = stack_memory(Z, memory)  # (n, F)
            n = Zall.shape[0]
            K = self.kernel_.gram_tensor(Zall, Zall)  # (n, n)
            S = (K * K).sum() / n**2  # mean k², the inverse RKE
            g = g + float(self.diversity) * self.kernel_.grad_tensor(Z, Zall, (4.0 / n**2) * K[: Z.shape[0]]) / S
        return g
