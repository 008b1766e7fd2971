"""What a PIP's console connects to at the end of the chain: an endpoint per
(node kind, console kind). A netns node's `shell` is a login shell confined
like exec, on a pseudo-terminal; a VM's `serial` is its serial line's pty
(vnetlib.vm.serial), held exclusively for the session."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from vnetlib import naming, paths
from vnetlib.console.wire import ByteReader, ByteWriter, HopError
from vnetlib.core.records import Sliver
from vnetlib.hosts import Hosts
from vnetlib.players.confine import Confinement, Reach, Spawned, netns_path
from vnetlib.vm import remote, serial, vnc

SHELL = ("sh", "-i")
SPARE_IDLE = 60.0
MAX_SPARES = 16
SPARE_NICE = 19
RESTOCK_DELAY = 0.02
"""Seconds after a session took a node's spare shell before the next is
started: starting one holds the interpreter for milliseconds, which would
delay the session's OK and first prompt on their way up the chain."""

log = logging.getLogger(__name__)


class ConsoleEndpoint(Protocol):
    async def open(self, sliver: Sliver, node: str) -> tuple[ByteReader, ByteWriter]: ...


class PtyStream:
    """Both directions of a pseudo-terminal's master side as a reader and a
    writer, on the running loop; close() ends the process behind it."""

    def __init__(self, confinement: Confinement, spawned: Spawned) -> None:
        self.confinement = confinement
        self.spawned = spawned
        self.fd = spawned.master_fd
        self._out = bytearray()
        self._closed = False
        self._ended: asyncio.Task[None] | None = None
        self._waiting: set[asyncio.Future[None]] = set()

    async def _wait(self, add: str) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        adder = loop.add_reader if add == "r" else loop.add_writer
        remover = loop.remove_reader if add == "r" else loop.remove_writer

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        adder(self.fd, wake)
        self._waiting.add(ready)
        try:
            await ready
        finally:
            self._waiting.discard(ready)
            if not self._closed:
                remover(self.fd)

    def _wake_all(self) -> None:
        """A read or drain waiting on the descriptor returns now: it is about
        to be closed (a closed descriptor leaves epoll without a wake-up)."""
        for ready in list(self._waiting):
            if not ready.done():
                ready.set_result(None)
        with contextlib.suppress(Exception):
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.fd)
            loop.remove_writer(self.fd)

    async def read(self, n: int = -1) -> bytes:
        while not self._closed:
            try:
                return os.read(self.fd, n if n > 0 else 65536)
            except BlockingIOError:
                await self._wait("r")
            except OSError as exc:  # EIO: the terminal's last holder exited
                if exc.errno == errno.EIO:
                    return b""
                raise
        return b""

    def write(self, data: bytes) -> None:
        self._out += data

    @property
    def pending(self) -> bytes:
        return bytes(self._out)

    async def drain(self) -> None:
        while self._out and not self._closed:
            try:
                sent = os.write(self.fd, self._out)
                del self._out[:sent]
            except BlockingIOError:
                await self._wait("w")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wake_all()
            self._ended = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self.confinement.end, self.spawned))

    async def wait_closed(self) -> None:
        if self._ended is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._ended)


