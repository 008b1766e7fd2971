"""Live migration of a VM node between two hosts of one libvirtd (the lab's).

libvirt refuses a migration whose source and destination are the same
daemon (same host UUID), and the lab runs one libvirtd for all its hosts.
So vnet migrates the way libvirt does inside, with QEMU's own migration
(QMP, through libvirt's monitor pass-through) between two domains of that
daemon:

1. the destination is a new transient domain, the source's migratable XML
   under another name, started with `-incoming defer` (libvirt's `cont` at
   start only marks it to run once the migration ends); its taps, made in
   libvirtd's namespace where QEMU opens them by name, are then moved into
   the target host's namespace and onto the links' bridges there;
2. `migrate-incoming` on the destination (TCP on 127.0.0.1, a free port),
   `migrate` on the source, polled until QEMU says completed: one pass over
   the guest's RAM while it runs, then the guest stops on the source for the
   pages it wrote during that pass (`downtime-limit` 0: no second live pass,
   see DOWNTIME_LIMIT_MS) and runs on in the destination, which announces
   its MACs (self-announce);
3. the source is destroyed and undefined, its taps deleted, and the
   destination defined with the source's persistent configuration (for its
   next boot).

A failure before the end leaves the source running (QEMU resumes it when a
migration fails) and removes the destination and its taps. The domain name
changes (libvirt cannot hold two domains of one name, nor rename a running
one): the sliver records node -> domain.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vnetlib import hosts
from vnetlib.vm.domain import domain_logs, serial_log

log = logging.getLogger(__name__)

URI = "qemu:///system"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
DOWNTIME_LIMIT_MS = 0
"""QEMU's `downtime-limit` for vnet's moves: 0, so that QEMU copies the RAM
once while the guest runs and then, paused, what the guest wrote meanwhile,
and never syncs its dirty bitmap while the guest runs after the first pass.

