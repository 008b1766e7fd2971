"""The ledger's typed records: slivers and what they hold, with a JSON round trip.

A sliver is the PIP's unit of sale (GENI AM v3 terms): a part of a VNet,
embedded on the substrate, allocated until an expiry, then provisioned
(deployed) and joined with its peers at its boundary links.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from vnetlib import naming


class State(StrEnum):
    ALLOCATED = "allocated"
    PROVISIONING = "provisioning"
    PROVISIONED = "provisioned"  # deployed; some boundary links not joined yet
    READY = "ready"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"
    EXPIRED = "expired"


RUNNING, STOPPED, PAUSED = "running", "stopped", "paused"
NODE_STATES = (RUNNING, STOPPED, PAUSED)

# States whose sliver may have objects on the hosts, or hold substrate capacity.
LIVE = frozenset({State.ALLOCATED, State.PROVISIONING, State.PROVISIONED, State.READY,
                  State.DELETING, State.FAILED})
ENDED = frozenset({State.DELETED, State.EXPIRED})


@dataclass(frozen=True, slots=True)
class Flow:
    path: tuple[str, ...]
    bandwidth: float


@dataclass(frozen=True, slots=True)
class Embedding:
    """Where a sliver's nodes and links sit: host per node, substrate paths per link."""

    node_map: Mapping[str, str]
    link_map: Mapping[str, tuple[Flow, ...]]
    algorithm: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_map": dict(self.node_map),
            "link_map": {k: [{"path": list(f.path), "bandwidth": f.bandwidth} for f in flows]
                         for k, flows in self.link_map.items()},
            "algorithm": self.algorithm,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Embedding:
        return cls(
            {str(k): str(v) for k, v in d["node_map"].items()},
            {str(k): tuple(Flow(tuple(str(n) for n in f["path"]), float(f["bandwidth"]))
                           for f in flows) for k, flows in d["link_map"].items()},
            str(d.get("algorithm", "")),
        )


@dataclass(frozen=True, slots=True)
class Peer:
    """The provider at the other end of a boundary link, as the customer named it."""

    ref: str
    name: str
    url: str
    role: str  # initiator | responder


@dataclass(frozen=True, slots=True)
class Stitch:
    """A boundary link agreed with its peer: tunnel id, the peer's endpoint
    `address` and the carrier agreed in stitching (`encapsulation`: vxlan or
    click). `joined` once the local segment is deployed."""

    ref: str
    link: str
    vni: int
    address: str
    joined: bool = False
    encapsulation: str = "vxlan"

    def to_list(self) -> list[Any]:
        return [self.ref, self.link, self.vni, self.address, self.joined, self.encapsulation]

    @classmethod
    def from_list(cls, d: list[Any]) -> Stitch:
        """Also rows written before the carrier was a field: five items, the
        carrier in the address as ``click@address`` (VXLAN: the address alone)."""
        if len(d) > 5:
            carrier, address = str(d[5]), str(d[3])
        else:
            head, _, address = str(d[3]).rpartition("@")
            carrier = head or "vxlan"
        return cls(str(d[0]), str(d[1]), int(d[2]), address, bool(d[4]), carrier)


@dataclass(frozen=True, slots=True)
class Lock:
    """An operation in progress on a sliver: who runs it and until when it may."""

    op: str
    holder: str
    until: float


@dataclass(frozen=True, slots=True)
class Move:
    """A move of one virtual node to another host, recorded (under the sliver's
    lock) before any host is touched: what Delete and the reaper must also
    remove, and the embedding the sliver gets when the move succeeds."""

    node: str
    source: str
    target: str
    embedding: Embedding
    domain: str = ""  # a VM node: the domain that runs it on the target

    def to_list(self) -> list[Any]:
        return [self.node, self.source, self.target, self.embedding.to_dict(), self.domain]

    @classmethod
    def from_list(cls, d: list[Any]) -> Move:
        return cls(str(d[0]), str(d[1]), str(d[2]), Embedding.from_dict(d[3]), str(d[4]))


@dataclass(frozen=True, slots=True)
class Previous:
    """What a sliver was before a reshape (nodes and links added or taken
    away by its customer, e.g. a node moved to another provider), kept while
    the hosts change: Delete removes both, a failed reshape restores it."""

    spec_xml: str
    embedding: Embedding
    peers: tuple[Peer, ...]
    stitches: tuple[Stitch, ...]

    def to_list(self) -> list[Any]:
        return [self.spec_xml, self.embedding.to_dict(),
                [[p.ref, p.name, p.url, p.role] for p in self.peers],
                [s.to_list() for s in self.stitches]]

    @classmethod
    def from_list(cls, d: list[Any]) -> Previous:
        return cls(str(d[0]), Embedding.from_dict(d[1]), tuple(Peer(*p) for p in d[2]),
                   tuple(Stitch.from_list(s) for s in d[3]))


