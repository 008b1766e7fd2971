"""Start and stop libvirt's daemons (libvirtd, virtlogd) where no init system does.

Debian's libvirt works without systemd once ``virtlogd -d`` and ``libvirtd -d``
run. ``Daemons.start()`` starts whichever of the two does not answer on its
socket, with a pidfile in a directory the caller gives, and waits until its
socket accepts connections; ``Daemons.stop()`` stops only what that object
started, by the pid in its pidfile, never a daemon that was already running.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = Path("/run/libvirt")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class LibvirtdError(Exception):
    """A daemon that would not start or stop."""


@dataclass(frozen=True, slots=True)
class Daemon:
    """One of libvirt's daemons: its program and the socket that shows it runs."""

    program: str
    socket: Path

    @property
    def name(self) -> str:
        return Path(self.program).name


VIRTLOGD = Daemon("virtlogd", RUN_DIR / "virtlogd-sock")
LIBVIRTD = Daemon("libvirtd", RUN_DIR / "libvirt-sock")
# virtlogd first: libvirtd's QEMU driver logs through it.
DAEMONS = (VIRTLOGD, LIBVIRTD)


def available() -> bool:
    """Whether libvirtd and virtlogd are installed (scripts/install-libvirt.sh)."""
    return all(_which(d.program) is not None for d in DAEMONS)


def answers(daemon: Daemon) -> bool:
    """Whether something accepts connections on the daemon's socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(daemon.socket))
        except OSError:
            return False
    return True


def running() -> bool:
    """Whether both daemons answer on their sockets."""
    return all(answers(d) for d in DAEMONS)


def _which(program: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return shutil.which(program, path=path)


def _alive(pid: int, program: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process running ``program``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and Path(exe.removesuffix(" (deleted)")).name == program


class Daemons:
    """libvirtd and virtlogd, started here if they do not already run."""

    def __init__(self, piddir: Path, *, timeout: float = START_TIMEOUT) -> None:
        self.piddir = piddir
        self.timeout = timeout
        self._started: dict[str, int] = {}

    @property
    def started(self) -> dict[str, int]:
        """Pid of each daemon this object started (and has not stopped), by name."""
        return dict(self._started)

    def pidfile(self, daemon: Daemon) -> Path:
        return self.piddir / f"{daemon.name}.pid"

    def start(self) -> dict[str, int]:
        """Start each daemon that does not answer; return those started here, with pids."""
        self.piddir.mkdir(parents=True, exist_ok=True)
        for daemon in DAEMONS:
            if answers(daemon):
                continue
            program = _which(daemon.program)
            if program is None:
                raise LibvirtdError(
                    f"{daemon.program} is not installed; run scripts/install-libvirt.sh"
                )
            pidfile = self.pidfile(daemon)
            pidfile.unlink(missing_ok=True)
            proc = subprocess.run(
                [program, "-d", "-p", str(pidfile)],
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
            if proc.returncode != 0:
                raise LibvirtdError(
                    f"{daemon.program} -d exited {proc.returncode}: {proc.stderr.strip()}"
                )
            self._wait_for(daemon, pidfile)
        return self.started

    def _wait_for(self, daemon: Daemon, pidfile: Path) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            text = pidfile.read_text().strip() if pidfile.exists() else ""
            if text.isdigit():
                pid = int(text)
                self._started[daemon.name] = pid
                if not _alive(pid, daemon.name):
                    raise LibvirtdError(f"{daemon.program} (pid {pid}) exited after starting")
                if answers(daemon):
                    return
            time.sleep(0.05)
        raise LibvirtdError(
            f"{daemon.program} did not answer on {daemon.socket} within {self.timeout:.0f} s"
        )

    def adopt(self) -> dict[str, int]:
        """Take over the daemons an earlier process started with this pid
        directory (`vnet lab up` starts them, `vnet lab down` stops them)."""
        for daemon in DAEMONS:
            pidfile = self.pidfile(daemon)
            text = pidfile.read_text().strip() if pidfile.exists() else ""
            if text.isdigit() and _alive(int(text), daemon.name):
                self._started[daemon.name] = int(text)
        return self.started

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the daemons this object started (SIGTERM, then SIGKILL), libvirtd first."""
        for daemon in reversed(DAEMONS):
            pid = self._started.pop(daemon.name, None)
            if pid is None:
                continue
            _terminate(pid, daemon.name, timeout)
            self.pidfile(daemon).unlink(missing_ok=True)

    def __enter__(self) -> Daemons:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(pid: int, program: str, timeout: float) -> None:
    if not _alive(pid, program):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid, program):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid, program):
            return
        time.sleep(0.05)
    raise LibvirtdError(f"{program} (pid {pid}) did not exit")