Under TCG, QEMU before 9.0 loses guest writes after such a sync (the fast
path of `cpu_physical_memory_sync_dirty_bitmap` clears the bits without
resetting the vCPUs' TLB dirty flags, so a store through a TLB entry made
writable earlier marks nothing: upstream commit 03bfc2188f, "physmem: Fix
migration dirty bitmap coherency with TCG memory access", not in Debian
12's 7.2.x). A page written after its copy in a second live pass then
reaches the destination stale: the guest crashes within a second (its
virtqueues' "is not a head!", double faults, list corruption). With a
limit above 0 a loaded host makes that second pass (the first pass is slow,
QEMU's estimate of the rest exceeds bandwidth x limit); with 10 ms it is
taken every time and 8 of 10 moves crashed the guest (`bench.migrate.soak`).
With 0 QEMU completes when the first pass has nothing left, and the paused
rest is what the guest dirtied in that pass: a few MB for a router, so the
downtime stays in the milliseconds. `Stats.syncs` is then 2 (setup and
final); 3 is safe too (the running sync is followed by the stop, nothing
copied in between); from RISKY_SYNCS on pages were copied again while the
guest ran after a sync."""
RISKY_SYNCS = 4
MIGRATE_TIMEOUT = 60.0
POLL = 0.01


class MigrationError(RuntimeError):
    """The live migration did not happen; the source still runs the guest."""


@dataclass(frozen=True, slots=True)
class Nic:
    """One of the VM's taps and the bridge it joins on the target host."""

    tap: str
    bridge: str


@dataclass(frozen=True, slots=True)
class VmMove:
    source: str  # domain running the guest now
    dest: str  # domain that runs it after the move
    source_netns: str  # the source host's namespace (its taps are there)
    target_netns: str
    nics: tuple[Nic, ...]
    # The target plan's kernel command line, for the destination's next boot:
    # a link that became local (or crossing) changes its MTU there. Without
    # it the plan and the definition differ and vnet_domain restarts the
    # guest at the move's last deployment (a reboot: the 4-10 s "gap").
    cmdline: str | None = None
    # The hosts when they are reached over SSH (`remote_of`): the move then
    # goes through their own libvirt daemons and shells (vnetlib.vm.ssh_move).
    remote: Remote | None = None


@dataclass(frozen=True, slots=True)
class Remote:
    """The source and target hosts of a move, named in an inventory that
    reaches them over SSH."""

    inventory: Path
    source: str
    target: str


def remote_of(inventory: Path, source: str, target: str) -> Remote | None:
    """The move's hosts when the inventory reaches them over SSH; None for a
    lab's namespace hosts (today's local path)."""
    ssh = [hosts.is_ssh(inventory, h) for h in (source, target)]
    if not any(ssh):
        return None
    if not all(ssh):
        raise MigrationError(f"{source} and {target} are reached differently (SSH and a "
                             "namespace): a live migration needs both over SSH")
    return Remote(inventory, source, target)


@dataclass(frozen=True, slots=True)
class Stats:
    """What QEMU reports of a completed migration (milliseconds) and the wall time."""

    total_ms: float
    downtime_ms: float
    setup_ms: float
    transferred: int
    seconds: float
    syncs: int = 0  # QEMU's dirty-bitmap syncs (ram.dirty-sync-count): see DOWNTIME_LIMIT_MS

    def to_dict(self) -> dict[str, Any]:
        return {"total_ms": self.total_ms, "downtime_ms": self.downtime_ms,
                "setup_ms": self.setup_ms, "transferred": self.transferred,
                "seconds": round(self.seconds, 4), "syncs": self.syncs}


def host_netns(inventory: Path, host: str) -> str:
    """The namespace a lab host is (`ansible_netns_name` in its inventory)."""
    data = yaml.safe_load(inventory.read_text()) or {}
    found = _find_host(data, host)
    if found is None:
        raise MigrationError(f"host {host} is not in {inventory}")
    return str(found.get("ansible_netns_name") or host)


def _find_host(group: Any, host: str) -> dict[str, Any] | None:
    if not isinstance(group, dict):
        return None
    hosts = group.get("hosts")
    if isinstance(hosts, dict) and host in hosts:
        return dict(hosts[host] or {})
    for key, sub in group.items():
        if key in ("children", "all") or isinstance(sub, dict):
            found = _find_host(sub, host)
            if found is not None:
                return found
    return None


def dest_xml(source_xml: str, dest: str, taps: Sequence[str] = ()) -> str:
    """The destination's XML: the source's (live, migratable), renamed, without
    its UUID, its serial log its own, started to wait for an incoming migration.

    `taps`: the node's taps in the order of its NICs. The i-th `<interface>`
    opens the i-th (a taken pool VM's live XML still names its pool taps,
    which the take renamed to the node's; its spare pool NICs, whose taps the
    take deleted, get `spare_tap`s, kept down on no bridge in the target
    host's namespace: a tap deleted under QEMU leaves it an fd that polls
    as an error forever, and its main loop spins a CPU on it). The MACs
    stay the live ones: the guest uses them."""
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(source_xml)
    _rename(root, dest, live=True)
    if taps:
        for i, iface in enumerate(root.iterfind("devices/interface")):
            target = iface.find("target")
            if target is None:
                target = ET.SubElement(iface, "target")
            target.set("dev", taps[i] if i < len(taps) else spare_tap(dest, i))
    cmd = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    for value in ("-incoming", "defer"):
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=value)
    return ET.tostring(root, encoding="unicode")


def spare_tap(dest: str, index: int) -> str:
    """The throwaway tap of a destination's NIC that the node does not use."""
    return f"vs{hashlib.sha256(dest.encode()).hexdigest()[:10]}{index}"


def spare_taps(xml: str) -> list[str]:
    """The spare taps a destination XML names (see `spare_tap`)."""
    root = ET.fromstring(xml)
    name = root.findtext("name") or ""
    return [dev for i, t in enumerate(root.iterfind("devices/interface/target"))
            if (dev := t.get("dev") or "") == spare_tap(name, i)]


def persistent_xml(inactive_xml: str, dest: str, uuid: str, cmdline: str | None = None) -> str:
    """The source's persistent definition for the destination (next boots),
    with the target plan's kernel command line when given."""
    root = ET.fromstring(inactive_xml)
    _rename(root, dest)
    ET.SubElement(root, "uuid").text = uuid
    if cmdline is not None:
        element = root.find("os/cmdline")
        if element is None:
            os_ = root.find("os")
            if os_ is None:
                raise MigrationError("domain XML without <os>")
            element = ET.SubElement(os_, "cmdline")
        element.text = cmdline
    return ET.tostring(root, encoding="unicode")


def _rename(root: ET.Element, name: str, *, live: bool = False) -> None:
    """Rename the domain; `live`: its serial log continues the source's (the
    same guest: its boot lines and ready line stay in the log)."""
    element = root.find("name")
    if element is None:
        raise MigrationError("domain XML without a name")
    old = element.text or ""
    element.text = name
    for uuid in root.findall("uuid"):
        root.remove(uuid)
    for log in root.iter("log"):
        if log.get("file") == serial_log(old):
            log.set("file", serial_log(name))
            log.set("append", "on" if live else "off")


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise MigrationError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _links_of(netns: str | None) -> set[str]:
    argv = ["ip", *(["-n", netns] if netns else []), "-o", "link", "show"]
    done = subprocess.run(argv, capture_output=True, text=True)
    return {line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines()
            if ":" in line}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _qmp(dom: Any, command: str, **arguments: Any) -> Any:
    import libvirt_qemu  # type: ignore[import-untyped]

    body: dict[str, Any] = {"execute": command}
    if arguments:
        body["arguments"] = arguments
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(body), 0))
    if "error" in reply:
        raise MigrationError(f"{command}: {reply['error'].get('desc', reply['error'])}")
    return reply.get("return")


