"""Baselines MMD guidance is compared with (see docs/benchmark.md).

* :class:`DoobOracleDenoiser` — exact Doob h-transform guidance for targets that re-weight the
  components of an analytic mixture base (an oracle: knows the base and the target weights);
* :class:`DoobMatchingDenoiser` — Doob's matching: :math:`h_t`, :math:`\\nabla h_t` learned from
  references by gradient-penalised regression on a classifier density ratio;
* :class:`ClassifierGuidedDenoiser` — classifier guidance with a noise-conditioned domain
  classifier (:class:`NoisyDomainClassifier`, references vs base samples);
* :func:`finetune` — continue training an :class:`~mmdguidance.diffusion.MLPDenoiser` on the references;
* :func:`mmd_ddm` — MMD-DDM: fine-tune a denoiser for few-step DDIM with an MMD loss through the sampler.

The guided baselines are Denoiser wrappers (``schedule``, ``dim``, ``predict_eps``), so
:func:`mmdguidance.diffusion.sample` runs them with any sampler.
"""

from ._guided import GuidedDenoiser, draw_base_samples
from .classifier import ClassifierGuidedDenoiser, NoisyDomainClassifier
from .doob import DoobMatchingDenoiser, DoobOracleDenoiser
from .finetune import finetune
from .mmd_ddm import ddim_sample, mmd_ddm

__all__ = [
    "GuidedDenoiser",
    "draw_base_samples",
    "DoobOracleDenoiser",
    "DoobMatchingDenoiser",
    "NoisyDomainClassifier",
    "ClassifierGuidedDenoiser",
    "finetune",
    "ddim_sample",
    "mmd_ddm",
]
