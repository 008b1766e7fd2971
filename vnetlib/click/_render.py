"""The stdlib-only half of vnet's Click support, shared with the Ansible
collection: ``plugins/module_utils/_click_config.py`` (configurations) and
``_click.py`` (the process, its control socket, its devices) are the single
source, since the module runs them on hosts without vnetlib.

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
from typing import TYPE_CHECKING

PACKAGE = "ansible_collections.vnet.infra.plugins.module_utils"
_DIR = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"


def load(name: str) -> ModuleType:
    """The collection's module_utils module `name` (``_click_config``, ``_click``)."""
    try:
        return importlib.import_module(f"{PACKAGE}.{name}")
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not (missing == f"{PACKAGE}.{name}" or PACKAGE.startswith(missing + ".")
                or missing == PACKAGE):
            raise  # the collection is there, something it imports is not
    qual = f"vnetlib.click.{name}"
    if qual in sys.modules:
        return sys.modules[qual]
    spec = importlib.util.spec_from_file_location(qual, _DIR / f"{name}.py")
    if spec is None or spec.loader is None or not (_DIR / f"{name}.py").is_file():
        raise ImportError(f"vnet's Click support is missing: neither {PACKAGE}.{name} "
                          f"nor {_DIR / name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[qual] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[qual]
        raise
    return mod


if TYPE_CHECKING:  # the checkout's file, for the types (mypy runs from the checkout)
    from plugins.module_utils._click_config import (
        CLICK_PORT,
        OVERHEAD,
        ClickConfigError,
        ClickLink,
        check,
        click_device,
        render,
    )
else:
    _mod = load("_click_config")
    CLICK_PORT = _mod.CLICK_PORT
    OVERHEAD = _mod.OVERHEAD
    ClickConfigError = _mod.ClickConfigError
    ClickLink = _mod.ClickLink
    check = _mod.check
    click_device = _mod.click_device
    render = _mod.render

__all__ = ["CLICK_PORT", "OVERHEAD", "ClickConfigError", "ClickLink", "check", "click_device",
           "load", "render"]
