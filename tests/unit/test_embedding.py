"""Unit tests of the embedding engine's public API."""

from __future__ import annotations

import random

import networkx as nx
import pytest

from vnetlib.embedding import ALGORITHMS, Embedder, Mapping, Rejection, validate
from vnetlib.spec.model import (
    Constraints,
    Interface,
    LinkEndpoint,
    Substrate,
    SubstrateHost,
    SubstrateLink,
    Switch,
    VirtualLink,
    VirtualNode,
    VNetSpec,
)


def substrate(n: int = 30, m: int = 90, seed: int = 1) -> nx.Graph:
    rng = random.Random(seed)
    g = nx.gnm_random_graph(n, m, seed=seed)
    for comp in list(nx.connected_components(g))[1:]:
        g.add_edge(0, min(comp))
    for v in g:
        g.nodes[v]["cpu"] = rng.uniform(50, 100)
    for u, v in g.edges:
        g.edges[u, v]["bw"] = rng.uniform(50, 100)
    return g


def request(n: int, seed: int, cpu: float = 10.0, bw: float = 20.0) -> nx.Graph:
    rng = random.Random(seed)
    q = nx.gnp_random_graph(n, 0.5, seed=seed)
    for v in q:
        q.nodes[v]["cpu"] = rng.uniform(0, cpu)
    for u, v in q.edges:
        q.edges[u, v]["bw"] = rng.uniform(0, bw)
    return q


def lab() -> Substrate:
    hosts = tuple(SubstrateHost(f"h{i}", cpu=4, memory_mb=4096) for i in range(1, 4))
    links = tuple(SubstrateLink(h.name, "sw0", bandwidth_mbps=1000) for h in hosts)
    return Substrate("lab", hosts, links, switch=Switch("sw0"))


def vlink(i: int, a: str, b: str, bw: float = 10.0, lat: float | None = None) -> VirtualLink:
    return VirtualLink(
        f"l{i}",
        LinkEndpoint(a, Interface(f"{a}-{i}")),
        LinkEndpoint(b, Interface(f"{b}-{i}")),
        bandwidth_mbps=bw,
        latency_ms=lat,
    )


def figure6() -> VNetSpec:
    nodes = tuple(VirtualNode(f"n{i}", cpu=0.5, memory_mb=256) for i in range(1, 7))
    pairs = [
        ("n1", "n2"),
        ("n2", "n3"),
        ("n3", "n4"),
        ("n4", "n5"),
        ("n5", "n6"),
        ("n6", "n1"),
        ("n2", "n5"),
    ]
    links = tuple(vlink(i, a, b) for i, (a, b) in enumerate(pairs))
    return VNetSpec("fig6", nodes, links)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_embeds_and_validates(algorithm: str) -> None:
    g = substrate()
    emb = Embedder(g, algorithm=algorithm)
    q = request(5, seed=2)
    m = emb.embed(q, "r1")
    assert isinstance(m, Mapping) and m.accepted
    assert set(m.node_map) == set(q)
    assert len(set(m.node_map.values())) == 5  # one node per host by default
    for (u, v), flows in m.link_map.items():
        assert flows[0].path[0] == m.node_map[u] and flows[0].path[-1] == m.node_map[v]
    assert validate(g, [(q, m)]) == []


def test_deterministic() -> None:
    g = substrate()
    runs = []
    for _ in range(2):
        emb = Embedder(g, seed=7)
        runs.append([emb.embed(request(6, s), s) for s in range(20)])
    assert [getattr(r, "node_map", None) for r in runs[0]] == [
        getattr(r, "node_map", None) for r in runs[1]
    ]


def test_release_restores_exactly() -> None:
    g = substrate()
    emb = Embedder(g)
    ids = [i for i in range(60) if emb.embed(request(4, i), i)]
    assert ids
    for i in ids:
        assert emb.release(i)
    assert not emb.release(ids[0])
    for v in g:
        assert emb.residual_cpu(v) == g.nodes[v]["cpu"]
    for u, v in g.edges:
        assert emb.residual_bw(u, v) == g.edges[u, v]["bw"]


def test_rejection_names_cpu_and_host() -> None:
    g = substrate()
    q = nx.Graph()
    q.add_node("big", cpu=1000)
    r = Embedder(g).embed(q, "x")
    assert isinstance(r, Rejection) and not r
    assert r.resource == "cpu" and "host" in r.where and "big" in r.reason


