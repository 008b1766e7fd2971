"""An independent check of embeddings against the original inputs.

Deliberately shares no code with the engine (no views, no residuals): it
reads the substrate and the requests as given (networkx graphs or the
project's models), adds up what the mappings use, and reports every
violation: capacities exceeded, paths that are not substrate paths or do
not join the hosts of their link's ends, bandwidth not fully carried,
location and latency constraints broken, two nodes of a request on one host
when that is forbidden, nodes on non-hosting nodes (the switch).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Hashable, Iterable
from typing import Any

import networkx as nx

from vnetlib.embedding.result import Mapping
from vnetlib.spec.model import Substrate, VNetSpec

TOL = 1e-6


def _substrate_graph(substrate: nx.Graph | Substrate) -> nx.Graph:
    if isinstance(substrate, nx.Graph):
        return substrate
    g = nx.Graph()
    for h in substrate.hosts:
        g.add_node(h.name, cpu=h.cpu, memory=h.memory_mb, location=h.location)
    for link in substrate.links:
        for end in (link.a, link.b):
            if end not in g:
                g.add_node(end, cpu=0.0, memory=0.0, hostable=False)
        if g.has_edge(link.a, link.b):
            d = g.edges[link.a, link.b]
            d["bw"] += link.bandwidth_mbps
            d["latency"] = min(d["latency"], link.latency_ms)
        else:
            g.add_edge(link.a, link.b, bw=link.bandwidth_mbps, latency=link.latency_ms)
    return g


def _request_parts(
    request: nx.Graph | VNetSpec,
) -> tuple[
    dict[Hashable, dict[str, Any]],
    list[tuple[Hashable, Hashable, dict[str, Any]]],
    frozenset[str] | None,
]:
    if isinstance(request, VNetSpec):
        nodes: dict[Hashable, dict[str, Any]] = {
            n.id: {"cpu": n.cpu, "memory": n.memory_mb, "location": n.location}
            for n in request.nodes
        }
        links: list[tuple[Hashable, Hashable, dict[str, Any]]] = [
            (lk.a.node, lk.b.node, {"bw": lk.bandwidth_mbps, "latency": lk.latency_ms})
            for lk in request.links
            if lk.a.node != lk.b.node
        ]
        allowed = frozenset(request.constraints.allowed_locations) or None
        return nodes, links, allowed
    allowed_attr = request.graph.get("allowed_locations")
    return (
        dict(request.nodes(data=True)),
        [(u, v, d) for u, v, d in request.edges(data=True) if u != v],
        frozenset(allowed_attr) if allowed_attr else None,
    )


def validate(
    substrate: nx.Graph | Substrate,
    embeddings: Iterable[tuple[nx.Graph | VNetSpec, Mapping]],
    one_node_per_host: bool = True,
) -> list[str]:
    """Return the violations of the given simultaneous embeddings (empty: valid)."""
    g = _substrate_graph(substrate)
    errors: list[str] = []
    cpu: dict[Hashable, float] = defaultdict(float)
    mem: dict[Hashable, float] = defaultdict(float)
    bw: dict[frozenset[Hashable], float] = defaultdict(float)
    for request, mapping in embeddings:
        rid = mapping.request_id
        nodes, links, allowed = _request_parts(request)
        if set(mapping.node_map) != set(nodes):
            errors.append(f"{rid}: node_map covers {sorted(map(str, mapping.node_map))}")
            continue
        hosts_seen: dict[Hashable, Hashable] = {}
        for v, d in nodes.items():
            s = mapping.node_map[v]
            if s not in g:
                errors.append(f"{rid}: {v!r} on unknown substrate node {s!r}")
                continue
            sd = g.nodes[s]
            if not sd.get("hostable", True):
                errors.append(f"{rid}: {v!r} on non-hosting node {s!r}")
            if one_node_per_host and s in hosts_seen:
                errors.append(f"{rid}: {v!r} and {hosts_seen[s]!r} share host {s!r}")
            hosts_seen[s] = v
            cpu[s] += float(d.get("cpu", 0.0) or 0.0)
            mem[s] += float(d.get("memory", 0.0) or 0.0)
            loc = d.get("location")
            if loc is not None and sd.get("location") != loc:
                errors.append(f"{rid}: {v!r} wants location {loc!r}, host {s!r} is elsewhere")
            if allowed is not None and sd.get("location") not in allowed:
                errors.append(f"{rid}: host {s!r} of {v!r} outside allowed locations")
        for u, v, d in links:
            flows = mapping.link_map.get((u, v))
            if flows is None:
                errors.append(f"{rid}: virtual link {(u, v)!r} not mapped")
                continue
            demand = float(d.get("bw", 0.0) or 0.0)
            carried = 0.0
            hu, hv = mapping.node_map[u], mapping.node_map[v]
            for path, amount in flows:
                carried += amount
                if amount < -TOL:
                    errors.append(f"{rid}: negative flow on {(u, v)!r}")
                if not path or path[0] != hu or path[-1] != hv:
                    errors.append(f"{rid}: path {path!r} of {(u, v)!r} not from {hu!r} to {hv!r}")
                    continue
                if len(set(path)) != len(path):
                    errors.append(f"{rid}: path {path!r} of {(u, v)!r} repeats a node")
                latency = 0.0
                for a, b in itertools.pairwise(path):
                    if not g.has_edge(a, b):
                        errors.append(f"{rid}: {(a, b)!r} on path of {(u, v)!r} is no edge")
                        continue
                    bw[frozenset((a, b))] += amount
                    latency += float(g.edges[a, b].get("latency", 0.0) or 0.0)
                bound = d.get("latency")
                if bound is not None and latency > float(bound) + TOL:
                    errors.append(f"{rid}: path of {(u, v)!r} has latency {latency:g} > {bound:g}")
            if abs(carried - demand) > TOL * max(1.0, demand):
                errors.append(f"{rid}: {(u, v)!r} carries {carried:g} of {demand:g}")
            if (
                len(flows) > 1
                and not (isinstance(request, VNetSpec) and request.constraints.path_splitting)
                and not (isinstance(request, nx.Graph) and request.graph.get("path_splitting"))
            ):
                errors.append(f"{rid}: {(u, v)!r} split but the request forbids it")
    for s, used in cpu.items():
        cap = float(g.nodes[s].get("cpu", 0.0))
        if used > cap + TOL:
            errors.append(f"cpu of {s!r} exceeded: {used:g} > {cap:g}")
    for s, used in mem.items():
        capm = g.nodes[s].get("memory")
        if capm is not None and used > float(capm) + TOL:
            errors.append(f"memory of {s!r} exceeded: {used:g} > {capm:g}")
    for key, used in bw.items():
        a, b = tuple(key)
        cap = float(g.edges[a, b]["bw"])
        if used > cap + TOL:
            errors.append(f"bandwidth of {(a, b)!r} exceeded: {used:g} > {cap:g}")
    return errors
