"""Our default: coordinated, neighbourhood-growing node-and-link mapping.

Why it beats two-stage rankers (greedy H, GRC, NodeRank): those pick each
host for how rich it is, independently of where the node's neighbours went,
so virtual links end up on long paths, and every extra hop spends bandwidth
that later requests needed. Here the request is grown around a root host,
nodes and links mapped in the same stage:

1. Virtual nodes are ordered most-connected-first: the node of largest
   CPU + incident bandwidth, then always the unplaced node with the most
   bandwidth towards already placed nodes.
2. Candidate hosts for a node are scored by a lower bound of the bandwidth
   its links to placed neighbours will consume: sum of bw x hop distance on
   the bare topology (cached BFS per source), only over the ``POOL``
   feasible hosts nearest to the host of its heaviest neighbour. Then, best
   bound first, up to ``EVALUATIONS`` candidates are really routed (fewest-
   hop paths over edges with enough residual bandwidth, latency bounds and
   splitting honoured) and the cheapest real outcome wins; since bounds
   never exceed real costs, evaluation stops as soon as the next bound is
   no better than the best real cost (lazy, A*-like). Ties go to the host
   with more residual CPU and adjacent bandwidth.
3. The growth is repeated from ``ROOTS`` root hosts, those whose one-hop
   neighbourhood has the most residual CPU and bandwidth, and the cheapest
   complete embedding (CPU + bw x path length) is kept; a growth is
   abandoned once it cannot beat the best so far (branch and bound), and
   the search stops early at the lower bound (every link on one hop).

Failure on every root gives the reason of the growth that got furthest.
Everything is deterministic (ties by node index).
"""

from __future__ import annotations

from collections.abc import Iterable

from vnetlib.embedding.algorithms.common import (
    Options,
    map_link,
    node_failure,
    node_fits,
)
from vnetlib.embedding.graph import RequestView, SubstrateView
from vnetlib.embedding.state import EPS, Failure, Placement, Residual, Trial

NAME = "coordinated"

ROOTS = 6
# Hosts whose links are actually routed per virtual node (best estimates first).
EVALUATIONS = 6
# Only the POOL feasible hosts nearest to the heaviest placed neighbour are scored.
POOL = 48


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
    lower_bound = sum(req.cpu) + sum(
        min((sub.price[s] for s in range(sub.n) if sub.hostable[s]), default=0.0) * c
        for c in req.cpu
    )
    if opts.one_node_per_host:
        lower_bound += sum(link.bw for link in req.links)
    best: Placement | None = None
    best_cost = float("inf")
    failure: Failure | None = None
    failure_depth = -1
    for root in roots[: opts.max_roots or ROOTS]:
        got, depth = grow(sub, res, req, opts, order, root, best_cost)
        if got is None:
            continue
        if isinstance(got, Failure):
            if depth > failure_depth:
                failure, failure_depth = got, depth
            continue
        cost = got.cost(req) + sum(
            sub.price[h] * req.cpu[v] for v, h in enumerate(got.hosts)
        )  # the objective: the literature's cost plus host prices (multi-PIP view)
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
    bound: float = float("inf"),
) -> tuple[Placement | Failure | None, int]:
    """Place ``order`` starting with its first node on ``root``; return the
    placement or the failure and how many nodes were placed before it, or
    None as soon as the placement cannot cost less than ``bound`` (the best
    embedding found from another root: branch and bound)."""
    trial = Trial(res)
    hop = 1.0 if opts.one_node_per_host else 0.0
    spent = sum(req.cpu) + sub.price[root] * req.cpu[order[0]]
    ahead = hop * sum(link.bw for link in req.links)
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
                candidates = [(0.0, root)]
            else:
                candidates = rank_hosts(sub, res, req, v, placed_links, hosts, used, opts)
            if not candidates:
                return unreachable(sub, res, req, v, placed_links, hosts, used, opts), depth
            failure: Failure | None = None
            best: tuple[float, int, list[tuple[int, list[tuple[list[int], float]]]]] | None
            best = None
            for k, (estimate, c) in enumerate(candidates):
                # Estimates are lower bounds: stop once one is no better than
                # the best real cost found.
                if k >= EVALUATIONS or (best is not None and best[0] <= estimate + EPS):
                    break
                mark = trial.mark()
                trial.take_node(c, req.cpu[v], req.memory[v])
                hosts[v] = c
                mapped: list[tuple[int, list[tuple[list[int], float]]]] = []
                cost = sub.price[c] * req.cpu[v]
                for i in placed_links:
                    link = req.links[i]
                    got = map_link(trial, req, link, hosts[link.a], hosts[link.b], opts)
                    if isinstance(got, Failure):
                        failure = got
                        break
                    mapped.append((i, got))
                    cost += sum(bw * (len(p) - 1) for p, bw in got)
                    if best is not None and cost >= best[0] - EPS:
                        break  # already no better than the best candidate
                else:
                    if best is None or cost < best[0] - EPS:
                        best = (cost, c, mapped)
                hosts[v] = -1
                trial.rollback(mark)
            if best is None:
                assert failure is not None
                return failure, depth
            cost, c, mapped = best
            spent += cost
            ahead -= hop * sum(req.links[i].bw for i in placed_links)
            if spent + ahead >= bound - EPS:
                return None, depth
            trial.take_node(c, req.cpu[v], req.memory[v])
            hosts[v] = c
            used.add(c)
            for i, f in mapped:
                flows[i] = f
                for p, bw in f:
                    trial.take_path(p, bw)
        return Placement(hosts=hosts, flows=flows), req.n
    finally:
        trial.rollback()