def test_rejection_names_bandwidth_and_hosts() -> None:
    g = substrate()
    q = nx.Graph()
    q.add_node("a", cpu=1)
    q.add_node("b", cpu=1)
    q.add_edge("a", "b", bw=10_000)
    r = Embedder(g).embed(q, "x")
    assert isinstance(r, Rejection)
    assert r.resource == "bandwidth" and "-" in r.where and "10000" in r.reason


def test_too_many_nodes_for_distinct_hosts() -> None:
    g = substrate(n=4, m=5)
    r = Embedder(g).embed(request(6, 1), "x")
    assert isinstance(r, Rejection) and r.resource == "hosts"


def test_location_constraint() -> None:
    g = substrate()
    for v in g:
        g.nodes[v]["location"] = "paris" if v % 3 == 0 else "lyon"
    q = request(4, 3)
    q.nodes[0]["location"] = "paris"
    q.nodes[1]["location"] = "lyon"
    m = Embedder(g).embed(q, 1)
    assert isinstance(m, Mapping)
    assert g.nodes[m.node_map[0]]["location"] == "paris"
    assert g.nodes[m.node_map[1]]["location"] == "lyon"
    q.nodes[2]["location"] = "tokyo"
    r = Embedder(g).embed(q, 2)
    assert isinstance(r, Rejection) and r.resource == "location" and "tokyo" in r.where


def test_latency_bound() -> None:
    # a - b direct but slow, a - c - b fast
    g = nx.Graph()
    for v in "abc":
        g.add_node(v, cpu=10)
    g.add_edge("a", "b", bw=100, latency=50)
    g.add_edge("a", "c", bw=100, latency=1)
    g.add_edge("c", "b", bw=100, latency=1)
    q = nx.Graph()
    q.add_node("x", cpu=1, location=None)
    q.add_node("y", cpu=1)
    q.add_edge("x", "y", bw=10, latency=5)
    g.nodes["c"]["cpu"] = 0  # force x, y onto a and b
    m = Embedder(g).embed(q, 1)
    assert isinstance(m, Mapping)
    assert len(m.link_map[("x", "y")][0].path) == 3
    assert validate(g, [(q, m)]) == []
    q.edges["x", "y"]["latency"] = 1
    r = Embedder(g).embed(q, 2)
    assert isinstance(r, Rejection) and r.resource == "latency"


def test_path_splitting_when_allowed() -> None:
    g = nx.Graph()
    for v in "abcd":
        g.add_node(v, cpu=10)
    g.add_edge("a", "b", bw=30)
    g.add_edge("a", "c", bw=30)
    g.add_edge("c", "b", bw=30)
    g.nodes["c"]["cpu"] = 0
    g.add_node("d", cpu=0)
    q = nx.Graph()
    q.add_node("x", cpu=1)
    q.add_node("y", cpu=1)
    q.add_edge("x", "y", bw=50)
    assert isinstance(Embedder(g).embed(q, 1), Rejection)
    q.graph["path_splitting"] = True
    m = Embedder(g).embed(q, 1)
    assert isinstance(m, Mapping)
    assert len(m.link_map[("x", "y")]) == 2
    assert sum(f.bandwidth for f in m.link_map[("x", "y")]) == pytest.approx(50)
    assert validate(g, [(q, m)]) == []


def test_model_inputs_figure6_on_three_host_lab() -> None:
    sub = lab()
    emb = Embedder(sub)
    assert emb.one_node_per_host is False
    spec = figure6()
    m = emb.embed(spec)
    assert isinstance(m, Mapping), m
    assert m.request_id == "fig6"
    assert set(m.node_map.values()) <= {"h1", "h2", "h3"}
    assert set(m.link_map_by_id) == {f"l{i}" for i in range(7)}
    for link in spec.links:
        flows = m.link_map[(link.a.node, link.b.node)]
        assert flows[0].path[0] == m.node_map[link.a.node]
        if len(flows[0].path) > 1:
            assert "sw0" in flows[0].path
    assert validate(sub, [(spec, m)], one_node_per_host=False) == []
    strict = Embedder(sub, one_node_per_host=True).embed(spec)
    assert isinstance(strict, Rejection) and strict.resource == "hosts"


