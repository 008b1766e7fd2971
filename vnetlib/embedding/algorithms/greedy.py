"""Greedy node mapping + k-shortest-path link mapping (Yu et al., 2008).

M. Yu, Y. Yi, J. Rexford, M. Chiang, "Rethinking virtual network embedding:
substrate support for path splitting and migration", CCR 38(2), 2008.

Node stage: virtual nodes by decreasing CPU demand, each onto the feasible
substrate node with the most *available resource* H(s) = residual CPU(s) x
sum of residual bandwidth of the links adjacent to s. Link stage: virtual
links by decreasing bandwidth, each on the first of the k shortest (hop count)
paths with enough residual bandwidth. With k unbounded, the first feasible
path of Yen's enumeration is the fewest-hop path over edges with enough
bandwidth, which is what we compute (a BFS; identical up to ties). When the
request allows splitting, a link no single path can carry is split (greedy
successive paths, instead of the paper's multi-commodity-flow LP).
"""

from __future__ import annotations

from vnetlib.embedding.algorithms.common import Options, node_failure, node_fits, two_stage
from vnetlib.embedding.graph import RequestView, SubstrateView
from vnetlib.embedding.state import Failure, Placement, Residual, Trial

NAME = "greedy-ksp"


def available_resource(sub: SubstrateView, res: Residual, s: int) -> float:
    bw = res.bw
    return res.cpu[s] * sum(bw[e] for _, e in sub.adj[s])


def greedy_nodes(
    sub: SubstrateView, res: Residual, req: RequestView, opts: Options
) -> list[int] | Failure:
    h = [available_resource(sub, res, s) for s in range(sub.n)]
    order = sorted(range(req.n), key=lambda v: (-req.cpu[v], v))
    hosts = [-1] * req.n
    used: set[int] = set()
    trial = Trial(res)  # so that co-located nodes see each other's CPU and memory
    try:
        for v in order:
            best = -1
            for s in range(sub.n):
                if opts.one_node_per_host and s in used:
                    continue
                if not node_fits(sub, res, req, v, s):
                    continue
                if best < 0 or h[s] > h[best]:
                    best = s
            if best < 0:
                return node_failure(sub, res, req, v, used if opts.one_node_per_host else None)
            hosts[v] = best
            used.add(best)
            trial.take_node(best, req.cpu[v], req.memory[v])
        return hosts
    finally:
        trial.rollback()


def embed(
    sub: SubstrateView, res: Residual, req: RequestView, opts: Options
) -> Placement | Failure:
    return two_stage(sub, res, req, opts, greedy_nodes(sub, res, req, opts))
