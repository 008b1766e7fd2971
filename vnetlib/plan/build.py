"""From a VNet spec and its embedding to a deployment plan (pure)."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping

from vnetlib import naming
from vnetlib.plan.model import (
    ENCAPSULATIONS,
    DeploymentPlan,
    DomainNic,
    DomainTask,
    HostPlan,
    LinkTask,
    NodeTask,
    PortTask,
    SwitchTask,
    TunnelTask,
)
from vnetlib.spec.model import ConsoleKind, LinkEndpoint, Substrate, VNetSpec
from vnetlib.vm.image import GuestImage, kernel_cmdline, mac_for

RUNNING = "running"
DOMAIN_STATES = {"running": "running", "stopped": "shutdown", "paused": "paused"}

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50
SUBSTRATE_MTU = 1500
CLICK_PORT = 47900  # plugins/module_utils/_click_config.CLICK_PORT
VLAN_MIN, VLAN_MAX = 2, 4093  # 1 and 4094 (parking) are reserved: vnetlib.switch.daemon
VNI_BASE = 4096  # vnetlib.core.ledger.VNI_MIN
# What each encapsulation takes from a 1500-byte substrate frame: VXLAN's and
# Click's (a VXLAN-format header in UDP) 50 bytes; a VLAN tag is added by the
# switch inside its own frames, so the node keeps the full 1500.
OVERHEAD = {"vxlan": VXLAN_OVERHEAD, "click": VXLAN_OVERHEAD, "vlan": 0}


class PlanError(ValueError):
    """The embedding does not fit the spec or the substrate."""


def _data_address(substrate: Substrate, host: str) -> str:
    address = substrate.host(host).data_address
    if not address:
        raise PlanError(f"substrate host {host} has no data address for tunnels")
    return address.split("/")[0]


def encapsulation_of(substrate: Substrate) -> str:
    """The encapsulation of the substrate's own crossing links: the first one
    its description lists that vnet can deploy (VXLAN if none)."""
    return next((e for e in substrate.encapsulations if e in ENCAPSULATIONS), "vxlan")


def switch_of(substrate: Substrate) -> SwitchTask | None:
    """How hosts reach the substrate's switch, from its description's
    ``<switch><control>`` (None: the inventory's ``vnet_ovs_*``, OVSDB)."""
    ctl = substrate.switch.control if substrate.switch is not None else None
    if ctl is None:
        return None
    return SwitchTask(driver=ctl.driver, bridge=ctl.bridge, db=ctl.db, switch_host=ctl.address,
                      switch_port=ctl.port, switch_user=ctl.user,
                      switch_host_key=ctl.host_key, switch_known_hosts=ctl.known_hosts)


def vlan_of(link: str, vni: int, vlans: Mapping[str, int] | None) -> int:
    """A crossing link's VLAN id: the one allocated for it (`vlans`), else one
    derived from its tunnel id, which the ledger keeps unique on the substrate
    while in use and hands out densely from 4096 (so VNI 4096 is VLAN 2)."""
    vid = vlans[link] if vlans is not None and link in vlans else vni - VNI_BASE + VLAN_MIN
    if not VLAN_MIN <= vid <= VLAN_MAX:
        raise PlanError(f"virtual link {link}: no free VLAN id (tunnel id {vni} is beyond "
                        f"the {VLAN_MAX - VLAN_MIN + 1} VLAN ids of the switch)")
    return vid


BOUNDARY_CARRIERS = ("vxlan", "click")


def build_plan(
    spec: VNetSpec,
    node_map: Mapping[str, str],
    substrate: Substrate,
    *,
    vnet_id: str,
    lab: str,
    vnis: Mapping[str, int],
    boundary: Mapping[str, tuple[str, int, str]] | None = None,
    node_states: Mapping[str, str] | None = None,
    image: GuestImage | None = None,
    pool_domains: Mapping[str, str] | None = None,
    encapsulation: str | None = None,
    vlans: Mapping[str, int] | None = None,
) -> DeploymentPlan:
    """Lay out every virtual node and link segment on the hosts of `node_map`.

    A link whose ends share a host is a bridge with two ports; otherwise each
    host gets a bridge with its port and a VXLAN tunnel to the other host, and
    the virtual interfaces lose the encapsulation overhead from their MTU.

    `boundary` maps the id of a boundary link (one end here, the other at
    another provider) to the (remote address, VNI, carrier) agreed by
    stitching (``records.Stitch``'s address, vni, encapsulation); its segment
    is a bridge with the local port and a tunnel to the remote address in the
    agreed carrier (VXLAN or Click).
    Boundary links not in `boundary` (not stitched yet) are left out.

    `node_states` maps nodes that are not running to `stopped` or `paused`:
    their ends of every link are down (a VM is also shut down or paused).

    VM nodes (kind qemu or xen) are libvirt domains booting `image`; their
    ends of links are taps on the link's bridge, configured by the guest from
    its kernel command line. `pool_domains` maps VM nodes that took a pool VM to
    that VM's domain (libvirt cannot rename a running domain); their tasks
    say `pool`, so the module takes the VM over instead of booting one.

    Crossing links use `encapsulation` (default: the substrate's, see
    :func:`encapsulation_of`): ``vxlan``, ``click`` (the same tunnel id, in
    Click's UDP port) or ``vlan`` (an access port on the substrate switch's
    VLAN `vlans[link]`, or one derived from the tunnel id). Boundary links
    use the carrier agreed with the peer, whatever the substrate's.
    """
    encap = encapsulation or encapsulation_of(substrate)
    if encap not in ENCAPSULATIONS:
        raise PlanError(f"encapsulation {encap!r} is not one of {', '.join(ENCAPSULATIONS)}")
    states = dict(node_states or {})
    vms = {n.id: n for n in spec.nodes if n.kind.is_vm}
    if vms and image is None:
        raise PlanError(f"VM node {min(vms)} needs the guest image, and none was given")
    nics: dict[str, list[tuple[str, LinkEndpoint, str, int]]] = defaultdict(list)

    def ends(link_id: str, bridge: str, *pairs: tuple[LinkEndpoint, int]) -> tuple[PortTask, ...]:
        """The veth ports of the netns ends; VM ends are noted as the domain's NICs."""
        out = []
        for end, mtu in pairs:
            if end.node in vms:
                nics[end.node].append((link_id, end, bridge, mtu))
            else:
                out.append(PortTask(
                    netns=naming.vnode_netns(lab, vnet_id, end.node),
                    ifname=end.interface.name,
                    peer=naming.link_port(vnet_id, link_id, end.node),
                    addresses=end.interface.addresses, mtu=mtu))
        return tuple(out)

    hosts = {h.name for h in substrate.hosts}
    for node in spec.nodes:
        host = node_map.get(node.id)
        if host is None:
            raise PlanError(f"virtual node {node.id} has no substrate host in the embedding")
        if host not in hosts:
            raise PlanError(f"virtual node {node.id} is mapped to unknown host {host}")

    nodes: dict[str, list[NodeTask]] = defaultdict(list)
    links: dict[str, list[LinkTask]] = defaultdict(list)
    for node in spec.nodes:
        if node.id in vms:
            continue
        nodes[node_map[node.id]].append(
            NodeTask(
                vnode=node.id,
                netns=naming.vnode_netns(lab, vnet_id, node.id),
                driver=node.kind.value,
                forwarding=node.forwarding,
            )
        )
    attached = {a.link for a in spec.attachments if a.link}
    for link in spec.links:
        host_a, host_b = node_map[link.a.node], node_map[link.b.node]
        bridge = naming.link_bridge(vnet_id, link.id)
        if host_a == host_b:
            ports = ends(link.id, bridge, (link.a, SUBSTRATE_MTU), (link.b, SUBSTRATE_MTU))
            links[host_a].append(LinkTask(link.id, bridge, ports, None, link.bandwidth_mbps,
                                          latency_ms=link.latency_ms,
                                          bridged=link.id in attached))
            continue
        if link.id not in vnis:
            raise PlanError(f"virtual link {link.id} crosses hosts but has no VXLAN id")
        mtu = SUBSTRATE_MTU - OVERHEAD[encap]
        vni = vnis[link.id] if encap != "vlan" else vlan_of(link.id, vnis[link.id], vlans)
        for here, there, end in ((host_a, host_b, link.a), (host_b, host_a, link.b)):
            tunnel = TunnelTask(
                kind=encap,
                device=naming.link_tunnel(vnet_id, link.id),
                vni=vni,
                local=_data_address(substrate, here),
                remote=_data_address(substrate, there),
                dstport=CLICK_PORT if encap == "click" else VXLAN_PORT,
                port=f"vw{naming.short_hash(vnet_id, link.id, here)}" if encap == "vlan" else None,
            )
            links[here].append(LinkTask(link.id, bridge, ends(link.id, bridge, (end, mtu)),
                                        tunnel, link.bandwidth_mbps, encap, link.latency_ms))

    mtu = SUBSTRATE_MTU - VXLAN_OVERHEAD
    for blink in spec.boundary:
        if boundary is None or blink.id not in boundary:
            continue
        remote, vni, carrier = boundary[blink.id]
        if carrier not in BOUNDARY_CARRIERS:
            raise PlanError(f"boundary link {blink.id}: encapsulation {carrier!r} cannot "
                            "carry a link between providers")
        here = node_map[blink.endpoint.node]
        tunnel = TunnelTask(
            kind=carrier,
            device=naming.link_tunnel(vnet_id, blink.id),
            vni=vni,
            local=_data_address(substrate, here),
            remote=remote,
            dstport=CLICK_PORT if carrier == "click" else VXLAN_PORT,
        )
        bridge = naming.link_bridge(vnet_id, blink.id)
        links[here].append(LinkTask(blink.id, bridge, ends(blink.id, bridge,
                                                           (blink.endpoint, mtu)),
                                    tunnel, blink.bandwidth_mbps, carrier, blink.latency_ms))

    if states:
        down = {naming.vnode_netns(lab, vnet_id, n) for n, st in states.items() if st != RUNNING}
        for host, tasks in links.items():
            links[host] = [dataclasses.replace(t, ports=tuple(
                dataclasses.replace(p, up=p.netns not in down) for p in t.ports)) for t in tasks]
    domains: dict[str, list[DomainTask]] = defaultdict(list)
    for node_id, node in sorted(vms.items()):
        assert image is not None
        mine = nics[node_id]
        try:
            macs = [mac_for(vnet_id, node_id, end.interface.name) for _, end, _, _ in mine]
            cmdline = kernel_cmdline(
                image, node_id,
                [(mac, end.interface.addresses) for mac, (_, end, _, _) in zip(macs, mine,
                                                                               strict=True)],
                node.forwarding,
                mtus={mac: mtu for mac, (_, _, _, mtu) in zip(macs, mine, strict=True)
                      if mtu != SUBSTRATE_MTU})
        except ValueError as exc:
            raise PlanError(f"virtual node {node_id}: {exc}") from exc
        domains[node_map[node_id]].append(DomainTask(
            vnode=node_id,
            name=(pool_domains or {}).get(node_id) or naming.vnode_netns(lab, vnet_id, node_id),
            hypervisor=node.kind.value, vcpus=max(1, math.ceil(node.cpu)),
            memory_mb=node.memory_mb, kernel=str(image.kernel), initrd=str(image.initrd),
            cmdline=cmdline,
            interfaces=tuple(DomainNic(naming.vm_tap(vnet_id, link_id, node_id),
                                       mac_for(vnet_id, node_id, end.interface.name), bridge)
                             for link_id, end, bridge, _ in mine),
            state=DOMAIN_STATES[states.get(node_id, RUNNING)],
            vnc=ConsoleKind.VNC in node.consoles,
            pool=node_id in (pool_domains or {})))
    used = sorted(set(nodes) | set(links) | set(domains))
    switch = switch_of(substrate)
    return DeploymentPlan(
        vnet=vnet_id,
        hosts=tuple(HostPlan(host=h, nodes=tuple(nodes[h]), links=tuple(links[h]),
                             domains=tuple(domains[h]),
                             switch=switch if any(t.encapsulation == "vlan" and t.tunnel
                                                  for t in links[h]) else None)
                    for h in used),
    )


def crossing_links(spec: VNetSpec, node_map: Mapping[str, str]) -> list[str]:
    """The links whose ends sit on different hosts: they need a tunnel id."""
    return [k.id for k in spec.links if node_map[k.a.node] != node_map[k.b.node]]
