"""The state store: records, lookups by id or name, VXLAN id allocation."""

from __future__ import annotations

from pathlib import Path

import pytest

from vnetlib.store import VNI_MIN, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.db")


def test_records_round_trip(store: Store) -> None:
    store.add_vnet("n-1", "n", "lab", "<vnet/>")
    store.update_vnet(
        "n-1", status="active", embedding={"node_map": {"a": "h1"}}, timings={"parse": 0.1}
    )
    record = store.find_vnet("n-1")
    assert (record.status, record.embedding, record.timings) == (
        "active",
        {"node_map": {"a": "h1"}},
        {"parse": 0.1},
    )
    assert store.find_vnet("n").id == "n-1"


def test_ambiguous_and_unknown_names(store: Store) -> None:
    store.add_vnet("n-1", "n", "lab", "<vnet/>")
    store.add_vnet("n-2", "n", "lab", "<vnet/>")
    with pytest.raises(LookupError, match="several VNets are named 'n'"):
        store.find_vnet("n")
    with pytest.raises(LookupError, match="no VNet with id or name 'x'"):
        store.find_vnet("x")


def test_vnis_are_unique_per_lab_and_freed_with_their_vnet(store: Store) -> None:
    store.add_vnet("a", "a", "lab", "<vnet/>")
    store.add_vnet("b", "b", "lab", "<vnet/>")
    first = store.allocate_vnis("lab", "a", ["l1", "l2"])
    assert first == {"l1": VNI_MIN, "l2": VNI_MIN + 1}
    assert store.allocate_vnis("lab", "b", ["l1"], dry_run=True) == {"l1": VNI_MIN + 2}
    assert store.allocate_vnis("lab", "b", ["l1"]) == {"l1": VNI_MIN + 2}
    assert store.allocate_vnis("other", "c", ["l1"], dry_run=True) == {"l1": VNI_MIN}
    store.remove_vnet("a")
    assert store.allocate_vnis("lab", "b", ["l9"], dry_run=True) == {"l9": VNI_MIN}


def test_state_survives_reopening(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as s:
        s.add_vnet("a", "a", "lab", "<vnet/>")
    with Store(tmp_path / "s.db") as s:
        assert [r.id for r in s.vnets("lab")] == ["a"]
        assert s.remove_lab("lab") == ["a"]
        assert s.vnets() == []
