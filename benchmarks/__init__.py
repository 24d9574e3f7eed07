"""Timing benchmarks (ratios): ``python -m benchmarks [NAME ...] [--quick]``; see ``benchmarks/__main__.py``."""
