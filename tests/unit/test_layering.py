"""The layers stay apart: the players and the PIP core never reach into the lab
tool (a PIP runs on a real substrate too), and the core speaks no HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vnetlib"


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


@pytest.mark.parametrize(("layer", "forbidden"), [
    ("players", ("vnetlib.lab",)),
    ("core", ("vnetlib.lab", "vnetlib.players.server", "vnetlib.players.client",
              "vnetlib.players.pip", "vnetlib.players.vnp", "vnetlib.players.vno")),
])
def test_no_import_across_layers(layer: str, forbidden: tuple[str, ...]) -> None:
    bad = [f"{path.relative_to(PACKAGE)}: {name}"
           for path in sorted((PACKAGE / layer).rglob("*.py"))
           for name in sorted(imports(path)) if name.startswith(forbidden)]
    assert bad == []


def test_direct_path_uses_the_core_not_the_lab() -> None:
    found = imports(PACKAGE / "instantiate.py")
    assert "vnetlib.core.pip" in found
    assert not [n for n in found if n.startswith("vnetlib.lab")]
