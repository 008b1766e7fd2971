"""Live migration of a VM node between hosts reached over SSH (issues #15, #13).

Everything goes through the hosts: each host's own libvirt daemon through
`qemu+ssh://` (`vnetlib.hosts.libvirt_uri`: the inventory's user, address,
port and key, the lab's pinned known_hosts), and every host command (taps,
serial logs) through the host's ssh argv (`vnetlib.hosts.command`), never
on the PIP machine. Then, by the daemons' host UUIDs:

- one daemon behind both (the SSH lab: its hosts share this machine's
  libvirtd, which refuses a migration to itself): vnet's QMP method of
  `vnetlib.vm.migrate` through those two connections: a destination domain
  started with `-incoming defer`, listening on a port QEMU picks, `migrate`
  on the source (DOWNTIME_LIMIT_MS), the persistent definition for the
  destination;
- two daemons (real hosts): libvirt's own live migration, peer to peer
  (`P2P_FLAGS`, `p2p_params`): the source's libvirtd opens the target's
  (`libvirt_peer_uri`, with the source host's own ssh identity), QEMU sends
  the RAM straight to the target's inventory address, the destination
  XML names the node's taps, made beforehand on the target on its
  bridges, and the destination domain's name. The lab cannot run this
  (one libvirtd): tests/unit/test_vm_migrate_ssh.py checks the call.

The taps of a host reached over SSH end in the host's own namespace, on
its bridges; they are made where the daemon's QEMU opens them by name,
which is the host's namespace on a real host and the root one in the SSH
lab (see `libvirt_ns`), as vnet_domain does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from typing import Any

from vnetlib import hosts
from vnetlib.vm.domain import domain_logs, serial_log
from vnetlib.vm.migrate import (
    RISKY_SYNCS,
    MigrationError,
    Nic,
    Remote,
    Stats,
    VmMove,
    _qmp,
    _rename,
    _run,
    dest_xml,
    persistent_xml,
    remove_domain,
    running_domain,
    spare_tap,
    spare_taps,
)
from vnetlib.vm.vnc import QEMU_PIDS

log = logging.getLogger(__name__)

HOST_TIMEOUT = 30.0
SPARES = 16  # spare pool taps looked for when undoing (as vnetlib.vm.migrate)


def p2p_flags() -> int:
    """libvirt's flags for a move between two daemons: live, peer to peer
    (the source's daemon drives it: the PIP's connection may drop), the
    destination defined persistently, the source undefined, aborted on an
    I/O error rather than paused."""
    import libvirt  # type: ignore[import-untyped]

    return int(libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
               | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
               | libvirt.VIR_MIGRATE_ABORT_ON_ERROR)


def p2p_params(move: VmMove, remote: Remote, source_xml: str, inactive_xml: str,
               bandwidth_mib: int | None = None) -> dict[str, Any]:
    """The typed parameters of `migrateToURI3` for a move between daemons."""
    import libvirt

    params: dict[str, Any] = {
        libvirt.VIR_MIGRATE_PARAM_DEST_NAME: move.dest,
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: p2p_xml(source_xml, move.dest,
                                                    [n.tap for n in move.nics]),
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: p2p_persistent_xml(inactive_xml, move.dest,
                                                                 move.cmdline),
        # QEMU's stream goes to the target's inventory address, not to
        # whatever the target's hostname resolves to.
        libvirt.VIR_MIGRATE_PARAM_URI:
            f"tcp://{_bracket(hosts.address(remote.inventory, remote.target))}",
    }
    if bandwidth_mib is not None:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth_mib
    return params


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def p2p_xml(source_xml: str, dest: str, taps: Sequence[str]) -> str:
    """The destination XML of a migration between daemons: the source's
    (migratable; its UUID kept: libvirt migrates a domain of one UUID) under
    the destination's name, the i-th NIC on the i-th tap (made on the
    target, on its bridge), a spare NIC on its `spare_tap`."""
    root = ET.fromstring(source_xml)
    uuid = root.findtext("uuid")
    _rename(root, dest, live=True)
    if uuid:
        element = ET.Element("uuid")
        element.text = uuid
        root.insert(1, element)
    for i, iface in enumerate(root.iterfind("devices/interface")):
        target = iface.find("target")
        if target is None:
            target = ET.SubElement(iface, "target")
        target.set("dev", taps[i] if i < len(taps) else spare_tap(dest, i))
    return ET.tostring(root, encoding="unicode")


def p2p_persistent_xml(inactive_xml: str, dest: str, cmdline: str | None) -> str:
    """The persistent definition on the target: the source's, renamed, its
    UUID kept, the target plan's kernel command line."""
    uuid = ET.fromstring(inactive_xml).findtext("uuid") or ""
    return persistent_xml(inactive_xml, dest, uuid, cmdline)


