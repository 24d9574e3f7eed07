"""Distribution-level discrepancies other than MMD, on the :class:`~mmdguidance.discrepancy.Discrepancy`
interface that guidance drives (one module per method; formulas in each module's docstring).

* :class:`Chamfer` — nearest-exemplar (precision) plus nearest-sample (coverage) distances, arXiv 2508.10631;
* :class:`SlicedWasserstein` — sliced :math:`W_2^2` through 1-D quantile matching, arXiv 2503.19034;
* :class:`KernelEntropyDiversity` — :math:`-\\log` RKE repulsion plus MMD's attraction, arXiv 2506.10173.
"""

from .chamfer import Chamfer
from .diversity import KernelEntropyDiversity
from .sliced_wasserstein import SlicedWasserstein

__all__ = ["Chamfer", "KernelEntropyDiversity", "SlicedWasserstein"]
