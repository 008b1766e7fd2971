"""A running domain's VNC display: the TCP port libvirt chose for it (the
live XML's `graphics[@type='vnc']/@port`, listening on 127.0.0.1 in the
network namespace of the domain's QEMU)."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

from vnetlib.vm.serial import URI

HOST = "127.0.0.1"
QEMU_PIDS = Path("/run/libvirt/qemu")
CLONE_NEWNET = 0x40000000
CONNECT_TIMEOUT = 10.0


class VncError(Exception):
    """The domain is not running or has no VNC display."""


def display_port(live_xml: str, domain: str) -> int:
    """The VNC port in a domain's live XML (also run by the host-side agent
    of `vnetlib.vm.remote`, where VncError is its own)."""
    graphics = ET.fromstring(live_xml).find("devices/graphics[@type='vnc']")
    if graphics is None:
        raise VncError(f"domain {domain} has no VNC display")
    port = int(graphics.get("port", "-1"))
    if port <= 0:
        raise VncError(f"domain {domain} is not running (no VNC port yet)")
    return port


def port_of(domain: str, uri: str = URI) -> int:
    done = subprocess.run(["virsh", "-c", uri, "dumpxml", domain], capture_output=True,
                          text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise VncError(f"domain {domain}: {done.stderr.strip() or 'virsh dumpxml failed'}")
    return display_port(done.stdout, domain)


def qemu_pid(domain: str) -> int | None:
    """The pid of the domain's QEMU process (libvirt's pid file), if running."""
    try:
        return int((QEMU_PIDS / f"{domain}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def connect(domain: str, uri: str = URI) -> socket.socket:
    """A TCP connection to the domain's display, made from its QEMU's network
    namespace: a player that runs in a namespace of its own (a lab with
    `--players-apart`) would find nothing on its own 127.0.0.1."""
    port = port_of(domain, uri)
    try:
        return connect_from(qemu_pid(domain), port)
    except PermissionError:  # a caller without the right to enter it: its own
        return connect_from(None, port)


def connect_from(pid: int | None, port: int) -> socket.socket:
    """A TCP connection to 127.0.0.1:`port` in the network namespace of
    process `pid` (None: this thread's). When that is not this thread's, the
    socket is made by a thread of its own that enters it first (setns
    changes only the calling thread's namespace, and that thread ends with
    the connection made)."""
    if pid is None:
        return socket.create_connection((HOST, port), CONNECT_TIMEOUT)
    theirs, ours = os.stat(f"/proc/{pid}/ns/net"), os.stat("/proc/thread-self/ns/net")
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        return socket.create_connection((HOST, port), CONNECT_TIMEOUT)
    made: list[socket.socket | BaseException] = []

    def enter_and_connect() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into process {pid}'s network namespace: "
                                         f"{os.strerror(errno)}")
            finally:
                os.close(fd)
            made.append(socket.create_connection((HOST, port), CONNECT_TIMEOUT))
        except BaseException as exc:  # handed to the caller's thread
            made.append(exc)

    worker = threading.Thread(target=enter_and_connect, name="vnc-connect")
    worker.start()
    worker.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]
