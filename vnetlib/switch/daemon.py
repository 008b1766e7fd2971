"""The PIP's switch daemon: one VLAN id per virtual link segment, access ports
towards the nodes' veths, trunks between switches.

VLAN ids are a substrate resource: :class:`VlanPool` keeps the allocations in
a small SQLite file of its own (under the lab's / PIP's directory), so an id in
use is never handed out again, also across processes (``BEGIN IMMEDIATE``)
and restarts. Reserved by default: VLAN 1 (the default VLAN of most switches)
and :data:`PARKING_VLAN`, on which an inter-switch port sits while it carries
no segment (an OVS trunk with an empty VLAN list would carry every VLAN).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from vnetlib.switch.driver import SwitchDriver

VLAN_MIN = 1
VLAN_MAX = 4094
PARKING_VLAN = 4094
RESERVED = frozenset({1, PARKING_VLAN})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vlan (
    substrate TEXT NOT NULL,
    vlan INTEGER NOT NULL CHECK (vlan BETWEEN 1 AND 4094),
    vnet TEXT NOT NULL,
    segment TEXT NOT NULL,
    PRIMARY KEY (substrate, vlan),
    UNIQUE (substrate, vnet, segment)
);
CREATE TABLE IF NOT EXISTS vlan_port (
    substrate TEXT NOT NULL,
    vnet TEXT NOT NULL,
    segment TEXT NOT NULL,
    switch TEXT NOT NULL,
    port TEXT NOT NULL,
    PRIMARY KEY (substrate, switch, port)
);
"""


class VlanError(RuntimeError):
    """No free VLAN id, or a port already serving another segment."""


@dataclass(frozen=True, slots=True)
class Allocation:
    vlan: int
    vnet: str
    segment: str


@dataclass(frozen=True, slots=True)
class PortRef:
    """A node-facing port: which switch (driver name), which port."""

    switch: str
    port: str


