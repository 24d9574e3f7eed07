r"""The discrepancy interface that guidance drives: a fitted, differentiable distance to a reference set.

A *discrepancy* :math:`\mathcal D(Z, Q_N)` compares a generated set :math:`Z = X \cup M`
(current batch :math:`X` of shape ``(B, F)`` plus an optional fixed memory bank :math:`M`,
``(M, F)``) with fitted references :math:`Q_N = \sum_j w_j \delta_{y_j}` (``(N, F)``, weights ``(N,)``).
Guidance only needs the gradient :math:`\nabla_{x_i}\mathcal D` for every row of :math:`X`.

:class:`~mmdguidance.mmd.MMD` is one implementation; any subclass of :class:`Discrepancy`
plugs into :class:`~mmdguidance.guidance.MMDGuidance` and the diffusers adapter alike.

Two layers, the sklearn idiom of validated public methods over ``check_input=False`` fast paths:

* ``score(X, memory=None)`` / ``gradient(X, terms='full', memory=None)`` validate their input
  (numpy in -> numpy out, torch in -> torch out);
* ``value_tensor`` / ``grad_tensor`` take tensors already on the references' device and in a
  floating dtype and do **no** validation: they are what per-step guidance calls.

Both fast paths accept ``references=(Y, w)`` to replace the fitted references for one call
(guidance uses it for references noised to the current level); :meth:`references` returns the
fitted ones in a given dtype.
"""

from __future__ import annotations

import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._utils import check_option, from_tensor

__all__ = ["Discrepancy", "TERMS"]

#: which part of the gradient to use: everything, only the attraction to the references, only the
#: interaction inside the generated set (for discrepancies without such a split only ``'full'``).
TERMS = ("full", "cross", "self")


class Discrepancy(BaseEstimator):
    """Base class of the discrepancies guidance can drive (see the module docstring).

    Subclasses implement :meth:`fit` (setting ``reference_`` ``(N, F)``, ``weights_`` ``(N,)``,
    ``n_features_in_``), :meth:`value_tensor` and :meth:`grad_tensor`, and a ``_check_X`` that
    validates user input; ``supported_terms`` lists the ``terms`` values they accept.
    """

    supported_terms: tuple = ("full",)

    def references(self, like: torch.Tensor):
        """Fitted references and weights in ``like``'s dtype, as ``(Y (N, F), w (N,))`` (cached per dtype)."""
        check_is_fitted(self, "reference_")
        if like.device != self.reference_.device:
            raise ValueError(
                f"the samples are on {like.device} but {type(self).__name__} was fitted on "
                f"{self.reference_.device}; move the samples or refit on that device"
            )
        cache = self.__dict__.setdefault("_refs_cache", {})
        key = (like.dtype, like.device)
        if key not in cache:
            cache[key] = (self.reference_.to(like.dtype), self.weights_.to(like.dtype))
        return cache[key]

    def check_terms(self, terms: str) -> str:
        """Validate ``terms`` against :data:`TERMS` and this discrepancy's ``supported_terms``."""
        check_option(terms, TERMS, name="terms")
        if terms not in self.supported_terms:
            raise ValueError(f"{type(self).__name__} supports terms in {self.supported_terms}, got {terms!r}")
        return terms

    # ------------------------------------------------------------------ fast paths (no validation)
    def value_tensor(self, Z: torch.Tensor, *, references=None, memory: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`\\mathcal D(Z \\cup M, Q_N)` as a 0-d tensor; ``Z`` ``(B, F)``, no input validation."""
        raise NotImplementedError

    def grad_tensor(self, Z: torch.Tensor, *, references=None, memory: torch.Tensor | None = None,
                    terms: str = "full") -> torch.Tensor:
        """:math:`\\nabla_{z_i}\\mathcal D` for every row of ``Z``, shape ``(B, F)``; no input validation."""
        raise NotImplementedError

    # ------------------------------------------------------------------ validated public API
    def _check_memory_like(self, memory, Xt):
        if memory is None:
            return None
        M = self._check_X(memory, name="memory", min_samples=0)
        if M.device != Xt.device:
            raise ValueError(f"memory is on {M.device} but X is on {Xt.device}")
        M = M.to(Xt.dtype)
        return None if M.shape[0] == 0 else M

    def score(self, X, y=None, memory=None):
        """The discrepancy between ``X`` ``(B, F)`` (plus ``memory`` ``(M, F)``) and the references."""
        Xt = self._check_X(X)
        val = self.value_tensor(Xt, memory=self._check_memory_like(memory, Xt))
        return val if isinstance(X, torch.Tensor) else float(val)

    def gradient(self, X, terms="full", memory=None):
        """Gradient of :meth:`score` with respect to every row of ``X``, shape ``(B, F)``, the type of ``X``."""
        self.check_terms(terms)
        Xt = self._check_X(X)
        g = self.grad_tensor(Xt, memory=self._check_memory_like(memory, Xt), terms=terms)
        return from_tensor(g, X)
