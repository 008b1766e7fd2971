"""From a VNet spec and its embedding to a deployment plan (pure)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Collection, Mapping

from vnetlib import naming
from vnetlib.plan.model import DeploymentPlan, HostPlan, LinkTask, NodeTask, PortTask, TunnelTask
from vnetlib.spec.model import LinkEndpoint, Substrate, VirtualLink, VNetSpec

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50
SUBSTRATE_MTU = 1500


class PlanError(ValueError):
    """The embedding does not fit the spec or the substrate."""


def _port(lab: str, vnet_id: str, link: VirtualLink, end: LinkEndpoint, mtu: int) -> PortTask:
    return PortTask(
        netns=naming.vnode_netns(lab, vnet_id, end.node),
        ifname=end.interface.name,
        peer=naming.link_port(vnet_id, link.id, end.node),
        addresses=end.interface.addresses,
        mtu=mtu,
    )


def _data_address(substrate: Substrate, host: str) -> str:
    address = substrate.host(host).data_address
    if not address:
        raise PlanError(f"substrate host {host} has no data address for tunnels")
    return address.split("/")[0]


def build_plan(
    spec: VNetSpec,
    node_map: Mapping[str, str],
    substrate: Substrate,
    *,
    vnet_id: str,
    lab: str,
    vnis: Mapping[str, int],
    boundary: Mapping[str, tuple[str, int]] | None = None,
    stopped: Collection[str] = (),
) -> DeploymentPlan:
    """Lay out every virtual node and link segment on the hosts of `node_map`.

    A link whose ends share a host is a bridge with two ports; otherwise each
    host gets a bridge with its port and a VXLAN tunnel to the other host, and
    the virtual interfaces lose the encapsulation overhead from their MTU.

    `boundary` maps the id of a boundary link (one end here, the other at
    another provider) to the (remote data address, VNI) agreed by stitching;
    its segment is a bridge with the local port and a VXLAN tunnel to the
    remote address. Boundary links not in `boundary` (not stitched yet) are
    left out.

    The virtual nodes in `stopped` (by id) are down: their ends of every link.
    """
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
        nodes[node_map[node.id]].append(
            NodeTask(
                vnode=node.id,
                netns=naming.vnode_netns(lab, vnet_id, node.id),
                driver=node.kind.value,
                forwarding=node.forwarding,
            )
        )
    for link in spec.links:
        host_a, host_b = node_map[link.a.node], node_map[link.b.node]
        bridge = naming.link_bridge(vnet_id, link.id)
        if host_a == host_b:
            ports = (
                _port(lab, vnet_id, link, link.a, SUBSTRATE_MTU),
                _port(lab, vnet_id, link, link.b, SUBSTRATE_MTU),
            )
            links[host_a].append(LinkTask(link.id, bridge, ports, None, link.bandwidth_mbps))
            continue
        if link.id not in vnis:
            raise PlanError(f"virtual link {link.id} crosses hosts but has no VXLAN id")
        mtu = SUBSTRATE_MTU - VXLAN_OVERHEAD
        for here, there, end in ((host_a, host_b, link.a), (host_b, host_a, link.b)):
            tunnel = TunnelTask(
                kind="vxlan",
                device=naming.link_tunnel(vnet_id, link.id),
                vni=vnis[link.id],
                local=_data_address(substrate, here),
                remote=_data_address(substrate, there),
                dstport=VXLAN_PORT,
            )
            port = _port(lab, vnet_id, link, end, mtu)
            links[here].append(LinkTask(link.id, bridge, (port,), tunnel, link.bandwidth_mbps))

    mtu = SUBSTRATE_MTU - VXLAN_OVERHEAD
    for blink in spec.boundary:
        if boundary is None or blink.id not in boundary:
            continue
        remote, vni = boundary[blink.id]
        here = node_map[blink.endpoint.node]
        tunnel = TunnelTask(
            kind="vxlan",
            device=naming.link_tunnel(vnet_id, blink.id),
            vni=vni,
            local=_data_address(substrate, here),
            remote=remote,
            dstport=VXLAN_PORT,
        )
        port = PortTask(
            netns=naming.vnode_netns(lab, vnet_id, blink.endpoint.node),
            ifname=blink.endpoint.interface.name,
            peer=naming.link_port(vnet_id, blink.id, blink.endpoint.node),
            addresses=blink.endpoint.interface.addresses,
            mtu=mtu,
        )
        links[here].append(
            LinkTask(blink.id, naming.link_bridge(vnet_id, blink.id), (port,), tunnel,
                     blink.bandwidth_mbps)
        )

    if stopped:
        down = {naming.vnode_netns(lab, vnet_id, n) for n in stopped}
        for host, tasks in links.items():
            links[host] = [dataclasses.replace(t, ports=tuple(
                dataclasses.replace(p, up=p.netns not in down) for p in t.ports)) for t in tasks]
    used = sorted(set(nodes) | set(links))
    return DeploymentPlan(
        vnet=vnet_id,
        hosts=tuple(HostPlan(host=h, nodes=tuple(nodes[h]), links=tuple(links[h])) for h in used),
    )


def crossing_links(spec: VNetSpec, node_map: Mapping[str, str]) -> list[str]:
    """The links whose ends sit on different hosts: they need a tunnel id."""
    return [k.id for k in spec.links if node_map[k.a.node] != node_map[k.b.node]]
