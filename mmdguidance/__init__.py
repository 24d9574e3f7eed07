"""mmdguidance: training-free distribution adaptation of diffusion models by MMD guidance.

The headline call::

    from mmdguidance import MMDGuidedSampler
    samples = MMDGuidedSampler(model).fit(refs).sample(n)

Public names only. Every name is imported lazily on first access (PEP 562), so that
``import mmdguidance`` and ``mmdguidance --help`` do not import torch; heavy optional parts
(the diffusers adapter) live in their own modules (``mmdguidance.adapters.diffusers``).
"""

from __future__ import annotations

import importlib

#: the package version, written only here (pyproject.toml reads it: ``dynamic = ["version"]``)
__version__ = "0.1.0"

#: public name -> submodule that defines it (imported on first access)
_LAZY = {
    "Kernel": "kernels",
    "GaussianKernel": "kernels",
    "PolynomialKernel": "kernels",
    "IMQKernel": "kernels",
    "ConstantKernel": "kernels",
    "ProductKernel": "kernels",
    "median_heuristic": "kernels",
    "span_bandwidths": "bandwidth",
    "MMD": "mmd",
    "PermutationTestResult": "mmd",
    "mmd2": "mmd",
    "mmd2_gradient": "mmd",
    "RFFMMD": "approx",
    "NystromMMD": "approx",
    "Discrepancy": "discrepancy",
    "Chamfer": "discrepancies",
    "SlicedWasserstein": "discrepancies",
    "KernelEntropyDiversity": "discrepancies",
    "MMDGuidance": "guidance",
    "MMDGuidedSampler": "sampler",
    "GaussianMixture": "gmm",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mmdguidance' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
