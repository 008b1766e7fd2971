"""Our default: coordinated, neighbourhood-growing node-and-link mapping.

Why it beats two-stage rankers (greedy H, GRC, NodeRank): those pick each
host for how rich it is, independently of where the node's neighbours went,
so virtual links end up on long paths; every extra hop costs bandwidth that
later requests needed. Here the request is grown around a root host:

1. Virtual nodes are ordered most-connected-first: start with the node of
   largest CPU + incident bandwidth, then always the unplaced node with the
   most bandwidth towards already placed nodes.
2. Each node goes to the host minimising the bandwidth it will consume,
   sum over links to placed neighbours of bw x hops, where hops are counted
   over the edges that still have that link's bandwidth (exact BFS on the
   residual graph, so congestion is seen, not guessed); ties go to the host
   with more residual CPU and adjacent bandwidth. Its links are routed at
   once on those fewest-hop feasible paths (node and link mapping in one
   stage, so a host is only accepted if its links fit).
3. If the best host's links do not fit, the next ``CANDIDATES`` hosts are
   tried (local backtracking); the whole growth is repeated from several
   root hosts chosen for the residual resources of their neighbourhood,
   and the cheapest complete embedding (CPU + bw x path length) wins; the
   search stops early when an embedding reaches the lower bound (every
   virtual link on a single hop).
"""

from __future__ import annotations

from vnetlib.embedding.algorithms.common import (
    Options,
    bfs_dist,
    map_link,
    node_failure,
    node_fits,
)
from vnetlib.embedding.graph import RequestView, SubstrateView
from vnetlib.embedding.state import EPS, Failure, Placement, Residual, Trial

NAME = "coordinated"

ROOTS = 6
CANDIDATES = 3


def virtual_order(req: RequestView) -> list[int]:
    weight = [req.cpu[v] + sum(req.links[i].bw for i in req.adj[v]) for v in range(req.n)]
    placed = [False] * req.n
    toward = [0.0] * req.n  # bandwidth towards placed nodes
    order: list[int] = []
    for _ in range(req.n):
        best = -1
        for v in range(req.n):
            if placed[v]:
                continue
            if best < 0 or (toward[v], weight[v]) > (toward[best], weight[best]):
                best = v
        placed[best] = True
        order.append(best)
        for i in req.adj[best]:
            link = req.links[i]
            other = link.b if link.a == best else link.a
            toward[other] += link.bw + EPS  # +EPS: zero-bandwidth links still bind
    return order


def local_resource(sub: SubstrateView, res: Residual, s: int) -> float:
    return res.cpu[s] * (1.0 + sum(res.bw[e] for _, e in sub.adj[s]))


def neighbourhood_resource(sub: SubstrateView, res: Residual, s: int, min_cpu: float) -> float:
    """Residual CPU of ``s`` and of its neighbours that could still host a
    node of the request, plus the residual bandwidth joining them: how much
    of the request a root's neighbourhood can absorb in one hop."""
    total = res.cpu[s]
    for w, e in sub.adj[s]:
        if sub.hostable[w] and res.cpu[w] >= min_cpu:
            total += res.cpu[w] + res.bw[e]
    return total


def embed(
    sub: SubstrateView, res: Residual, req: RequestView, opts: Options
) -> Placement | Failure:
    if req.n == 0:
        return Placement(hosts=[], flows=[])
    for v in range(req.n):
        if not any(node_fits(sub, res, req, v, s) for s in range(sub.n)):
            return node_failure(sub, res, req, v)
    order = virtual_order(req)
    first = order[0]
    min_cpu = min(req.cpu)
    roots = [s for s in range(sub.n) if node_fits(sub, res, req, first, s)]
    score = {s: neighbourhood_resource(sub, res, s, min_cpu) for s in roots}
    roots.sort(key=lambda s: (-score[s], s))
    lower_bound = sum(req.cpu)
    if opts.one_node_per_host:
        lower_bound += sum(link.bw for link in req.links)
    best: Placement | None = None
    best_cost = float("inf")
    failure: Failure | None = None
    failure_depth = -1
    for root in roots[:ROOTS]:
        got, depth = grow(sub, res, req, opts, order, root)
        if isinstance(got, Failure):
            if depth > failure_depth:
                failure, failure_depth = got, depth
            continue
        cost = got.cost(req)
        if cost < best_cost - EPS:
            best, best_cost = got, cost
            if cost <= lower_bound + EPS:
                break
    if best is not None:
        return best
    assert failure is not None
    return failure


