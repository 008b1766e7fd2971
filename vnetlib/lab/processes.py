"""Starting and stopping the lab's management-node processes.

Each player runs as `vnet serve` in its own session, its pid in a file. Stopping
checks that the pid still belongs to that `vnet serve` (its command line names
the player's config) before signalling it, so a recycled pid is never hit.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from vnetlib import pidfiles


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


def running(pidfile: Path, config: Path) -> int | None:
    """The pid of the player of `pidfile` if it still runs (its command line
    names `config`)."""
    return pidfiles.running(pidfile, str(config))


def stop(pidfile: Path, config: Path, timeout: float = 10.0) -> bool:
    """Stop the player of `pidfile` (SIGTERM, then SIGKILL); True if one ran."""
    return pidfiles.stop(pidfile, str(config), timeout)
