"""Benchmark of VM virtual nodes (`python -m bench.vms`)."""