def grow(
    sub: SubstrateView,
    res: Residual,
    req: RequestView,
    opts: Options,
    order: list[int],
    root: int,
) -> tuple[Placement | Failure, int]:
    """Place ``order`` starting with its first node on ``root``; return the
    placement or the failure and how many nodes were placed before it."""
    trial = Trial(res)
    hosts = [-1] * req.n
    used: set[int] = set()
    flows: list[list[tuple[list[int], float]]] = [[] for _ in req.links]
    try:
        for depth, v in enumerate(order):
            placed_links = [
                i
                for i in req.adj[v]
                if hosts[req.links[i].a if req.links[i].b == v else req.links[i].b] >= 0
            ]
            placed_links.sort(key=lambda i: -req.links[i].bw)
            if depth == 0:
                candidates = [root]
            else:
                candidates = rank_hosts(sub, res, req, v, placed_links, hosts, used, opts)
            if not candidates:
                return unreachable(sub, res, req, v, placed_links, hosts, used, opts), depth
            failure: Failure | None = None
            for c in candidates[:CANDIDATES]:
                mark = trial.mark()
                trial.take_node(c, req.cpu[v], req.memory[v])
                hosts[v] = c
                mapped: list[tuple[int, list[tuple[list[int], float]]]] = []
                for i in placed_links:
                    link = req.links[i]
                    got = map_link(trial, req, link, hosts[link.a], hosts[link.b], opts)
                    if isinstance(got, Failure):
                        failure = got
                        break
                    mapped.append((i, got))
                else:
                    for i, f in mapped:
                        flows[i] = f
                    used.add(c)
                    break
                hosts[v] = -1
                trial.rollback(mark)
            else:
                assert failure is not None
                return failure, depth
        return Placement(hosts=hosts, flows=flows), req.n
    finally:
        trial.rollback()


def rank_hosts(
    sub: SubstrateView,
    res: Residual,
    req: RequestView,
    v: int,
    placed_links: list[int],
    hosts: list[int],
    used: set[int],
    opts: Options,
) -> list[int]:
    """Feasible hosts for ``v``, best first (see the module docstring)."""
    dists: list[tuple[float, list[int]]] = []
    for i in placed_links:
        link = req.links[i]
        other = hosts[link.a] if link.b == v else hosts[link.b]
        need = 0.0 if req.path_splitting else link.bw
        dists.append((link.bw + EPS, bfs_dist(sub, res.bw, other, need)))
    one = opts.one_node_per_host
    price = sub.price
    cpu_v = req.cpu[v]
    scored: list[tuple[float, float, int]] = []
    for s in range(sub.n):
        if one and s in used:
            continue
        if not node_fits(sub, res, req, v, s):
            continue
        cost = price[s] * cpu_v
        reachable = True
        for bw, dist in dists:
            d = dist[s]
            if d < 0:
                reachable = False
                break
            cost += bw * d
        if reachable:
            scored.append((cost, -local_resource(sub, res, s), s))
    scored.sort()
    return [s for _, _, s in scored]


def unreachable(
    sub: SubstrateView,
    res: Residual,
    req: RequestView,
    v: int,
    placed_links: list[int],
    hosts: list[int],
    used: set[int],
    opts: Options,
) -> Failure:
    """Reason when no host can take ``v``: capacity, or no bandwidth to reach."""
    one = opts.one_node_per_host
    fits = [s for s in range(sub.n) if not (one and s in used) and node_fits(sub, res, req, v, s)]
    if not fits or not placed_links:
        return node_failure(sub, res, req, v, used if one else None)
    link = max((req.links[i] for i in placed_links), key=lambda lk: lk.bw)
    other = hosts[link.a] if link.b == v else hosts[link.b]
    return Failure(
        "bandwidth",
        f"{sub.names[other]!r}-*",
        f"virtual link {link.id!r} {link.key!r} needs bandwidth {link.bw:g} from host "
        f"{sub.names[other]!r}; none of the {len(fits)} hosts with room for "
        f"{req.names[v]!r} is reachable on paths with that much residual bandwidth",
    )
