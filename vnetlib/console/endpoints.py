"""What a PIP's console connects to at the end of the chain: an endpoint per
(node kind, console kind). A netns node's `shell` is a login shell confined
like exec, on a pseudo-terminal; a VM's `serial` is its serial line's pty
(vnetlib.vm.serial), held exclusively for the session."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Mapping
from typing import Protocol

from vnetlib import naming
from vnetlib.console.wire import ByteReader, ByteWriter, HopError
from vnetlib.core.records import Sliver
from vnetlib.players.confine import Confinement, Spawned
from vnetlib.vm import serial, vnc

SHELL = ("sh", "-i")


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

    async def _wait(self, add: str) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        adder = loop.add_reader if add == "r" else loop.add_writer
        remover = loop.remove_reader if add == "r" else loop.remove_writer

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        adder(self.fd, wake)
        try:
            await ready
        finally:
            remover(self.fd)

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
            self._ended = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self.confinement.end, self.spawned))

    async def wait_closed(self) -> None:
        if self._ended is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._ended)


class NetnsShell:
    """`sh -i` in a netns node, confined for the sliver's tenant."""

    def __init__(self, confinement: Confinement, substrate: str) -> None:
        self.confinement = confinement
        self.substrate = substrate

    async def open(self, sliver: Sliver, node: str) -> tuple[ByteReader, ByteWriter]:
        netns = naming.vnode_netns(self.substrate, sliver.id, node)
        spawned = await asyncio.to_thread(self.confinement.spawn, sliver.id, netns, SHELL)
        stream = PtyStream(self.confinement, spawned)
        return stream, stream


class SerialStream(PtyStream):
    """A VM's serial pty (libvirt's host side) as a reader and a writer; holds
    the domain's serial lock until close(), so exec waits or is refused."""

    def __init__(self, fd: int, lock: int) -> None:
        self.fd = fd
        self.lock = lock
        self._out = bytearray()
        self._closed = False
        self._ended = None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)
            serial.release(self.lock)


class VmSerial:
    """The serial console of a VM node (qemu, xen): its root shell, unconfined
    (the VM is the customer's own machine)."""

    def __init__(self, substrate: str) -> None:
        self.substrate = substrate

    def busy(self, sliver: Sliver, node: str) -> bool:
        return serial.busy(naming.vnode_netns(self.substrate, sliver.id, node))

    async def open(self, sliver: Sliver, node: str) -> tuple[ByteReader, ByteWriter]:
        domain = naming.vnode_netns(self.substrate, sliver.id, node)
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


class VmVnc:
    """The VNC display of a VM node (qemu): libvirt's VNC server on 127.0.0.1,
    at the port the live domain XML names. The RFB bytes pass untouched."""

    def __init__(self, substrate: str) -> None:
        self.substrate = substrate

    async def open(self, sliver: Sliver, node: str) -> tuple[ByteReader, ByteWriter]:
        domain = naming.vnode_netns(self.substrate, sliver.id, node)
        try:
            port = await asyncio.to_thread(vnc.port_of, domain)
            return await asyncio.open_connection(vnc.HOST, port)
        except (vnc.VncError, OSError, ValueError):
            raise HopError(f"node {node} has no VNC console now (is it running, "
                           "with <console kind=\"vnc\"/>?)") from None


Registry = Mapping[tuple[str, str], ConsoleEndpoint]
"""(node kind, console kind) -> endpoint."""
