"""Embedding algorithms; each module exposes ``NAME`` and ``embed``."""
