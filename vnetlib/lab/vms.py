"""The lab's VM services: libvirtd and virtlogd, started by `vnet lab up` when
libvirt is installed (this machine kind has no systemd: both run with `-d`),
and stopped by `vnet lab down` with every domain of the lab's substrates.

Several labs share one libvirtd: the daemons' pid files sit in one place
(`/run/vnet/libvirt`), each lab that uses them leaves a mark there, and `lab
down` stops the daemons only when it removes the last mark, and only if a lab
started them (never a libvirtd that was running before).
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vnetlib import naming
from vnetlib.vm import libvirtd
from vnetlib.vm.domain import domain_logs

URI = "qemu:///system"
SHARED = Path("/run/vnet/libvirt")


def _mark(directory: Path) -> Path:
    return SHARED / "users" / naming.short_hash(str(directory.resolve()), length=16)


@contextmanager
def _shared() -> Iterator[None]:
    SHARED.mkdir(parents=True, exist_ok=True)
    with open(SHARED / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start(directory: Path) -> list[str]:
    """Start libvirtd and virtlogd unless they run already; what was started."""
    if not libvirtd.available():
        return []
    with _shared():
        mark = _mark(directory)
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text(f"{directory}\n")
        started = libvirtd.Daemons(SHARED).start()
    return [f"{name} (pid {pid})" for name, pid in sorted(started.items())]


def _virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def remove_domains(substrates: list[str]) -> list[str]:
    """Destroy and undefine every domain of these substrates (by name prefix),
    also those a crashed deployment left without a record."""
    if shutil.which("virsh") is None or not libvirtd.running():
        return []
    listed = _virsh("list", "--all", "--name")
    prefixes = tuple(naming.vnode_netns_prefix(s) for s in substrates)
    removed = []
    for name in (n.strip() for n in listed.stdout.splitlines()):
        if name and name.startswith(prefixes):
            _virsh("destroy", name)
            _virsh("undefine", name)
            for log in domain_logs(name):
                Path(log).unlink(missing_ok=True)
            removed.append(f"domain {name}")
    return removed


def stop(directory: Path, substrates: list[str]) -> list[str]:
    """Remove the lab's domains; stop the daemons a lab started once no lab
    uses them any more."""
    removed = remove_domains(substrates)
    with _shared():
        _mark(directory).unlink(missing_ok=True)
        users = SHARED / "users"
        for other in users.iterdir() if users.exists() else ():
            if not Path(other.read_text().strip()).exists():  # a lab gone without lab down
                other.unlink(missing_ok=True)
        if users.exists() and any(users.iterdir()):
            return removed
        daemons = libvirtd.Daemons(SHARED)
        stopped = daemons.adopt()
        daemons.stop()
    return removed + [f"{name} (pid {pid})" for name, pid in sorted(stopped.items())]
