"""Name -> algorithm. Every algorithm has the same signature:

``embed(sub: SubstrateView, res: Residual, req: RequestView, opts: Options)
-> Placement | Failure`` and leaves ``res`` exactly as it found it.
"""

from __future__ import annotations

from collections.abc import Callable

from vnetlib.embedding.algorithms import coordinated, grc, greedy, rwbfs
from vnetlib.embedding.algorithms.common import Options
from vnetlib.embedding.graph import RequestView, SubstrateView
from vnetlib.embedding.state import Failure, Placement, Residual

Algorithm = Callable[[SubstrateView, Residual, RequestView, Options], Placement | Failure]

ALGORITHMS: dict[str, Algorithm] = {
    coordinated.NAME: coordinated.embed,
    greedy.NAME: greedy.embed,
    grc.NAME: grc.embed,
    rwbfs.NAME: rwbfs.embed,
}

DEFAULT = coordinated.NAME

BASELINES: tuple[str, ...] = (greedy.NAME, grc.NAME, rwbfs.NAME)


def get(name: str | None) -> tuple[str, Algorithm]:
    key = DEFAULT if name is None else name
    try:
        return key, ALGORITHMS[key]
    except KeyError:
        known = ", ".join(sorted(ALGORITHMS))
        raise ValueError(f"unknown embedding algorithm {name!r} (known: {known})") from None
