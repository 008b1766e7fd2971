"""Commands on a VM virtual node through its serial console.

A VM node (kind qemu or xen) has no namespace on the host to `ip netns exec`
into; what vnet has is the guest's serial line (libvirt's ``<serial
type='pty'>``), on which vnet's guest init keeps a root shell. ``run`` types a
command line on it and reads the output back up to a marker that carries the
exit status.

The command runs as root inside the VM, unconfined: the VM is the customer's
own machine, and nothing of the PIP (no file, key or process of the
substrate) is inside it, so the guest kernel is the isolation boundary, as it
is for any VM a provider rents out.

One user of a serial line at a time: ``run`` and a console session take an
exclusive lock per domain (``flock`` on a file under ``/run/vnet/serial/``),
so an exec waits for, or is refused by, an open console (``SerialBusy``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import select
import shlex
import subprocess
import termios
import time
import tty
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path

URI = "qemu:///system"
LOCK_DIR = Path("/run/vnet/serial")
LINE_MAX = 900  # busybox's line editor takes 1024 bytes at most
PROMPT_WAIT = 2.0  # between newlines while waiting for a prompt
WINDOW = 96  # bytes kept unflushed so a marker split between reads is found
INTERRUPTED = 124  # exit status of a command stopped at its timeout, as timeout(1)
_ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
_PROMPT = re.compile(rb"[#$] $")


class SerialError(Exception):
    """The serial line of a domain cannot be used (no domain, not running, no pty)."""


class SerialBusy(SerialError):
    """Another exec or a console session holds the domain's serial line."""


def _virsh(uri: str, *args: str) -> str:
    done = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                          check=False, timeout=30)
    if done.returncode != 0:
        raise SerialError(f"virsh {args[0]} {args[-1]}: {done.stderr.strip() or 'failed'}")
    return done.stdout


def pty_path(domain: str, uri: str = URI) -> str:
    """The host side of a running domain's serial console (``/dev/pts/N``); a
    paused or stopped domain is refused at once (its shell cannot answer)."""
    state = _virsh(uri, "domstate", domain).strip()
    if state != "running":
        raise SerialError(f"domain {domain} is {state}, not running")
    root = ET.fromstring(_virsh(uri, "dumpxml", domain))
    for device in root.findall("devices/serial") + root.findall("devices/console"):
        source = device.find("source")
        path = source.get("path") if source is not None else device.get("tty")
        if device.get("type") == "pty" and path:
            return path
    raise SerialError(f"domain {domain} has no serial console on a pty")


def _lock_path(domain: str) -> Path:
    if "/" in domain or domain.startswith("."):
        raise SerialError(f"domain name {domain!r} cannot name a lock file")
    return LOCK_DIR / f"{domain}.lock"


def hold(domain: str, wait: float = 0.0) -> int:
    """Take the domain's serial line, waiting up to `wait` seconds for it; the
    lock's fd, which `release` gives back (closing it releases the lock)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_path(domain), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SerialBusy(f"the serial console of {domain} is in use") from None
            time.sleep(0.1)


def release(fd: int) -> None:
    os.close(fd)


def busy(domain: str) -> bool:
    """Whether someone holds the domain's serial line right now."""
    try:
        release(hold(domain))
    except SerialBusy:
        return True
    return False


@contextlib.contextmanager
def locked(domain: str, wait: float = 0.0) -> Iterator[None]:
    """Hold the domain's serial line for a block, waiting up to `wait` seconds for it."""
    fd = hold(domain, wait)
    try:
        yield
    finally:
        release(fd)


