# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading host state and running planned commands (private to the collection).

The only side effects of the vnet modules live here: ``Runner`` wraps
``AnsibleModule.run_command`` with argv lists, and ``read_state`` turns
``ip -json`` / ``tc -json`` output into the ``HostState`` of ``_iproute``,
once per module run.

``Runner.apply`` runs consecutive commands of the same program and namespace
as one ``ip [-n NS] -batch -`` (or ``tc -batch -``) process. Without
``-force`` a batch stops at its first failing line and reports it as
``Command failed -:LINE``, so a failure still names the exact command, and
the commands before it count as executed.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable

from ansible_collections.vnet.infra.plugins.module_utils import _netlink
from ansible_collections.vnet.infra.plugins.module_utils._iproute import (
    IP,
    TC,
    Command,
    HostState,
    Iface,
    Qdisc,
    VnetError,
    parse_forwarding,
    parse_ifaces,
    parse_netns_list,
    parse_root_qdiscs,
)

# Arguments that iproute2's batch line parser reads back unchanged (no
# blanks, quotes, backslashes or comment signs).
_PLAIN = re.compile(r"^[A-Za-z0-9_.:/=,+@%-]+$")
_FAILED_LINE = re.compile(r"^Command failed -:(\d+)\s*$", re.M)


def batch_key(argv: Command) -> tuple[str, str | None, Command] | None:
    """(program, namespace, batch line words) of a command, or None if it must run alone."""
    if argv[0] not in (IP, TC) or len(argv) < 2 or not all(_PLAIN.match(a) for a in argv):
        return None
    if argv[1] == "-n":
        return (argv[0], argv[2], list(argv[3:])) if len(argv) > 3 else None
    if argv[1].startswith("-"):
        return None
    return (argv[0], None, list(argv[1:]))


def batches(commands: list[Command]) -> list[tuple[Command, list[Command], list[Command]]]:
    """Split commands, in order, into (argv to run, batch lines, the commands).

    A command that runs alone has no batch lines and its own argv.
    """
    result: list[tuple[Command, list[Command], list[Command]]] = []
    group: list[tuple[Command, Command]] = []  # (planned command, batch line)
    key: tuple[str, str | None] | None = None

    def flush() -> None:
        if len(group) == 1:
            result.append((list(group[0][0]), [], [group[0][0]]))
        elif group and key is not None:
            program, netns = key
            argv = [program] + (["-n", netns] if netns else []) + ["-batch", "-"]
            result.append((argv, [entry[1] for entry in group], [entry[0] for entry in group]))
        group.clear()

    for argv in commands:
        parsed = batch_key(argv)
        this = None if parsed is None else (parsed[0], parsed[1])
        if this is None or this != key:
            flush()
        key = this
        group.append((argv, [] if parsed is None else parsed[2]))
        if this is None:
            flush()
    flush()
    return result


class Runner:
    """Runs argv lists through an AnsibleModule, resolving ip and tc once."""

    def __init__(self, module) -> None:
        self.module = module
        self.executed: list[Command] = []
        self._bins: dict[str, str] = {}
        self.netlink = True  # reads over rtnetlink until that fails once

    def _argv(self, argv: Command) -> list[str]:
        name = argv[0]
        if name not in self._bins:
            self._bins[name] = self.module.get_bin_path(name, required=True)
        return [self._bins[name]] + list(argv[1:])

    def read(self, argv: Command, tolerate: bool = False) -> str:
        """Run a read-only command; with `tolerate`, a failure yields ''."""
        rc, out, err = self.module.run_command(self._argv(argv))
        if rc != 0:
            if tolerate:
                return ""
            raise VnetError("command failed: %s" % " ".join(argv), rc=rc, stderr=err)
        return out

    def apply(self, commands: list[Command]) -> None:
        """Run planned commands in order, stopping at the first failure."""
        for argv, lines, planned in batches(commands):
            if not lines and _write_forwarding(planned[0]):
                self.executed.append(list(planned[0]))
                continue
            if self._in_process(planned):
                continue
            data = "".join(" ".join(line) + "\n" for line in lines) if lines else None
            rc, out, err = self.module.run_command(self._argv(argv), data=data, binary_data=True)
            if rc == 0:
                self.executed += [list(c) for c in planned]
                continue
            message = (err or out).strip()
            failed = planned[0]
            if lines:
                found = _FAILED_LINE.search(err or "")
                if found is None or not 0 < int(found.group(1)) <= len(planned):
                    raise VnetError(
                        "command batch failed (%s), somewhere in: %s"
                        % (message, "; ".join(" ".join(c) for c in planned)),
                        rc=rc, stderr=err, failed_batch=planned,
                    )
                index = int(found.group(1)) - 1
                self.executed += [list(c) for c in planned[:index]]
                failed = planned[index]
                message = _FAILED_LINE.sub("", message).strip()
            raise VnetError(
                "command failed: %s: %s" % (" ".join(failed), message),
                rc=rc, stderr=err, failed_command=failed,
            )

    def _in_process(self, planned: list[Command]) -> bool:
        """Run one namespace's ``ip -n NS`` / ``tc -n NS`` commands over
        rtnetlink from this process (no process per namespace); False, with
        nothing done, where they cannot be (they then run as planned)."""
        first = planned[0]
        if not self.netlink or len(first) < 4 or first[1] != "-n" or first[0] not in (IP, TC):
            return False
        if any(c[:3] != first[:3] for c in planned):
            return False
        try:
            _netlink.apply(first[2], planned)
        except _netlink.NetlinkUnavailable:
            return False
        except _netlink.CommandFailed as exc:
            self.executed += [list(c) for c in planned[:exc.index]]
            failed = planned[exc.index]
            raise VnetError("command failed: %s: %s" % (" ".join(failed), exc.message),
                            rc=2, stderr=exc.message, failed_command=failed) from None
        self.executed += [list(c) for c in planned]
        return True


