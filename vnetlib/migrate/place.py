"""Where a moved node's links go: the sliver's embedding with one node on
another host (pure).

The node keeps its requirements; the target host must have its CPU and
memory left over (`residual` counts every live sliver, this one included, as
it stands), and each of the node's links gets the shortest substrate path
with its bandwidth left (the bandwidth of the link's current path counts as
free again). Nothing else in the sliver moves.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection

import networkx as nx

from vnetlib.core.records import Embedding, Flow
from vnetlib.spec.model import Substrate, VNetSpec


class CannotMove(ValueError):
    """The target cannot take the node; the message says what is missing."""


def move_node(substrate: Substrate, residual: Substrate, spec: VNetSpec, embedding: Embedding,
              node: str, target: str, *, drained: Collection[str] = ()) -> Embedding:
    """`embedding` with `node` on `target` and its links re-routed."""
    hosts = {h.name: h for h in residual.hosts}
    if target not in hosts:
        raise CannotMove(f"substrate {substrate.name} has no host {target}")
    if target in drained:
        raise CannotMove(f"host {target} is being drained: it takes no new nodes")
    vnode = spec.node(node)
    if vnode.kind not in substrate.host(target).node_kinds:
        raise CannotMove(f"host {target} does not offer {vnode.kind.value} nodes")
    if any(b.endpoint.node == node for b in spec.boundary):
        raise CannotMove(f"node {node} ends a link to another provider: moving it needs the "
                         "peer to re-stitch, which a move within a PIP does not do")
    left = hosts[target]
    if left.cpu + 1e-9 < vnode.cpu:
        raise CannotMove(f"host {target} has {left.cpu:g} CPU left, node {node} needs "
                         f"{vnode.cpu:g}")
    if left.memory_mb < vnode.memory_mb:
        raise CannotMove(f"host {target} has {left.memory_mb} MiB left, node {node} needs "
                         f"{vnode.memory_mb}")
    mine = [k for k in spec.links if node in (k.a.node, k.b.node)]
    graph = nx.Graph()
    for sl in residual.links:
        graph.add_edge(sl.a, sl.b, bw=sl.bandwidth_mbps)
    for k in mine:  # the bandwidth these links hold now is theirs to reuse
        for flow in embedding.link_map.get(k.id, ()):
            for a, b in itertools.pairwise(flow.path):
                graph[a][b]["bw"] += flow.bandwidth
    node_map = {**embedding.node_map, node: target}
    link_map = dict(embedding.link_map)
    for k in mine:
        link_map[k.id] = route(graph, node_map[k.a.node], node_map[k.b.node], k.id,
                               k.bandwidth_mbps)
    return Embedding(node_map, link_map, embedding.algorithm)


def route(graph: nx.Graph, here: str, there: str, link: str, need: float) -> tuple[Flow, ...]:
    """The shortest path of `graph` (edges' "bw" left) from `here` to `there`
    with `need` Mbit/s left, taken from `graph`; one host's own flow when both
    ends are on it."""
    if here == there:
        return (Flow((here,), need),)
    usable = nx.subgraph_view(
        graph, filter_edge=lambda a, b: graph[a][b]["bw"] + 1e-9 >= need)
    try:
        path = nx.shortest_path(usable, here, there)
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        raise CannotMove(f"no substrate path from {here} to {there} has "
                         f"{need:g} Mbit/s left for link {link}") from None
    for a, b in itertools.pairwise(path):
        graph[a][b]["bw"] -= need
    return (Flow(tuple(str(p) for p in path), need),)
