"""The local path's store (`vnetlib.store`) on PostgreSQL: same behaviour as on SQLite."""

from __future__ import annotations

import secrets

from vnetlib.store import VNI_MIN, Store


def test_local_store_on_postgresql(postgres_url: str) -> None:
    lab = f"t{secrets.token_hex(2)}"  # the session's database is shared: a lab of our own
    with Store(postgres_url) as store:
        store.add_vnet(f"{lab}-1", f"{lab}n", lab, "<vnet/>")
        store.update_vnet(f"{lab}-1", status="active", embedding={"node_map": {"a": "h1"}})
        assert store.find_vnet(f"{lab}n").embedding == {"node_map": {"a": "h1"}}
        assert store.allocate_vnis(lab, f"{lab}-1", ["l1", "l2"]) == {"l1": VNI_MIN,
                                                                      "l2": VNI_MIN + 1}
    with Store(postgres_url) as store:
        assert [r.id for r in store.vnets(lab)] == [f"{lab}-1"]
        assert store.remove_lab(lab) == [f"{lab}-1"]
        assert store.allocate_vnis(lab, "x", ["l1"], dry_run=True) == {"l1": VNI_MIN}
