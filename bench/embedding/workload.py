"""Seeded substrates and online request sequences of the VNE literature.

The standard setting (Yu et al. 2008; Chowdhury et al. 2009; Cheng et al.
2011; Gong et al. 2014): a random substrate of 100 nodes and about 500
links, CPU and bandwidth capacities uniform in [50, 100]; requests arrive as
a Poisson process (``rate`` per 100 time units), live an exponential time
(mean 1000 units), have a uniform number of nodes, each pair linked with
probability 0.5, CPU and bandwidth demands uniform in the given ranges.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import networkx as nx


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    substrate_nodes: int = 100
    substrate_links: int = 500
    rate: float = 4.0  # arrivals per 100 time units
    requests: int = 2000
    min_nodes: int = 2
    max_nodes: int = 10
    link_prob: float = 0.5
    cpu: tuple[float, float] = (0.0, 20.0)
    bw: tuple[float, float] = (0.0, 50.0)
    lifetime: float = 1000.0
    capacity: tuple[float, float] = (50.0, 100.0)


@dataclass(frozen=True, slots=True)
class Arrival:
    rid: int
    time: float
    lifetime: float
    graph: nx.Graph


def make_substrate(sc: Scenario, seed: int) -> nx.Graph:
    """G(n, m) random graph, made connected by joining components to node 0."""
    rng = random.Random(seed * 7919 + sc.substrate_nodes)
    g = nx.gnm_random_graph(sc.substrate_nodes, sc.substrate_links, seed=rng.randrange(2**31))
    comps = sorted(nx.connected_components(g), key=min)
    for comp in comps[1:]:
        g.add_edge(rng.choice(sorted(comps[0])), min(comp))
    lo, hi = sc.capacity
    for v in g:
        g.nodes[v]["cpu"] = rng.uniform(lo, hi)
    for u, v in g.edges:
        g.edges[u, v]["bw"] = rng.uniform(lo, hi)
    return g


def make_request(rng: random.Random, sc: Scenario) -> nx.Graph:
    n = rng.randint(sc.min_nodes, sc.max_nodes)
    q = nx.Graph()
    for v in range(n):
        q.add_node(v, cpu=rng.uniform(*sc.cpu))
    for u in range(n):
        for v in range(u + 1, n):
            if rng.random() < sc.link_prob:
                q.add_edge(u, v, bw=rng.uniform(*sc.bw))
    # The literature's requests are connected: join components by a link.
    comps = sorted(nx.connected_components(q), key=min)
    for comp in comps[1:]:
        q.add_edge(min(comps[0]), min(comp), bw=rng.uniform(*sc.bw))
    return q


def make_arrivals(sc: Scenario, seed: int) -> list[Arrival]:
    rng = random.Random(seed * 104729 + int(sc.rate * 1000))
    t = 0.0
    out: list[Arrival] = []
    for rid in range(sc.requests):
        t += rng.expovariate(sc.rate / 100.0)
        life = rng.expovariate(1.0 / sc.lifetime)
        out.append(Arrival(rid, t, life, make_request(rng, sc)))
    return out
