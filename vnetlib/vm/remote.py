"""A VM node's serial line and VNC display where its hypervisor host is
reached over SSH.

The PIP machine's own libvirt knows nothing of a VM that runs on a real
substrate host; the host's libvirt does. So for a node on a host reached
over SSH (`vnetlib.hosts`), the PIP runs a small agent there (`python3 -c`,
this package's `serial` module and a main, standard library only) through
the host's SSH connection, the one Ansible keeps open:

- `run`: an exec on the VM (`serial.run` on the host);
- `serial`: a console session: the agent takes the domain's serial lock,
  finds its pty through the host's libvirt, answers `vnet-vm: ok` and relays
  bytes between its stdin/stdout (the SSH channel) and the pty;
- `vnc`: the agent finds the display's port through the host's libvirt and
  relays bytes to it, connecting from the QEMU process's own network
  namespace (the host's on a real machine; the lab's hosts are namespaces
  sharing this machine's libvirt, whose displays listen in the root one).

The serial lock lives on the host, held by the agent for the session: the
line is the host's resource, so whoever else reaches it (another PIP
process, the operator's direct `vnet exec`, an exec through the chain) is
excluded there, and a session whose SSH connection drops releases it with
the agent's death; a lock held on the PIP machine would exclude nobody but
the PIP itself and outlive a lost host.

A refusal is exit status 125 and one line `vnet-vm: KIND: reason` (busy,
serial, vnc); ssh's own 255 is the host not answering (`HostUnreachable`,
naming the host).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import subprocess
from collections.abc import Callable, Sequence
from typing import Protocol

from vnetlib.vm import serial, vnc

REFUSED = 125
SSH_FAILED = 255
MARK = "vnet-vm: "
OK_LINE = b"vnet-vm: ok\n"
OPEN_TIMEOUT = 20.0
"""Seconds for the agent to answer a console's opening (ssh's own
ConnectTimeout bounds an unreachable host well below it)."""
SSH_SLACK = 20.0
"""Seconds an exec's ssh may take beyond the command's timeout and lock wait."""
CLOSE_GRACE = 5.0
DROPPED = b"\r\n[vnet: the connection to the node's host dropped; session ended]\r\n"

log = logging.getLogger(__name__)


class Reach(Protocol):
    """How a player reaches its substrate's hosts (`vnetlib.hosts.Hosts`)."""

    def remote(self, host: str) -> bool: ...

    def argv(self, host: str, argv: Sequence[str], *, tty: bool = False) -> list[str]: ...


class HostUnreachable(serial.SerialError):
    """The node's host did not answer over SSH."""

    def __init__(self, host: str, detail: str) -> None:
        super().__init__(f"host {host} cannot be reached over SSH: {detail}")
        self.host = host


AGENT_MAIN = r'''
import ctypes
import sys
import json
import socket
import threading


def _refuse(kind, why):
    sys.stderr.write("vnet-vm: %s: %s\n" % (kind, why))
    sys.stderr.flush()
    sys.exit(125)


def _send(fd, data):
    view = memoryview(data)
    while view:
        select.select([], [fd], [])
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue


def _relay(fd):
    """stdin -> fd and fd -> stdout until either ends (EOF, EIO, EPIPE)."""
    os.write(1, b"vnet-vm: ok\n")
    try:
        while True:
            ready, _, _ = select.select([0, fd], [], [])
            if 0 in ready:
                data = os.read(0, 65536)
                if not data:
                    return
                _send(fd, data)
            if fd in ready:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    return
                _send(1, data)
    except OSError:
        return


def _main():
    req = json.loads(sys.argv[1])
    op, domain = req["op"], req["domain"]
    if op == "run":
        try:
            rc, out = run(domain, req["argv"], req["timeout"], req["cap"], wait=req["wait"])
        except SerialBusy as exc:
            _refuse("busy", exc)
        except (SerialError, ValueError) as exc:
            _refuse("serial", exc)
        sys.stdout.write(json.dumps({"rc": rc, "out": out}))
    elif op == "serial":
        try:
            lock = hold(domain)
        except SerialBusy as exc:
            _refuse("busy", exc)
        try:
            fd = open_line(pty_path(domain))
        except (SerialError, OSError) as exc:
            _refuse("serial", exc)
        try:
            os.write(fd, b"\r")
        except OSError:
            pass
        _relay(fd)
        release(lock)
    elif op == "vnc":
        try:
            port = display_port(_virsh(URI, "dumpxml", domain), domain)
            sock = connect_from(qemu_pid(domain), port)
            sock.settimeout(None)
        except (SerialError, VncError, OSError, ValueError) as exc:
            _refuse("vnc", exc)
        _relay(sock.fileno())


class VncError(Exception):
    pass


_main()
'''


@functools.cache
def agent_source() -> str:
    """The host-side agent: `serial` whole, `vnc`'s display port and
    connection from QEMU's namespace, and a main taking one JSON request."""
    constants = (f"HOST = {vnc.HOST!r}\nQEMU_PIDS = Path({str(vnc.QEMU_PIDS)!r})\n"
                 f"CLONE_NEWNET = {vnc.CLONE_NEWNET}\nCONNECT_TIMEOUT = {vnc.CONNECT_TIMEOUT}\n")
    return "\n".join([inspect.getsource(serial), constants,
                      *(inspect.getsource(f) for f in (vnc.display_port, vnc.qemu_pid,
                                                       vnc.connect_from)),
                      AGENT_MAIN])


