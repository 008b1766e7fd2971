"""One Click process per substrate host: start, stop, hot swap through its
control socket (``plugins/module_utils/_click.py``, from the installed
collection or the checkout; see ``vnetlib.click._render``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vnetlib.collection import module_utils as load

if TYPE_CHECKING:  # the checkout's file, for the types
    from plugins.module_utils._click import (
        ClickError,
        Control,
        Instance,
        Outcome,
        apply,
        find_click,
    )
else:
    _mod = load("_click")
    ClickError = _mod.ClickError
    Control = _mod.Control
    Instance = _mod.Instance
    Outcome = _mod.Outcome
    apply = _mod.apply
    find_click = _mod.find_click

__all__ = ["ClickError", "Control", "Instance", "Outcome", "apply", "find_click"]
