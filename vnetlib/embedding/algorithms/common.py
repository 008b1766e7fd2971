"""Building blocks shared by the algorithms: feasibility, paths, link mapping."""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from vnetlib.embedding.graph import RequestView, SubstrateView, VLink
from vnetlib.embedding.state import EPS, Failure, Placement, Residual, Trial


@dataclass(frozen=True, slots=True)
class Options:
    """Per-call options every algorithm honours."""

    one_node_per_host: bool = True
    max_split_paths: int = 4
    seed: int = 0
    # Root hosts tried by search-based algorithms (None: their default).
    max_roots: int | None = None


def node_fits(sub: SubstrateView, res: Residual, req: RequestView, v: int, s: int) -> bool:
    """Capacity and location test of virtual node ``v`` on substrate node ``s``
    (the one-per-host rule is the caller's, since it depends on the search)."""
    if not sub.hostable[s]:
        return False
    if res.cpu[s] + EPS < req.cpu[v] or res.memory[s] + EPS < req.memory[v]:
        return False
    loc = req.location[v]
    if loc is not None and sub.location[s] != loc:
        return False
    allowed = req.allowed_locations
    return allowed is None or sub.location[s] in allowed


def node_failure(
    sub: SubstrateView,
    res: Residual,
    req: RequestView,
    v: int,
    used: set[int] | None = None,
) -> Failure:
    """Explain why no substrate node can take virtual node ``v``."""
    name = req.names[v]
    located = [
        s
        for s in range(sub.n)
        if sub.hostable[s]
        and (req.location[v] is None or sub.location[s] == req.location[v])
        and (req.allowed_locations is None or sub.location[s] in req.allowed_locations)
    ]
    if not located:
        where = req.location[v] or ",".join(sorted(req.allowed_locations or ()))
        return Failure(
            "location",
            f"location {where}",
            f"no substrate host in location {where!r} for virtual node {name!r}",
        )
    free = [s for s in located if used is None or s not in used]
    if not free:
        return Failure(
            "hosts",
            f"virtual node {name!r}",
            f"all {len(located)} eligible hosts already hold a node of this request "
            f"(one virtual node per host) for virtual node {name!r}",
        )
    best = max(free, key=lambda s: res.cpu[s])
    if res.cpu[best] + EPS < req.cpu[v]:
        return Failure(
            "cpu",
            f"host {sub.names[best]!r}",
            f"virtual node {name!r} needs cpu {req.cpu[v]:g}; the most free eligible "
            f"host {sub.names[best]!r} has {res.cpu[best]:g} left",
        )
    best = max(free, key=lambda s: res.memory[s])
    if res.memory[best] + EPS < req.memory[v]:
        return Failure(
            "memory",
            f"host {sub.names[best]!r}",
            f"virtual node {name!r} needs memory {req.memory[v]:g}; the most free "
            f"eligible host {sub.names[best]!r} has {res.memory[best]:g} left",
        )
    return Failure(
        "cpu",
        f"virtual node {name!r}",
        f"no combination of hosts could take virtual node {name!r} with its links",
    )


def bfs_path(
    sub: SubstrateView, bw: list[float], src: int, dst: int, demand: float
) -> list[int] | None:
    """Fewest-hop path whose every edge has ``demand`` residual bandwidth.

    Bidirectional BFS, level by level from the smaller frontier: on large
    substrates it visits about 2 d^(h/2) nodes instead of d^h.
    """
    if src == dst:
        return [src]
    need = demand - EPS
    e = sub.edge_index.get((src, dst))
    if e is not None and bw[e] >= need:  # fast path: most links map on one hop
        return [src, dst]
    adj = sub.adj
    fwd: dict[int, int] = {src: src}
    back: dict[int, int] = {dst: dst}
    front, rear = [src], [dst]
    while front and rear:
        forward = len(front) <= len(rear)
        seen, other, level = (fwd, back, front) if forward else (back, fwd, rear)
        nxt: list[int] = []
        meet = -1
        for u in level:
            for w, e in adj[u]:
                if w in seen or bw[e] < need:
                    continue
                seen[w] = u
                if w in other and meet < 0:
                    meet = w
                nxt.append(w)
        if meet >= 0:
            return _join(fwd, back, meet)
        if forward:
            front = nxt
        else:
            rear = nxt
    return None


def _join(fwd: dict[int, int], back: dict[int, int], meet: int) -> list[int]:
    path = [meet]
    u = meet
    while fwd[u] != u:
        u = fwd[u]
        path.append(u)
    path.reverse()
    u = meet
    while back[u] != u:
        u = back[u]
        path.append(u)
    return path


def bfs_dist(sub: SubstrateView, bw: list[float], src: int, demand: float) -> list[int]:
    """Hop distances from ``src`` over edges with enough bandwidth (-1: none)."""
    dist = [-1] * sub.n
    dist[src] = 0
    need = demand - EPS
    queue = deque([src])
    adj = sub.adj
    while queue:
        u = queue.popleft()
        du = dist[u] + 1
        for w, e in adj[u]:
            if dist[w] < 0 and bw[e] >= need:
                dist[w] = du
                queue.append(w)
    return dist


