# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VLAN ports on a remote Open vSwitch over SSH (paramiko), for a switch the
host cannot reach through OVSDB: shared by the vnet_vlan module
(``driver: ssh``) and vnetlib.switch.remote (which loads this file).

:class:`SshOvsSwitch` has :class:`_ovs.OvsSwitch`'s interface, so the module
and the switch daemon decide with the same want/have :func:`_ovs.plan`.
Reads are ``ovs-vsctl --format=json`` rows (the OVSDB data, not the human
output), a change set is one ``ovs-vsctl`` invocation (one OVSDB
transaction) with its argv quoted. The server's host key must be given, as
the key itself or a known_hosts file: no trust on first use."""

from __future__ import annotations

import binascii
import json
import re
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mypy checks vnetlib, which loads this file from the checkout
    from plugins.module_utils._ovs import OvsError, PortVlan
else:
    try:
        from ansible_collections.vnet.infra.plugins.module_utils._ovs import (
            OvsError,
            PortVlan,
        )
    except ImportError:  # loaded by path from vnetlib's checkout
        from vnetlib.collection import module_utils as _load

        _ovs = _load("_ovs")
        OvsError, PortVlan = _ovs.OvsError, _ovs.PortVlan

try:
    import paramiko
    HAS_PARAMIKO = True
    PARAMIKO_ERROR = None
except ImportError as _exc:  # pragma: no cover - depends on the host
    HAS_PARAMIKO = False
    PARAMIKO_ERROR = str(_exc)

SSH_PORT = 22
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise OvsError(f"{value!r} is not a port or bridge name")
    return value


def public_key(text: str) -> Any:
    """A paramiko key from an OpenSSH public key line (``ssh-ed25519 AAAA... [comment]``);
    through known_hosts parsing, which paramiko 2 (Debian's python3-paramiko) has too."""
    parts = text.split()
    if len(parts) < 2:
        raise OvsError(f"host key {text[:40]!r} is not 'TYPE BASE64' (an OpenSSH public key)")
    try:
        entry = paramiko.hostkeys.HostKeyEntry.from_line(f"switch {parts[0]} {parts[1]}")
    except (binascii.Error, ValueError, paramiko.SSHException) as exc:
        raise OvsError(f"host key {parts[0]} {parts[1][:16]}...: {exc}") from exc
    if entry is None or entry.key is None:
        raise OvsError(f"host key {parts[0]} {parts[1][:16]}...: not a key paramiko knows")
    return entry.key


def _value(value: Any) -> Any:
    """OVSDB JSON: atoms as they are, ["set", [...]] as a list, ["uuid", u] as u."""
    if isinstance(value, list) and len(value) == 2 and value[0] in ("set", "uuid", "map"):
        if value[0] == "uuid":
            return value[1]
        return [_value(v) for v in value[1]]
    return value


def _tables(text: str) -> list[list[dict[str, Any]]]:
    """The rows of each command's output: ovs-vsctl prints one JSON table per command."""
    decoder, out, pos = json.JSONDecoder(), [], 0
    text = text.strip()
    while pos < len(text):
        doc, end = decoder.raw_decode(text, pos)
        out.append([{h: _value(v) for h, v in zip(doc["headings"], row)}
                    for row in doc["data"]])
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _ints(value: Any) -> tuple[int, ...]:
    if isinstance(value, int):  # OVSDB JSON writes a one-element set as the bare atom
        return (value,)
    return tuple(sorted(int(v) for v in value)) if isinstance(value, list) else ()


def port_vlan(row: dict[str, Any]) -> Any:
    """A Port row as :class:`PortVlan` (the same reading as ``_ovs``'s)."""
    tag, trunks = _ints(row.get("tag")), _ints(row.get("trunks"))
    mode = row.get("vlan_mode") if isinstance(row.get("vlan_mode"), str) else ""
    if mode == "access" or (not mode and tag):
        return PortVlan(str(row["name"]), "access", tag=tag[0] if tag else None)
    if mode == "trunk" or (not mode and trunks):
        return PortVlan(str(row["name"]), "trunk", trunks=trunks)
    return PortVlan(str(row["name"]), "none")


def change_args(bridge: str, changes: list[Any]) -> list[str]:
    """The ``ovs-vsctl`` argv (after the options) of a change set (pure)."""
    args: list[str] = []
    for ch in changes:
        p = ch.port
        name = _name(p.name)
        if ch.op == "remove":
            args += ["--", "--if-exists", "del-port", bridge, name]
            continue
        tag = str(p.tag) if p.tag is not None else "[]"
        trunks = "[" + ",".join(str(v) for v in p.trunks) + "]"
        mode = p.mode if p.mode != "none" else "[]"
        args += ["--", "--may-exist", "add-port", bridge, name, "--", "set", "Port", name,
                 f"tag={tag}", f"trunks={trunks}", f"vlan_mode={mode}"]
    return args


class SshOvsSwitch:
    """The Open vSwitch of ``host``, over SSH as ``username`` with the private
    key file ``key_file``; the server must prove ``host_key`` (an OpenSSH
    public key line) or a key listed for it in ``known_hosts`` (a file).
    ``db`` is the OVSDB connection string on the switch (ovs-vsctl's
    ``--db``), for an Open vSwitch not at its default socket."""

    def __init__(self, host: str, *, key_file: str, host_key: str | None = None,
                 known_hosts: str | None = None, port: int = SSH_PORT,
                 username: str = "root", db: str | None = None,
                 timeout: float = 10.0) -> None:
        self.remote = f"{host}:{port}"
        if not HAS_PARAMIKO:
            raise OvsError(f"switch {self.remote}: the Python package paramiko is missing: "
                           f"{PARAMIKO_ERROR}")
        if (host_key is None) == (known_hosts is None):
            raise OvsError(f"switch {self.remote}: give its host key or a known_hosts file "
                           "(exactly one): an unknown host key is never trusted")
        self._db = [f"--db={db}"] if db else []
        self._timeout = timeout
        self._ssh = paramiko.SSHClient()
        self._ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            if host_key is None:
                self._ssh.load_host_keys(known_hosts)
            else:
                key = public_key(host_key)
                known = f"[{host}]:{port}" if port != SSH_PORT else host
                self._ssh.get_host_keys().add(known, key.get_name(), key)
            self._ssh.connect(host, port=port, username=username, key_filename=key_file,
                              timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                              allow_agent=False, look_for_keys=False)
        except (paramiko.SSHException, OSError) as exc:
            self._ssh.close()
            raise OvsError(f"switch {self.remote}: {exc}") from exc

    def __enter__(self) -> SshOvsSwitch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ssh.close()

    def vsctl(self, *args: str) -> str:
        """Run ``ovs-vsctl`` on the switch; its stdout."""
        cmd = shlex.join(["ovs-vsctl", *self._db, f"--timeout={int(self._timeout)}", *args])
        try:
            stdin, out, err = self._ssh.exec_command(cmd, timeout=self._timeout)
            stdin.close()
            text = out.read().decode()
            status = out.channel.recv_exit_status()
            errors = err.read().decode().strip()
        except (paramiko.SSHException, OSError) as exc:
            raise OvsError(f"switch {self.remote}: {exc or type(exc).__name__}") from exc
        if status != 0:
            what = next((a for a in args if not a.startswith("-")), "")
            raise OvsError(f"switch {self.remote}: ovs-vsctl {what}: "
                           f"{errors or f'exit status {status}'}")
        return text

    def has_bridge(self, bridge: str) -> bool:
        rows = _tables(self.vsctl("--format=json", "--columns=name", "find", "Bridge",
                                  f"name={_name(bridge)}"))
        return bool(rows and rows[0])

    def ensure_bridge(self, bridge: str, datapath_type: str = "netdev") -> bool:
        """Make ``bridge`` (userspace datapath by default); True if it was made."""
        if self.has_bridge(bridge):
            return False
        self.vsctl("--may-exist", "add-br", _name(bridge), "--", "set", "Bridge", bridge,
                   f"datapath_type={_name(datapath_type)}")
        return True

    def delete_bridge(self, bridge: str) -> None:
        self.vsctl("--if-exists", "del-br", _name(bridge))

    def state(self, bridge: str) -> tuple[bool, dict[str, Any]]:
        """Whether ``bridge`` exists, and the VLAN role of each of its ports
        but its own internal port, in one round trip."""
        tables = _tables(self.vsctl(
            "--format=json", "--", "--columns=ports", "find", "Bridge", f"name={_name(bridge)}",
            "--", "--columns=_uuid,name,tag,trunks,vlan_mode", "list", "Port"))
        if len(tables) != 2 or not tables[0]:
            return False, {}
        ports = tables[0][0]["ports"]
        uuids = {ports} if isinstance(ports, str) else set(ports)
        return True, {r["name"]: port_vlan(r) for r in tables[1]
                      if r["_uuid"] in uuids and r["name"] != bridge}

    def ports(self, bridge: str) -> dict[str, Any]:
        """The VLAN role of every port on ``bridge`` except its own internal port."""
        return self.state(bridge)[1]

    def apply(self, bridge: str, changes: list[Any]) -> None:
        """All ``changes`` in one ovs-vsctl invocation (one OVSDB transaction),
        not waiting for ovs-vswitchd to reconfigure (as the OVSDB driver does
        not: a userspace datapath takes long to add ports)."""
        if changes:
            self.vsctl("--no-wait", *change_args(_name(bridge), changes))