_CLONE_NEWNET = 0x40000000
_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def _in_netns(name: str, action: Callable[[], None]) -> bool:
    """Run `action()` inside namespace `name` (setns and back); False if that is not possible."""
    try:
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
    except OSError:
        return False
    try:
        fd = os.open("/run/netns/" + name, os.O_RDONLY)
        try:
            _setns(fd)
            try:
                action()
            finally:
                _setns(home)
        finally:
            os.close(fd)
        return True
    except (OSError, AttributeError):
        return False
    finally:
        os.close(home)


def _write_forwarding(argv: Command) -> bool:
    """``ip netns exec NS sysctl -w net.ipv4.ip_forward=V`` done from this process.

    The module enters the namespace and writes /proc/sys/net/ipv4/ip_forward
    (a process per namespace saved). False, having done nothing, for any other
    command or where that is not possible; the command then runs as planned."""
    if len(argv) != 7 or argv[:3] != ["ip", "netns", "exec"] or argv[4:6] != ["sysctl", "-w"]:
        return False
    key, _sep, value = argv[6].partition("=")
    if key != "net.ipv4.ip_forward" or value not in ("0", "1"):
        return False

    def write() -> None:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(value + "\n")

    return _in_netns(argv[3], write)


def read_forwarding(runner: Runner, names: list[str]) -> dict[str, bool]:
    """IPv4 forwarding of each namespace of `names`, read from inside it.

    The module enters each namespace itself (setns) and reads
    /proc/sys/net/ipv4/ip_forward, which answers for the namespace of the
    reader: no process per namespace. Where that is not possible, through
    ``ip netns exec NAME sysctl`` as before."""
    found: dict[str, bool] = {}
    try:
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
    except OSError:
        home = -1
    try:
        for name in names:
            if home >= 0:
                try:
                    fd = os.open("/run/netns/%s" % name, os.O_RDONLY)
                    try:
                        _setns(fd)
                        try:
                            with open("/proc/sys/net/ipv4/ip_forward") as f:
                                found[name] = parse_forwarding(f.read())
                        finally:
                            _setns(home)
                    finally:
                        os.close(fd)
                    continue
                except (OSError, AttributeError):
                    pass
            found[name] = parse_forwarding(runner.read(
                ["ip", "netns", "exec", name, "sysctl", "-n", "net.ipv4.ip_forward"], tolerate=True))
    finally:
        if home >= 0:
            os.close(home)
    return found


def netns_names(runner: Runner) -> set[str]:
    return parse_netns_list(runner.read(["ip", "-json", "netns", "list"]))


def read_state(
    runner: Runner,
    netns: list[str],
    *,
    links: bool = False,
    qdiscs: bool = False,
    forwarding: bool = False,
    inside: bool = True,
) -> HostState:
    """One read of the host: `ip netns list`, then only what is asked.

    `links`: the host's interfaces; `inside`: per existing namespace of
    `netns`, its interfaces (otherwise an existing namespace maps to no
    interfaces); `qdiscs`: every root qdisc, of the host and (with
    `inside`) of those namespaces; `forwarding`: IPv4 forwarding of each
    existing namespace.

    Interfaces and qdiscs are dumped over rtnetlink from this process
    (``_netlink``, a socket per namespace, no process); where that is not
    possible, with ``ip -json -details address show`` and ``tc -json qdisc
    show`` (``-n NS`` per namespace) as before.
    """
    existing = netns_names(runner)
    host_links: dict[str, Iface] = {}
    root_qdiscs: dict[str, Qdisc] = {}
    if links or qdiscs:
        host_links, root_qdiscs = _read_ns(runner, None, qdiscs)
        if not links:
            host_links = {}
    ns_ifaces: dict[str, dict[str, Iface]] = {}
    ns_qdiscs: dict[str, dict[str, Qdisc]] = {}
    for name in sorted(set(netns)):
        if name not in existing:
            continue
        if not inside:
            ns_ifaces[name] = {}
            continue
        ns_ifaces[name], ns_qdiscs[name] = _read_ns(runner, name, qdiscs, tolerate=True)
    ns_forwarding = read_forwarding(runner, sorted(ns_ifaces)) if forwarding and inside else {}
    return HostState(links=host_links, netns=ns_ifaces, qdiscs=root_qdiscs, forwarding=ns_forwarding,
                     ns_qdiscs=ns_qdiscs)


def _read_ns(runner: Runner, netns: str | None, qdiscs: bool,
             tolerate: bool = False) -> tuple[dict[str, Iface], dict[str, Qdisc]]:
    """Interfaces and (with `qdiscs`) root qdiscs of `netns` (None: the host)."""
    if runner.netlink:
        try:
            return _netlink.read(netns, qdiscs=qdiscs)
        except FileNotFoundError:
            return {}, {}  # the namespace went away after the list: as ip -n would, with tolerate
        except _netlink.NetlinkUnavailable:
            runner.netlink = False
    where = ["-n", netns] if netns else []
    ifaces = parse_ifaces(runner.read(["ip"] + where + ["-json", "-details", "address", "show"],
                                      tolerate=tolerate))
    roots = parse_root_qdiscs(runner.read(["tc"] + where + ["-json", "qdisc", "show"],
                                          tolerate=tolerate)) if qdiscs else {}
    return ifaces, roots