@contextlib.contextmanager
def _connection(uri: str) -> Iterator[Any]:
    import libvirt  # type: ignore[import-untyped]

    conn = libvirt.open(uri)
    try:
        yield conn
    finally:
        conn.close()


def migrate(move: VmMove, *, uri: str = URI, downtime_limit_ms: int = DOWNTIME_LIMIT_MS,
            timeout: float = MIGRATE_TIMEOUT) -> Stats:
    """Move the running guest of `move.source` into a new domain `move.dest`
    whose taps sit on the target host's bridges; on any failure the
    destination is removed and the source runs on (MigrationError)."""
    import libvirt

    if move.remote is not None:
        from vnetlib.vm import ssh_move

        return ssh_move.migrate(move, move.remote, downtime_limit_ms=downtime_limit_ms,
                                timeout=timeout)
    started = time.perf_counter()
    with _connection(uri) as conn:
        src = running_domain(conn, move.source)
        xml = dest_xml(src.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE), move.dest,
                       [nic.tap for nic in move.nics])
        spares = spare_taps(xml)
        inactive = src.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        dest = None
        try:
            here = _links_of(None)
            for tap in [*(nic.tap for nic in move.nics), *spares]:
                if tap not in here:
                    _ip("tuntap", "add", "dev", tap, "mode", "tap")
            with contextlib.suppress(OSError):
                shutil.copyfile(serial_log(move.source), serial_log(move.dest))
            try:
                dest = conn.createXML(xml, 0)
            except libvirt.libvirtError as exc:
                raise MigrationError(f"destination {move.dest} did not start: {exc}") from None
            for tap in spares:
                _ip("link", "set", "dev", tap, "netns", move.target_netns)
            for nic in move.nics:
                _ip("link", "set", "dev", nic.tap, "netns", move.target_netns)
                _ip("-n", move.target_netns, "link", "set", "dev", nic.tap,
                    "master", nic.bridge, "up")
            stats = _run(src, dest, downtime_limit_ms, timeout, started)
            conn.defineXML(persistent_xml(inactive, move.dest, dest.UUIDString(),
                                          move.cmdline))
        except BaseException:
            _remove_dest(conn, move, dest)
            raise
    return stats


def _run(src: Any, dest: Any, downtime_limit_ms: int, timeout: float,
         started: float, address: str | None = None) -> Stats:
    """QEMU's migration from `src` to `dest` (waiting for it); `address`:
    where `dest` listens already (else a free local port, listened on here)."""
    if address is None:
        address = f"tcp:127.0.0.1:{_free_port()}"
        _qmp(dest, "migrate-incoming", uri=address)
    _qmp(src, "migrate-set-parameters", **{"downtime-limit": downtime_limit_ms})
    _qmp(src, "migrate", uri=address)
    deadline = time.monotonic() + timeout
    while True:
        info = _qmp(src, "query-migrate") or {}
        status = info.get("status")
        if status == "completed":
            break
        if status in ("failed", "cancelled"):
            raise MigrationError(f"QEMU's migration {status}: {info.get('error-desc', '')}")
        if time.monotonic() > deadline:
            with contextlib.suppress(MigrationError):
                _qmp(src, "migrate_cancel")
            raise MigrationError(f"the migration did not converge in {timeout:.0f} s")
        time.sleep(POLL)
    while (_qmp(dest, "query-status") or {}).get("status") != "running":
        if time.monotonic() > deadline:
            raise MigrationError("the destination did not start running")
        time.sleep(POLL)
    ram = info.get("ram", {})
    syncs = int(ram.get("dirty-sync-count", 0))
    if syncs >= RISKY_SYNCS:
        log.warning("QEMU copied pages again after syncing its dirty bitmap while the guest "
                    "ran (%d syncs): under TCG (QEMU < 9.0) the guest may have lost writes "
                    "(downtime-limit %d ms)", syncs, downtime_limit_ms)
    return Stats(float(info.get("total-time", 0)), float(info.get("downtime", 0)),
                 float(info.get("setup-time", 0)), int(ram.get("transferred", 0)),
                 time.perf_counter() - started, syncs)


