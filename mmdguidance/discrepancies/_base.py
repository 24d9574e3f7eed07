"""What the discrepancies of this package share: reference validation in ``fit`` and input validation.

``MMD`` (in :mod:`mmdguidance.mmd`) validates the same way; the weight check is its
``check_ref_weights`` (one implementation).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from .._utils import check_array_2d
from ..discrepancy import Discrepancy
from ..mmd import check_ref_weights


class ReferenceDiscrepancy(Discrepancy):
    """A :class:`~mmdguidance.discrepancy.Discrepancy` whose fitted state starts with the references.

    Subclasses call :meth:`_fit_references` in ``fit`` and implement ``value_tensor`` / ``grad_tensor``.
    """

    def _fit_references(self, X, weights, *, min_samples: int = 1) -> torch.Tensor:
        """Validate references ``X`` ``(N, F)`` and ``weights`` ``(N,)``; set ``reference_``, ``weights_``,
        ``n_features_in_``; return the reference tensor."""
        Y = check_array_2d(X, name="references", min_samples=min_samples)
        if isinstance(X, torch.Tensor):
            Y = Y.detach()
        N = Y.shape[0]
        if weights is None:
            w = torch.full((N,), 1.0 / N, dtype=Y.dtype, device=Y.device)
        else:
            w = check_ref_weights(weights, N).to(dtype=Y.dtype, device=Y.device)
        self.reference_ = Y
        self.weights_ = w
        self.n_features_in_ = int(Y.shape[1])
        self.__dict__.pop("_refs_cache", None)
        return Y

    def _check_X(self, X, name="X", min_samples=1):
        check_is_fitted(self, "reference_")
        if not isinstance(X, torch.Tensor) and self.reference_.device.type != "cpu":
            X = torch.as_tensor(np.asarray(X, dtype=np.float64), device=self.reference_.device)
        return check_array_2d(X, name=name, min_samples=min_samples, n_features=self.n_features_in_,
                              owner=type(self).__name__)


def stack_memory(Z: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
    """The generated set :math:`Z \\cup M` as one ``(B + M, F)`` tensor (the batch rows first)."""
    return Z if memory is None else torch.cat([Z, memory.to(Z)], 0)
