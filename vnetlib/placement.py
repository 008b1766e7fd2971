"""The PIP's placement step: the embedding engine applied to what is left of
the substrate once the VNets already deployed on it are accounted for.

Each `vnet` command is a new process, so the engine's in-memory reservations do
not outlive it; the store keeps every VNet's embedding, and the residual
substrate is recomputed from them (pure) before each new request.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from typing import Any

from vnetlib.embedding import Embedder, Rejection
from vnetlib.spec.model import Substrate, VNetSpec

Embedding = dict[str, Any]


class EmbeddingRejected(RuntimeError):
    """The substrate cannot hold the request; the message names what ran out, where."""

    def __init__(self, rejection: Rejection) -> None:
        self.rejection = rejection
        super().__init__(
            f"VNet {rejection.request_id} cannot be embedded: {rejection.reason} "
            f"(resource: {rejection.resource}, at: {rejection.where})"
        )


def residual_substrate(
    substrate: Substrate, existing: Iterable[tuple[VNetSpec, Embedding]]
) -> Substrate:
    """`substrate` with the CPU, memory and bandwidth of `existing` VNets taken away."""
    cpu = {h.name: h.cpu for h in substrate.hosts}
    memory = {h.name: float(h.memory_mb) for h in substrate.hosts}
    bandwidth = {frozenset((link.a, link.b)): link.bandwidth_mbps for link in substrate.links}
    for spec, embedding in existing:
        node_map = embedding["node_map"]
        for node in spec.nodes:
            host = node_map[node.id]
            cpu[host] -= node.cpu
            memory[host] -= node.memory_mb
        for flows in embedding["link_map"].values():
            for flow in flows:
                path = flow["path"]
                for a, b in itertools.pairwise(path):
                    bandwidth[frozenset((a, b))] -= flow["bandwidth"]
    return dataclasses.replace(
        substrate,
        hosts=tuple(
            dataclasses.replace(h, cpu=max(cpu[h.name], 0.0), memory_mb=max(int(memory[h.name]), 0))
            for h in substrate.hosts
        ),
        links=tuple(
            dataclasses.replace(
                link, bandwidth_mbps=max(bandwidth[frozenset((link.a, link.b))], 0.0)
            )
            for link in substrate.links
        ),
    )


def embed_on_substrate(
    substrate: Substrate,
    spec: VNetSpec,
    vnet_id: str,
    existing: Iterable[tuple[VNetSpec, Embedding]] = (),
    *,
    algorithm: str | None = None,
) -> Embedding:
    """Embed `spec`; returns JSON-ready data: node_map, link_map (by link id:
    list of {path, bandwidth}), algorithm. Raises EmbeddingRejected."""
    embedder = Embedder(residual_substrate(substrate, existing), algorithm=algorithm, seed=0)
    result = embedder.embed(spec, vnet_id)
    if isinstance(result, Rejection):
        raise EmbeddingRejected(result)
    return {
        "node_map": {str(k): str(v) for k, v in result.node_map.items()},
        "link_map": {
            link_id: [{"path": [str(n) for n in f.path], "bandwidth": f.bandwidth} for f in flows]
            for link_id, flows in result.link_map_by_id.items()
        },
        "algorithm": result.algorithm,
    }
