"""A switch driver for a remote Open vSwitch over SSH (paramiko): the switch
daemon's way to program a switch it cannot reach through OVSDB directly.

Reads are ``ovs-vsctl --format=json list`` (the OVSDB rows as JSON, not the
human output), writes are one ``ovs-vsctl`` transaction per change with the
argv quoted; the decision is the same want/have :func:`plan` as the local
driver's. The host key must be known (no trust on first use)."""

from __future__ import annotations

import base64
import json
import re
import shlex
from pathlib import Path
from typing import Any

import paramiko

from vnetlib.switch.driver import OvsError, PortVlan, access, plan, trunk

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise OvsError(f"{value!r} is not a port or bridge name")
    return value


def _ovs_value(value: Any) -> Any:
    """OVSDB JSON: atoms as they are, ["set", [...]] as a list, ["uuid", u] as u."""
    if isinstance(value, list) and len(value) == 2 and value[0] in ("set", "uuid", "map"):
        if value[0] == "uuid":
            return value[1]
        return [_ovs_value(v) for v in value[1]]
    return value


def _rows(text: str) -> list[dict[str, Any]]:
    doc = json.loads(text)
    return [{h: _ovs_value(v) for h, v in zip(doc["headings"], row, strict=True)}
            for row in doc["data"]]


def _port(row: dict[str, Any]) -> Any:
    # OVSDB JSON writes a one-element set as the bare atom
    tag = row["tag"] if isinstance(row["tag"], int) else None
    raw = row["trunks"]
    trunks = (raw,) if isinstance(raw, int) else tuple(sorted(raw))
    mode = row["vlan_mode"] if isinstance(row["vlan_mode"], str) else ""
    if mode == "access" or (not mode and tag is not None):
        return access(row["name"], tag) if tag is not None else PortVlan(row["name"], "none")
    if mode == "trunk" or (not mode and trunks):
        return PortVlan(row["name"], "trunk", trunks=trunks)
    return PortVlan(row["name"], "none")


class SshOvsDriver:
    """A bridge on the Open vSwitch of ``host``, reached over SSH as ``username``
    with ``key``; ``host_key`` is the server's public key (required)."""

    def __init__(self, host: str, bridge: str, *, key: paramiko.PKey, host_key: paramiko.PKey,
                 port: int = 22, username: str = "root", db: str | None = None,
                 datapath_type: str = "netdev", timeout: float = 10.0) -> None:
        self.name = self.bridge = _name(bridge)
        self.host = host
        self._db = [f"--db={db}"] if db else []
        self._timeout = timeout
        self._ssh = paramiko.SSHClient()
        known = f"[{host}]:{port}" if port != 22 else host
        self._ssh.get_host_keys().add(known, host_key.get_name(), host_key)
        self._ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            self._ssh.connect(host, port=port, username=username, pkey=key, timeout=timeout,
                              allow_agent=False, look_for_keys=False)
        except (paramiko.SSHException, OSError) as exc:
            raise OvsError(f"switch {host}:{port}: {exc}") from exc
        self._vsctl("--may-exist", "add-br", self.bridge, "--",
                    "set", "Bridge", self.bridge, f"datapath_type={_name(datapath_type)}")

    @classmethod
    def from_files(cls, host: str, bridge: str, key_file: Path, host_key_file: Path,
                   **kwargs: Any) -> SshOvsDriver:
        """Keys from OpenSSH files: a private key and the host's ``*.pub``."""
        key = paramiko.PKey.from_path(key_file)
        kind, blob = host_key_file.read_text().split()[:2]
        host_key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        return cls(host, bridge, key=key, host_key=host_key, **kwargs)

    def close(self) -> None:
        self._ssh.close()

    def __enter__(self) -> SshOvsDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _vsctl(self, *args: str) -> str:
        cmd = shlex.join(["ovs-vsctl", *self._db, "--timeout=10", *args])
        try:
            _, out, err = self._ssh.exec_command(cmd, timeout=self._timeout)
            text = out.read().decode()
            status = out.channel.recv_exit_status()
        except (paramiko.SSHException, OSError) as exc:
            raise OvsError(f"switch {self.host}: {exc}") from exc
        if status != 0:
            raise OvsError(f"switch {self.host}: ovs-vsctl {args[0]}: "
                           f"{err.read().decode().strip() or f'exit status {status}'}")
        return text

    def ports(self) -> dict[str, Any]:
        bridge = _rows(self._vsctl("--format=json", "--columns=ports", "list", "Bridge",
                                   self.bridge))
        uuids = set(bridge[0]["ports"]) if bridge else set()
        rows = _rows(self._vsctl("--format=json", "--columns=_uuid,name,tag,trunks,vlan_mode",
                                 "list", "Port"))
        return {r["name"]: _port(r) for r in rows
                if r["_uuid"] in uuids and r["name"] != self.bridge}

    def _converge(self, want: Any, present: bool = True) -> bool:
        changes = plan([want], self.ports(), present)
        for ch in changes:
            p = ch.port
            name = _name(p.name)
            if ch.op == "remove":
                self._vsctl("--if-exists", "del-port", self.bridge, name)
                continue
            tag = str(p.tag) if p.tag is not None else "[]"
            trunks = "[" + ",".join(str(v) for v in p.trunks) + "]"
            mode = p.mode if p.mode != "none" else "[]"
            self._vsctl("--may-exist", "add-port", self.bridge, name, "--", "set", "Port",
                        name, f"tag={tag}", f"trunks={trunks}", f"vlan_mode={mode}")
        return bool(changes)

    def set_access(self, port: str, vlan: int) -> bool:
        return self._converge(access(port, vlan))

    def set_trunk(self, port: str, vlans: list[int]) -> bool:
        return self._converge(trunk(port, vlans))

    def remove(self, port: str) -> bool:
        return self._converge(PortVlan(port, "none"), present=False)
