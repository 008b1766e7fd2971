"""The switch drivers' pure parts: want/have plan, OVSDB rows to PortVlan
(through ovsdbapp's Python values and through ovs-vsctl's JSON)."""

from __future__ import annotations

import json

import pytest

from vnetlib.collection import module_utils as load
from vnetlib.switch.driver import OvsError, PortVlan, access, plan, trunk

_ovs = load("_ovs")


@pytest.mark.parametrize(("want", "have", "present", "expected"), [
    ([access("p1", 10)], {}, True, [("set", "p1", True)]),
    ([access("p1", 10)], {"p1": access("p1", 10)}, True, []),
    ([access("p1", 10)], {"p1": access("p1", 11)}, True, [("set", "p1", False)]),
    ([trunk("p1", [3, 2, 3])], {"p1": trunk("p1", [2, 3])}, True, []),
    ([access("p1", 10)], {"p1": PortVlan("p1", "none")}, True, [("set", "p1", False)]),
    ([access("p1", 10)], {"p2": access("p2", 10)}, False, []),
    ([access("p1", 10)], {"p1": access("p1", 99)}, False, [("remove", "p1", False)]),
])
def test_plan(want: list, have: dict, present: bool, expected: list) -> None:
    got = [(c.op, c.port.name, c.add) for c in plan(want, have, present)]
    assert got == expected


@pytest.mark.parametrize("bad", [lambda: access("p", 0), lambda: access("p", 4095),
                                 lambda: trunk("p", []), lambda: PortVlan("p", "access"),
                                 lambda: PortVlan("p", "hybrid")])
def test_bad_ports_refused(bad: object) -> None:
    with pytest.raises(OvsError):
        bad()  # type: ignore[operator]


def test_rows_from_ovsdbapp_values() -> None:
    pv = _ovs._port_vlan
    assert pv({"name": "a", "tag": 5, "trunks": [], "vlan_mode": "access"}) == access("a", 5)
    assert pv({"name": "a", "tag": [], "trunks": [7, 3], "vlan_mode": []}) == trunk("a", [3, 7])
    assert pv({"name": "a", "tag": [], "trunks": [], "vlan_mode": []}) == PortVlan("a", "none")


def test_rows_from_vsctl_json() -> None:
    doc = {"headings": ["_uuid", "name", "tag", "trunks", "vlan_mode"], "data": [
        [["uuid", "u1"], "a", 101, ["set", []], "access"],
        [["uuid", "u2"], "b", ["set", []], 102, "trunk"],
        [["uuid", "u3"], "c", ["set", []], ["set", [5, 4]], ["set", []]],
        [["uuid", "u4"], "d", ["set", []], ["set", []], ["set", []]],
    ]}
    ssh = load("_ovs_ssh")
    (rows,) = ssh._tables(json.dumps(doc))
    assert rows[0]["_uuid"] == "u1"
    assert [ssh.port_vlan(r) for r in rows] == [
        access("a", 101), trunk("b", [102]), trunk("c", [4, 5]), PortVlan("d", "none")]
    with pytest.raises(OvsError):
        ssh._name("a b; rm -rf /")
