"""Migration benchmark (issue #13): `python -m bench.migrate`."""
