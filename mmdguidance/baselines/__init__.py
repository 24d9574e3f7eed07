"""Baselines MMD guidance is compared with (see docs/benchmark.md)."""

from .doob import DoobOracleDenoiser

__all__ = ["DoobOracleDenoiser"]
