"""The stdlib-only half of vnet's Click support, shared with the Ansible
collection: ``plugins/module_utils/_click_config.py`` (configurations) and
``_click.py`` (the process, its control socket, its devices) are the single
source, since the module runs on hosts without vnetlib; vnetlib loads those
files from the checkout it is installed from (editable install, as
scripts/install.sh does)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_DIR = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"


def load(name: str) -> ModuleType:
    qual = f"vnetlib.click.{name}"
    if qual in sys.modules:
        return sys.modules[qual]
    spec = importlib.util.spec_from_file_location(qual, _DIR / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"vnet's Click support is missing: {_DIR / name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[qual] = mod
    spec.loader.exec_module(mod)
    return mod


_mod = load("_click_config")
CLICK_PORT: int = _mod.CLICK_PORT
OVERHEAD: int = _mod.OVERHEAD
ClickConfigError = _mod.ClickConfigError
ClickLink = _mod.ClickLink
check = _mod.check
click_device = _mod.click_device
render = _mod.render