# -- the hosts' shells ----------------------------------------------------------------


def on_host(remote: Remote, host: str, script: str, *, check: bool = True) -> str:
    """Run a shell script on `host` through its ssh argv; its stdout."""
    argv = hosts.command(remote.inventory, host, ["sh", "-c", script])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=HOST_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise MigrationError(f"host {host} did not answer over SSH within "
                             f"{HOST_TIMEOUT:.0f} s") from None
    if done.returncode == 255:
        raise MigrationError(f"host {host} cannot be reached over SSH: "
                             f"{done.stderr.strip()[-300:]}")
    if check and done.returncode != 0:
        raise MigrationError(f"on host {host}: {script}: {done.stderr.strip()[-300:]}")
    return done.stdout


def libvirt_ns(pid_file: str | None) -> str:
    """Shell that sets IN to the `nsenter` prefix of the network namespace
    where the daemon's QEMU opens taps by name: that of the process whose pid
    `pid_file` holds (a running QEMU of the same daemon) when it is not the
    host shell's (the SSH lab: the hosts are namespaces, their shared
    libvirtd runs in the root one); empty on a host that runs its own
    libvirtd, or without `pid_file`."""
    if pid_file is None:
        return 'IN=""'
    return (f'IN=""; p=$(cat {shlex.quote(pid_file)} 2>/dev/null); '
            'if [ -n "$p" ] && [ "$(readlink /proc/$p/ns/net)" != '
            '"$(readlink /proc/self/ns/net)" ]; then IN="nsenter -t $p -n"; fi')


def make_script(taps: Sequence[str], pid_file: str | None) -> str:
    """The host shell's part before the destination starts: `taps` exist
    where the daemon's QEMU will open them (made unless there already)."""
    names = " ".join(shlex.quote(t) for t in taps)
    return (f"{libvirt_ns(pid_file)}; for t in {names}; do "
            "$IN ip link show dev \"$t\" >/dev/null 2>&1 || "
            "$IN ip tuntap add dev \"$t\" mode tap || exit 1; done")


def attach_script(nics: Sequence[Nic], spares: Sequence[str], pid_file: str | None) -> str:
    """The host shell's part once the destination runs (its QEMU holds the
    taps): the taps moved into the host's namespace when they are not in it
    (`$$`, the shell, names it), the node's up on their bridges; spare taps
    stay down on none."""
    names = " ".join(shlex.quote(t) for t in [*(n.tap for n in nics), *spares])
    lines = [f"{libvirt_ns(pid_file)}",
             f'if [ -n "$IN" ]; then for t in {names}; do '
             '$IN ip link set dev "$t" netns $$ || exit 1; done; fi']
    lines += [f"ip link set dev {shlex.quote(n.tap)} master {shlex.quote(n.bridge)} up || exit 1"
              for n in nics]
    return "; ".join(lines)