def open_line(path: str) -> int:
    """The pty at `path`, non-blocking and raw (no echo or line editing on the host side)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        tty.setraw(fd, termios.TCSANOW)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Line:
    """Reads and writes on an open serial pty with deadlines."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            select.select([], [self.fd], [], 1.0)
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                continue

    def read(self, until: float) -> bytes | None:
        """What arrives before `until` (b"" on nothing yet, None when the time is up)."""
        left = until - time.monotonic()
        if left <= 0:
            return None
        readable, _, _ = select.select([self.fd], [], [], min(left, 0.5))
        if not readable:
            return b""
        try:
            return os.read(self.fd, 65536)
        except BlockingIOError:
            return b""
        except OSError:  # EIO: QEMU closed its side (the domain stopped)
            raise SerialError("the serial line closed") from None

    def prompt(self, until: float) -> bool:
        """Get the shell to a fresh prompt: kill any half-typed line and press
        enter (again every PROMPT_WAIT s: the shell may be respawning), then ^C
        once if something still holds the terminal."""
        seen = b""
        nudges = 0
        nudge_at = 0.0
        while True:
            now = time.monotonic()
            if now >= nudge_at:
                self.send(b"\x15\r" if nudges != 2 else b"\x03")
                nudges += 1
                nudge_at = now + PROMPT_WAIT
            chunk = self.read(min(until, nudge_at))
            if chunk is None:
                if time.monotonic() >= until:
                    return False
                continue
            seen = (seen + chunk)[-256:]
            if _PROMPT.search(_ESCAPE.sub(b"", seen)):
                # Quiet for a moment: no more output queued behind this prompt.
                quiet = self.read(time.monotonic() + 0.15)
                if not quiet:
                    return True
                seen = (seen + quiet)[-256:]


def command_line(argv: Sequence[str], token: str) -> bytes:
    """The shell line that runs `argv` between a begin and an end marker. The
    markers are written by printf, so the echoed line never contains them."""
    if not argv:
        raise ValueError("no command given")
    cmd = shlex.join(argv)
    line = (f"printf '%s_b__\\n' __vnet_{token}; {cmd} </dev/null 2>&1; "
            f"printf '__vnet_%s_%d__\\n' {token} $?")
    data = line.encode()
    if len(data) > LINE_MAX:
        raise ValueError(f"command too long for a serial console ({len(cmd)} bytes)")
    return data + b"\r"


def _text(data: bytes | bytearray) -> str:
    return bytes(data).replace(b"\r\n", b"\n").replace(b"\r", b"").decode(errors="replace")


def run(domain: str, argv: Sequence[str], timeout: float, output_cap: int, *,
        uri: str = URI, wait: float = 5.0) -> tuple[int, str]:
    """Run `argv` as root in the VM `domain` on its serial console; (exit status,
    output with stderr merged). Past `timeout` the command gets ^C and the
    status is 124. Output beyond `output_cap` bytes is dropped (a note says so).
    Raises SerialBusy when the line stays held for `wait` s, SerialError when
    the domain is not running or its shell does not answer."""
    token = secrets.token_hex(6)
    line = command_line(argv, token)
    begin = f"__vnet_{token}_b__".encode()
    end = re.compile(rb"__vnet_" + token.encode() + rb"_(\d+)__")
    path = pty_path(domain, uri)
    until = time.monotonic() + timeout
    with locked(domain, wait):
        fd = open_line(path)
        try:
            io = _Line(fd)
            if not io.prompt(until):
                raise SerialError(f"no shell prompt on the serial console of {domain}")
            io.send(line)
            return _collect(io, begin, end, until, output_cap)
        finally:
            os.close(fd)


def _collect(io: _Line, begin: bytes, end: re.Pattern[bytes], until: float,
             cap: int) -> tuple[int, str]:
    pending = bytearray()
    started = False
    head = bytearray()
    dropped = 0
    while True:
        chunk = io.read(until)
        if chunk is None:
            io.send(b"\x03")
            io.prompt(time.monotonic() + PROMPT_WAIT)
            rc = INTERRUPTED
            break
        pending += chunk
        if not started:
            at = pending.find(begin)
            if at < 0:
                continue
            nl = pending.find(b"\n", at)
            if nl < 0:
                continue
            del pending[:nl + 1]
            started = True
        found = end.search(pending)
        if found:
            rc = int(found.group(1))
            del pending[found.start():]
            break
        if len(pending) > WINDOW:
            flush = pending[:-WINDOW]
            del pending[:-WINDOW]
            room = cap - len(head)
            head += flush[:max(room, 0)]
            dropped += max(len(flush) - max(room, 0), 0)
    room = cap - len(head)
    head += pending[:max(room, 0)]
    dropped += max(len(pending) - max(room, 0), 0)
    out = _text(head)
    if dropped:
        out += f"\n[output truncated: {dropped} bytes dropped]\n"
    return rc, out