class VlanPool:
    """The VLAN ids of one substrate (``substrate``), in SQLite at ``path``."""

    def __init__(self, path: Path, substrate: str,
                 reserved: Iterable[int] = RESERVED) -> None:
        self.path = path
        self.substrate = substrate
        self.reserved = frozenset(reserved)
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._db()) as db, db:
            db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def capacity(self) -> int:
        return sum(1 for v in range(VLAN_MIN, VLAN_MAX + 1) if v not in self.reserved)

    def free(self) -> int:
        """How many ids are left (the quote-time check: refuse if too few)."""
        return self.capacity() - len(self.in_use())

    def in_use(self) -> dict[int, Allocation]:
        with closing(self._db()) as db:
            rows = db.execute("SELECT vlan, vnet, segment FROM vlan WHERE substrate = ?",
                              (self.substrate,)).fetchall()
        return {v: Allocation(v, n, s) for v, n, s in rows}

    def lookup(self, vnet: str, segment: str) -> int | None:
        with closing(self._db()) as db:
            row = db.execute(
                "SELECT vlan FROM vlan WHERE substrate = ? AND vnet = ? AND segment = ?",
                (self.substrate, vnet, segment)).fetchone()
        return int(row[0]) if row else None

    def allocate(self, vnet: str, segment: str) -> int:
        """The segment's VLAN id: its existing one, else the lowest free id."""
        with closing(self._db()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT vlan FROM vlan WHERE substrate = ? AND vnet = ? AND segment = ?",
                    (self.substrate, vnet, segment)).fetchone()
                if row:
                    db.execute("COMMIT")
                    return int(row[0])
                used = {v for (v,) in db.execute(
                    "SELECT vlan FROM vlan WHERE substrate = ?", (self.substrate,))}
                vid = next((v for v in range(VLAN_MIN, VLAN_MAX + 1)
                            if v not in used and v not in self.reserved), None)
                if vid is None:
                    raise VlanError(f"substrate {self.substrate}: no free VLAN id "
                                    f"({len(used)} in use, {len(self.reserved)} reserved)")
                db.execute("INSERT INTO vlan VALUES (?, ?, ?, ?)",
                           (self.substrate, vid, vnet, segment))
                db.execute("COMMIT")
                return vid
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def release(self, vnet: str, segment: str) -> int | None:
        """Free the segment's id (and forget its ports); the id it had, if any."""
        vid = self.lookup(vnet, segment)
        with closing(self._db()) as db, db:
            db.execute("DELETE FROM vlan WHERE substrate = ? AND vnet = ? AND segment = ?",
                       (self.substrate, vnet, segment))
            db.execute("DELETE FROM vlan_port WHERE substrate = ? AND vnet = ? AND segment = ?",
                       (self.substrate, vnet, segment))
        return vid

    def bind(self, vnet: str, segment: str, ports: Iterable[PortRef]) -> None:
        """Record the segment's access ports; VlanError if one serves another segment."""
        with closing(self._db()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for p in ports:
                    row = db.execute(
                        "SELECT vnet, segment FROM vlan_port "
                        "WHERE substrate = ? AND switch = ? AND port = ?",
                        (self.substrate, p.switch, p.port)).fetchone()
                    if row and tuple(row) != (vnet, segment):
                        raise VlanError(f"port {p.switch}/{p.port} already serves "
                                        f"{row[0]}/{row[1]}")
                    db.execute("INSERT OR IGNORE INTO vlan_port VALUES (?, ?, ?, ?, ?)",
                               (self.substrate, vnet, segment, p.switch, p.port))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def ports(self, vnet: str, segment: str) -> list[PortRef]:
        with closing(self._db()) as db:
            rows = db.execute(
                "SELECT switch, port FROM vlan_port "
                "WHERE substrate = ? AND vnet = ? AND segment = ? ORDER BY switch, port",
                (self.substrate, vnet, segment)).fetchall()
        return [PortRef(s, p) for s, p in rows]

    def switch_vlans(self) -> dict[str, set[int]]:
        """Per switch, the VLANs of segments that have access ports on it and on
        at least one other switch (what its inter-switch trunks must carry)."""
        with closing(self._db()) as db:
            rows = db.execute(
                "SELECT p.switch, v.vlan, v.vnet, v.segment FROM vlan_port p JOIN vlan v "
                "ON p.substrate = v.substrate AND p.vnet = v.vnet AND p.segment = v.segment "
                "WHERE p.substrate = ?", (self.substrate,)).fetchall()
        spans: dict[int, set[str]] = {}
        for switch, vid, _, _ in rows:
            spans.setdefault(int(vid), set()).add(str(switch))
        out: dict[str, set[int]] = {}
        for vid, switches in spans.items():
            if len(switches) > 1:
                for sw in switches:
                    out.setdefault(sw, set()).add(vid)
        return out


class SwitchDaemon:
    """Programs a substrate's switches for its VNets' link segments.

    ``drivers`` maps a switch name to its driver; ``trunks`` maps a switch name
    to its ports towards other switches."""

    def __init__(self, pool: VlanPool, drivers: Mapping[str, SwitchDriver],
                 trunks: Mapping[str, Iterable[str]] | None = None) -> None:
        self.pool = pool
        self.drivers = dict(drivers)
        self.trunks = {sw: list(ps) for sw, ps in (trunks or {}).items()}

    def attach(self, vnet: str, segment: str, ports: Iterable[PortRef]) -> int:
        """Give the segment a VLAN id and make ``ports`` its access ports; the id."""
        ports = list(ports)
        for p in ports:
            if p.switch not in self.drivers:
                raise VlanError(f"segment {vnet}/{segment}: unknown switch {p.switch!r}")
        new = self.pool.lookup(vnet, segment) is None
        vid = self.pool.allocate(vnet, segment)
        try:
            self.pool.bind(vnet, segment, ports)
            for p in ports:
                self.drivers[p.switch].set_access(p.port, vid)
            self.sync_trunks()
        except BaseException:
            if new:
                # a port the switch did not take back keeps its id reserved
                with contextlib.suppress(Exception):
                    self.detach(vnet, segment)
            raise
        return vid

    def detach(self, vnet: str, segment: str) -> int | None:
        """Take the segment's access ports off their switches and free its id
        (kept if a switch fails: a port may still carry it)."""
        for p in self.pool.ports(vnet, segment):
            driver = self.drivers.get(p.switch)
            if driver is not None:
                driver.remove(p.port)
        vid = self.pool.release(vnet, segment)
        self.sync_trunks()
        return vid

    def sync_trunks(self) -> None:
        """Every inter-switch port carries exactly the VLANs spanning its switch
        (parked on :data:`PARKING_VLAN` while there are none)."""
        spans = self.pool.switch_vlans()
        for sw, ports in self.trunks.items():
            vlans = sorted(spans.get(sw, set()))
            for port in ports:
                if vlans:
                    self.drivers[sw].set_trunk(port, vlans)
                else:
                    self.drivers[sw].set_access(port, PARKING_VLAN)
