"""Toy diffusion models: VP schedules, denoisers (analytic GMM, trainable MLP), sampler step functions and the sampling loop."""

from .denoisers import (
    ConditionalGMMDenoiser,
    Denoiser,
    GMMDenoiser,
    MLPDenoiser,
    eps_to_score,
    eps_to_x0,
    x0_to_eps,
)
from .samplers import SAMPLERS, StepInfo, ddim_step, ddpm_step, euler_step, heun_step, sample
from .schedules import VPSchedule, noise_at

__all__ = [
    "VPSchedule",
    "noise_at",
    "Denoiser",
    "GMMDenoiser",
    "ConditionalGMMDenoiser",
    "MLPDenoiser",
    "StepInfo",
    "sample",
    "SAMPLERS",
    "ddim_step",
    "ddpm_step",
    "euler_step",
    "heun_step",
    "eps_to_x0",
    "x0_to_eps",
    "eps_to_score",
]
