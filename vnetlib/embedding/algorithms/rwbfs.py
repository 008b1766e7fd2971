"""RW-BFS: NodeRank + BFS backtracking node-and-link mapping (Cheng et al., 2011).

X. Cheng, S. Su, Z. Zhang, H. Wang, F. Yang, Y. Luo, J. Wang, "Virtual
network embedding through topology-aware node ranking", ACM SIGCOMM CCR
41(2), 2011. The paper's coordinated (one-stage) algorithm.

NodeRank: H(u) = CPU(u) x sum of bandwidth of u's links; a random walk that
jumps with probability 0.15 to any node v (proportionally to H(v)) and
otherwise moves to a neighbour v (proportionally to H(v)); NR is its
stationary vector, iterated from H / sum H until the L1 change is below
1e-4. Computed on residual capacities (substrate) and demands (request).

Mapping: a breadth-first search tree of the request is rooted at its
highest-NR node, children visited by decreasing NR. Each virtual node in
that order takes the first substrate node, by decreasing NR, that has the
CPU, is unused, and lets every virtual link to already placed nodes be
routed on a shortest path with enough bandwidth of at most ``MAX_HOPS``
hops (links are reserved as they are routed: nodes and links are mapped in
the same stage). When a node has no such host the search backtracks to the
previous node's next candidate, at most ``MAX_BACKTRACKS`` times in all.
The paper leaves the two bounds as parameters; we use 4 hops (above the
diameter of the benchmark substrates, so it rarely binds) and 10 backtracks.
"""

from __future__ import annotations

from collections import deque

from vnetlib.embedding.algorithms.common import Options, map_link, node_failure, node_fits
from vnetlib.embedding.graph import RequestView, SubstrateView
from vnetlib.embedding.state import Failure, Placement, Residual, Trial

NAME = "rw-bfs"

JUMP = 0.15
TOLERANCE = 1e-4
MAX_ITER = 200
MAX_HOPS = 4
MAX_BACKTRACKS = 10


def node_rank(h: list[float], nbrs: list[list[int]]) -> list[float]:
    n = len(h)
    total = sum(h)
    if total <= 0:
        return [1.0 / n] * n
    jump = [x / total for x in h]
    hn = [sum(h[w] for w in nbrs[u]) for u in range(n)]
    nr = list(jump)
    for _ in range(MAX_ITER):
        mass_jump = 0.0
        nxt = [0.0] * n
        for u in range(n):
            if hn[u] > 0:
                mass_jump += JUMP * nr[u]
                share = (1.0 - JUMP) * nr[u] / hn[u]
                for w in nbrs[u]:
                    nxt[w] += share * h[w]
            else:
                mass_jump += nr[u]
        for v in range(n):
            nxt[v] += mass_jump * jump[v]
        delta = sum(abs(a - b) for a, b in zip(nxt, nr, strict=True))
        nr = nxt
        if delta < TOLERANCE:
            break
    return nr


def substrate_rank(sub: SubstrateView, res: Residual) -> list[float]:
    h = [
        (res.cpu[s] if sub.hostable[s] else 0.0) * sum(res.bw[e] for _, e in sub.adj[s])
        for s in range(sub.n)
    ]
    return node_rank(h, [[w for w, _ in sub.adj[s]] for s in range(sub.n)])


def request_rank(req: RequestView) -> list[float]:
    nbrs: list[list[int]] = [[] for _ in range(req.n)]
    bwsum = [0.0] * req.n
    for link in req.links:
        nbrs[link.a].append(link.b)
        nbrs[link.b].append(link.a)
        bwsum[link.a] += link.bw
        bwsum[link.b] += link.bw
    return node_rank([req.cpu[v] * bwsum[v] for v in range(req.n)], nbrs)


def bfs_order(req: RequestView, nr: list[float]) -> list[int]:
    seen = [False] * req.n
    order: list[int] = []
    for root in sorted(range(req.n), key=lambda v: (-nr[v], v)):
        if seen[root]:
            continue
        seen[root] = True
        queue = deque([root])
        while queue:
            u = queue.popleft()
            order.append(u)
            children = []
            for i in req.adj[u]:
                link = req.links[i]
                w = link.b if link.a == u else link.a
                if not seen[w]:
                    seen[w] = True
                    children.append(w)
            children.sort(key=lambda w: (-nr[w], w))
            queue.extend(children)
    return order


def embed(
    sub: SubstrateView, res: Residual, req: RequestView, opts: Options
) -> Placement | Failure:
    if req.n == 0:
        return Placement(hosts=[], flows=[])
    nr = substrate_rank(sub, res)
    ranked = sorted(range(sub.n), key=lambda s: (-nr[s], s))
    order = bfs_order(req, request_rank(req))
    trial = Trial(res)
    hosts = [-1] * req.n
    used: set[int] = set()
    flows: list[list[tuple[list[int], float]]] = [[] for _ in req.links]
    backtracks = [0]
    last: list[Failure | None] = [None]

    def place(k: int) -> bool:
        if k == len(order):
            return True
        v = order[k]
        links = [
            i
            for i in req.adj[v]
            if hosts[req.links[i].a if req.links[i].b == v else req.links[i].b] >= 0
        ]
        for s in ranked:
            if opts.one_node_per_host and s in used:
                continue
            if not node_fits(sub, res, req, v, s):
                continue
            mark = trial.mark()
            trial.take_node(s, req.cpu[v], req.memory[v])
            hosts[v] = s
            ok = True
            for i in links:
                link = req.links[i]
                got = map_link(trial, req, link, hosts[link.a], hosts[link.b], opts)
                if isinstance(got, Failure):
                    last[0] = got
                    ok = False
                    break
                if any(len(p) - 1 > MAX_HOPS for p, _ in got):
                    last[0] = Failure(
                        "bandwidth",
                        f"virtual link {link.id!r}",
                        f"no path of at most {MAX_HOPS} hops with bandwidth {link.bw:g} "
                        f"for virtual link {link.id!r}",
                    )
                    ok = False
                    break
                flows[i] = got
            if ok:
                used.add(s)
                if place(k + 1):
                    return True
                used.discard(s)
                if backtracks[0] >= MAX_BACKTRACKS:
                    hosts[v] = -1
                    trial.rollback(mark)
                    return False
                backtracks[0] += 1
            hosts[v] = -1
            trial.rollback(mark)
        if last[0] is None:
            last[0] = node_failure(sub, res, req, v, used if opts.one_node_per_host else None)
        return False

    try:
        if place(0):
            return Placement(hosts=list(hosts), flows=[list(f) for f in flows])
    finally:
        trial.rollback()
    assert last[0] is not None
    return last[0]