def test_model_constraints() -> None:
    sub = Substrate(
        "s",
        (
            SubstrateHost("h1", cpu=4, memory_mb=1024, location="A"),
            SubstrateHost("h2", cpu=4, memory_mb=1024, location="B"),
        ),
        (SubstrateLink("h1", "sw", 100, 1.0), SubstrateLink("h2", "sw", 100, 1.0)),
        switch=Switch("sw"),
    )
    nodes = (VirtualNode("a", cpu=1, memory_mb=512), VirtualNode("b", cpu=1, memory_mb=512))
    spec = VNetSpec(
        "v", nodes, (vlink(0, "a", "b", 10, lat=1.5),), Constraints(allowed_locations=("B",))
    )
    m = Embedder(sub).embed(spec)
    assert isinstance(m, Mapping) and set(m.node_map.values()) == {"h2"}
    big = VNetSpec("w", (VirtualNode("a", cpu=1, memory_mb=4096),))
    r = Embedder(sub).embed(big)
    assert isinstance(r, Rejection) and r.resource == "memory"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_validator_on_thousands_of_random_requests(algorithm: str) -> None:
    """Online arrivals and departures; every live set of mappings is valid."""
    g = substrate(n=50, m=200, seed=3)
    emb = Embedder(g, algorithm=algorithm, seed=3)
    rng = random.Random(11)
    live: dict[int, tuple[nx.Graph, Mapping]] = {}
    accepted = 0
    total = 1500 if algorithm == "coordinated" else 500
    for i in range(total):
        q = request(rng.randint(2, 8), seed=i, cpu=30, bw=40)
        if rng.random() < 0.1:
            q.graph["path_splitting"] = True
        got = emb.embed(q, i)
        if isinstance(got, Mapping):
            live[i] = (q, got)
            accepted += 1
            if i % 10 == 0:
                assert validate(g, live.values()) == []
            else:
                assert validate(g, [(q, got)]) == []
        else:
            assert got.resource in {"cpu", "memory", "bandwidth", "hosts"}
        if live and rng.random() < 0.5:
            victim = rng.choice(sorted(live))
            assert emb.release(victim)
            del live[victim]
    assert validate(g, live.values()) == []
    assert 0 < accepted < total
    for victim in list(live):
        emb.release(victim)
    for v in g:
        assert emb.residual_cpu(v) == g.nodes[v]["cpu"]
    for u, v in g.edges:
        assert emb.residual_bw(u, v) == g.edges[u, v]["bw"]


def _chain_spec(n: int, cpu: float = 2.0, bw: float = 10.0, **kw: object) -> VNetSpec:
    nodes = tuple(VirtualNode(f"v{i}", cpu=cpu) for i in range(n))
    links = tuple(vlink(i, f"v{i}", f"v{i + 1}", bw) for i in range(n - 1))
    return VNetSpec("chain", nodes, links, **kw)  # type: ignore[arg-type]


def test_split_across_pips_keeps_neighbours_together() -> None:
    from vnetlib.embedding import PipAdvert, PipSplit, split_across_pips

    adverts = [
        PipAdvert("p1", "paris", cpu=6, price=1.0),
        PipAdvert("p2", "paris", cpu=100, price=5.0),
        PipAdvert("p3", "lyon", cpu=100, price=3.0),
    ]
    got = split_across_pips(_chain_spec(6, bw=1.0), adverts)
    assert isinstance(got, PipSplit)
    # 12 CPU: 6 on cheap p1, 6 on p3, the chain cut once or twice
    # (6 + 18 + 1 or 2), cheaper than 36 all on p3; p2 is never worth it.
    assert got.pips == {"p1", "p3"}
    assert 1 <= len(got.boundary_links) <= 2
    for b in got.boundary_links:
        assert {b.a_site[0], b.b_site[0]} == {"p1", "p3"}
        assert got.assignment[b.a] == b.a_site and got.assignment[b.b] == b.b_site
    assert got.cost == pytest.approx(6 * 1.0 + 6 * 3.0 + len(got.boundary_links))
    everything = split_across_pips(_chain_spec(6, bw=10.0), adverts)
    assert isinstance(everything, PipSplit) and everything.pips == {"p3"}
    assert everything.boundary_links == []


def test_split_across_pips_locations_and_max_pips() -> None:
    from vnetlib.embedding import PipAdvert, PipSplit, split_across_pips

    adverts = [PipAdvert("p1", "paris", cpu=100), PipAdvert("p2", "lyon", cpu=100)]
    spec = _chain_spec(3)
    spec = VNetSpec(
        spec.name, (VirtualNode("v0", cpu=1, location="lyon"), *spec.nodes[1:]), spec.links
    )
    got = split_across_pips(spec, adverts)
    assert isinstance(got, PipSplit) and got.assignment["v0"] == ("p2", "lyon")
    small = [PipAdvert("p1", "paris", cpu=4), PipAdvert("p2", "lyon", cpu=4)]
    spec = _chain_spec(4, cpu=2, constraints=Constraints(max_pips=1))
    r = split_across_pips(spec, small)
    assert isinstance(r, Rejection) and r.resource == "pips"
    r = split_across_pips(_chain_spec(5, cpu=2), small)
    assert isinstance(r, Rejection) and r.resource == "cpu"