def static_hops(sub: SubstrateView, src: int) -> tuple[list[int], list[int]]:
    """Hop distances from ``src`` on the bare topology and the nodes in
    BFS (nearest-first) order; cached per substrate, as topology is fixed."""
    key = ("hops", src)
    got = sub.cache.get(key)
    if got is None:
        dist = [-1] * sub.n
        dist[src] = 0
        order = [src]
        adj = sub.adj
        k = 0
        while k < len(order):
            u = order[k]
            k += 1
            du = dist[u] + 1
            for w, _ in adj[u]:
                if dist[w] < 0:
                    dist[w] = du
                    order.append(w)
        got = (dist, order)
        sub.cache[key] = got
    return got


def rank_hosts(
    sub: SubstrateView,
    res: Residual,
    req: RequestView,
    v: int,
    placed_links: list[int],
    hosts: list[int],
    used: set[int],
    opts: Options,
) -> list[tuple[float, int]]:
    """Feasible hosts for ``v`` with a lower bound of the bandwidth their
    links will consume, best first (see the module docstring)."""
    one = opts.one_node_per_host
    price = sub.price
    cpu_v = req.cpu[v]
    dists: list[tuple[float, list[int]]] = []
    pool: Iterable[int]
    for i in placed_links:
        link = req.links[i]
        other = hosts[link.a] if link.b == v else hosts[link.b]
        dists.append((link.bw + EPS, static_hops(sub, other)[0]))
    if placed_links:
        heaviest = req.links[placed_links[0]]
        main = hosts[heaviest.a] if heaviest.b == v else hosts[heaviest.b]
        pool = static_hops(sub, main)[1]
        limit = POOL
    else:
        pool = range(sub.n)
        limit = sub.n
    scored: list[tuple[float, int]] = []
    # node_fits, inlined: this loop is the hot spot of the algorithm.
    rcpu, rmem, hostable, location = res.cpu, res.memory, sub.hostable, sub.location
    need_cpu, need_mem = cpu_v - EPS, req.memory[v] - EPS
    loc, allowed = req.location[v], req.allowed_locations
    for s in pool:
        if (one and s in used) or not hostable[s] or rcpu[s] < need_cpu or rmem[s] < need_mem:
            continue
        if (loc is not None and location[s] != loc) or (
            allowed is not None and location[s] not in allowed
        ):
            continue
        cost = price[s] * cpu_v
        for bw, dist in dists:
            d = dist[s]
            if d < 0:
                break
            cost += bw * d
        else:
            scored.append((cost, s))
            if len(scored) >= limit:
                break
    if not placed_links:  # a new component of the request: richest hosts first
        scored.sort(key=lambda cs: (cs[0], -local_resource(sub, res, cs[1]), cs[1]))
        return scored
    scored.sort()
    # Tie-break (and near-ties) among the first few by local residual resources.
    head = scored[:EVALUATIONS]
    head.sort(key=lambda cs: (cs[0], -local_resource(sub, res, cs[1])))
    return head + scored[EVALUATIONS:]


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
