"""Toy diffusion models: VP schedules, denoisers (analytic GMM, trainable MLP) and samplers."""

from .denoisers import (
    ConditionalGMMDenoiser,
    Denoiser,
    GMMDenoiser,
    MLPDenoiser,
    eps_to_score,
    eps_to_x0,
    x0_to_eps,
)
from .samplers import SAMPLERS, StepInfo, sample
from .schedules import VPSchedule

__all__ = [
    "VPSchedule",
    "Denoiser",
    "GMMDenoiser",
    "ConditionalGMMDenoiser",
    "MLPDenoiser",
    "StepInfo",
    "sample",
    "SAMPLERS",
    "eps_to_x0",
    "x0_to_eps",
    "eps_to_score",
]