class NetnsShell:
    """`sh -i` in a netns node, confined for the sliver's tenant.

    Starting a confined shell takes tens of milliseconds (a cgroup, then a
    chain of execs into the namespace), more than the rest of a session's
    setup; so once a node had a session, a spare shell is started for it in
    the background, confined the same way, and the node's next session takes
    it (a node whose host is reached over SSH gets its shell there, through
    the host's connection, and no spare). A spare unused for `spare_idle`
    seconds is ended; spares of a sliver die with its tenant's processes
    when it is removed (a dead spare is never handed out); `close()` ends
    them all. A spare's process is put at the lowest CPU priority as soon as
    it exists (its exec chain and the shell inherit it), so starting one
    hardly slows a session being set up; the session that takes it raises
    its processes back to normal. (Not the thread that starts it: it holds
    the interpreter's lock while forking, and a starved holder would stall
    every session of the player.)"""

    def __init__(self, confinement: Confinement, substrate: str, *,
                 spare_idle: float = SPARE_IDLE, max_spares: int = MAX_SPARES) -> None:
        self.confinement = confinement
        self.substrate = substrate
        self.spare_idle = spare_idle
        self.max_spares = max_spares
        self._spares: dict[tuple[str, str], tuple[Spawned, asyncio.TimerHandle]] = {}
        self._starting: set[tuple[str, str]] = set()
        self._limbo: set[Spawned] = set()  # spares started, not yet in _spares
        self._born: dict[int, int] = {}  # a spare's pid -> its namespace's inode then
        self._lock = threading.Lock()
        self._closed = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vnet-spare-shells")

    async def open(self, sliver: Sliver, node: str) -> tuple[ByteReader, ByteWriter]:
        key = (sliver.id, node)
        entry = self._spares.pop(key, None)
        spawned = None
        if entry is not None:
            entry[1].cancel()
            born = self._born.pop(entry[0].proc.pid, None)
            if (entry[0].proc.poll() is None and born == _ns_inode(self._netns(sliver, node))
                    and _normal_priority(self.confinement, entry[0])):
                spawned = entry[0]
            else:  # dead, or in a namespace the node left (it moved)
                self._end_later(entry[0])
        local = True  # a spare was taken: spares are only made for nodes on this machine
        if spawned is None:
            host = sliver.embedding.node_map.get(node)

            def cold() -> tuple[Spawned, bool]:
                # Whether the host is reached over SSH reads the inventory
                # (YAML, about a millisecond): in this thread, off the loop.
                return (self.confinement.spawn(sliver.id, self._netns(sliver, node), SHELL,
                                               host=host),
                        self.confinement.remote_host(host) is None)

            fresh, local = await asyncio.to_thread(cold)
            spawned = fresh
        if local:  # no spares on a host over SSH
            self._restock(sliver, node)
        stream = PtyStream(self.confinement, spawned)
        return stream, stream

    def spares(self) -> int:
        return len(self._spares)

    def spare_pids(self, node: str | None = None) -> set[int]:
        """The processes of every spare now, or of `node`'s (for tests)."""
        pids: set[int] = set()
        for (_, of), (spawned, _) in list(self._spares.items()):
            if node is not None and of != node:
                continue
            with contextlib.suppress(OSError, IndexError):
                leaf = self.confinement.layout.parents()[0] / spawned.tenant / spawned.leaf
                pids.update(int(p) for p in (leaf / "cgroup.procs").read_text().split())
        return pids

    def close(self) -> None:
        """End every spare (from any thread, once the loop stopped)."""
        with self._lock:
            self._closed = True
            limbo = list(self._limbo)
            self._limbo.clear()
        entries = list(self._spares.values())
        self._spares.clear()
        for timer in [t for _, t in entries]:
            timer.cancel()
        for spawned in [*limbo, *(s for s, _ in entries)]:
            with contextlib.suppress(Exception):
                self.confinement.end(spawned)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _netns(self, sliver: Sliver, node: str) -> str:
        return naming.vnode_netns(self.substrate, sliver.id, node)

    def _restock(self, sliver: Sliver, node: str) -> None:
        key = (sliver.id, node)
        if key in self._starting or len(self._spares) + len(self._starting) >= self.max_spares:
            return
        self._starting.add(key)
        loop = asyncio.get_running_loop()
        loop.call_later(RESTOCK_DELAY, lambda: loop.create_task(self._spawn_spare(sliver, node)))

    async def _spawn_spare(self, sliver: Sliver, node: str) -> None:
        key = (sliver.id, node)
        try:
            spawned = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._spawn_spare_now, sliver, node)
        except Exception as exc:  # the node or its tenant went away meanwhile
            log.info("no spare shell for %s/%s: %s", sliver.id, node, exc)
            return
        finally:
            self._starting.discard(key)
        if spawned is None:
            return
        with self._lock:
            self._limbo.discard(spawned)
        if key in self._spares:
            self._end_later(spawned)
            return
        timer = asyncio.get_running_loop().call_later(self.spare_idle, self._expire, key)
        self._spares[key] = (spawned, timer)

    def _spawn_spare_now(self, sliver: Sliver, node: str) -> Spawned | None:
        """In a thread: a spare kept in limbo until the loop files it, so that
        close() ends it even if the loop never gets to."""
        netns = self._netns(sliver, node)
        born = _ns_inode(netns)
        spawned = self.confinement.spawn(sliver.id, netns, SHELL)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, spawned.proc.pid, SPARE_NICE)
        with self._lock:
            if not self._closed:
                self._limbo.add(spawned)
                self._born[spawned.proc.pid] = born
                return spawned
        self.confinement.end(spawned)
        return None

    def _expire(self, key: tuple[str, str]) -> None:
        entry = self._spares.pop(key, None)
        if entry is not None:
            self._end_later(entry[0])

    def _end_later(self, spawned: Spawned) -> None:
        self._born.pop(spawned.proc.pid, None)
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(self.confinement.end, spawned))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())


def _ns_inode(netns: str) -> int:
    """The identity of the namespace now named `netns` (-1 if none): a node
    made again elsewhere (moved) has a new one under the same name."""
    try:
        return netns_path(netns).stat().st_ino
    except OSError:
        return -1


def _normal_priority(confinement: Confinement, spawned: Spawned) -> bool:
    """Every process of a spare back to nice 0; False if that failed (it is
    then not handed out)."""
    try:
        os.setpriority(os.PRIO_PROCESS, spawned.proc.pid, 0)  # it may not have joined yet
        first = confinement.layout.parents()[0] / spawned.tenant / spawned.leaf
        for pid in (first / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, int(pid), 0)
    except (OSError, IndexError):
        return False
    return True


