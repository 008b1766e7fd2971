"""Starting and stopping the lab's management-node processes.

Each player runs as `vnet serve` in its own session, its pid in a file. Stopping
checks that the pid still belongs to that `vnet serve` (its command line names
the player's config) before signalling it, so a recycled pid is never hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class PlayerStartError(RuntimeError):
    pass


def start(
    role: str, config: Path, *, log: Path, pidfile: Path, ready: Path, timeout: float = 30.0,
    netns: str | None = None,
) -> str:
    """Start `vnet serve` for one player (in network namespace `netns`, on a
    management host of its own, if given); return its URL once it listens."""
    ready.unlink(missing_ok=True)
    enter = ["nsenter", f"--net=/run/netns/{netns}", "--"] if netns else []
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                *enter,
                sys.executable,
                "-m",
                "vnetlib.cli.main",
                "serve",
                "--role",
                role,
                "--config",
                str(config),
                "--ready-file",
                str(ready),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists() and (url := ready.read_text().strip()):
            return url
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            pidfile.unlink(missing_ok=True)
            raise PlayerStartError(f"{config.stem} exited with {proc.returncode}:\n{tail}")
        time.sleep(0.05)
    stop(pidfile, config)
    raise PlayerStartError(f"{config.stem} did not listen within {timeout:.0f} s; see {log}")


def _ours(pid: int, config: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in cmdline and str(config).encode() in cmdline


def running(pidfile: Path, config: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _ours(pid, config) else None


def stop(pidfile: Path, config: Path, timeout: float = 10.0) -> bool:
    """Stop the player of `pidfile` (SIGTERM, then SIGKILL); True if one ran."""
    pid = running(pidfile, config)
    pidfile.unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _ours(pid, config):
            return True
        _reap(pid)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status if the player is our own child (same process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
