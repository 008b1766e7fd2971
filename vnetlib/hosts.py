"""Running a command on a substrate host the way Ansible reaches it.

A host whose inventory entry uses the `ssh` connection is reached with the
same `ssh` options Ansible uses (key, pinned known_hosts, strict host-key
checking, batch mode, timeouts, the same ControlMaster sockets); a host of
the `netns` connection runs the command here, in its namespace. This is how
`vnet exec`, the PIP's exec and its console endpoints reach virtual nodes on
real hosts (`ip netns exec NODE-NETNS CMD`, or the confined chain, on the
node's host): a player never enters a node's namespace on its own machine
when the node's host is reached over SSH.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SSH_CONNECTIONS = ("ssh", "ansible.builtin.ssh")
NETNS_CONNECTIONS = ("vnet.infra.netns",)
PYTHON = "python3"


class UnknownHost(LookupError):
    pass


def _hosts(node: Mapping[str, Any], inherited: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every host below an inventory group, with the group variables it inherits."""
    scope = {**inherited, **(node.get("vars") or {})}
    found = {name: {**scope, **(hv or {})} for name, hv in (node.get("hosts") or {}).items()}
    for child in (node.get("children") or {}).values():
        for name, hv in _hosts(child or {}, scope).items():
            found[name] = {**found.get(name, {}), **hv}
    return found


def host_vars(inventory: Path, host: str) -> dict[str, Any]:
    """The variables of `host` in a YAML inventory, with group_vars/*.yml
    beside it and `{{ inventory_dir }}` resolved (what the lab and the hen
    template use; not a general Jinja evaluation). Read again only when one
    of those files changed (every exec and console asks)."""
    return dict(_host_vars(inventory, host, _stamp(inventory)))


Stamp = tuple[tuple[str, int, int, int], ...]


def _stamp(inventory: Path) -> Stamp:
    """Each file's identity, size and time (a file rewritten within the
    clock's tick keeps its time, seldom its size, never its inode if replaced)."""
    files = [inventory, *sorted((inventory.parent / "group_vars").glob("*.yml"))]
    stats = [(str(f), f.stat()) for f in files]
    return tuple((name, st.st_ino, st.st_size, st.st_mtime_ns) for name, st in stats)


@functools.lru_cache(maxsize=256)
def _host_vars(inventory: Path, host: str, stamp: Stamp) -> dict[str, Any]:
    data = yaml.safe_load(inventory.read_text()) or {}
    hosts = _hosts(data.get("all", {}), {})
    if host not in hosts:
        raise UnknownHost(f"{inventory} has no host {host!r}")
    groups = _groups_of(data.get("all", {}), host)
    merged: dict[str, Any] = {}
    for group in ("all", *groups):
        path = inventory.parent / "group_vars" / f"{group}.yml"
        if path.is_file():
            merged.update(yaml.safe_load(path.read_text()) or {})
    merged.update(hosts[host])
    directory = str(inventory.parent)
    return {k: v.replace("{{ inventory_dir }}", directory) if isinstance(v, str) else v
            for k, v in merged.items()}


def _groups_of(node: Mapping[str, Any], host: str) -> list[str]:
    found = []
    for name, child in (node.get("children") or {}).items():
        child = child or {}
        below = _groups_of(child, host)
        if host in (child.get("hosts") or {}) or below:
            found += [name, *below]
    return found


def control_name(address: str, port: object, user: object) -> str:
    """The name Ansible's ssh connection gives a host's ControlMaster socket
    (`Connection._create_control_path`: short enough for a socket path), so
    a command here shares the connection Ansible keeps open."""
    return hashlib.sha1(f"{address}-{port}-{user}".encode()).hexdigest()[:10]


def command(inventory: Path, host: str, argv: Sequence[str], *, tty: bool = False) -> list[str]:
    """The argv that runs `argv` on `host` of `inventory`: over ssh for an
    ssh host, `nsenter` into its namespace for a netns host. `tty`: the
    remote command gets a pseudo-terminal (`ssh -tt`; an interactive shell)."""
    hv = host_vars(inventory, host)
    connection = str(hv.get("ansible_connection", "ssh"))
    if connection in NETNS_CONNECTIONS:
        netns = str(hv.get("ansible_netns_name", host))
        return ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
    if connection not in SSH_CONNECTIONS:
        raise ValueError(f"{inventory}: host {host} uses connection {connection}, "
                         "neither ssh nor netns")
    port = hv.get("ansible_port", 22)
    user = hv.get("ansible_user")
    address = str(hv.get("ansible_host", host))
    ssh = ["ssh", "-p", str(port)]
    if tty:
        ssh.append("-tt")
    if key := hv.get("ansible_ssh_private_key_file"):
        ssh += ["-i", str(key)]
    ssh += shlex.split(str(hv.get("ansible_ssh_args", "")))
    ssh += shlex.split(str(hv.get("ansible_ssh_common_args", "")))
    if control := hv.get("ansible_control_path_dir"):
        ssh += ["-o", f"ControlPath={control}/{control_name(address, port, user)}"]
    if hv.get("ansible_ssh_host_key_checking") is False:
        raise ValueError(f"{inventory}: host {host} turns host-key checking off")
    return [*ssh, "-o", "StrictHostKeyChecking=yes",
            f"{user}@{address}" if user else address, shlex.join(_interpreter(hv, argv))]


