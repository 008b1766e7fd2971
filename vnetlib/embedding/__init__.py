"""Virtual network embedding: map VNets onto a PIP's substrate.

Public API (see docs/embedding.md)::

    from vnetlib.embedding import Embedder
    emb = Embedder(substrate_graph_or_model, algorithm=None, seed=0)
    result = emb.embed(request_graph_or_vnetspec, request_id)
    if result:                      # Mapping
        result.node_map, result.link_map
    else:                           # Rejection
        result.resource, result.where, result.reason
    emb.release(request_id)
"""

from vnetlib.embedding.embedder import ALGORITHMS, Embedder
from vnetlib.embedding.multipip import (
    BoundaryLink,
    InterPipLink,
    PipAdvert,
    PipSplit,
    split_across_pips,
)
from vnetlib.embedding.registry import BASELINES, DEFAULT
from vnetlib.embedding.result import Mapping, PathFlow, Rejection
from vnetlib.embedding.validator import validate

__all__ = [
    "ALGORITHMS",
    "BASELINES",
    "DEFAULT",
    "BoundaryLink",
    "Embedder",
    "InterPipLink",
    "Mapping",
    "PathFlow",
    "PipAdvert",
    "PipSplit",
    "Rejection",
    "split_across_pips",
    "validate",
]
