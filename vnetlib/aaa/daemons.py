"""The daemons of end-user attachment (FreeRADIUS, hostapd, wpa_supplicant,
dnsmasq, the access controller): started in the foreground in a session of
their own, optionally inside a network namespace, their pid in a file.

Stopping checks that the pid still runs a command line naming `marker` (a path
only that instance uses) before signalling it, so a recycled pid is never hit.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from vnetlib.pidfiles import ours, running, signal_daemon, stop


class DaemonError(RuntimeError):
    pass


def private_dir(path: Path) -> Path:
    """A directory (and its missing parents) only root can enter: AAA
    directories hold shared secrets, passwords and RADIUS logs."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically (a temporary file in the same
    directory, renamed), readable by its owner only from the first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def tail_lines(path: Path, limit: int = 1 << 18) -> list[str]:
    """The complete lines among the last `limit` bytes of a log that only
    grows (a missing file has none)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[1:] if size > limit and lines else lines


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    return list(argv) if netns is None else ["ip", "netns", "exec", netns, *argv]


def start(argv: Sequence[str], *, pidfile: Path, log: Path, marker: str,
          netns: str | None = None, settle: float = 0.0) -> int:
    """Start `argv` unless the instance of `pidfile` runs; returns its pid.
    With `settle`, fail if it exits within that many seconds."""
    if (pid := running(pidfile, marker)) is not None:
        return pid
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(in_netns(netns, argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    pidfile.write_text(f"{proc.pid}\n")
    exec_deadline = time.monotonic() + 5.0
    while not ours(proc.pid, marker) and proc.poll() is None:  # until it runs `argv`
        if time.monotonic() > exec_deadline:
            break
        time.sleep(0.005)
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pidfile.unlink(missing_ok=True)
            tail = log.read_text(errors="replace")[-1500:]
            raise DaemonError(f"{argv[0]} exited with {proc.returncode}:\n{tail}")
        time.sleep(0.05)
    return proc.pid


__all__ = ["DaemonError", "in_netns", "private_dir", "running", "signal_daemon",
           "start", "stop", "tail_lines", "write_private"]
