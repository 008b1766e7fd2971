"""Moving a virtual node between providers (issue #13, item 2): the pure parts.

At a PIP, a sliver is *reshaped*: its customer hands it a new partial
description (a node added or taken away, links that became boundary links
or inner ones); `extend_embedding` keeps every node that stays where it is
and places only what is new. At the VNP, `reassign` and `replan` give the
order's parts after one node changed provider: the same partition as an
instantiation would make (`negotiation.partition`), so the refs of links the
move does not touch stay what they were and only the moved node's links are
stitched again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import networkx as nx

from vnetlib.core.records import Embedding, Flow
from vnetlib.embedding.multipip import PipSplit
from vnetlib.migrate.place import CannotMove, route
from vnetlib.players.negotiation import Part, partition, stitch_ref
from vnetlib.spec.model import Substrate, VirtualNode, VNetSpec

# -- the PIP's side ----------------------------------------------------------------------


def pick_host(substrate: Substrate, residual: Substrate, vnode: VirtualNode, *,
              drained: Collection[str] = (), location: str | None = None,
              avoid: Collection[str] = ()) -> str:
    """The host with the most CPU left that takes `vnode` (its kind, CPU and
    memory), at `location` if given, not drained, not in `avoid`."""
    left = {h.name: h for h in residual.hosts}
    fits = [h for h in substrate.hosts
            if h.name not in drained and h.name not in avoid
            and (location is None or h.location == location)
            and vnode.kind in h.node_kinds
            and left[h.name].cpu + 1e-9 >= vnode.cpu
            and left[h.name].memory_mb >= vnode.memory_mb]
    if not fits:
        where = f" at {location}" if location else ""
        raise CannotMove(f"no host{where} can take node {vnode.id}")
    return max(fits, key=lambda h: (left[h.name].cpu, h.name)).name


def extend_embedding(substrate: Substrate, residual: Substrate, spec: VNetSpec,
                     embedding: Embedding, *, drained: Collection[str] = ()) -> Embedding:
    """The embedding of `spec` that keeps every node of `embedding` it still
    has where it is, places the new ones (at their location) and routes the
    links that are new or whose ends moved; links and nodes `spec` no longer
    has are dropped. A kept node on a drained host is re-placed when another
    host can take it (the PIP asked its customer for that: `<evict
    scope="host">`). `residual` counts the sliver as it stands (what it gives
    up is not counted as free: a reshape never needs more than it had plus
    what it adds)."""
    left = {h.name: h for h in residual.hosts}
    node_map: dict[str, str] = {}
    hosts = {h.name: h for h in substrate.hosts}
    for node in spec.nodes:
        was = host = embedding.node_map.get(node.id)
        if host is not None and node.location and hosts[host].location != node.location:
            host = None  # its customer moved it to another location of this substrate
        if host is not None and host in drained:
            with contextlib.suppress(CannotMove):  # else it stays where it is
                host = pick_host(substrate, residual, node, drained=drained,
                                 location=node.location or None)
        if host is None:
            host = pick_host(substrate, residual, node, drained=drained,
                             location=node.location or None)
        if host != was:
            h = left[host]
            left[host] = replace(h, cpu=h.cpu - node.cpu, memory_mb=h.memory_mb - node.memory_mb)
            residual = replace(residual, hosts=tuple(left.values()))
        node_map[node.id] = host
    graph = nx.Graph()
    for sl in residual.links:
        graph.add_edge(sl.a, sl.b, bw=sl.bandwidth_mbps)
    link_map: dict[str, tuple[Flow, ...]] = {}
    for k in spec.links:
        here, there = node_map[k.a.node], node_map[k.b.node]
        kept = embedding.link_map.get(k.id)
        if kept and kept[0].path[0] in (here, there) and kept[0].path[-1] in (here, there):
            link_map[k.id] = kept
            continue
        link_map[k.id] = route(graph, here, there, k.id, k.bandwidth_mbps)
    return Embedding(node_map, link_map, embedding.algorithm)


# -- the VNP's side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Site:
    provider: str
    location: str


def assignment_of(parts: Sequence[Mapping[str, Any]],
                  specs: Mapping[str, VNetSpec]) -> dict[str, Site]:
    """Node -> (provider, location) as an order's stored parts have them
    (`specs`: each part's partial description, by sliver name)."""
    return {n.id: Site(p["provider"], n.location or "")
            for p in parts for n in specs[p["sliver"]].nodes}


def replan(spec: VNetSpec, order_id: str, assignment: Mapping[str, Site],
           prices: Mapping[tuple[str, str], float]) -> list[Part]:
    """The order's parts for `assignment` (node -> site), partitioned as an
    instantiation partitions them (same refs for the same links)."""
    split = PipSplit({n: (s.provider, s.location) for n, s in assignment.items()}, [], 0.0)
    return partition(spec, split, order_id, prices)


def moved_links(spec: VNetSpec, node: str) -> list[str]:
    """The links of `node` (they are stitched again when it changes provider)."""
    return [k.id for k in spec.links if node in (k.a.node, k.b.node)]


def fresh_refs(parts: Sequence[Part], links: Collection[str], salt: str) -> list[Part]:
    """`parts` with new refs for the boundary links among `links` (the same at
    both ends): a moved node's links are stitched again on both sides, never
    confused with the stitching they had."""
    def ref(link: str) -> str:
        return stitch_ref(salt, link)

    out = []
    for part in parts:
        boundary = tuple(replace(b, peer_ref=ref(b.id)) if b.id in links else b
                         for b in part.spec.boundary)
        plinks = tuple(replace(k, ref=ref(k.link)) if k.link in links and k.peer_part is not None
                       else k for k in part.links)
        out.append(replace(part, spec=replace(part.spec, boundary=boundary), links=plinks))
    return out


__all__ = ["Site", "assignment_of", "extend_embedding", "fresh_refs", "moved_links", "pick_host",
           "replan"]