def _interpreter(hv: Mapping[str, Any], argv: Sequence[str]) -> list[str]:
    """`argv` with a leading `python3` (an agent: confinement, VM consoles)
    made the host's `ansible_python_interpreter`, the one Ansible's modules
    run with there, when the inventory names one (not a discovery keyword):
    the login shell's PATH may find another first (a pyenv shim here)."""
    python = str(hv.get("ansible_python_interpreter", ""))
    if list(argv[:1]) != [PYTHON] or not python.startswith("/") or "{{" in python:
        return list(argv)
    return [python, *argv[1:]]


def is_ssh(inventory: Path, host: str) -> bool:
    """Whether `host` of `inventory` is reached over SSH (else: a lab
    namespace on this machine)."""
    return str(host_vars(inventory, host).get("ansible_connection", "ssh")) in SSH_CONNECTIONS


@dataclass(frozen=True, slots=True)
class Hosts:
    """The substrate hosts of one inventory, as a player reaches them: what a
    PIP gives its confinement so that a node's commands run on the node's
    host (`argv`), through the SSH connection Ansible keeps open."""
    inventory: Path

    def remote(self, host: str) -> bool:
        return is_ssh(self.inventory, host)

    def argv(self, host: str, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        return command(self.inventory, host, argv, tty=tty)


def ssh_program(inventory: Path, host: str) -> Path:
    """An `ssh` for libvirt's ssh transport to `host`: libvirt passes the
    port, user and key itself but has no parameter for the known_hosts file
    (its `known_hosts` is the libssh transport's, whose connections stall
    here on replies of a few KB), so the program adds the inventory's
    options (pinned known_hosts, strict checking, batch mode, timeouts) and
    runs ssh. One direct connection per libvirt connection: no
    ControlMaster, whose background master would outlive the move.
    Written beside the inventory, again only when its text changes."""
    hv = host_vars(inventory, host)
    if hv.get("ansible_ssh_host_key_checking") is False:
        raise ValueError(f"{inventory}: host {host} turns host-key checking off")
    options = shlex.split(str(hv.get("ansible_ssh_common_args", "")))
    text = ("#!/bin/sh\n# libvirt's ssh to a vnet host (vnetlib.hosts.ssh_program)\n"
            f"exec ssh {shlex.join([*options, '-o', 'StrictHostKeyChecking=yes'])} \"$@\"\n")
    path = inventory.parent / "ssh-libvirt" / f"ssh-{host}"
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fresh = path.with_name(f".{path.name}.{os.getpid()}")
        fresh.write_text(text)
        fresh.chmod(0o700)
        fresh.replace(path)
    return path


def libvirt_uri(inventory: Path, host: str) -> str:
    """The libvirt URI of `host`'s own daemon as this machine reaches it:
    `qemu+ssh://USER@ADDRESS:PORT/system` with the inventory's key, host-key
    verification on (`no_verify=0`), no tty, and `ssh_program`'s options."""
    hv = host_vars(inventory, host)
    query = {"no_verify": "0", "no_tty": "1",
             "command": str(ssh_program(inventory, host))}
    if key := hv.get("ansible_ssh_private_key_file"):
        query = {"keyfile": str(key), **query}
    return _uri(hv, host) + "?" + urllib.parse.urlencode(query, safe="/")


def libvirt_peer_uri(inventory: Path, host: str) -> str:
    """The URI another host's libvirtd opens to reach `host`'s in a peer to
    peer migration: it runs there, with that host's ssh identity and known
    hosts (`vnet_libvirt_peer_uri` in the inventory overrides it, e.g. a
    `qemu+tls://` URI)."""
    hv = host_vars(inventory, host)
    return str(hv.get("vnet_libvirt_peer_uri") or _uri(hv, host))


def _uri(hv: Mapping[str, Any], host: str) -> str:
    user = hv.get("ansible_user")
    address = str(hv.get("ansible_host", host))
    where = f"[{address}]" if ":" in address else address
    return (f"qemu+ssh://{f'{user}@' if user else ''}{where}:{hv.get('ansible_port', 22)}"
            "/system")


def address(inventory: Path, host: str) -> str:
    """The address `host` is reached at (`ansible_host`, else its name)."""
    return str(host_vars(inventory, host).get("ansible_host", host))