class SerialStream(PtyStream):
    """A VM's serial pty (libvirt's host side) as a reader and a writer; holds
    the domain's serial lock until close(), so exec waits or is refused."""

    def __init__(self, fd: int, lock: int) -> None:
        self.fd = fd
        self.lock = lock
        self._out = bytearray()
        self._closed = False
        self._ended = None
        self._waiting = set()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wake_all()
            os.close(self.fd)
            serial.release(self.lock)


def _substrate_reach(substrate: str) -> Reach | None:
    """The substrate's own inventory in this player's home, when it has one
    (a PIP's is there in the lab and by `vnet lab up`); None: VMs are here."""
    inventory = paths.substrate_dir(substrate) / "inventory.yml"
    return Hosts(inventory) if inventory.is_file() else None


class VmSerial:
    """The serial console of a VM node (qemu, xen): its root shell, unconfined
    (the VM is the customer's own machine). On a host reached over SSH
    (`hosts`, else the substrate's inventory) the line is the host's: an
    agent there holds its lock and relays it (vnetlib.vm.remote); busy()
    then knows only this endpoint's own open sessions, and open() is refused
    by the host for anyone else's."""

    def __init__(self, substrate: str, hosts: Reach | None = None) -> None:
        self.substrate = substrate
        self.hosts = hosts if hosts is not None else _substrate_reach(substrate)
        self._remote_open: set[str] = set()

    def _host(self, sliver: Sliver, node: str) -> str | None:
        return remote.remote_host(self.hosts, sliver.embedding.node_map.get(node))

    def busy(self, sliver: Sliver, node: str) -> bool:
        domain = sliver.domain(node)
        if self._host(sliver, node) is not None:
            return domain in self._remote_open
        return serial.busy(domain)

    async def open(self, sliver: Sliver, node: str) -> tuple[ByteReader, ByteWriter]:
        domain = sliver.domain(node)
        host = self._host(sliver, node)
        if host is not None:
            return await self._open_remote(host, domain, node)
        try:
            lock = serial.hold(domain)
        except serial.SerialBusy:
            raise HopError("console in use") from None
        try:
            path = await asyncio.to_thread(serial.pty_path, domain)
            fd = serial.open_line(path)
        except (serial.SerialError, OSError):
            serial.release(lock)
            raise HopError(f"node {node} has no serial console now (is it running?)") from None
        with contextlib.suppress(OSError):
            os.write(fd, b"\r")  # a fresh prompt for whoever just connected
        stream = SerialStream(fd, lock)
        return stream, stream

    async def _open_remote(self, host: str, domain: str,
                           node: str) -> tuple[ByteReader, ByteWriter]:
        assert self.hosts is not None
        try:
            stream = await remote.open_session(
                self.hosts, host, "serial", domain,
                on_close=lambda: self._remote_open.discard(domain))
        except serial.SerialBusy:
            raise HopError("console in use") from None
        except remote.HostUnreachable as exc:
            log.warning("serial console of %s: %s", domain, exc)
            raise HopError(f"node {node}'s host does not answer") from None
        except serial.SerialError:
            raise HopError(f"node {node} has no serial console now (is it running?)") from None
        self._remote_open.add(domain)
        return stream, stream


class VmVnc:
    """The VNC display of a VM node (qemu): libvirt's VNC server on 127.0.0.1
    (of its QEMU's namespace), at the port the live domain XML names; on a
    host reached over SSH, the
    host's, relayed by an agent there. The RFB bytes pass untouched."""

    def __init__(self, substrate: str, hosts: Reach | None = None) -> None:
        self.substrate = substrate
        self.hosts = hosts if hosts is not None else _substrate_reach(substrate)

    async def open(self, sliver: Sliver, node: str) -> tuple[ByteReader, ByteWriter]:
        domain = sliver.domain(node)
        host = remote.remote_host(self.hosts, sliver.embedding.node_map.get(node))
        try:
            if host is not None:
                assert self.hosts is not None
                stream = await remote.open_session(self.hosts, host, "vnc", domain)
                return stream, stream
            sock = await asyncio.to_thread(vnc.connect, domain)
            return await asyncio.open_connection(sock=sock)
        except remote.HostUnreachable as exc:
            log.warning("VNC console of %s: %s", domain, exc)
            raise HopError(f"node {node}'s host does not answer") from None
        except (vnc.VncError, serial.SerialError, OSError, ValueError):
            raise HopError(f"node {node} has no VNC console now (is it running, "
                           "with <console kind=\"vnc\"/>?)") from None


Registry = Mapping[tuple[str, str], ConsoleEndpoint]
"""(node kind, console kind) -> endpoint."""