def test_api_details() -> None:
    g = substrate()
    emb = Embedder(g)
    q = request(4, seed=5)
    q.add_edge(0, 3, bw=5.0)
    m = emb.embed(q, "a")
    assert isinstance(m, Mapping)
    assert emb.active == ["a"] and emb.mapping("a") is m
    dup = emb.embed(q, "a")
    assert isinstance(dup, Rejection) and dup.resource == "duplicate"
    (u, v) = next(iter(m.link_map))
    assert m.paths(v, u)[0].path == m.link_map[(u, v)][0].path[::-1]
    assert m.revenue == pytest.approx(
        sum(d["cpu"] for _, d in q.nodes(data=True)) + sum(d["bw"] for *_, d in q.edges(data=True))
    )
    assert m.cost >= m.revenue  # one node per host: every link takes at least one hop
    host = m.node_map[0]
    assert emb.residual_cpu(host) == pytest.approx(g.nodes[host]["cpu"] - q.nodes[0]["cpu"])
    rg = emb.residual_graph()
    assert rg.nodes[host]["cpu"] == emb.residual_cpu(host)
    with pytest.raises(ValueError):
        Embedder(g, algorithm="nope")
    with pytest.raises(ValueError):
        emb.embed(q)  # graph requests need an id


def test_per_call_overrides() -> None:
    g = substrate()
    emb = Embedder(g, algorithm="grc")
    m = emb.embed(request(4, 1), 1, algorithm="coordinated")
    assert isinstance(m, Mapping) and m.algorithm == "coordinated"
    assert emb.embed(request(3, 2), 2).algorithm == "grc"  # type: ignore[union-attr]
    small = substrate(n=3, m=3)
    m2 = Embedder(small).embed(request(5, 3, cpu=1, bw=1), 3, one_node_per_host=False)
    assert isinstance(m2, Mapping) and len(set(m2.node_map.values())) <= 3


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_deterministic_for_seed(algorithm: str) -> None:
    g = substrate(n=40, m=140, seed=5)

    def run() -> list[object]:
        emb = Embedder(g, algorithm=algorithm, seed=3)
        out: list[object] = []
        for i in range(80):
            got = emb.embed(request(2 + i % 7, seed=100 + i, cpu=40, bw=50), i)
            out.append(got.node_map if isinstance(got, Mapping) else got.reason)
            if i % 3 == 0:
                emb.release(i - 2)
        return out

    assert run() == run()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_colocation_respects_capacities(algorithm: str) -> None:
    sub = lab()
    spec = figure6()
    m = Embedder(sub, algorithm=algorithm).embed(spec)
    assert isinstance(m, Mapping), m
    assert validate(sub, [(spec, m)], one_node_per_host=False) == []
    # 4 CPU per host, 6 nodes of 1.5 CPU: at most 2 per host, all 3 hosts used.
    heavy = VNetSpec(
        "heavy",
        tuple(VirtualNode(f"n{i}", cpu=1.5, memory_mb=256) for i in range(1, 7)),
        figure6().links,
    )
    m = Embedder(sub, algorithm=algorithm).embed(heavy)
    assert isinstance(m, Mapping), m
    assert set(m.node_map.values()) == {"h1", "h2", "h3"}
    assert validate(sub, [(heavy, m)], one_node_per_host=False) == []
    # memory binds too: 4096 MB per host, 3000 MB nodes cannot share.
    fat = VNetSpec("fat", tuple(VirtualNode(f"n{i}", cpu=0.1, memory_mb=3000) for i in range(1, 4)))
    m = Embedder(sub, algorithm=algorithm).embed(fat)
    assert isinstance(m, Mapping) and len(set(m.node_map.values())) == 3
    r = Embedder(sub, algorithm=algorithm).embed(
        VNetSpec("fatter", (*fat.nodes, VirtualNode("n4", cpu=0.1, memory_mb=3000)))
    )
    assert isinstance(r, Rejection) and r.resource == "memory"
