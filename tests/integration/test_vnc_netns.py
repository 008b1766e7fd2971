"""A VM's VNC display is reached from its QEMU's network namespace
(`vnetlib.vm.vnc.connect_from`), so a player that runs in a namespace of
its own (`vnet lab up --players-apart`: QEMU listens on the root
namespace's 127.0.0.1) and the host-side agent of a host reached over SSH
both find it. Here the listener is this test process, in the root
namespace, and the caller runs in a namespace the test made, where nothing
listens on that port."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

GREETING = b"RFB 003.008\n"


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"vt-vnc-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def _in(netns: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=30, check=False)


def test_a_caller_in_another_namespace_reaches_the_display_in_qemus(
        netns: str, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.settimeout(20)
    code = ("import sys; from vnetlib.vm import vnc\n"
            "s = vnc.connect_from(int(sys.argv[1]), int(sys.argv[2]))\n"
            "s.sendall(b'hello'); print(s.recv(64).decode(), end='')\n")
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", code,
                             str(os.getpid()), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(GREETING)
            assert conn.recv(64) == b"hello"
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.encode() == GREETING
    # Without entering QEMU's namespace the caller finds nothing there.
    plain = _in(netns, f"import socket; socket.create_connection(('127.0.0.1', {port}), 5)")
    assert plain.returncode != 0 and "ConnectionRefusedError" in plain.stderr, plain.stderr


def test_same_namespace_connects_directly_and_a_gone_process_is_an_oserror(
        listener: socket.socket) -> None:
    from vnetlib.vm import vnc

    port = listener.getsockname()[1]
    with vnc.connect_from(os.getpid(), port):
        listener.accept()[0].close()
    with pytest.raises(OSError):
        vnc.connect_from(2**22 + 1, port)  # above pid_max: no such process
