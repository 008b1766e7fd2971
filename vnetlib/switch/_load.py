"""Load ``plugins/module_utils/_ovs.py`` (the single source, since the
vnet_vlan module runs on hosts without vnetlib) from this checkout."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_DIR = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"


def load(name: str) -> ModuleType:
    qual = f"vnetlib.switch.{name}"
    if qual in sys.modules:
        return sys.modules[qual]
    spec = importlib.util.spec_from_file_location(qual, _DIR / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"vnet's OVS support is missing: {_DIR / name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[qual] = mod
    spec.loader.exec_module(mod)
    return mod
