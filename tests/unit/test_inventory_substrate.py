"""The inventory plugin vnet.infra.substrate names lab host namespaces with
vnetlib.naming when vnetlib is importable, and with its own copy otherwise;
the copy must give the same names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from vnetlib import naming

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "inventory" / "substrate.py"
pytest.importorskip("ansible.plugins.inventory")


def load_plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vnet_inventory_substrate", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_uses_vnetlib_naming_when_importable() -> None:
    assert load_plugin()._netns is naming.host_netns


def test_the_fallback_copy_agrees_with_vnetlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vnetlib.naming", None)  # import fails: ImportError
    plugin = load_plugin()
    assert plugin._netns is plugin._host_netns_copy
    monkeypatch.undo()
    for lab, host in (("lab", "h1"), ("labp1", "h3"), ("solop2", "berlin-7"), ("a", "x_y")):
        assert plugin._netns(lab, host) == naming.host_netns(lab, host)
