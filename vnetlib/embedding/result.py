"""Public results of :meth:`Embedder.embed`: a mapping or a rejection."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple


class PathFlow(NamedTuple):
    """One substrate path of a virtual link and the bandwidth it carries.

    ``path`` runs from the host of the link's first end to the host of its
    second end; it has a single node when both ends share a host.
    """

    path: tuple[Hashable, ...]
    bandwidth: float


@dataclass(frozen=True, slots=True)
class Mapping:
    """A successful embedding.

    ``node_map``: virtual node -> substrate node. ``link_map``: virtual edge
    ``(u, v)`` (as the request lists it) -> its paths, each a
    :class:`PathFlow` ``(path, bandwidth)``; one path unless split.
    ``link_map_by_id``: the same, keyed by virtual link id.
    """

    request_id: Hashable
    node_map: dict[Hashable, Hashable]
    link_map: dict[tuple[Hashable, Hashable], list[PathFlow]]
    link_map_by_id: dict[str, list[PathFlow]]
    algorithm: str
    revenue: float
    cost: float
    accepted: Literal[True] = True

    def paths(self, u: Hashable, v: Hashable) -> list[PathFlow]:
        """Paths of virtual edge ``(u, v)``, whichever way the request listed it
        (reversed paths are returned for ``(v, u)``)."""
        if (u, v) in self.link_map:
            return self.link_map[(u, v)]
        return [PathFlow(f.path[::-1], f.bandwidth) for f in self.link_map[(v, u)]]

    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused request and why.

    ``resource`` is one of ``cpu``, ``memory``, ``bandwidth``, ``latency``,
    ``location``, ``hosts`` (not enough distinct hosts), ``topology`` or
    ``duplicate``; ``where`` names the substrate element (host, host pair,
    location) or virtual element concerned; ``reason`` is a sentence.
    """

    request_id: Hashable
    resource: str
    where: str
    reason: str
    algorithm: str
    attempts: tuple[str, ...] = field(default=())
    accepted: Literal[False] = False

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"request {self.request_id!r} rejected ({self.resource} at {self.where}): " + (
            self.reason
        )