def delete_script(names: Sequence[str], pid_file: str | None = None) -> str:
    """The host shell's part of an undo: `names` deleted in the host's
    namespace and in the daemon's (a failure can come between the two)."""
    quoted = " ".join(shlex.quote(t) for t in names)
    return (f"{libvirt_ns(pid_file)}; for t in {quoted}; do "
            'ip link delete dev "$t" 2>/dev/null; '
            '[ -z "$IN" ] || $IN ip link delete dev "$t" 2>/dev/null; done; true')


def attach_taps(remote: Remote, host: str, nics: Sequence[Nic], spares: Sequence[str],
                pid_file: str | None) -> None:
    """The node's taps in `host`'s namespace, up on their bridges."""
    if nics or spares:
        on_host(remote, host, attach_script(nics, spares, pid_file))


def delete_taps(remote: Remote, host: str, names: Sequence[str]) -> None:
    if names:
        on_host(remote, host, delete_script(names), check=False)


def _all_taps(move: VmMove, domain: str) -> list[str]:
    return [*(n.tap for n in move.nics),
            *(spare_tap(domain, i) for i in range(len(move.nics), len(move.nics) + SPARES))]


# -- libvirt ----------------------------------------------------------------------------


@contextlib.contextmanager
def connection(remote: Remote, host: str) -> Iterator[Any]:
    """`host`'s own libvirt daemon, over SSH."""
    import libvirt

    uri = hosts.libvirt_uri(remote.inventory, host)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise MigrationError(f"host {host}'s libvirt cannot be reached over SSH: "
                             f"{exc}") from None
    try:
        yield conn
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def host_uuid(conn: Any) -> str:
    """The daemon's host UUID (its capabilities'): equal for two connections
    to one daemon."""
    found = ET.fromstring(conn.getCapabilities()).findtext("host/uuid")
    if not found:
        raise MigrationError("libvirt's capabilities name no host UUID")
    return found


def migrate(move: VmMove, remote: Remote, *, downtime_limit_ms: int,
            timeout: float) -> Stats:
    """Move the running guest of `move.source` on `remote.source` into
    `move.dest` on `remote.target`, through the hosts; on any failure the
    destination goes and the source runs on (MigrationError)."""
    started = time.perf_counter()
    with connection(remote, remote.source) as sconn, \
            connection(remote, remote.target) as tconn:
        src = running_domain(sconn, move.source, f" on {remote.source}")
        if host_uuid(sconn) == host_uuid(tconn):
            method = "QMP, one libvirtd"
            stats = _same_daemon(move, remote, src, tconn, downtime_limit_ms, timeout, started)
        else:
            method = "libvirt peer to peer"
            stats = _peer_to_peer(move, remote, src, tconn, downtime_limit_ms, started)
    log.info("VM %s on %s -> %s on %s over SSH (%s): %s", move.source, remote.source,
             move.dest, remote.target, method, json.dumps(stats.to_dict(), sort_keys=True))
    return stats


def _same_daemon(move: VmMove, remote: Remote, src: Any, tconn: Any, downtime_limit_ms: int,
                 timeout: float, started: float) -> Stats:
    import libvirt

    xml = dest_xml(src.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE), move.dest,
                   [n.tap for n in move.nics])
    inactive = src.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    spares = spare_taps(xml)
    # One daemon: its QEMUs open taps in the source QEMU's namespace.
    pid_file = source_pid_file(move)
    dest = None
    try:
        # One daemon, one file system: the destination's log continues the source's.
        on_host(remote, remote.target,
                f"cp -f {shlex.quote(serial_log(move.source))} "
                f"{shlex.quote(serial_log(move.dest))} 2>/dev/null; "
                + make_script([*(n.tap for n in move.nics), *spares], pid_file))
        try:
            dest = tconn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise MigrationError(f"destination {move.dest} did not start on "
                                 f"{remote.target}: {exc}") from None
        attach_taps(remote, remote.target, move.nics, spares, pid_file)
        stats = _run(src, dest, downtime_limit_ms, timeout, started, _listen(dest))
        tconn.defineXML(persistent_xml(inactive, move.dest, dest.UUIDString(), move.cmdline))
    except BaseException:
        _remove_dest(move, remote, tconn, dest, pid_file)
        raise
    return stats


