"""How a PIP reaches its switch, in its substrate description
(``<switch><control>``): parsed, written back, refused with the element
named when a driver's settings are wrong, and handed by the planner to the
hosts with VLAN segments (the ``vnet_vlan`` options); the SSH switch's
``ovs-vsctl`` transaction as the module sends it."""

from __future__ import annotations

import dataclasses

import pytest

from vnetlib.collection import module_utils
from vnetlib.lab.layout import LabConfig, substrate_of
from vnetlib.plan.build import build_plan
from vnetlib.spec import dump_substrate, parse_substrate
from vnetlib.spec.errors import SpecErrors
from vnetlib.spec.model import Interface, LinkEndpoint, VirtualLink, VirtualNode, VNetSpec
from vnetlib.switch.driver import Change, access, trunk

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJjBJ/JDEy02jkB29ej58c36uUAwPCENZd2KXR9se3eE"
DOC = f"""<substrate xmlns="urn:vnet:rdl:1" version="1" name="s1">
  <encapsulation>vlan</encapsulation>
  <switch name="sw" kind="openvswitch">
    <port host="h1"/>
    <control driver="ssh" bridge="vs-s1" address="198.18.1.1" port="2222"
             db="unix:/run/vnet/ovs/s1/db.sock">
      <host-key>{KEY} root@switch</host-key>
    </control>
  </switch>
  <host name="h1" cpu="2" memory="1024" data-address="198.18.1.11"/>
</substrate>
"""


def test_ssh_control_parses_and_round_trips() -> None:
    sub = parse_substrate(DOC)
    assert sub.switch is not None and sub.switch.control is not None
    ctl = sub.switch.control
    assert (ctl.driver, ctl.bridge, ctl.address, ctl.port, ctl.user) == \
        ("ssh", "vs-s1", "198.18.1.1", 2222, "root")
    assert ctl.host_key == f"{KEY} root@switch" and ctl.known_hosts is None
    assert parse_substrate(dump_substrate(sub)) == sub


def test_ovsdb_control_round_trips_without_ssh_settings() -> None:
    sub = parse_substrate(DOC)
    assert sub.switch is not None and sub.switch.control is not None
    ovsdb = dataclasses.replace(sub.switch.control, driver="ovsdb", address=None,
                                host_key=None)
    sub = dataclasses.replace(sub, switch=dataclasses.replace(sub.switch, control=ovsdb))
    text = dump_substrate(sub).decode()
    assert "port=" not in text.split("<control")[1] and "host-key" not in text
    again = parse_substrate(text)
    assert again.switch is not None and again.switch.control == dataclasses.replace(
        ovsdb, port=22)


@pytest.mark.parametrize(("old", "new", "message"), [
    ('address="198.18.1.1" ', "", "control: switch control over SSH has no address"),
    ('address="198.18.1.1"', 'address="198.18.1"', "is not an IP address"),
    ('port="2222"', 'port="2222" known-hosts="/etc/ssh/ssh_known_hosts"',
     "control: switch control over SSH needs exactly one of <host-key> and known-hosts"),
    ('driver="ssh"', 'driver="ovsdb"',
     "control: switch control through OVSDB has SSH settings: address, port, host-key"),
    (KEY, KEY.replace("ssh-ed25519", "ssh-rsa"),
     "control/host-key: switch host key: the key data is not a ssh-rsa key"),
    (KEY, "ssh-ed25519 AAAA", "control/host-key: [facet 'pattern']"),
])
def test_bad_control_is_refused_naming_the_element(old: str, new: str, message: str) -> None:
    with pytest.raises(SpecErrors) as caught:
        parse_substrate(DOC.replace(old, new), "s1.xml")
    text = str(caught.value)
    assert "s1.xml:" in text and "/substrate/switch[@name='sw']/" in text, text
    assert message in text, text


def _two_host_vnet() -> VNetSpec:
    return VNetSpec(name="two", nodes=(VirtualNode("a"), VirtualNode("b"), VirtualNode("c")),
                    links=(VirtualLink("l1", LinkEndpoint("a", Interface("eth0")),
                                       LinkEndpoint("b", Interface("eth0"))),
                           VirtualLink("l2", LinkEndpoint("a", Interface("eth1")),
                                       LinkEndpoint("c", Interface("eth0")))))


def test_the_plan_gives_the_switch_to_hosts_with_vlan_segments() -> None:
    lab = substrate_of(LabConfig(name="lab", hosts=3))
    ctl = parse_substrate(DOC).switch.control  # type: ignore[union-attr]
    assert lab.switch is not None
    sub = dataclasses.replace(lab, encapsulations=("vlan", "vxlan"),
                              switch=dataclasses.replace(lab.switch, control=ctl))
    # l1 crosses h1-h2 (VLAN segments), l2 stays on h1; h3 has only node c's own link
    plan = build_plan(_two_host_vnet(), {"a": "h1", "b": "h2", "c": "h1"}, sub,
                      vnet_id="v1", lab="lab", vnis={"l1": 4100}).to_dict()
    for host in ("h1", "h2"):
        assert plan["hosts"][host]["switch"] == {
            "driver": "ssh", "bridge": "vs-s1", "db": "unix:/run/vnet/ovs/s1/db.sock",
            "switch_host": "198.18.1.1", "switch_port": 2222, "switch_user": "root",
            "switch_host_key": f"{KEY} root@switch", "switch_known_hosts": None}
        assert [v["vlan"] for v in plan["hosts"][host]["vlan"]] == [6]
    local = build_plan(_two_host_vnet(), {"a": "h1", "b": "h1", "c": "h1"}, sub,
                       vnet_id="v1", lab="lab", vnis={}).to_dict()
    assert "switch" not in local["hosts"]["h1"]  # no VLAN segment: nothing to reach
    vxlan = build_plan(_two_host_vnet(), {"a": "h1", "b": "h2", "c": "h1"}, lab,
                       vnet_id="v1", lab="lab", vnis={"l1": 4100}).to_dict()
    assert all("switch" not in h for h in vxlan["hosts"].values())


def test_a_change_set_is_one_quoted_ovs_vsctl_transaction() -> None:
    ssh = module_utils("_ovs_ssh")
    args = ssh.change_args("vs-s1", [Change("set", access("vw1", 5), add=True),
                                     Change("set", trunk("up0", [7, 3])),
                                     Change("remove", access("vw2", 6))])
    assert args == [
        "--", "--may-exist", "add-port", "vs-s1", "vw1", "--", "set", "Port", "vw1",
        "tag=5", "trunks=[]", "vlan_mode=access",
        "--", "--may-exist", "add-port", "vs-s1", "up0", "--", "set", "Port", "up0",
        "tag=[]", "trunks=[3,7]", "vlan_mode=trunk",
        "--", "--if-exists", "del-port", "vs-s1", "vw2"]
    with pytest.raises(ssh.OvsError, match="is not a port or bridge name"):
        ssh.change_args("vs-s1", [Change("remove", access("a;rm -rf /", 5))])
    rows = ('{"data":[[["set",[["uuid","u1"],["uuid","u2"]]]]],"headings":["ports"]}\n'
            '{"data":[[["uuid","u1"],"vw1",5,["set",[]],"access"],'
            '[["uuid","u2"],"up0",["set",[]],["set",[3,7]],"trunk"]],'
            '"headings":["_uuid","name","tag","trunks","vlan_mode"]}\n')
    tables = ssh._tables(rows)
    assert [ssh.port_vlan(r) for r in tables[1]] == [access("vw1", 5), trunk("up0", [3, 7])]
