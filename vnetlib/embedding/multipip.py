"""The VNP's split of a VNet across PIPs, with the same engine.

PIPs advertise aggregates, not topologies: per (PIP, location) a CPU (and
memory) capacity and a price. The VNP builds the aggregated view, one node
per advert, joined by the inter-PIP links it knows (or a full mesh of
unlimited links), and embeds the VNet on it with :class:`Embedder` and the
``coordinated`` algorithm, several virtual nodes per aggregate allowed.
Since a virtual link inside one aggregate costs nothing at this level and a
link between two aggregates costs its bandwidth (times ``link_price``), the
search minimises  cpu_price x CPU + link_price x boundary bandwidth: it keeps
neighbours together, crosses PIPs where capacity, price or location
constraints make it worth it, and honours node locations, allowed
locations, latency bounds on inter-PIP links and ``max_pips``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import networkx as nx

from vnetlib.embedding.embedder import Embedder
from vnetlib.embedding.graph import adapt_request
from vnetlib.embedding.result import Rejection
from vnetlib.spec.model import VNetSpec

Site = tuple[str, str]  # (PIP, location)


@dataclass(frozen=True, slots=True)
class PipAdvert:
    """What a PIP advertises for one location."""

    pip: str
    location: str
    cpu: float
    memory_mb: float = math.inf
    price: float = 0.0  # per CPU unit


@dataclass(frozen=True, slots=True)
class InterPipLink:
    """A known link between two advertised sites."""

    a: Site
    b: Site
    bandwidth_mbps: float = math.inf
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class BoundaryLink:
    """A virtual link whose ends land on different sites."""

    link: str
    a: Hashable
    b: Hashable
    a_site: Site
    b_site: Site
    bandwidth: float


@dataclass(frozen=True, slots=True)
class PipSplit:
    """Virtual node -> (PIP, location), and the links that cross sites."""

    assignment: dict[Hashable, Site]
    boundary_links: list[BoundaryLink]
    cost: float
    accepted: bool = True

    @property
    def pips(self) -> set[str]:
        return {site[0] for site in self.assignment.values()}

    def nodes_of(self, pip: str) -> list[Hashable]:
        return [v for v, site in self.assignment.items() if site[0] == pip]

    def __bool__(self) -> bool:
        return True


def aggregated_graph(
    adverts: Iterable[PipAdvert],
    links: Iterable[InterPipLink] | None = None,
    cpu_price_weight: float = 1.0,
) -> nx.Graph:
    """One node per (PIP, location); a full mesh of unlimited links unless
    ``links`` are given."""
    g = nx.Graph()
    for ad in adverts:
        site = (ad.pip, ad.location)
        if site in g:
            raise ValueError(f"duplicate advert for {site}")
        g.add_node(
            site,
            cpu=ad.cpu,
            memory=ad.memory_mb,
            location=ad.location,
            price=ad.price * cpu_price_weight,
        )
    if links is None:
        sites = list(g)
        for i, a in enumerate(sites):
            for b in sites[i + 1 :]:
                g.add_edge(a, b, bw=math.inf, latency=0.0)
    else:
        for link in links:
            for end in (link.a, link.b):
                if end not in g:
                    raise ValueError(f"inter-PIP link names unadvertised site {end}")
            g.add_edge(link.a, link.b, bw=link.bandwidth_mbps, latency=link.latency_ms)
    return g


def split_across_pips(
    vnet: VNetSpec | nx.Graph,
    adverts: Iterable[PipAdvert],
    links: Iterable[InterPipLink] | None = None,
    link_price: float = 1.0,
    max_pips: int | None = None,
) -> PipSplit | Rejection:
    """Assign each virtual node to a (PIP, location) and list boundary links.

    The objective is  sum of advert price x CPU  +  link_price x bandwidth
    of each boundary link per inter-site hop. ``max_pips`` defaults to the
    VNet's ``constraints.max_pips``.
    """
    weight = 1.0 / link_price if link_price > 0 else 1e9
    g = aggregated_graph(adverts, links, cpu_price_weight=weight)
    rid = vnet.name if isinstance(vnet, VNetSpec) else vnet.graph.get("name", "vnet")
    if isinstance(vnet, VNetSpec) and max_pips is None:
        max_pips = vnet.constraints.max_pips
    emb = Embedder(g, algorithm="coordinated", one_node_per_host=False)
    got = emb.embed(vnet, rid, max_roots=g.number_of_nodes())
    if isinstance(got, Rejection):
        return got
    assignment: dict[Hashable, Site] = {}
    for v, site in got.node_map.items():
        assert isinstance(site, tuple)
        assignment[v] = (str(site[0]), str(site[1]))
    used = {site[0] for site in assignment.values()}
    if max_pips is not None and len(used) > max_pips:
        return Rejection(
            rid,
            "pips",
            f"{len(used)} PIPs",
            f"the cheapest split uses {len(used)} PIPs ({', '.join(sorted(used))}); "
            f"the VNet allows {max_pips}",
            "coordinated",
        )
    req = adapt_request(vnet)
    boundary = [
        BoundaryLink(
            link=link.id,
            a=link.key[0],
            b=link.key[1],
            a_site=assignment[link.key[0]],
            b_site=assignment[link.key[1]],
            bandwidth=link.bw,
        )
        for link in req.links
        if assignment[link.key[0]] != assignment[link.key[1]]
    ]
    cost = sum(
        g.nodes[assignment[v]]["price"] / weight * req.cpu[i] for i, v in enumerate(req.names)
    )
    cost += link_price * sum(
        f.bandwidth * (len(f.path) - 1) for flows in got.link_map.values() for f in flows
    )
    return PipSplit(assignment=assignment, boundary_links=boundary, cost=cost)
