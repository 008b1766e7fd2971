"""The lab's layout: substrate description and inventory from its config."""

from __future__ import annotations

import pytest

from vnetlib.lab.layout import LabConfig, inventory_of, substrate_of


def test_substrate_has_hosts_behind_one_switch() -> None:
    sub = substrate_of(LabConfig(name="lab", hosts=3))
    assert [h.name for h in sub.hosts] == ["h1", "h2", "h3"]
    assert [h.data_address for h in sub.hosts] == ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
    assert [h.mgmt_address for h in sub.hosts] == [
        "198.18.128.11",
        "198.18.128.12",
        "198.18.128.13",
    ]
    assert sub.switch is not None
    assert {(link.a, link.b) for link in sub.links} == {("h1", "sw"), ("h2", "sw"), ("h3", "sw")}


def test_inventory_reaches_hosts_through_their_namespaces() -> None:
    inv = inventory_of(LabConfig(name="x1", hosts=2))
    hosts = inv["all"]["children"]["substrate"]["hosts"]
    assert hosts["h2"]["ansible_connection"] == "vnet.infra.netns"
    assert hosts["h2"]["ansible_netns_name"] == "vl-x1-h2"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Lab"}, "lab name 'Lab' is invalid"),
        ({"name": "toolongname"}, "is invalid"),
        ({"hosts": 0}, "1 to 200 hosts"),
        ({"data_network": "10.0.0.0/24"}, "outside 198.18.0.0/15"),
        ({"hosts": 50, "mgmt_network": "198.18.128.0/27"}, "too small"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LabConfig(**kwargs)  # type: ignore[arg-type]
