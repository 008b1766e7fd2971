"""Generated VNets for the players' benchmark: a ring of N nodes with a chord
every third node, cut into P contiguous blocks each pinned to one PIP's
location, so that exactly P links cross PIPs (none when P = 1)."""

from __future__ import annotations

import netaddr

from vnetlib.spec.model import (
    Interface,
    LinkEndpoint,
    NodeKind,
    VirtualLink,
    VirtualNode,
    VNetSpec,
)

LINK_SPACE = netaddr.IPNetwork("198.19.0.0/16")


def ring_vnet(name: str, nodes: int, locations: list[str], cpu: float = 0.1) -> VNetSpec:
    if nodes < 2:
        raise ValueError("a ring needs two nodes")
    block = -(-nodes // len(locations))
    ids = [f"n{i}" for i in range(nodes)]
    vnodes = tuple(
        VirtualNode(
            id=ids[i], cpu=cpu, memory_mb=16, kind=NodeKind.NETNS, location=locations[i // block]
        )
        for i in range(nodes)
    )
    pairs = [(i, (i + 1) % nodes) for i in range(nodes if nodes > 2 else 1)]
    pairs += [(i, i + 2) for i in range(0, nodes - 2, 3) if i // block == (i + 2) // block]
    subnets = LINK_SPACE.subnet(30)
    used: dict[int, int] = {}
    links = []
    for k, (a, b) in enumerate(pairs, start=1):
        net = next(subnets)
        ends = []
        for end, host in ((a, net.network + 1), (b, net.network + 2)):
            ifname = f"eth{used.get(end, 0)}"
            used[end] = used.get(end, 0) + 1
            ends.append(LinkEndpoint(ids[end], Interface(ifname, (f"{host}/30",))))
        links.append(VirtualLink(f"l{k}", ends[0], ends[1], bandwidth_mbps=10.0))
    return VNetSpec(name=name, nodes=vnodes, links=tuple(links))
