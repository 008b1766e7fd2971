# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VLAN ports on a local Open vSwitch through OVSDB (ovsdbapp), shared by the
vnet_vlan module and vnetlib.switch.driver (which loads this file).

Want/have/plan: the ports' VLAN settings are :class:`PortVlan` records, read
from the Port table (:meth:`OvsSwitch.ports`), compared with the wanted ones by
the pure :func:`plan`, and the resulting :class:`Change` list applied in one
OVSDB transaction (:meth:`OvsSwitch.apply`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

try:
    from ovsdbapp.backend.ovs_idl import connection as _connection
    from ovsdbapp.schema.open_vswitch import impl_idl as _impl_idl
    HAS_OVSDBAPP = True
    OVSDBAPP_ERROR = None
except ImportError as _exc:  # pragma: no cover - depends on the host
    HAS_OVSDBAPP = False
    OVSDBAPP_ERROR = str(_exc)

VLAN_MIN = 1
VLAN_MAX = 4094
DEFAULT_REMOTE = "unix:/var/run/openvswitch/db.sock"


class OvsError(Exception):
    """OVSDB unreachable, a bad VLAN id, or a transaction that failed."""


@dataclass(frozen=True, slots=True)
class PortVlan:
    """A port's VLAN role: ``access`` on one VLAN (``tag``), ``trunk`` for the
    listed VLANs, or ``none`` (OVS default: trunk of every VLAN, which vnet
    never leaves on a node-facing port)."""

    name: str
    mode: str
    tag: int | None = None
    trunks: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.mode not in ("access", "trunk", "none"):
            raise OvsError(f"port {self.name}: mode {self.mode!r} is not access/trunk/none")
        for vid in ((self.tag,) if self.tag is not None else ()) + self.trunks:
            if not VLAN_MIN <= vid <= VLAN_MAX:
                raise OvsError(f"port {self.name}: VLAN id {vid} is outside "
                               f"{VLAN_MIN}..{VLAN_MAX}")
        if self.mode == "access" and self.tag is None:
            raise OvsError(f"port {self.name}: an access port needs a VLAN id")

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "mode": self.mode, "tag": self.tag,
                "trunks": list(self.trunks)}


def access(name: str, vlan: int) -> PortVlan:
    return PortVlan(name=name, mode="access", tag=vlan)


def trunk(name: str, vlans: list[int] | tuple[int, ...]) -> PortVlan:
    if not vlans:
        raise OvsError(f"port {name}: a trunk needs at least one VLAN id")
    return PortVlan(name=name, mode="trunk", trunks=tuple(sorted(set(vlans))))


@dataclass(frozen=True, slots=True)
class Change:
    """One step: ``set`` a port (adding it to the bridge if missing) or
    ``remove`` it from the bridge."""

    op: str
    port: PortVlan
    add: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"op": self.op, "add": self.add, **self.port.to_dict()}


def plan(want: list[PortVlan], have: dict[str, PortVlan], present: bool = True) -> list[Change]:
    """The changes that turn ``have`` into ``want`` (present) or remove the
    wanted ports (absent). Ports not named in ``want`` are left alone."""
    changes = []
    for port in want:
        cur = have.get(port.name)
        if not present:
            if cur is not None:
                changes.append(Change("remove", cur))
        elif cur != port:
            changes.append(Change("set", port, add=cur is None))
    return changes


def _ints(value: object) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    if isinstance(value, (list, tuple, set)):
        return tuple(sorted(int(v) for v in value))
    return ()


def _port_vlan(row: dict[str, object]) -> PortVlan:
    tag = _ints(row.get("tag"))
    trunks = _ints(row.get("trunks"))
    raw = row.get("vlan_mode")
    mode = raw if isinstance(raw, str) else ""
    if mode == "access" or (not mode and tag):
        return PortVlan(str(row["name"]), "access", tag=tag[0] if tag else None)
    if mode == "trunk" or (not mode and trunks):
        return PortVlan(str(row["name"]), "trunk", trunks=trunks)
    return PortVlan(str(row["name"]), "none")


class OvsSwitch:
    """An OVSDB connection to one Open vSwitch (close it, or use ``with``)."""

    def __init__(self, remote: str = DEFAULT_REMOTE, timeout: int = 10) -> None:
        if not HAS_OVSDBAPP:
            raise OvsError(f"the Python package ovsdbapp is missing: {OVSDBAPP_ERROR}")
        try:
            idl = _connection.OvsdbIdl.from_server(remote, "Open_vSwitch")
            self._conn = _connection.Connection(idl=idl, timeout=timeout)
            # ovsdbapp keeps one connection per API class: a class per switch
            api_class = type("OvsdbIdl", (_impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
            self.api = api_class(self._conn)
        except Exception as exc:
            raise OvsError(f"OVSDB at {remote}: {exc}") from exc
        self.remote = remote

    def __enter__(self) -> OvsSwitch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # closing a dead connection is not an error
        with contextlib.suppress(Exception):
            self._conn.stop()

    def _do(self, what: str, cmd: object) -> object:
        try:
            return cmd.execute(check_error=True)  # type: ignore[attr-defined]
        except Exception as exc:
            raise OvsError(f"OVSDB at {self.remote}: {what}: {exc}") from exc

    def has_bridge(self, bridge: str) -> bool:
        return bool(self._do("br_exists", self.api.br_exists(bridge)))

    def ensure_bridge(self, bridge: str, datapath_type: str = "netdev") -> bool:
        """Make ``bridge`` (userspace datapath by default); True if it was made."""
        if self.has_bridge(bridge):
            return False
        self._do("add_br", self.api.add_br(bridge, may_exist=True, datapath_type=datapath_type))
        return True

    def delete_bridge(self, bridge: str) -> None:
        self._do("del_br", self.api.del_br(bridge, if_exists=True))

    def ports(self, bridge: str) -> dict[str, PortVlan]:
        """The VLAN role of every port on ``bridge`` except its own internal port."""
        names = [n for n in self._do("list_ports", self.api.list_ports(bridge))  # type: ignore[attr-defined]
                 if n != bridge]
        if not names:
            return {}
        rows = self._do("db_list", self.api.db_list(
            "Port", names, columns=["name", "tag", "trunks", "vlan_mode"]))
        return {str(r["name"]): _port_vlan(r) for r in rows}  # type: ignore[attr-defined]

    def state(self, bridge: str) -> tuple[bool, dict[str, PortVlan]]:
        """Whether ``bridge`` exists, and its ports' VLAN roles (:meth:`ports`)."""
        exists = self.has_bridge(bridge)
        return exists, self.ports(bridge) if exists else {}

    def apply(self, bridge: str, changes: list[Change]) -> None:
        """All ``changes`` in one OVSDB transaction."""
        if not changes:
            return
        try:
            added = [ch.port.name for ch in changes if ch.op == "set" and ch.add]
            if added:
                with self.api.transaction(check_error=True) as txn:
                    for name in added:
                        txn.add(self.api.add_port(bridge, name, may_exist=True))
            with self.api.transaction(check_error=True) as txn:
                for ch in changes:
                    p = ch.port
                    if ch.op == "remove":
                        txn.add(self.api.del_port(p.name, bridge=bridge, if_exists=True))
                        continue
                    txn.add(self.api.db_set(
                        "Port", p.name,
                        ("tag", [p.tag] if p.tag is not None else []),
                        ("trunks", list(p.trunks)),
                        ("vlan_mode", p.mode if p.mode != "none" else [])))
        except Exception as exc:
            raise OvsError(f"OVSDB at {self.remote}: bridge {bridge}: {exc}") from exc