def latency_path(
    sub: SubstrateView, bw: list[float], src: int, dst: int, demand: float
) -> tuple[list[int], float] | None:
    """Lowest-latency path with enough bandwidth (Dijkstra), with its latency."""
    need = demand - EPS
    best = {src: 0.0}
    parent = {src: src}
    heap = [(0.0, src)]
    lat = sub.latency
    while heap:
        d, u = heapq.heappop(heap)
        if u == dst:
            path = [u]
            while u != src:
                u = parent[u]
                path.append(u)
            path.reverse()
            return path, d
        if d > best.get(u, d):
            continue
        for w, e in sub.adj[u]:
            if bw[e] < need:
                continue
            nd = d + lat[e]
            if nd < best.get(w, float("inf")):
                best[w] = nd
                parent[w] = u
                heapq.heappush(heap, (nd, w))
    return None


def path_latency(sub: SubstrateView, path: list[int]) -> float:
    ei = sub.edge_index
    return sum(sub.latency[ei[(path[i], path[i + 1])]] for i in range(len(path) - 1))


def _link_name(req: RequestView, link: VLink) -> str:
    return f"virtual link {link.id!r} {link.key!r}"


def map_link(
    trial: Trial,
    req: RequestView,
    link: VLink,
    src: int,
    dst: int,
    opts: Options,
    path: list[int] | None = None,
) -> list[tuple[list[int], float]] | Failure:
    """Route one virtual link between two hosts and reserve it in ``trial``.

    Unsplittable fewest-hop path first (``path`` may be a precomputed
    candidate); then, if the link has a latency bound, the lowest-latency
    path; then, if the request allows it, a split over several paths.
    """
    sub = trial.res.sub
    bw = trial.res.bw
    if src == dst:
        return [([src], link.bw)]
    if path is None or not _path_has(sub, bw, path, link.bw):
        path = bfs_path(sub, bw, src, dst, link.bw)
    if (
        path is not None
        and link.latency is not None
        and path_latency(sub, path) > link.latency + EPS
    ):
        found = latency_path(sub, bw, src, dst, link.bw)
        if found is None or found[1] > link.latency + EPS:
            lowest = latency_path(sub, bw, src, dst, 0.0)
            got = "no path" if lowest is None else f"{lowest[1]:g} ms at best"
            return Failure(
                "latency",
                f"{sub.names[src]!r}-{sub.names[dst]!r}",
                f"{_link_name(req, link)} allows {link.latency:g} ms between "
                f"hosts {sub.names[src]!r} and {sub.names[dst]!r}; {got}",
            )
        path = found[0]
    if path is not None:
        trial.take_path(path, link.bw)
        return [(path, link.bw)]
    if req.path_splitting and link.latency is None:
        flows = split_flows(trial, src, dst, link.bw, opts.max_split_paths)
        if flows is not None:
            return flows
    return Failure(
        "bandwidth",
        f"{sub.names[src]!r}-{sub.names[dst]!r}",
        f"{_link_name(req, link)} needs bandwidth {link.bw:g} between hosts "
        f"{sub.names[src]!r} and {sub.names[dst]!r}; no substrate path has that much "
        f"residual bandwidth" + (" even split" if req.path_splitting else ""),
    )


def _path_has(sub: SubstrateView, bw: list[float], path: list[int], demand: float) -> bool:
    ei = sub.edge_index
    need = demand - EPS
    return all(bw[ei[(path[i], path[i + 1])]] >= need for i in range(len(path) - 1))


def split_flows(
    trial: Trial, src: int, dst: int, demand: float, max_paths: int
) -> list[tuple[list[int], float]] | None:
    """Greedy path splitting: repeatedly take the fewest-hop path with any
    residual bandwidth and push its bottleneck (at most ``max_paths`` paths).
    A heuristic stand-in for the multi-commodity flow of Yu et al. 2008."""
    sub = trial.res.sub
    bw = trial.res.bw
    ei = sub.edge_index
    mark = trial.mark()
    flows: list[tuple[list[int], float]] = []
    left = demand
    while left > EPS and len(flows) < max_paths:
        path = bfs_path(sub, bw, src, dst, min(left, 1e-6))
        if path is None:
            break
        bottleneck = min(bw[ei[(path[i], path[i + 1])]] for i in range(len(path) - 1))
        amount = min(left, bottleneck)
        if amount <= EPS:
            break
        trial.take_path(path, amount)
        flows.append((path, amount))
        left -= amount
    if left > EPS:
        trial.rollback(mark)
        return None
    return flows


def map_links_of(
    trial: Trial,
    req: RequestView,
    hosts: list[int],
    order: list[int],
    opts: Options,
) -> list[list[tuple[list[int], float]]] | Failure:
    """Map the given virtual links (indices, in that order) once all nodes are
    placed. Used by the two-stage baselines."""
    flows: list[list[tuple[list[int], float]]] = [[] for _ in req.links]
    for i in order:
        link = req.links[i]
        got = map_link(trial, req, link, hosts[link.a], hosts[link.b], opts)
        if isinstance(got, Failure):
            return got
        flows[i] = got
    return flows


def two_stage(
    sub: SubstrateView,
    res: Residual,
    req: RequestView,
    opts: Options,
    hosts: list[int] | Failure,
) -> Placement | Failure:
    """Finish a node mapping with link mapping in decreasing bandwidth order."""
    if isinstance(hosts, Failure):
        return hosts
    trial = Trial(res)
    try:
        for v, s in enumerate(hosts):
            trial.take_node(s, req.cpu[v], req.memory[v])
        order = sorted(range(len(req.links)), key=lambda i: -req.links[i].bw)
        flows = map_links_of(trial, req, hosts, order, opts)
    finally:
        trial.rollback()
    if isinstance(flows, Failure):
        return flows
    return Placement(hosts=hosts, flows=flows)
