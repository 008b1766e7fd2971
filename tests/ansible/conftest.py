"""Fixtures for the vnet.infra collection tests.

The repository root is the collection root, so the unit tests import the
collection as ``ansible_collections.vnet.infra`` through a symlink tree in a
temporary directory.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _collection_tree() -> Path:
    base = Path(tempfile.mkdtemp(prefix="vnet-coll-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    (base / "ansible_collections" / "vnet").mkdir(parents=True)
    (base / "ansible_collections" / "vnet" / "infra").symlink_to(ROOT)
    return base


try:
    import ansible_collections.vnet.infra.plugins.module_utils._iproute  # noqa: F401
except ImportError:
    sys.path.insert(0, str(_collection_tree()))
    for name in [
        m for m in sys.modules if m == "ansible_collections" or m.startswith("ansible_collections.")
    ]:
        del sys.modules[name]
