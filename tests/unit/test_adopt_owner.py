"""`vnet adopt` touches only the operator's own VNets, and only on a substrate
no PIP manages: a real ledger (SQLite under a private VNET_HOME), plans made by
`vnet plan`'s code; nothing here touches a host (adopting only records)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from vnetlib import instantiate
from vnetlib.cli import adopt as adopting
from vnetlib.cli import plan as planfile
from vnetlib.core.records import State
from vnetlib.spec import load_vnet

ROOT = Path(__file__).resolve().parents[2]
FIGURE6 = ROOT / "examples" / "figure6.xml"
SUBSTRATE = "adoptp1"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private VNET_HOME with one unmanaged substrate (the lab's description)."""
    monkeypatch.setenv("VNET_HOME", str(tmp_path / "home"))
    files = tmp_path / "home" / "substrates" / SUBSTRATE
    files.mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "lab-substrate.xml", files / instantiate.SUBSTRATE_FILE)
    (files / instantiate.INVENTORY_FILE).write_text("all: {}\n")
    return files


def write(made: planfile.PlanFile, path: Path) -> Path:
    path.write_text(planfile.dump(made, path))
    return path


def owners() -> dict[str, tuple[str, State]]:
    core = instantiate.local_core(SUBSTRATE)
    try:
        return {s.id: (s.owner, s.state) for s in core.ledger.slivers()}
    finally:
        core.ledger.close()


def test_the_operator_adopts_and_forgets_its_own(home: Path, tmp_path: Path) -> None:
    made = planfile.make(FIGURE6, SUBSTRATE)
    present = write(made, tmp_path / "plan.yml")
    assert adopting.adopt(present).state == "ready"
    assert owners() == {made.vnet: (instantiate.OPERATOR, State.READY)}
    absent = write(replace(made, state="absent"), tmp_path / "absent.yml")
    assert adopting.adopt(absent).state == "forgotten"
    assert owners() == {}


def test_another_owners_entry_is_neither_forgotten_nor_claimed(home: Path,
                                                               tmp_path: Path) -> None:
    """A plan (edited, or old) naming the id of a tenant's sliver."""
    made = planfile.make(FIGURE6, SUBSTRATE)
    core = instantiate.local_core(SUBSTRATE)
    try:
        core.allocate("vnp", "order-1", load_vnet(FIGURE6), sliver_id=made.vnet)
    finally:
        core.ledger.close()
    before = owners()
    assert before == {made.vnet: ("vnp", State.ALLOCATED)}
    for state in ("absent", "present"):
        path = write(replace(made, state=state), tmp_path / f"{state}.yml")
        with pytest.raises(adopting.AdoptRefused, match="not the operator's"):
            adopting.adopt(path)
        assert owners() == before


def test_a_substrate_a_pip_manages_is_refused(home: Path, tmp_path: Path) -> None:
    made = planfile.make(FIGURE6, SUBSTRATE)  # planned before a PIP took it over
    (home / instantiate.MANAGER_FILE).write_text("pip1\n")
    with pytest.raises(ValueError, match="managed by pip1"):
        planfile.make(FIGURE6, SUBSTRATE)
    for state in ("present", "absent"):
        path = write(replace(made, state=state), tmp_path / f"{state}.yml")
        with pytest.raises(adopting.AdoptRefused, match="managed by pip1"):
            adopting.adopt(path)
    assert owners() == {}
