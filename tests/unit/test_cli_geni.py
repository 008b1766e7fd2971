"""`vnet geni rspec|import|validate` as a user runs them (the installed command)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vnetlib.geni import schema
from vnetlib.spec import load_vnet

ROOT = Path(__file__).resolve().parents[2]
FIGURE6 = ROOT / "examples" / "figure6.xml"
SUBSTRATE = ROOT / "examples" / "lab-substrate.xml"
VNET = shutil.which("vnet", path=str(Path(sys.executable).parent)) or "vnet"


def vnet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VNET, *map(str, args)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_figure6_to_rspec_and_back(tmp_path: Path) -> None:
    rspec, rdl = tmp_path / "figure6.rspec", tmp_path / "figure6.xml"
    out = vnet("geni", "rspec", FIGURE6, "--kind", "request", "-o", rspec)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    assert schema.validate_bytes(rspec.read_bytes()) == "request"
    out = vnet("geni", "import", rspec, "-o", rdl)
    assert out.returncode == 0, out.stderr
    assert load_vnet(rdl) == load_vnet(FIGURE6)
    out = vnet("geni", "validate", rspec, "--json")
    assert json.loads(out.stdout) == {"file": str(rspec), "kind": "request", "valid": True}


def test_stdout_without_output_file() -> None:
    out = vnet("geni", "rspec", FIGURE6)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("<?xml") and 'type="request"' in out.stdout


def test_advertisement_of_a_substrate_file() -> None:
    out = vnet("geni", "rspec", SUBSTRATE, "--kind", "advertisement", "--json",
               "--price-per-cpu", "2")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["kind"] == "advertisement"
    assert schema.validate_bytes(doc["document"].encode(), "advertisement") == "advertisement"
    assert 'price-per-cpu="2"' in doc["document"]


@pytest.mark.parametrize("text, message", [
    (b"<rspec", "not well-formed"),
    (b'<rspec xmlns="http://www.geni.net/resources/rspec/3" type="request">'
     b"<node/></rspec>", "client_id"),
])
def test_invalid_rspecs_exit_2_naming_the_problem(tmp_path: Path, text: bytes,
                                                  message: str) -> None:
    bad = tmp_path / "bad.rspec"
    bad.write_bytes(text)
    for verb in ("import", "validate"):
        out = vnet("geni", verb, bad)
        assert out.returncode == 2, (verb, out.stderr)
        assert message in out.stderr and str(bad) in out.stderr


def test_an_advertisement_is_not_a_vnet(tmp_path: Path) -> None:
    ad = tmp_path / "ad.rspec"
    assert vnet("geni", "rspec", SUBSTRATE, "--kind", "advertisement", "-o", ad).returncode == 0
    out = vnet("geni", "import", ad)
    assert out.returncode == 2 and "advertisement" in out.stderr
