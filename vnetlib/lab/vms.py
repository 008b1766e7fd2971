"""The lab's VM services: libvirtd and virtlogd, started by `vnet lab up` when
libvirt is installed (this machine kind has no systemd: both run with `-d`),
and stopped by `vnet lab down` with every domain of the lab's substrates.

The daemons' pid files sit in the lab's directory, so `lab down` (another
process) stops exactly what `lab up` started, and nothing that was running
before.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from vnetlib import naming
from vnetlib.vm import libvirtd

URI = "qemu:///system"
PIDS = "libvirt"


def start(directory: Path) -> list[str]:
    """Start libvirtd and virtlogd unless they run already; what was started."""
    if not libvirtd.available():
        return []
    started = libvirtd.Daemons(directory / PIDS).start()
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
            removed.append(f"domain {name}")
    return removed


def stop(directory: Path, substrates: list[str]) -> list[str]:
    """Remove the lab's domains, then stop the daemons this lab started."""
    removed = remove_domains(substrates)
    daemons = libvirtd.Daemons(directory / PIDS)
    stopped = daemons.adopt()
    daemons.stop()
    return removed + [f"{name} (pid {pid})" for name, pid in sorted(stopped.items())]
