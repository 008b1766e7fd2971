"""GRC ranking (Gong, Wen, Zhu, Lee, INFOCOM 2014).

L. Gong, Y. Wen, Z. Zhu, T. Lee, "Toward profit-seeking virtual network
embedding algorithm via global resource capacity", IEEE INFOCOM 2014.

The global resource capacity vector solves r = (1 - d) c + d M r, with
c_i = CPU_i / sum_j CPU_j and M_ij = bw(i, j) / sum_{k in N(j)} bw(j, k)
(0 without edge i-j), d = 0.85, iterated from r = c until the L2 change is
below 1e-4 (the paper's sigma). It is computed on residual capacities for
the substrate and on demands for the request. Node mapping: virtual nodes
by decreasing GRC, each onto the unused feasible substrate node of highest
GRC. Link mapping: shortest (fewest-hop) path with enough residual
bandwidth, virtual links by decreasing bandwidth (splitting, if allowed, as
in :mod:`greedy`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from vnetlib.embedding.algorithms.common import Options, node_failure, node_fits, two_stage
from vnetlib.embedding.graph import RequestView, SubstrateView
from vnetlib.embedding.state import Failure, Placement, Residual, Trial

NAME = "grc"

DAMPING = 0.85
SIGMA = 1e-4
MAX_ITER = 200


def grc_vector(
    cpu: Sequence[float],
    adj: Sequence[Sequence[tuple[int, float]]],
) -> list[float]:
    """GRC of a graph given node capacities and, per node, (neighbour, bw)."""
    n = len(cpu)
    total = sum(cpu)
    c = [x / total for x in cpu] if total > 0 else [1.0 / n] * n
    out = [sum(b for _, b in adj[j]) for j in range(n)]
    r = list(c)
    for _ in range(MAX_ITER):
        nxt = [(1.0 - DAMPING) * ci for ci in c]
        for j in range(n):
            if out[j] <= 0 or r[j] == 0.0:
                continue
            share = DAMPING * r[j] / out[j]
            for i, b in adj[j]:
                nxt[i] += share * b
        delta = math.sqrt(sum((a - b) ** 2 for a, b in zip(nxt, r, strict=True)))
        r = nxt
        if delta < SIGMA:
            break
    return r


def substrate_grc(sub: SubstrateView, res: Residual) -> list[float]:
    adj = [[(w, res.bw[e]) for w, e in sub.adj[s]] for s in range(sub.n)]
    cpu = [res.cpu[s] if sub.hostable[s] else 0.0 for s in range(sub.n)]
    return grc_vector(cpu, adj)


def request_grc(req: RequestView) -> list[float]:
    adj: list[list[tuple[int, float]]] = [[] for _ in range(req.n)]
    for link in req.links:
        adj[link.a].append((link.b, link.bw))
        adj[link.b].append((link.a, link.bw))
    return grc_vector(req.cpu, adj)


def grc_nodes(
    sub: SubstrateView, res: Residual, req: RequestView, opts: Options
) -> list[int] | Failure:
    rs = substrate_grc(sub, res)
    rv = request_grc(req)
    ranked = sorted(range(sub.n), key=lambda s: (-rs[s], s))
    hosts = [-1] * req.n
    used: set[int] = set()
    trial = Trial(res)  # so that co-located nodes see each other's CPU and memory
    try:
        for v in sorted(range(req.n), key=lambda v: (-rv[v], v)):
            for s in ranked:
                if opts.one_node_per_host and s in used:
                    continue
                if not node_fits(sub, res, req, v, s):
                    continue
                hosts[v] = s
                used.add(s)
                trial.take_node(s, req.cpu[v], req.memory[v])
                break
            else:
                return node_failure(sub, res, req, v, used if opts.one_node_per_host else None)
        return hosts
    finally:
        trial.rollback()


def embed(
    sub: SubstrateView, res: Residual, req: RequestView, opts: Options
) -> Placement | Failure:
    return two_stage(sub, res, req, opts, grc_nodes(sub, res, req, opts))
