"""The stdlib-only half of vnet's Click support, shared with the Ansible
collection: ``plugins/module_utils/_click_config.py`` (configurations) and
``_click.py`` (the process, its control socket, its devices), loaded by
:func:`vnetlib.collection.module_utils`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vnetlib.collection import module_utils as load

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
           "render"]
