"""Benchmark of VNet instantiation on the local lab (`python -m bench.instantiate`)."""
