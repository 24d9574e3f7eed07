"""Ratio benchmarks: ``python -m benchmarks [names] [--quick]`` (each module has ``main(argv)``)."""
