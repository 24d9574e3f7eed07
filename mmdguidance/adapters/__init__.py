"""Adapters to external diffusion libraries (optional extras).

``from mmdguidance.adapters.diffusers import DiffusersMMDGuidance`` (needs ``pip install 'mmdguidance[diffusers]'``).
"""

__all__ = ["DiffusersMMDGuidance"]


def __getattr__(name):
    if name == "DiffusersMMDGuidance":
        from .diffusers import DiffusersMMDGuidance

        return DiffusersMMDGuidance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