@dataclass(frozen=True, slots=True)
class Sliver:
    id: str
    substrate: str
    owner: str
    name: str
    state: State
    spec_xml: str
    embedding: Embedding
    price: float = 0.0
    expires: float | None = None
    peers: tuple[Peer, ...] = ()
    stitches: tuple[Stitch, ...] = ()
    deployed: bool = False  # something may be on the hosts: Delete must remove it
    lock: Lock | None = None
    error: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)
    node_states: Mapping[str, str] = field(default_factory=dict)  # absent: running
    # VM nodes that took a pool VM -> its domain (libvirt cannot rename a running one)
    domains: Mapping[str, str] = field(default_factory=dict)
    # VM nodes live-migrated since -> the domain that runs them now
    moved: Mapping[str, str] = field(default_factory=dict)
    moving: Move | None = None  # a move in progress (under the lock `migrate`)
    previous: Previous | None = None  # a reshape in progress (under the lock `reshape`)
    # The owner's URL for asking it to take a node away (`<evict>`); spoken to
    # only when the server's certificate names `owner`.
    callback: str = ""
    created: float = 0.0
    updated: float = 0.0
    version: int = 0

    def peer(self, ref: str) -> Peer | None:
        return next((p for p in self.peers if p.ref == ref), None)

    def stitch(self, ref: str) -> Stitch | None:
        return next((s for s in self.stitches if s.ref == ref), None)

    def with_stitches(self, stitches: list[Stitch]) -> Sliver:
        """This sliver with `stitches` added or replacing those of the same ref."""
        refs = {s.ref for s in stitches}
        return replace(self, stitches=(*[s for s in self.stitches if s.ref not in refs],
                                       *stitches))

    def domain(self, node: str) -> str:
        """The libvirt domain of VM node `node`: the pool VM it took, or its own."""
        return (self.moved.get(node) or self.domains.get(node)
                or naming.vnode_netns(self.substrate, self.id, node))

    def node_state(self, node: str) -> str:
        return self.node_states.get(node, RUNNING)

    @property
    def stopped(self) -> tuple[str, ...]:
        """The nodes that are not running (their links are down)."""
        return tuple(sorted(n for n, st in self.node_states.items() if st != RUNNING))

    @property
    def all_joined(self) -> bool:
        return (len(self.stitches) == len(self.peers)
                and all(s.joined for s in self.stitches))

    def data_json(self) -> str:
        """What the ledger keeps beside its indexed columns."""
        return json.dumps({
            "spec": self.spec_xml,
            "embedding": self.embedding.to_dict(),
            "price": self.price,
            "peers": [[p.ref, p.name, p.url, p.role] for p in self.peers],
            "stitches": [s.to_list() for s in self.stitches],
            "deployed": self.deployed,
            "lock": None if self.lock is None else [self.lock.op, self.lock.holder,
                                                    self.lock.until],
            "error": self.error,
            "timings": dict(self.timings),
            "node_states": dict(self.node_states),
            "domains": dict(self.domains),
            "moved": dict(self.moved),
            "moving": None if self.moving is None else self.moving.to_list(),
            "previous": None if self.previous is None else self.previous.to_list(),
            "callback": self.callback,
        })

    @classmethod
    def from_row(cls, *, id: str, substrate: str, owner: str, name: str, state: str,
                 expires: float | None, created: float, updated: float, version: int,
                 data: str) -> Sliver:
        d = json.loads(data)
        lock = d.get("lock")
        return cls(
            id=id, substrate=substrate, owner=owner, name=name, state=State(state),
            spec_xml=d["spec"], embedding=Embedding.from_dict(d["embedding"]),
            price=float(d["price"]), expires=expires,
            peers=tuple(Peer(*p) for p in d["peers"]),
            stitches=tuple(Stitch.from_list(s) for s in d["stitches"]),
            deployed=bool(d["deployed"]),
            lock=None if lock is None else Lock(lock[0], lock[1], float(lock[2])),
            error=d.get("error", ""), timings=d.get("timings", {}),
            node_states=d.get("node_states", {}),
            domains=d.get("domains", {}),
            moved=d.get("moved", {}),
            moving=None if d.get("moving") is None else Move.from_list(d["moving"]),
            previous=(None if d.get("previous") is None
                      else Previous.from_list(d["previous"])),
            callback=str(d.get("callback", "")),
            created=created, updated=updated, version=version,
        )
