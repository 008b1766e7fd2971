# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One command on a guest's serial console (private to the collection).

A small copy of what ``vnetlib/vm/serial.py`` does (the module cannot import
vnetlib): take the domain's serial lock (the same ``flock`` file, so an open
console session or an exec is never interleaved with), get vnet's guest shell
to a prompt, type one line, read up to a marker that carries its exit status.
``vnet_domain`` uses it to reconfigure a pool VM it takes (``vnet-config``).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import select
import termios
import time
import tty

LOCK_DIR = "/run/vnet/serial"
LINE_MAX = 900
NUDGE = 2.0
FIRST_ANSWER = 10.0  # seconds for a typed line's begin marker before a prompt is waited for
_ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
_PROMPT = re.compile(rb"[#$] $")


class SerialError(Exception):
    """The serial line did not answer, or the command could not be typed."""


def _lock(domain: str, wait: float) -> int:
    if "/" in domain or domain.startswith("."):
        raise SerialError("domain name %r cannot name a lock file" % domain)
    os.makedirs(LOCK_DIR, exist_ok=True)
    fd = os.open(os.path.join(LOCK_DIR, domain + ".lock"),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SerialError("the serial console of %s is in use" % domain) from None
            time.sleep(0.1)


def _read(fd: int, until: float) -> bytes | None:
    left = until - time.monotonic()
    if left <= 0:
        return None
    if not select.select([fd], [], [], min(left, 0.5))[0]:
        return b""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""
    except OSError:
        raise SerialError("the serial line closed") from None


def _send(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        select.select([], [fd], [], 1.0)
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue


def _prompt(fd: int, until: float) -> None:
    seen = b""
    nudge_at = 0.0
    while True:
        now = time.monotonic()
        if now >= nudge_at:
            _send(fd, b"\x15\r")
            nudge_at = now + NUDGE
        chunk = _read(fd, min(until, nudge_at))
        if chunk is None:
            if time.monotonic() >= until:
                raise SerialError("no shell prompt on the serial console")
            continue
        seen = (seen + chunk)[-256:]
        if _PROMPT.search(_ESCAPE.sub(b"", seen)):
            quiet = _read(fd, time.monotonic() + 0.15)
            if not quiet:
                return
            seen = (seen + quiet)[-256:]


def _typed(fd: int, line: str, until: float) -> tuple[int, str] | None:
    """Type ``line`` wrapped in markers of a fresh token and read its answer;
    None when its begin marker does not come within FIRST_ANSWER seconds (the
    shell did not take the line: no prompt)."""
    token = secrets.token_hex(6)
    data = ("printf '%%s_b__\\n' __vnet_%s; %s </dev/null 2>&1; "
            "printf '__vnet_%%s_%%d__\\n' %s $?" % (token, line, token)).encode()
    if len(data) > LINE_MAX:
        raise SerialError("command line of %d bytes is too long for the serial console"
                          % len(data))
    begin = ("__vnet_%s_b__" % token).encode()
    end = re.compile(rb"__vnet_" + token.encode() + rb"_(\d+)__")
    _send(fd, b"\x15" + data + b"\r")  # Ctrl-U first: whatever was typed before is dropped
    first = min(until, time.monotonic() + FIRST_ANSWER)
    out = b""
    while True:
        chunk = _read(fd, until if begin in out else first)
        if chunk is None:
            if begin not in out and time.monotonic() < until:
                return None
            raise SerialError("no answer within the timeout; output: %r" % out[-300:])
        out += chunk
        at = out.find(begin)
        if at < 0:
            continue
        found = end.search(out, at)
        if found:
            text = out[out.find(b"\n", at) + 1:found.start()]
            return int(found.group(1)), text.replace(b"\r", b"").decode(errors="replace")


def run_line(domain: str, pty: str, line: str, timeout: float) -> tuple[int, str]:
    """Type ``line`` (a shell command line) on the domain's serial console at
    ``pty``; (exit status, output).

    The line is typed at once: vnet's guest keeps a shell at a prompt on its
    console, and waiting to see that prompt (and for the line to go quiet)
    cost 0.2 to 1.2 s a command under TCG. Only if the shell does not take it
    is a prompt waited for and the line typed again (with a new token, so the
    first one's output, should it come late, is not taken for the answer)."""
    until = time.monotonic() + timeout
    lock = _lock(domain, min(timeout, 10.0))
    try:
        fd = os.open(pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            tty.setraw(fd, termios.TCSANOW)
            answer = _typed(fd, line, until)
            if answer is None:
                _prompt(fd, until)
                answer = _typed(fd, line, until)
            if answer is None:
                raise SerialError("the shell on the serial console does not take commands")
            return answer
        finally:
            os.close(fd)
    finally:
        os.close(lock)
