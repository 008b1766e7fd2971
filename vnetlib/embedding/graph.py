"""Adaptation of substrates and requests to compact, index-based views.

Algorithms work on integers and flat lists (node ``i``, edge ``e``) because a
pure-Python embedder must answer in milliseconds; ``networkx`` graphs and the
project's own ``Substrate``/``VNetSpec`` models are converted once, here.

Substrate attributes (networkx input): node ``cpu`` (required), ``memory``,
``location``, ``price`` (cost per CPU unit, used by the multi-PIP split) and
``hostable`` (default True); edge ``bw`` (required), ``latency``.
Request attributes (networkx input): node ``cpu`` (default 0), ``memory``,
``location``; edge ``bw`` (default 0), ``latency`` (an upper bound), ``id``.
A ``path_splitting`` graph attribute allows split virtual links.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from vnetlib.spec.model import Substrate, VNetSpec

INF = math.inf


@dataclass(slots=True)
class SubstrateView:
    """Static description of a substrate: capacities, topology, locations."""

    names: list[Hashable]
    cpu: list[float]
    memory: list[float]
    location: list[str | None]
    hostable: list[bool]
    price: list[float]
    edges: list[tuple[int, int]]
    bw: list[float]
    latency: list[float]
    adj: list[list[tuple[int, int]]] = field(default_factory=list)
    index: dict[Hashable, int] = field(default_factory=dict)
    edge_index: dict[tuple[int, int], int] = field(default_factory=dict)
    # Scratch space for algorithms (e.g. static hop distances per source).
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.names)

    def finish(self) -> SubstrateView:
        self.index = {name: i for i, name in enumerate(self.names)}
        self.adj = [[] for _ in self.names]
        self.edge_index = {}
        for e, (a, b) in enumerate(self.edges):
            self.adj[a].append((b, e))
            self.adj[b].append((a, e))
            self.edge_index[(a, b)] = e
            self.edge_index[(b, a)] = e
        return self


@dataclass(slots=True)
class VLink:
    """One virtual link: endpoints (request node indices), demand, bound."""

    a: int
    b: int
    bw: float
    latency: float | None
    key: tuple[Hashable, Hashable]
    id: str


@dataclass(slots=True)
class RequestView:
    """A virtual network request in index form."""

    names: list[Hashable]
    cpu: list[float]
    memory: list[float]
    location: list[str | None]
    links: list[VLink]
    allowed_locations: frozenset[str] | None = None
    path_splitting: bool = False
    adj: list[list[int]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.names)

    def finish(self) -> RequestView:
        self.adj = [[] for _ in self.names]
        for i, link in enumerate(self.links):
            self.adj[link.a].append(i)
            self.adj[link.b].append(i)
        return self

    def revenue(self) -> float:
        """CPU plus bandwidth demanded: the literature's revenue of a request."""
        return sum(self.cpu) + sum(link.bw for link in self.links)


def _num(value: Any, default: float) -> float:
    return default if value is None else float(value)


def substrate_from_networkx(graph: nx.Graph) -> SubstrateView:
    if graph.is_directed() or graph.is_multigraph():
        raise TypeError("substrate must be an undirected nx.Graph")
    names: list[Hashable] = list(graph.nodes)
    index = {name: i for i, name in enumerate(names)}
    data = [graph.nodes[name] for name in names]
    for name, d in zip(names, data, strict=True):
        if "cpu" not in d:
            raise ValueError(f"substrate node {name!r} has no 'cpu' attribute")
    edges: list[tuple[int, int]] = []
    bw: list[float] = []
    latency: list[float] = []
    for u, v, d in graph.edges(data=True):
        if u == v:
            continue
        if "bw" not in d:
            raise ValueError(f"substrate edge {(u, v)!r} has no 'bw' attribute")
        edges.append((index[u], index[v]))
        bw.append(float(d["bw"]))
        latency.append(_num(d.get("latency"), 0.0))
    return SubstrateView(
        names=names,
        cpu=[float(d["cpu"]) for d in data],
        memory=[_num(d.get("memory"), INF) for d in data],
        location=[d.get("location") for d in data],
        hostable=[bool(d.get("hostable", True)) for d in data],
        price=[_num(d.get("price"), 0.0) for d in data],
        edges=edges,
        bw=bw,
        latency=latency,
    ).finish()


