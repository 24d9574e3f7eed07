"""mmdguidance: training-free distribution adaptation of diffusion models by MMD guidance.

The headline call::

    from mmdguidance import MMDGuidedSampler
    samples = MMDGuidedSampler(model).fit(refs).sample(n)

Public names only; heavy optional parts (the diffusers adapter) are imported from
their own modules (``mmdguidance.adapters.diffusers``).
"""

from .kernels import ConstantKernel, GaussianKernel, IMQKernel, Kernel, PolynomialKernel, ProductKernel, median_heuristic
from .mmd import MMD, PermutationTestResult, mmd2, mmd2_gradient

__version__ = "0.1.0"

__all__ = [
    "Kernel",
    "GaussianKernel",
    "PolynomialKernel",
    "IMQKernel",
    "ConstantKernel",
    "ProductKernel",
    "median_heuristic",
    "MMD",
    "PermutationTestResult",
    "mmd2",
    "mmd2_gradient",
    "MMDGuidance",
    "MMDGuidedSampler",
    "GaussianMixture",
    "__version__",
]


def __getattr__(name):  # lazy: guidance pulls in the diffusion package, gmm scipy
    if name in ("MMDGuidance", "MMDGuidedSampler"):
        from . import guidance

        return getattr(guidance, name)
    if name == "GaussianMixture":
        from .gmm import GaussianMixture

        return GaussianMixture
    raise AttributeError(f"module 'mmdguidance' has no attribute {name!r}")
