"""Online virtual network embedding benchmark (``python -m bench.embedding``)."""