def source_pid_file(move: VmMove) -> str:
    """The pid file of the source domain's QEMU (on the daemon's machine)."""
    return f"{QEMU_PIDS}/{move.source}.pid"


def _listen(dest: Any) -> str:
    """Start `dest`'s incoming migration on a loopback port QEMU picks (the
    daemon's machine is not this one): the address it listens on."""
    _qmp(dest, "migrate-incoming", uri="tcp:127.0.0.1:0")
    for address in (_qmp(dest, "query-migrate") or {}).get("socket-address", []):
        if address.get("type") in ("inet", "socket") and str(address.get("port", "0")) != "0":
            return f"tcp:{address.get('host', '127.0.0.1')}:{address['port']}"
    raise MigrationError("the destination does not say where it listens")


def _peer_to_peer(move: VmMove, remote: Remote, src: Any, tconn: Any,
                  downtime_limit_ms: int, started: float) -> Stats:
    import libvirt

    params = p2p_params(move, remote, src.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE),
                        src.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    spares = spare_taps(params[libvirt.VIR_MIGRATE_PARAM_DEST_XML])
    try:
        if move.nics or spares:  # the target's own daemon: in the host's namespace
            on_host(remote, remote.target,
                    make_script([*(n.tap for n in move.nics), *spares], None) + "; "
                    + attach_script(move.nics, spares, None))
        src.migrateSetMaxDowntime(downtime_limit_ms, 0)
        try:
            src.migrateToURI3(hosts.libvirt_peer_uri(remote.inventory, remote.target),
                              params, p2p_flags())
        except libvirt.libvirtError as exc:
            raise MigrationError(f"libvirt's migration to {remote.target} failed: "
                                 f"{exc}") from None
        dest = tconn.lookupByName(move.dest)
        info = dest.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except BaseException:
        _remove_dest(move, remote, tconn, None)
        raise
    return p2p_stats(info, time.perf_counter() - started, downtime_limit_ms)


def p2p_stats(info: dict[str, Any], seconds: float, downtime_limit_ms: int = 0) -> Stats:
    """`Stats` of libvirt's completed job (`jobStats`: time_elapsed,
    downtime, setup_time, memory_processed, memory_iteration)."""
    syncs = int(info.get("memory_iteration", 0))
    if syncs >= RISKY_SYNCS:
        log.warning("QEMU copied pages again after a dirty-bitmap sync while the guest ran "
                    "(%d syncs, downtime-limit %d ms)", syncs, downtime_limit_ms)
    return Stats(float(info.get("time_elapsed", 0)), float(info.get("downtime", 0)),
                 float(info.get("setup_time", 0)), int(info.get("memory_processed", 0)),
                 seconds, syncs)


def _remove_dest(move: VmMove, remote: Remote, tconn: Any, dest: Any,
                 pid_file: str | None = None) -> None:
    """Undo a destination on the target: its domain, logs and taps (also
    those still in the daemon's namespace: see `libvirt_ns`)."""
    import libvirt

    if dest is not None:
        with contextlib.suppress(libvirt.libvirtError):
            dest.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        tconn.lookupByName(move.dest).undefine()
    with contextlib.suppress(MigrationError):
        on_host(remote, remote.target, _rm_logs(move.dest) + "; "
                + delete_script(_all_taps(move, move.dest), pid_file), check=False)


def _rm_logs(domain: str) -> str:
    return "rm -f " + " ".join(shlex.quote(p) for p in domain_logs(domain))


def finish(move: VmMove, remote: Remote) -> None:
    """After a completed migration: the source domain (if libvirt left it),
    its logs and its taps go, on the source host."""
    with connection(remote, remote.source) as conn:
        remove_domain(conn, move.source)
    on_host(remote, remote.source, _rm_logs(move.source) + "; "
            + delete_script(_all_taps(move, move.source)), check=False)
