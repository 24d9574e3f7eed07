"""Adapters to external diffusion libraries (optional extras).

``from mmdguidance.adapters.diffusers import DiffusersMMDGuidance`` (needs ``pip install 'mmdguidance[diffusers]'``);
``from mmdguidance.adapters.callback import MMDGuidanceCallback`` (the guidance as a diffusers ``PipelineCallback``).
Baselines for latent pipelines: :mod:`.classifier_guidance` (noise-conditional latent classifier guidance) and
:mod:`.finetune` (full fine-tuning of a UNet copy on reference latents).
"""

__all__ = ["DiffusersMMDGuidance", "MMDGuidanceCallback", "MMDGuidedPipelineOutput"]


def __getattr__(name):
    if name in __all__:
        from . import diffusers as _d

        return getattr(_d, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