def agent_argv(request: dict[str, object]) -> list[str]:
    """The command line, run on a substrate host, of one agent request."""
    return ["python3", "-c", agent_source(), json.dumps(request)]


def remote_host(reach: Reach | None, host: str | None) -> str | None:
    """`host` if it is reached over SSH, else None (the VM is this machine's;
    also for a host the inventory does not name, as before hosts over SSH)."""
    if reach is None or host is None:
        return None
    try:
        return host if reach.remote(host) else None
    except LookupError:
        return None


def refusal(host: str, code: int, stderr: bytes) -> serial.SerialError | vnc.VncError:
    """The error an agent's exit means."""
    text = stderr.decode("utf-8", "replace").strip()
    line = next((t for t in reversed(text.splitlines()) if t.startswith(MARK)), "")
    if code == REFUSED and line:
        kind, _, why = line[len(MARK):].partition(": ")
        if kind == "busy":
            return serial.SerialBusy(why)
        return vnc.VncError(why) if kind == "vnc" else serial.SerialError(why)
    if code == SSH_FAILED:
        return HostUnreachable(host, text.splitlines()[-1] if text else "ssh failed")
    return serial.SerialError(f"the agent on host {host} failed (exit {code}): {text[-300:]}")


def run(reach: Reach | None, host: str | None, domain: str, argv: Sequence[str],
        timeout: float, output_cap: int, *, wait: float = 5.0) -> tuple[int, str]:
    """`serial.run` of VM `domain` on its host `host`: over SSH through the
    agent when `reach` reaches the host so, here otherwise. The same
    errors, and HostUnreachable."""
    over = remote_host(reach, host)
    if over is None:
        return serial.run(domain, argv, timeout, output_cap, wait=wait)
    assert reach is not None
    line = reach.argv(over, agent_argv({"op": "run", "domain": domain, "argv": list(argv),
                                        "timeout": timeout, "cap": output_cap, "wait": wait}))
    try:
        done = subprocess.run(line, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout + wait + SSH_SLACK, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HostUnreachable(over, f"no answer within {timeout + wait + SSH_SLACK:.0f} s") \
            from exc
    if done.returncode != 0:
        raise refusal(over, done.returncode, done.stderr)
    result = json.loads(done.stdout)
    return int(result["rc"]), str(result["out"])


class HostStream:
    """An agent's session over SSH as a reader and a writer. When the SSH
    connection drops (ssh fails, not the agent ending because the VM's line
    closed), a serial session reads `DROPPED` before its end of stream."""

    def __init__(self, proc: asyncio.subprocess.Process, host: str, *, notice: bool,
                 on_close: Callable[[], None] | None = None) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.host = host
        self.notice = notice
        self.on_close = on_close
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._closed = False
        self._ended = False
        self._reaper: asyncio.Task[None] | None = None

    async def read(self, n: int = -1) -> bytes:
        if self._ended:
            return b""
        data = await self._stdout.read(n if n > 0 else 65536)
        if data or self._closed:
            return data
        self._ended = True
        code = await self.proc.wait()
        if code == 0:
            return b""
        why = b""
        if self.proc.stderr is not None:
            with contextlib.suppress(Exception):
                why = await asyncio.wait_for(self.proc.stderr.read(4096), 1.0)
        log.warning("%s console on host %s ended: ssh exit %d: %s",
                    "serial" if self.notice else "vnc", self.host, code,
                    why.decode("utf-8", "replace").strip()[-300:])
        return DROPPED if self.notice else b""

    def write(self, data: bytes) -> None:
        if not self._closed and not self._stdin.is_closing():
            self._stdin.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._stdin.drain()

    def close(self) -> None:
        """End the session: EOF to the agent (it releases the line and exits);
        ssh killed if it has not ended within CLOSE_GRACE s."""
        if self._closed:
            return
        self._closed = True
        if self.on_close is not None:
            self.on_close()
        with contextlib.suppress(Exception):
            self._stdin.close()
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        try:
            await asyncio.wait_for(self.proc.wait(), CLOSE_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    async def wait_closed(self) -> None:
        if self._reaper is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._reaper)


async def open_session(reach: Reach, host: str, op: str, domain: str, *,
                       on_close: Callable[[], None] | None = None) -> HostStream:
    """A `serial` or `vnc` session of `domain` through the agent on `host`,
    once the agent answered; its refusal or the host's failure raised.
    `on_close` is called when the session is closed."""
    line = reach.argv(host, agent_argv({"op": op, "domain": domain}))
    proc = await asyncio.create_subprocess_exec(
        *line, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), OPEN_TIMEOUT)
    except TimeoutError:
        first = b""
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if first == OK_LINE:
        return HostStream(proc, host, notice=op == "serial", on_close=on_close)
    with contextlib.suppress(ProcessLookupError):
        if proc.returncode is None and first:
            proc.kill()
    err = await proc.stderr.read()
    code = await proc.wait()
    if code < 0 and not first:
        raise HostUnreachable(host, f"no answer within {OPEN_TIMEOUT:.0f} s")
    raise refusal(host, code, err)