def _remove_dest(conn: Any, move: VmMove, dest: Any) -> None:
    """Undo a destination: its domain, and its taps wherever they are."""
    import libvirt

    if dest is not None:
        with contextlib.suppress(libvirt.libvirtError):
            dest.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        conn.lookupByName(move.dest).undefine()
    for log in domain_logs(move.dest):
        Path(log).unlink(missing_ok=True)
    spares = [spare_tap(move.dest, i) for i in range(len(move.nics), len(move.nics) + 16)]
    for where in (move.target_netns, None):
        present = _links_of(where)
        for tap in [*(nic.tap for nic in move.nics), *spares]:
            if tap in present:
                with contextlib.suppress(MigrationError):
                    _ip(*(["-n", where] if where else []), "link", "delete", "dev", tap)


def running_domain(conn: Any, name: str, where: str = "") -> Any:
    """Domain `name` of `conn`, which must be running (only a running VM
    migrates live); MigrationError otherwise. `where` names the host."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        raise MigrationError(f"no domain {name}{where}: {exc}") from None
    if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
        raise MigrationError(f"domain {name} is not running: only a running VM migrates live")
    return dom


def remove_domain(conn: Any, name: str) -> None:
    """Destroy and undefine domain `name` of `conn` if libvirt still has it."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    with contextlib.suppress(libvirt.libvirtError):
        dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        dom.undefine()


def finish(move: VmMove, *, uri: str = URI) -> None:
    """After a completed migration: the source domain, its logs and its taps go."""

    if move.remote is not None:
        from vnetlib.vm import ssh_move

        ssh_move.finish(move, move.remote)
        return

    with _connection(uri) as conn:
        remove_domain(conn, move.source)
    for log in domain_logs(move.source):  # the destination's serial log continues it
        Path(log).unlink(missing_ok=True)
    present = _links_of(move.source_netns)
    spares = [spare_tap(move.source, i) for i in range(len(move.nics), len(move.nics) + 16)]
    for tap in [*(nic.tap for nic in move.nics), *spares]:
        if tap in present:
            _ip("-n", move.source_netns, "link", "delete", "dev", tap)


def next_name(base: str, current: str, taken: Sequence[str] = ()) -> str:
    """A domain name for the next move of a node whose first domain is `base`:
    `base+mN` (`+` is in no node id)."""
    match = re.search(r"\+m(\d+)$", current)
    n = int(match.group(1)) + 1 if match else 1
    while f"{base}+m{n}" in taken:
        n += 1
    return f"{base}+m{n}"


@dataclass(frozen=True, slots=True)
class Flood:
    """A peer host's tunnel device that sends to the target too while a VM
    moves: an all-zero FDB entry more, so the peer's frames reach the guest
    before and after the switch (VXLAN head-end replication)."""

    netns: str
    device: str
    address: str


def flood(entries: Sequence[Flood], on: bool, *, inventory: Path | None = None) -> None:
    """Add (`on`) or remove the extra destinations; removing what is not
    there is fine. With `inventory`, an entry whose `netns` is a host the
    inventory reaches over SSH (`host_netns` gives such a host's name) is
    changed on that host, through its ssh."""
    for e in entries:
        argv = _on(inventory, e.netns, ["bridge", "fdb", "append" if on else "del",
                                        "00:00:00:00:00:00", "dev", e.device, "dst", e.address])
        done = subprocess.run(argv, capture_output=True, text=True)
        if on and done.returncode != 0:
            raise MigrationError(f"{' '.join(argv)}: {done.stderr.strip()}")


def drop_tunnel(netns: str, device: str, *, inventory: Path | None = None) -> None:
    """Delete a tunnel device whose segment stays (its other end came here);
    on the host itself when `inventory` reaches `netns` (a host name) over SSH."""
    if _ssh_host(inventory, netns):
        assert inventory is not None
        from vnetlib.vm import ssh_move

        ssh_move.delete_taps(Remote(inventory, netns, netns), netns, [device])
        return
    if device in _links_of(netns):
        _ip("-n", netns, "link", "delete", "dev", device)


def _ssh_host(inventory: Path | None, name: str) -> bool:
    if inventory is None:
        return False
    try:
        return hosts.is_ssh(inventory, name)
    except hosts.UnknownHost:  # a lab host's namespace
        return False


def _on(inventory: Path | None, netns: str, argv: Sequence[str]) -> list[str]:
    """`argv` (an `ip`/`bridge` command) in a lab host's namespace, or on a
    host reached over SSH."""
    if _ssh_host(inventory, netns):
        assert inventory is not None
        return hosts.command(inventory, netns, argv)
    return [argv[0], "-n", netns, *argv[1:]]