def substrate_from_model(substrate: Substrate) -> SubstrateView:
    """Hosts become hostable nodes; the switch (and any other link end that is
    not a host) becomes a transit node with no CPU. Parallel links between the
    same pair are merged: bandwidths add up, the lower latency is kept."""
    names: list[Hashable] = [h.name for h in substrate.hosts]
    cpu = [float(h.cpu) for h in substrate.hosts]
    memory = [float(h.memory_mb) for h in substrate.hosts]
    location: list[str | None] = [h.location for h in substrate.hosts]
    hostable = [True] * len(names)
    index = {name: i for i, name in enumerate(names)}

    def node(name: str) -> int:
        if name not in index:
            index[name] = len(names)
            names.append(name)
            cpu.append(0.0)
            memory.append(0.0)
            location.append(None)
            hostable.append(False)
        return index[name]

    if substrate.switch is not None:
        node(substrate.switch.name)
    pairs: dict[tuple[int, int], int] = {}
    edges: list[tuple[int, int]] = []
    bw: list[float] = []
    latency: list[float] = []
    for link in substrate.links:
        a, b = node(link.a), node(link.b)
        if a == b:
            continue
        key = (min(a, b), max(a, b))
        if key in pairs:
            e = pairs[key]
            bw[e] += float(link.bandwidth_mbps)
            latency[e] = min(latency[e], float(link.latency_ms))
            continue
        pairs[key] = len(edges)
        edges.append((a, b))
        bw.append(float(link.bandwidth_mbps))
        latency.append(float(link.latency_ms))
    return SubstrateView(
        names=names,
        cpu=cpu,
        memory=memory,
        location=location,
        hostable=hostable,
        price=[0.0] * len(names),
        edges=edges,
        bw=bw,
        latency=latency,
    ).finish()


def adapt_substrate(substrate: nx.Graph | Substrate | SubstrateView) -> SubstrateView:
    if isinstance(substrate, SubstrateView):
        return substrate
    if isinstance(substrate, Substrate):
        return substrate_from_model(substrate)
    if isinstance(substrate, nx.Graph):
        return substrate_from_networkx(substrate)
    raise TypeError(f"unsupported substrate type {type(substrate).__name__}")


def request_from_networkx(graph: nx.Graph) -> RequestView:
    if graph.is_directed() or graph.is_multigraph():
        raise TypeError("request must be an undirected nx.Graph")
    names: list[Hashable] = list(graph.nodes)
    index = {name: i for i, name in enumerate(names)}
    data = [graph.nodes[name] for name in names]
    links: list[VLink] = []
    for u, v, d in graph.edges(data=True):
        if u == v:
            continue
        lat = d.get("latency")
        links.append(
            VLink(
                a=index[u],
                b=index[v],
                bw=_num(d.get("bw"), 0.0),
                latency=None if lat is None else float(lat),
                key=(u, v),
                id=str(d.get("id", f"{u}-{v}")),
            )
        )
    allowed = graph.graph.get("allowed_locations")
    return RequestView(
        names=names,
        cpu=[_num(d.get("cpu"), 0.0) for d in data],
        memory=[_num(d.get("memory"), 0.0) for d in data],
        location=[d.get("location") for d in data],
        links=links,
        allowed_locations=frozenset(allowed) if allowed else None,
        path_splitting=bool(graph.graph.get("path_splitting", False)),
    ).finish()


def request_from_model(spec: VNetSpec) -> RequestView:
    names: list[Hashable] = [node.id for node in spec.nodes]
    index = {name: i for i, name in enumerate(names)}
    links = [
        VLink(
            a=index[link.a.node],
            b=index[link.b.node],
            bw=float(link.bandwidth_mbps),
            latency=link.latency_ms,
            key=(link.a.node, link.b.node),
            id=link.id,
        )
        for link in spec.links
        if link.a.node != link.b.node
    ]
    allowed = spec.constraints.allowed_locations
    return RequestView(
        names=names,
        cpu=[float(node.cpu) for node in spec.nodes],
        memory=[float(node.memory_mb) for node in spec.nodes],
        location=[node.location for node in spec.nodes],
        links=links,
        allowed_locations=frozenset(allowed) if allowed else None,
        path_splitting=spec.constraints.path_splitting,
    ).finish()


def adapt_request(request: nx.Graph | VNetSpec | RequestView) -> RequestView:
    if isinstance(request, RequestView):
        return request
    if isinstance(request, VNetSpec):
        return request_from_model(request)
    if isinstance(request, nx.Graph):
        return request_from_networkx(request)
    raise TypeError(f"unsupported request type {type(request).__name__}")


def names_of(view: SubstrateView, path: Iterable[int]) -> tuple[Hashable, ...]:
    return tuple(view.names[i] for i in path)
