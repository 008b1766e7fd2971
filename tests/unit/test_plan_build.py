"""The planner: exact plans for small VNets, and its refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vnetlib import naming
from vnetlib.lab.layout import LabConfig, substrate_of
from vnetlib.plan.build import PlanError, build_plan, crossing_links
from vnetlib.plan.model import LinkTask, NodeTask, PortTask, TunnelTask
from vnetlib.spec import load_vnet
from vnetlib.spec.model import (
    Attachment,
    Interface,
    LinkEndpoint,
    VirtualLink,
    VirtualNode,
    VNetSpec,
)
from vnetlib.vm.image import GuestImage

SUBSTRATE = substrate_of(LabConfig(name="lab", hosts=2))


def _spec() -> VNetSpec:
    return VNetSpec(
        name="tiny",
        nodes=(VirtualNode("a"), VirtualNode("b"), VirtualNode("c", forwarding=False)),
        links=(
            VirtualLink(
                "l1",
                LinkEndpoint("a", Interface("eth0", ("198.19.0.1/30",))),
                LinkEndpoint("b", Interface("eth0", ("198.19.0.2/30",))),
                100.0,
            ),
            VirtualLink(
                "l2",
                LinkEndpoint("b", Interface("eth1", ("198.19.0.5/30",))),
                LinkEndpoint("c", Interface("eth0", ("198.19.0.6/30",))),
                50.0,
            ),
        ),
    )


def test_link_within_one_host_is_a_bridge_with_two_ports() -> None:
    plan = build_plan(
        _spec(),
        {"a": "h1", "b": "h1", "c": "h2"},
        SUBSTRATE,
        vnet_id="tiny-1",
        lab="lab",
        vnis={"l2": 5000},
    )
    h1 = plan.host("h1")
    assert h1.nodes == (
        NodeTask("a", "vn-lab-tiny-1-a", "netns", True),
        NodeTask("b", "vn-lab-tiny-1-b", "netns", True),
    )
    assert h1.links[0] == LinkTask(
        link="l1",
        bridge=naming.link_bridge("tiny-1", "l1"),
        ports=(
            PortTask(
                "vn-lab-tiny-1-a",
                "eth0",
                naming.link_port("tiny-1", "l1", "a"),
                ("198.19.0.1/30",),
                1500,
            ),
            PortTask(
                "vn-lab-tiny-1-b",
                "eth0",
                naming.link_port("tiny-1", "l1", "b"),
                ("198.19.0.2/30",),
                1500,
            ),
        ),
        tunnel=None,
        bandwidth_mbps=100.0,
    )


def test_link_across_hosts_is_a_vxlan_segment_on_each_side() -> None:
    plan = build_plan(
        _spec(),
        {"a": "h1", "b": "h1", "c": "h2"},
        SUBSTRATE,
        vnet_id="tiny-1",
        lab="lab",
        vnis={"l2": 5000},
    )
    seg_h1 = plan.host("h1").links[1]
    seg_h2 = plan.host("h2").links[0]
    assert seg_h1.tunnel == TunnelTask(
        "vxlan", naming.link_tunnel("tiny-1", "l2"), 5000, "198.18.0.11", "198.18.0.12", 4789
    )
    assert seg_h2.tunnel == TunnelTask(
        "vxlan", naming.link_tunnel("tiny-1", "l2"), 5000, "198.18.0.12", "198.18.0.11", 4789
    )
    assert [p.netns for p in seg_h1.ports] == ["vn-lab-tiny-1-b"]
    assert [p.netns for p in seg_h2.ports] == ["vn-lab-tiny-1-c"]
    assert seg_h1.ports[0].mtu == seg_h2.ports[0].mtu == 1450
    assert plan.host("h2").nodes == (NodeTask("c", "vn-lab-tiny-1-c", "netns", False),)


def test_plan_is_plain_data_keyed_by_host() -> None:
    plan = build_plan(
        _spec(),
        {"a": "h1", "b": "h2", "c": "h2"},
        SUBSTRATE,
        vnet_id="tiny-1",
        lab="lab",
        vnis={"l1": 4096},
    )
    data = plan.to_dict()
    assert set(data["hosts"]) == {"h1", "h2"}
    assert data["hosts"]["h1"]["links"][0]["tunnel"]["vni"] == 4096
    assert data["hosts"]["h2"]["links"][0]["ports"][0]["addresses"] == ("198.19.0.2/30",)


def test_crossing_links() -> None:
    assert crossing_links(_spec(), {"a": "h1", "b": "h1", "c": "h2"}) == ["l2"]
    assert crossing_links(_spec(), {"a": "h1", "b": "h2", "c": "h1"}) == ["l1", "l2"]


@pytest.mark.parametrize(
    ("node_map", "vnis", "message"),
    [
        ({"a": "h1", "b": "h1"}, {}, "virtual node c has no substrate host"),
        ({"a": "h1", "b": "h1", "c": "h9"}, {}, "mapped to unknown host h9"),
        (
            {"a": "h1", "b": "h1", "c": "h2"},
            {},
            "virtual link l2 crosses hosts but has no VXLAN id",
        ),
    ],
)
def test_plan_refuses_inconsistent_embeddings(
    node_map: dict[str, str], vnis: dict[str, int], message: str
) -> None:
    with pytest.raises(PlanError, match=message):
        build_plan(_spec(), node_map, SUBSTRATE, vnet_id="tiny-1", lab="lab", vnis=vnis)


def test_interface_names_fit_the_kernel_limit() -> None:
    for name in (
        naming.link_bridge("x" * 40, "l" * 20),
        naming.link_tunnel("v", "l"),
        naming.link_port("v" * 40, "l", "n" * 30),
        naming.mgmt_port("abcdef", 200),
        naming.mgmt_bridge("abcdef"),
    ):
        assert len(name) <= naming.IFNAME_MAX


def _partial() -> VNetSpec:
    from vnetlib.spec.model import BoundaryLink

    spec = _spec()
    return VNetSpec(
        name=spec.name,
        nodes=spec.nodes,
        links=spec.links,
        boundary=(
            BoundaryLink(
                "x1",
                LinkEndpoint("c", Interface("eth1", ("198.19.0.9/30",))),
                peer_ref="ref-x1",
                bandwidth_mbps=20.0,
            ),
        ),
    )


def test_boundary_link_is_a_tunnel_to_the_remote_provider() -> None:
    plan = build_plan(
        _partial(),
        {"a": "h1", "b": "h1", "c": "h2"},
        SUBSTRATE,
        vnet_id="tiny-1",
        lab="lab",
        vnis={"l2": 5000},
        boundary={"x1": ("198.18.7.12", 6000, "vxlan")},
    )
    segment = plan.host("h2").links[-1]
    assert segment == LinkTask(
        link="x1",
        bridge=naming.link_bridge("tiny-1", "x1"),
        ports=(
            PortTask(
                "vn-lab-tiny-1-c",
                "eth1",
                naming.link_port("tiny-1", "x1", "c"),
                ("198.19.0.9/30",),
                1450,
            ),
        ),
        tunnel=TunnelTask(
            "vxlan", naming.link_tunnel("tiny-1", "x1"), 6000, "198.18.0.12", "198.18.7.12", 4789
        ),
        bandwidth_mbps=20.0,
    )


def test_boundary_link_not_stitched_yet_is_left_out() -> None:
    plan = build_plan(
        _partial(),
        {"a": "h1", "b": "h1", "c": "h2"},
        SUBSTRATE,
        vnet_id="tiny-1",
        lab="lab",
        vnis={"l2": 5000},
    )
    assert [seg.link for seg in plan.host("h2").links] == ["l2"]


# -- VM nodes ---------------------------------------------------------------------------

VM_SPEC = load_vnet(Path(__file__).resolve().parents[2] / "examples" / "figure6-vm.xml")
IMAGE = GuestImage(Path("/cache/k/vmlinuz"), Path("/cache/k/initrd.gz"), "k", "console=ttyS0")


def _vm_plan(node_states: dict[str, str] | None = None) -> dict:
    node_map = {n.id: "h1" if n.id in ("e1", "r1", "r2") else "h2" for n in VM_SPEC.nodes}
    links = crossing_links(VM_SPEC, node_map)
    return build_plan(VM_SPEC, node_map, SUBSTRATE, vnet_id="v1", lab="lab",
                      vnis={k: 5000 + i for i, k in enumerate(links)},
                      node_states=node_states, image=IMAGE).to_dict()


def test_vm_nodes_are_domains_with_taps_on_the_link_bridges() -> None:
    plan = _vm_plan()
    h1 = plan["hosts"]["h1"]
    assert [n["vnode"] for n in h1["nodes"]] == ["e1"]  # VMs are no namespaces
    domains = {d["vnode"]: d for d in h1["domains"]}
    assert set(domains) == {"r1", "r2"}
    r1 = domains["r1"]
    assert r1["hypervisor"] == "qemu" and r1["memory_mb"] == 128 and r1["vcpus"] == 1
    assert r1["kernel"] == "/cache/k/vmlinuz" and r1["state"] == "running"
    bridges = {k["bridge"] for k in h1["links"]}
    for nic in r1["interfaces"]:
        assert nic["bridge"] in bridges and len(nic["tap"]) <= 15
        assert f"vnet.if={nic['mac']}," in r1["cmdline"]
    assert "vnet.hostname=r1" in r1["cmdline"] and "vnet.forward=1" in r1["cmdline"]
    # r1 (h1) to r3 (h2) is tunnelled: that interface loses the VXLAN overhead
    tunnelled = {k.id for k in VM_SPEC.links} & set(crossing_links(
        VM_SPEC, {n.id: "h1" if n.id in ("e1", "r1", "r2") else "h2" for n in VM_SPEC.nodes}))
    r1_crossing = [k for k in VM_SPEC.links if k.id in tunnelled and "r1" in (k.a.node, k.b.node)]
    assert r1_crossing and r1["cmdline"].count(",mtu=1450") == len(r1_crossing)
    # no veth port of any link goes into a VM
    ports = [p["netns"] for k in h1["links"] for p in k["ports"]]
    assert all(not p.endswith(("-r1", "-r2")) for p in ports)
    spec_ifaces = sum(1 for k in VM_SPEC.links for e in (k.a, k.b) if e.node == "r1")
    assert len(r1["interfaces"]) == spec_ifaces


def test_stopped_and_paused_vms() -> None:
    plan = _vm_plan({"r1": "stopped", "r3": "paused"})
    states = {d["vnode"]: d["state"] for h in plan["hosts"].values() for d in h["domains"]}
    assert states == {"r1": "shutdown", "r2": "running", "r3": "paused", "r4": "running"}


def test_vm_nodes_need_the_image() -> None:
    with pytest.raises(PlanError, match="needs the guest image"):
        build_plan(VM_SPEC, {n.id: "h1" for n in VM_SPEC.nodes}, SUBSTRATE, vnet_id="v1",
                   lab="lab", vnis={})


def _encap_plan(encap: str, vnis: dict[str, int] | None = None,
                vlans: dict[str, int] | None = None) -> dict:
    sub = dataclasses.replace(SUBSTRATE, encapsulations=(encap, "vxlan"))
    return build_plan(_spec(), {"a": "h1", "b": "h1", "c": "h2"}, sub, vnet_id="tiny-1",
                      lab="lab", vnis=vnis or {"l2": 4100}, vlans=vlans).to_dict()


def test_substrate_encapsulation_chooses_the_module_of_crossing_links() -> None:
    vx = _encap_plan("vxlan")["hosts"]["h2"]
    assert vx["links"][0]["tunnel"]["kind"] == "vxlan" and vx["click"] == vx["vlan"] == []
    assert "encapsulation" not in vx["links"][0] and "port" not in vx["links"][0]["tunnel"]

    ck = _encap_plan("click")["hosts"]["h2"]
    seg = ck["links"][0]
    assert seg["tunnel"] is None and seg["bandwidth_mbps"] is None  # Click shapes it
    assert seg["ports"][0]["mtu"] == 1450 and ck["vlan"] == []
    device = naming.link_tunnel("tiny-1", "l2")
    assert ck["click"] == [{"link": "l2", "vni": 4100, "bridge": seg["bridge"], "device": device,
                            "click_device": "ck" + device[2:], "local": "198.18.0.12",
                            "remote": "198.18.0.11", "bandwidth_mbps": 50.0,
                            "latency_ms": None}]

    vl = _encap_plan("vlan")["hosts"]
    h1, h2 = vl["h1"]["vlan"], vl["h2"]["vlan"]
    seg = vl["h2"]["links"][0]
    assert seg["tunnel"] is None and seg["ports"][0]["mtu"] == 1500
    assert seg["bandwidth_mbps"] == 50.0  # the kernel path shapes VLAN links
    assert h1[0]["vlan"] == h2[0]["vlan"] == 4100 - 4096 + 2
    assert h1[0]["port"] != h2[0]["port"]  # both ends are ports of the one switch
    assert all(len(p["port"]) <= 15 for p in h1 + h2)
    # an allocated VLAN id wins over the derived one; the within-host link has no carrier
    assert _encap_plan("vlan", vlans={"l2": 77})["hosts"]["h1"]["vlan"][0]["vlan"] == 77
    assert [x["link"] for x in vl["h1"]["vlan"]] == ["l2"]


def test_no_vlan_id_for_a_tunnel_id_beyond_the_switch() -> None:
    with pytest.raises(PlanError, match="l2: no free VLAN id"):
        _encap_plan("vlan", vnis={"l2": 4096 + 4092})
    assert _encap_plan("vlan", vnis={"l2": 4096 + 4091})["hosts"]["h1"]["vlan"][0]["vlan"] == 4093


def test_unknown_encapsulation_falls_back_to_vxlan_and_boundary_links_stay_vxlan() -> None:
    sub = dataclasses.replace(SUBSTRATE, encapsulations=("gre", "click"))
    plan = build_plan(_partial(), {"a": "h1", "b": "h2", "c": "h2"}, sub, vnet_id="p-1", lab="lab",
                      vnis={"l1": 5000}, boundary={"x1": ("198.18.2.11", 6000, "vxlan")}).to_dict()
    kinds = {t["link"]: t["tunnel"] and t["tunnel"]["kind"] for h in plan["hosts"].values()
             for t in h["links"]}
    assert kinds["x1"] == "vxlan"
    assert {c["link"] for h in plan["hosts"].values() for c in h["click"]} == {"l1"}
    with pytest.raises(PlanError, match="encapsulation 'gre'"):
        build_plan(_spec(), {"a": "h1", "b": "h1", "c": "h2"}, SUBSTRATE, vnet_id="t",
                   lab="lab", vnis={"l2": 4100}, encapsulation="gre")


def test_a_local_link_end_users_join_keeps_its_bridge() -> None:
    """Two local ports become one veth pair in vnet_link unless the segment is
    ``bridged``: a link named by an attachment point needs its bridge."""
    spec = dataclasses.replace(_spec(), attachments=(
        Attachment(node="a", pool="198.19.0.16/28", realm="vno1", link="l1"),))
    where = {"a": "h1", "b": "h1", "c": "h1"}
    plain = build_plan(_spec(), where, SUBSTRATE, vnet_id="tiny-1", lab="lab", vnis={})
    joined = build_plan(spec, where, SUBSTRATE, vnet_id="tiny-1", lab="lab", vnis={})
    segments = {s["link"]: s for s in joined.to_dict()["hosts"]["h1"]["links"]}
    assert segments["l1"]["bridged"] is True
    assert "bridged" not in segments["l2"]
    assert all("bridged" not in s for s in plain.to_dict()["hosts"]["h1"]["links"])
