"""The public entry point: :class:`Embedder`."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import networkx as nx

from vnetlib.embedding import registry
from vnetlib.embedding.algorithms.common import Options
from vnetlib.embedding.graph import (
    RequestView,
    SubstrateView,
    adapt_request,
    adapt_substrate,
    names_of,
)
from vnetlib.embedding.registry import Algorithm
from vnetlib.embedding.result import Mapping, PathFlow, Rejection
from vnetlib.embedding.state import EPS, Failure, Placement, Reservation, Residual
from vnetlib.spec.model import Substrate, VNetSpec


@dataclass(slots=True)
class _Active:
    mapping: Mapping
    reservation: Reservation


class Embedder:
    """Online virtual network embedding onto one substrate.

    ``substrate``: a ``networkx.Graph`` (nodes with ``cpu`` and optionally
    ``memory``, ``location``; edges with ``bw`` and optionally ``latency``) or
    the project's :class:`~vnetlib.spec.model.Substrate`.
    ``algorithm``: a registered name (see :data:`ALGORITHMS`), ``None`` for
    the default (``"coordinated"``).
    ``one_node_per_host``: at most one virtual node of a request per
    substrate host. ``None`` means True for networkx input (the literature's
    rule) and False for the project's Substrate model (a lab of 3 hosts must
    take a 6-node VNet).
    ``seed``: kept for reproducibility; every algorithm here is deterministic
    for a given seed (ties are broken by node order).

    Successful embeddings reserve CPU, memory and bandwidth until
    :meth:`release`; rejections reserve nothing.
    """

    def __init__(
        self,
        substrate: nx.Graph | Substrate | SubstrateView,
        algorithm: str | None = None,
        seed: int = 0,
        one_node_per_host: bool | None = None,
    ) -> None:
        self.substrate = adapt_substrate(substrate)
        self.algorithm, self._algo = registry.get(algorithm)
        self.seed = seed
        if one_node_per_host is None:
            one_node_per_host = not isinstance(substrate, Substrate)
        self.one_node_per_host = one_node_per_host
        self.residual = Residual(self.substrate)
        self._active: dict[Hashable, _Active] = {}

    # -- embedding ---------------------------------------------------------

    def embed(
        self,
        request: nx.Graph | VNetSpec | RequestView,
        request_id: Hashable = None,
        *,
        algorithm: str | None = None,
        one_node_per_host: bool | None = None,
        max_roots: int | None = None,
    ) -> Mapping | Rejection:
        """Embed ``request`` and reserve its resources, or say why not.

        ``request_id`` defaults to the VNet name for a VNetSpec; it must not
        be active already. ``algorithm`` and ``one_node_per_host`` override
        the embedder's settings for this call only; ``max_roots`` widens or
        narrows the search of ``coordinated`` (default 6 root hosts).
        """
        if request_id is None:
            if isinstance(request, VNetSpec):
                request_id = request.name
            else:
                raise ValueError("request_id is required for graph requests")
        name, algo = (self.algorithm, self._algo) if algorithm is None else registry.get(algorithm)
        if request_id in self._active:
            return Rejection(
                request_id,
                "duplicate",
                f"request {request_id!r}",
                f"request id {request_id!r} is already embedded; release it first",
                name,
            )
        req = adapt_request(request)
        one = self.one_node_per_host if one_node_per_host is None else one_node_per_host
        opts = Options(one_node_per_host=one, seed=self.seed, max_roots=max_roots)
        got = self._precheck(req, opts) or algo(self.substrate, self.residual, req, opts)
        if isinstance(got, Failure):
            return Rejection(request_id, got.resource, got.where, got.message, name)
        return self._commit(request_id, req, got, name)

    def _precheck(self, req: RequestView, opts: Options) -> Failure | None:
        """Cheap global tests that give a precise reason for hopeless requests."""
        if opts.one_node_per_host:
            hostable = sum(1 for h in self.substrate.hostable if h)
            if req.n > hostable:
                return Failure(
                    "hosts",
                    f"substrate ({hostable} hosts)",
                    f"{req.n} virtual nodes need {req.n} distinct hosts; the substrate "
                    f"has {hostable} (one virtual node per host)",
                )
        return None

    def _commit(
        self, request_id: Hashable, req: RequestView, placement: Placement, name: str
    ) -> Mapping:
        sub = self.substrate
        reservation = self.residual.reservation_for(req, placement)
        self.residual.commit(reservation)
        self._check_nonnegative(reservation)
        link_map: dict[tuple[Hashable, Hashable], list[PathFlow]] = {}
        by_id: dict[str, list[PathFlow]] = {}
        for link, flows in zip(req.links, placement.flows, strict=True):
            pf = [PathFlow(names_of(sub, path), bw) for path, bw in flows]
            link_map[link.key] = pf
            by_id[link.id] = pf
        mapping = Mapping(
            request_id=request_id,
            node_map={req.names[v]: sub.names[s] for v, s in enumerate(placement.hosts)},
            link_map=link_map,
            link_map_by_id=by_id,
            algorithm=name,
            revenue=req.revenue(),
            cost=placement.cost(req),
        )
        self._active[request_id] = _Active(mapping, reservation)
        return mapping

    def _check_nonnegative(self, reservation: Reservation) -> None:
        res = self.residual
        bad = [n for n, _ in reservation.cpu if res.cpu[n] < -EPS or res.memory[n] < -EPS]
        bad += [e for e, _ in reservation.bw if res.bw[e] < -EPS]
        if bad:  # an algorithm bug: never leave the substrate oversubscribed
            res.release(reservation)
            raise RuntimeError(f"embedding algorithm {self.algorithm!r} oversubscribed {bad}")

    # -- teardown and inspection -------------------------------------------

    def release(self, request_id: Hashable) -> bool:
        """Give back everything ``request_id`` reserved; False if not active."""
        active = self._active.pop(request_id, None)
        if active is None:
            return False
        self.residual.release(active.reservation)
        return True

    def mapping(self, request_id: Hashable) -> Mapping:
        return self._active[request_id].mapping

    @property
    def active(self) -> list[Hashable]:
        return list(self._active)

    def residual_cpu(self, node: Hashable) -> float:
        return self.residual.cpu[self.substrate.index[node]]

    def residual_memory(self, node: Hashable) -> float:
        return self.residual.memory[self.substrate.index[node]]

    def residual_bw(self, u: Hashable, v: Hashable) -> float:
        idx = self.substrate.index
        return self.residual.bw[self.substrate.edge_index[(idx[u], idx[v])]]

    def residual_graph(self) -> nx.Graph:
        """A copy of the substrate with residual ``cpu``, ``memory``, ``bw``."""
        sub, res = self.substrate, self.residual
        g = nx.Graph()
        for s, name in enumerate(sub.names):
            g.add_node(name, cpu=res.cpu[s], memory=res.memory[s], location=sub.location[s])
        for e, (a, b) in enumerate(sub.edges):
            g.add_edge(sub.names[a], sub.names[b], bw=res.bw[e], latency=sub.latency[e])
        return g


ALGORITHMS: tuple[str, ...] = tuple(registry.ALGORITHMS)

__all__ = ["ALGORITHMS", "Algorithm", "Embedder"]
