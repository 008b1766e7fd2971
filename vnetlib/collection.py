"""The Ansible collection's ``plugins/module_utils`` modules that vnetlib
shares (Click, Open vSwitch): they are the single source, since the modules
run them on hosts without vnetlib.

Where they are found: a wheel installs the collection as the Python package
``ansible_collections.vnet.infra`` next to vnetlib, so they are imported from
there; an editable install (scripts/install.sh) leaves the collection out of
the Python path, so they are loaded from the checkout vnetlib runs from.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "ansible_collections.vnet.infra.plugins.module_utils"
_DIR = Path(__file__).resolve().parents[1] / "plugins" / "module_utils"


def module_utils(name: str) -> ModuleType:
    """The collection's module_utils module `name` (``_click``, ``_ovs``...)."""
    try:
        return importlib.import_module(f"{PACKAGE}.{name}")
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not (missing == f"{PACKAGE}.{name}" or PACKAGE.startswith(missing + ".")
                or missing == PACKAGE):
            raise  # the collection is there, something it imports is not
    qual = f"vnetlib.collection.{name}"
    if qual in sys.modules:
        return sys.modules[qual]
    path = _DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(qual, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ImportError(f"vnet's collection is missing: neither {PACKAGE}.{name} nor {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[qual] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[qual]
        raise
    return mod
