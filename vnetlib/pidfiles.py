"""Daemons known by a pid file: is the instance running, signal it, stop it.

Before signalling, the pid must still run a command line naming `marker` (a
path only that instance uses, e.g. its configuration) and not be a zombie,
so a recycled pid is never hit. Used by the AAA daemons and the lab's
players.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def ours(pid: int, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and marker.encode() in cmdline


def running(pidfile: Path, marker: str) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if ours(pid, marker) else None


def signal_daemon(pidfile: Path, marker: str, sig: signal.Signals) -> bool:
    pid = running(pidfile, marker)
    if pid is None:
        return False
    os.kill(pid, sig)
    return True


def stop(pidfile: Path, marker: str, timeout: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; True if it ran."""
    pid = running(pidfile, marker)
    pidfile.unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not ours(pid, marker):
            return True
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
