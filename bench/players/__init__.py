"""Benchmark of VNet instantiation through the players (`python -m bench.players`)."""
